//! tg-nix's state DB (sled, under `<home>/data/state`): what `tg-nix setup` imported, and the
//! resolve and vendor caches of the nix:* builders, the matrix result cache, and the run history
//! (`run/<run_id>`, cli/src/history.rs). Values are JSON.
//!
//! sled allows one process at a time (an exclusive file lock taken at open). Builds take minutes
//! and several tg-nix processes may run at once (two terminals, a parallel test suite), so the DB
//! is opened for a few reads or writes and closed again; an open that finds it locked waits and
//! retries. Every write is flushed before `put` returns: a killed tg-nix leaves the DB readable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::BuildError;

/// How long an open waits for another tg-nix process to close the DB.
const LOCK_WAIT: Duration = Duration::from_secs(120);

pub struct State {
    db: sled::Db,
    path: PathBuf,
}

impl State {
    /// Opens (creating) the DB in `dir`, waiting while another process holds it.
    pub fn open(dir: &Path) -> Result<State, BuildError> {
        std::fs::create_dir_all(dir).map_err(|e| BuildError::Io { path: dir.display().to_string(), source: e })?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Ok(State { db, path: dir.to_path_buf() }),
                Err(e) if is_locked(&e) && started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    let hint = if is_locked(&e) { " (another tg-nix process kept it open for 2 minutes)" } else { "" };
                    return Err(BuildError::State {
                        path: dir.display().to_string(),
                        message: format!("cannot open: {e}{hint}"),
                    });
                }
            }
        }
    }

    /// The value under `key`, if there is one and it still parses (an unreadable record counts
    /// as missing: the caller makes it again).
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let bytes = self.db.get(key.as_bytes()).ok()??;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(key, error = %e, "state DB: ignoring a record that no longer parses");
                None
            }
        }
    }

    /// Stores `value` under `key` and flushes it to disk.
    pub fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), BuildError> {
        let bytes = serde_json::to_vec(value).map_err(|e| self.error(format!("encoding {key}: {e}")))?;
        self.db.insert(key.as_bytes(), bytes).map_err(|e| self.error(format!("writing {key}: {e}")))?;
        self.db.flush().map_err(|e| self.error(format!("flushing: {e}")))?;
        Ok(())
    }

    /// Every record whose key starts with `prefix`, in key order (byte order), as `(key, value)`.
    /// Records that no longer parse as `T` are left out (with a warning), as `get` does.
    pub fn scan_prefix<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, BuildError> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(prefix.as_bytes()) {
            let (key, bytes) = entry.map_err(|e| self.error(format!("reading {prefix}*: {e}")))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            match serde_json::from_slice(&bytes) {
                Ok(v) => out.push((key, v)),
                Err(e) => tracing::warn!(key, error = %e, "state DB: ignoring a record that no longer parses"),
            }
        }
        Ok(out)
    }

    fn error(&self, message: String) -> BuildError {
        BuildError::State { path: self.path.display().to_string(), message }
    }
}

fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = State::open(dir.path()).unwrap();
            assert_eq!(state.get::<String>("k"), None);
            state.put("k", &"v".to_string()).unwrap();
            assert_eq!(state.get::<String>("k").as_deref(), Some("v"));
        }
        // Closed on drop: the next open (same process, as another would) gets the lock at once.
        let started = Instant::now();
        let state = State::open(dir.path()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(state.get::<String>("k").as_deref(), Some("v"));
        assert_eq!(state.get::<u32>("k"), None, "a record of another shape counts as missing");
    }

    #[test]
    fn scan_prefix_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        for (k, v) in [("run/b", 2u32), ("run/a", 1), ("runx", 9), ("ru", 8), ("run/c", 3)] {
            state.put(k, &v).unwrap();
        }
        state.put("run/bad", &"not a number").unwrap();
        let found: Vec<(String, u32)> = state.scan_prefix("run/").unwrap();
        assert_eq!(found, vec![("run/a".into(), 1), ("run/b".into(), 2), ("run/c".into(), 3)]);
        assert!(state.scan_prefix::<u32>("nothing/").unwrap().is_empty());
        assert_eq!(state.scan_prefix::<u32>("").unwrap().len(), 5, "an empty prefix is every key that parses");
    }
}
