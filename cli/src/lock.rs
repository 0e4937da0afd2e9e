//! tg-nix.lock: the pins of every nix:* build unit of the compositions in one directory.
//!
//! One file per directory (beside the compositions, to be committed with them). Each unit
//! records which compositions and groups use it, the rewrites as cargo resolved them, the NAR
//! hashes of its source, vendored dependencies and toolchain, and its .drv and output paths
//! (the [`Pin`]). Writing the lock for one composition replaces that composition's units and
//! keeps the others'. `--locked` reads it and builds only what it pins.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tg_nix_builders::nix::Pin;
use tg_nix_model::BuildUnit;

use crate::error::CliError;

pub const FILE_NAME: &str = "tg-nix.lock";
const VERSION: u32 = 1;
const HEADER: &str = "# tg-nix.lock: written by `tg-nix build` and `tg-nix run`. It pins every nix:* build unit of\n\
# the compositions in this directory. Commit it; `--locked` builds exactly what it pins.\n\n";

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct LockFile {
    version: u32,
    #[serde(default, rename = "unit")]
    units: Vec<LockedUnit>,
}

/// One pinned build unit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedUnit {
    /// The composition files (names in this directory) that use the unit.
    pub compositions: Vec<String>,
    /// Their groups that build it.
    pub groups: Vec<String>,
    pub plan: String,
    pub builder: String,
    /// Identifies the unit: builder, build config, selectors, rewrites as requested ([`unit_key`]).
    pub key: String,
    #[serde(flatten)]
    pub pin: Pin,
}

/// A directory's lock, read (or empty when there is none yet).
pub struct Lock {
    path: PathBuf,
    file: LockFile,
    existed: bool,
}

impl Lock {
    /// The lock beside `composition`; a malformed one is an error that names it.
    pub fn load(composition: &Path) -> Result<Lock, CliError> {
        let path = composition.parent().unwrap_or(Path::new(".")).join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock { path, file: LockFile { version: VERSION, units: Vec::new() }, existed: false })
            }
            Err(e) => return Err(CliError::infra(format!("{}: {e}", path.display()))),
        };
        let file: LockFile = toml::from_str(&text).map_err(|e| {
            CliError::input(
                format!("{}: not a tg-nix.lock: {e}", path.display()),
                "delete it and run `tg-nix build` without --locked to write it again",
            )
        })?;
        if file.version != VERSION {
            return Err(CliError::input(
                format!("{}: version = {} (this tg-nix reads version {VERSION})", path.display(), file.version),
                "run `tg-nix build` without --locked to write it again",
            ));
        }
        Ok(Lock { path, file, existed: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the lock pins for `unit` of `plan` in `composition` (a file name in the lock's
    /// directory) under `--locked`, or an error naming the group, the lock and the fix.
    pub fn pin_for(&self, composition: &str, plan: &str, unit: &BuildUnit) -> Result<&Pin, CliError> {
        let fix = "run `tg-nix build COMPOSITION` without --locked to resolve it and update the lock";
        if !self.existed {
            return Err(CliError::input(format!("--locked: there is no {}", self.path.display()), fix));
        }
        let key = unit_key(plan, unit);
        // This composition's pin first: another composition may pin the same unit differently.
        let found = self
            .file
            .units
            .iter()
            .filter(|u| u.key == key)
            .max_by_key(|u| u.compositions.iter().any(|c| c == composition));
        match found {
            Some(u) => Ok(&u.pin),
            None => Err(CliError::input(
                format!(
                    "{}: no pin for group `{}` ({}{}): the composition changed since the lock was written (--locked)",
                    self.path.display(),
                    unit.group_id,
                    unit.builder,
                    describe_rewrites(unit)
                ),
                fix,
            )),
        }
    }

    /// Replaces the units of `composition` (a file name in the lock's directory) by `units`;
    /// a unit another composition also uses is kept once, with both names.
    pub fn set(&mut self, composition: &str, units: Vec<LockedUnit>) {
        for u in &mut self.file.units {
            u.compositions.retain(|c| c != composition);
        }
        self.file.units.retain(|u| !u.compositions.is_empty());
        for mut unit in units {
            match self.file.units.iter_mut().find(|u| u.key == unit.key && u.pin == unit.pin) {
                Some(existing) => {
                    existing.compositions.push(composition.to_string());
                    existing.compositions.sort();
                    existing.groups.append(&mut unit.groups);
                    existing.groups.sort();
                    existing.groups.dedup();
                }
                None => {
                    unit.compositions = vec![composition.to_string()];
                    self.file.units.push(unit);
                }
            }
        }
        self.file.units.sort_by(|a, b| (&a.plan, &a.groups, &a.key).cmp(&(&b.plan, &b.groups, &b.key)));
    }

    /// Every pin in the lock (all compositions).
    pub fn pins(&self) -> impl Iterator<Item = &Pin> {
        self.file.units.iter().map(|u| &u.pin)
    }

    /// Writes the lock if its content changed (atomically: a temporary file renamed over it).
    /// Returns whether it wrote.
    pub fn save(&self) -> Result<bool, CliError> {
        let body = toml::to_string(&self.file).map_err(|e| CliError::infra(format!("encoding the lock: {e}")))?;
        let text = format!("{HEADER}{body}");
        if std::fs::read_to_string(&self.path).map(|old| old == text).unwrap_or(false) {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let err = |e: std::io::Error| CliError::infra(format!("{}: {e}", self.path.display()));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(err)?;
        tmp.persist(&self.path).map_err(|e| err(e.error))?;
        Ok(true)
    }
}

/// What identifies a unit in the lock: the plan and the unit's dedup key (builder, build config,
/// selectors, rewrites as requested). Group names are not part of it.
pub fn unit_key(plan: &str, unit: &BuildUnit) -> String {
    tg_nix_builders::unit_digest(plan, unit)
}

fn describe_rewrites(unit: &BuildUnit) -> String {
    let deps: Vec<String> = unit
        .dependencies
        .iter()
        .map(|d| match &d.target {
            Some(t) => format!("{} = {} from {t}", d.module, d.version),
            None => format!("{} = {}", d.module, d.version),
        })
        .collect();
    if deps.is_empty() {
        String::new()
    } else {
        format!(", {}", deps.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tg_nix_builders::nix::Fixed;

    fn unit(key: &str, group: &str, out: &str) -> LockedUnit {
        let fixed = |p: &str| Fixed { path: format!("/nix/store/{p}"), nar_hash: "0".repeat(52) };
        LockedUnit {
            compositions: Vec::new(),
            groups: vec![group.to_string()],
            plan: "p".into(),
            builder: "nix:rust".into(),
            key: key.into(),
            pin: Pin {
                bin: "p".into(),
                rewrites: Vec::new(),
                cargo_lock: "c".into(),
                src: fixed("s"),
                deps: fixed("d"),
                toolchain: fixed("t"),
                drv: format!("/nix/store/{out}.drv"),
                out: format!("/nix/store/{out}"),
            },
        }
    }

    #[test]
    fn compositions_share_a_lock_without_losing_each_others_units() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let mut lock = Lock::load(&a).unwrap();
        lock.set("a.toml", vec![unit("k1", "x", "o1"), unit("k2", "y", "o2")]);
        lock.set("b.toml", vec![unit("k1", "z", "o1"), unit("k3", "w", "o3")]);
        assert!(lock.save().unwrap());
        assert!(!lock.save().unwrap(), "unchanged: not written again");

        let mut lock = Lock::load(&a).unwrap();
        assert_eq!(lock.file.units.len(), 3);
        let shared = lock.file.units.iter().find(|u| u.key == "k1").unwrap();
        assert_eq!(shared.compositions, ["a.toml", "b.toml"]);
        assert_eq!(shared.groups, ["x", "z"]);
        // Re-locking a.toml without k2 drops k2 and keeps b.toml's units.
        lock.set("a.toml", vec![unit("k1", "x", "o1")]);
        let keys: Vec<&str> = lock.file.units.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&"k1") && keys.contains(&"k3"));
    }

    #[test]
    fn a_malformed_or_future_lock_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let comp = dir.path().join("c.toml");
        std::fs::write(dir.path().join(FILE_NAME), "version = 1\n[[unit]]\nkey = 3\n").unwrap();
        let e = Lock::load(&comp).err().expect("malformed");
        assert!(e.render().contains("tg-nix.lock: not a tg-nix.lock"), "{}", e.render());
        std::fs::write(dir.path().join(FILE_NAME), "version = 9\n").unwrap();
        let e = Lock::load(&comp).err().expect("future version");
        assert!(e.render().contains("version = 9"), "{}", e.render());
    }
}
