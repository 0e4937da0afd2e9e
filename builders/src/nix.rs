//! The hermetic Nix builders (`nix:rust` today) and the imports they stand on.
//!
//! Plain Debian `nix-bin` 2.8, root, single-user store, full sandbox, no nixpkgs and no binary
//! cache (docs/nix.md has the whole story and the gotchas):
//! - [`mod@setup`] (`tg-nix setup`) writes /etc/nix/nix.conf and imports, once per machine and home,
//!   a static busybox (the builder of every derivation), the Debian C toolchain as a sysroot built
//!   from `.deb`s checked against apt's hashes, and the rustup toolchain. Each import is keyed and
//!   recorded in the state DB ([`state`]), so the next run reuses it in milliseconds.
//! - [`rust`] resolves a build unit (stage the plan, apply dependency rewrites, lock, vendor, add
//!   both to the store as fixed paths), derives a Nix expression from `templates/rust.nix.hbs`
//!   and the library `nix/tg-nix.nix`, and realises it with `nix-build` in the sandbox.
//!
//! This module never runs instances and never touches a store path it did not add or build.

pub mod derive;
pub mod rust;
pub mod setup;
pub mod state;

mod realise;
mod stage;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::BuildError;

pub use rust::{Fixed, Generated, Pin, PinnedRewrite};
pub use setup::{setup, status, ImportStatus, SetupOptions, SetupReport, SetupStep};

/// Resolve and derive a nix:* unit without building it (`tg-nix gen`).
pub fn generate(req: &crate::BuildRequest<'_>) -> Result<Generated, BuildError> {
    match req.unit.builder.as_str() {
        rust::ID => rust::generate(req),
        other => Err(BuildError::Unsupported {
            group: req.unit.group_id.clone(),
            builder: other.to_string(),
            what: "generating a Nix expression".to_string(),
            hint: format!("only the nix:* builders have one ({})", rust::ID),
        }),
    }
}

/// Nix's configuration file (Debian's nix-bin reads it; no daemon is involved for root).
pub const NIX_CONF: &str = "/etc/nix/nix.conf";
/// Where tg-nix keeps its GC roots: a symlink here keeps a store path alive.
pub const GCROOTS: &str = "/nix/var/nix/gcroots/tg-nix";
/// How many lines of a failed command's output an error shows.
pub(crate) const TAIL_LINES: usize = 40;
/// The fix for every "not set up" problem.
pub const SETUP_FIX: &str = "run `tg-nix setup` as root (scripts/setup.sh does it)";

/// The nix.conf Nix reads: `$NIX_CONF_DIR/nix.conf` when that is set (as Nix does), else
/// [`NIX_CONF`].
pub fn nix_conf_path() -> PathBuf {
    match std::env::var_os("NIX_CONF_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("nix.conf"),
        _ => PathBuf::from(NIX_CONF),
    }
}

/// `sandbox = true` in the nix.conf Nix reads, or why not. The nix:* builders refuse to build
/// without the sandbox: an unsandboxed build sees the host's /usr and is not hermetic.
pub fn check_sandbox() -> Result<(), BuildError> {
    let path = nix_conf_path();
    let conf = std::fs::read_to_string(&path).map_err(|e| BuildError::NotReady {
        message: format!("cannot read {} ({e}): nix:* builders only build in the Nix sandbox", path.display()),
        fix: SETUP_FIX.to_string(),
    })?;
    match conf_value(&conf, "sandbox").as_deref() {
        Some("true") => Ok(()),
        other => Err(BuildError::NotReady {
            message: format!(
                "{} has {}: nix:* builders only build in the Nix sandbox (`sandbox = true`)",
                path.display(),
                match other {
                    Some(v) => format!("`sandbox = {v}`"),
                    None => "no `sandbox` setting".to_string(),
                }
            ),
            fix: format!("{SETUP_FIX}; it writes the nix.conf tg-nix needs and keeps a backup of the old one"),
        }),
    }
}

/// The last value given to `key` in a nix.conf text (later lines win, as in Nix).
pub fn conf_value(conf: &str, key: &str) -> Option<String> {
    let mut value = None;
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("");
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

/// True when this process runs as root (the single-user store is root's).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective uid of the process looking at it.
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A command that did not work.
#[derive(Debug)]
pub(crate) enum Failure {
    Spawn { command: String, source: std::io::Error },
    Status { command: String, status: String, tail: String },
}

impl Failure {
    pub(crate) fn for_group(self, group: &str) -> BuildError {
        match self {
            Failure::Spawn { command, source } => BuildError::Spawn { group: group.to_string(), command, source },
            Failure::Status { command, status, tail } => {
                BuildError::Command { group: group.to_string(), command, status, stderr_tail: tail }
            }
        }
    }

    pub(crate) fn for_setup(self, step: &str) -> BuildError {
        match self {
            Failure::Spawn { command, source } => {
                BuildError::Setup { step: step.to_string(), message: format!("could not start `{command}`: {source}") }
            }
            Failure::Status { command, status, tail } => {
                BuildError::Setup { step: step.to_string(), message: format!("`{command}` failed ({status})\n{tail}") }
            }
        }
    }
}

/// How a command reads in messages: the program and its arguments, space-separated.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

/// Runs `cmd` to completion and returns its stdout. Stderr is read on its own thread (a chatty
/// command could otherwise fill the pipe and deadlock) and its last lines go into the failure.
pub(crate) fn output(cmd: &mut Command) -> Result<String, Failure> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Failure::Spawn { command: command.clone(), source })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || tail_of(stderr, |_| {}));
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    let status = child.wait().map_err(|source| Failure::Spawn { command: command.clone(), source })?;
    let tail = reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(Failure::Status { command, status: status.to_string(), tail })
    }
}

/// Reads lines to the end, handing each to `each`, and returns the last [`TAIL_LINES`].
pub(crate) fn tail_of(stream: impl Read, mut each: impl FnMut(&str)) -> String {
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        each(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    tail.into_iter().collect::<Vec<_>>().join("\n")
}

/// `nix-store --add-fixed --recursive sha256 DIR`: the store path (named after DIR's basename) and
/// its NAR hash (nix base32). Adding an identical tree again gives the same path.
pub(crate) fn add_recursive(dir: &Path) -> Result<(String, String), Failure> {
    let out = output(Command::new("nix-store").args(["--add-fixed", "--recursive", "sha256"]).arg(dir))?;
    let path = out.trim().to_string();
    let hash = nar_hash(&path)?;
    Ok((path, hash))
}

/// The path and NAR hash (nix base32) that `nix-store --add-fixed --recursive sha256 DIR` gives,
/// computed without Nix (crate::store, tested against real Nix).
pub(crate) fn fixed_path_of(dir: &Path) -> Result<(String, String), BuildError> {
    use crate::store::{make_fixed_output_path, nar_sha256, FileIngestionMethod, NixHash};
    let other = |e: String| BuildError::Io { path: dir.display().to_string(), source: std::io::Error::other(e) };
    let hash = NixHash::sha256(nar_sha256(dir).map_err(|e| other(e.to_string()))?);
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = make_fixed_output_path(FileIngestionMethod::Recursive, &hash, &name, std::iter::empty())
        .map_err(|e| other(e.to_string()))?;
    Ok((path.to_string(), hash.to_nixbase32()))
}

/// Adds DIR with `nix-store --add-fixed --recursive sha256` and checks that Nix put it where
/// [`fixed_path_of`] said it would.
pub(crate) fn add_recursive_at(dir: &Path, expected: &str, group: &str) -> Result<(), BuildError> {
    let out = output(Command::new("nix-store").args(["--add-fixed", "--recursive", "sha256"]).arg(dir))
        .map_err(|f| f.for_group(group))?;
    let added = out.trim();
    if added != expected {
        return Err(BuildError::NoProgram {
            group: group.to_string(),
            message: format!("nix-store added {} as {added}, but tg-nix computed {expected} (a bug in tg-nix's store math: please report it)", dir.display()),
        });
    }
    Ok(())
}

/// `nix-store -q --hash PATH` without its `sha256:` prefix (nix base32).
pub(crate) fn nar_hash(path: &str) -> Result<String, Failure> {
    let out = output(Command::new("nix-store").args(["-q", "--hash", path]))?;
    let h = out.trim();
    Ok(h.strip_prefix("sha256:").unwrap_or(h).to_string())
}

/// Which of `paths` are not valid store paths, through [`crate::store::invalid_paths`] (one
/// `nix-store` call for all of them). A string that is not a store path at all (a corrupted
/// record, say) counts as invalid, so callers redo the work instead of failing.
pub(crate) fn invalid_paths(paths: &[&str]) -> Result<Vec<String>, Failure> {
    let mut invalid = Vec::new();
    let mut parsed = Vec::with_capacity(paths.len());
    for path in paths {
        match path.parse::<crate::store::StorePath>() {
            Ok(p) => parsed.push(p),
            Err(_) => invalid.push(path.to_string()),
        }
    }
    let command = "nix-store --check-validity --print-invalid".to_string();
    let found = crate::store::invalid_paths(&parsed).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            Failure::Spawn { command: command.clone(), source }
        }
        _ => Failure::Status { command: command.clone(), status: "failed".into(), tail: source.to_string() },
    })?;
    invalid.extend(found.iter().map(ToString::to_string));
    Ok(invalid)
}

/// Points the GC root `<GCROOTS>/<name>` at `target` (replacing an older link atomically).
pub(crate) fn set_root(name: &str, target: &str) -> Result<PathBuf, BuildError> {
    let link = Path::new(GCROOTS).join(name);
    if std::fs::read_link(&link).map(|t| t == Path::new(target)).unwrap_or(false) {
        return Ok(link);
    }
    let tmp = Path::new(GCROOTS).join(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, &link).map_err(|e| io_err(&link, e))?;
    Ok(link)
}

/// Keeps every store path of `pins` alive while `holder` (a lock file) pins them: GC roots
/// `<GCROOTS>/lock-<digest of holder's path>-<n>-{src,deps,drv,out}`; roots of the same holder
/// for pins it no longer has are removed.
pub fn root_pins(holder: &Path, pins: &[&Pin]) -> Result<(), BuildError> {
    let holder = holder.canonicalize().unwrap_or_else(|_| holder.to_path_buf());
    let owner = format!("lock-{}", &sha256_hex(holder.as_os_str().as_encoded_bytes())[..16]);
    std::fs::create_dir_all(GCROOTS).map_err(|e| io_err(Path::new(GCROOTS), e))?;
    let mut kept = std::collections::BTreeSet::new();
    for (n, pin) in pins.iter().enumerate() {
        for (kind, path) in [("src", &pin.src.path), ("deps", &pin.deps.path), ("drv", &pin.drv), ("out", &pin.out)] {
            if path.starts_with("/nix/store/") && Path::new(path).exists() {
                let name = format!("{owner}-{n}-{kind}");
                set_root(&name, path)?;
                kept.insert(name);
            }
        }
    }
    let prefix = format!("{owner}-");
    for entry in std::fs::read_dir(GCROOTS).map_err(|e| io_err(Path::new(GCROOTS), e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && !kept.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io { path: path.display().to_string(), source }
}

/// Writes `contents` to `path` unless it already holds exactly that; through a temporary file and
/// a rename, so a concurrent reader never sees half a file.
pub(crate) fn write_if_changed(path: &Path, contents: &str) -> Result<(), BuildError> {
    if std::fs::read(path).map(|old| old == contents.as_bytes()).unwrap_or(false) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io_err(dir, e))?;
    std::io::Write::write_all(&mut tmp, contents.as_bytes()).map_err(|e| io_err(path, e))?;
    tmp.persist(path).map_err(|e| io_err(path, e.error))?;
    Ok(())
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Nix string literal holding `s` exactly.
pub(crate) fn nix_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as a store path name: only `[A-Za-z0-9+._?=-]`, not starting with a dot, at most 200 bytes
/// (gotcha: Debian versions hold `%3a` and `~`, which Nix refuses).
pub(crate) fn store_name(s: &str) -> String {
    let mut out: String = s
        .replace("%3a", "_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "+._?=-".contains(c) { c } else { '_' })
        .collect();
    if out.starts_with('.') {
        out.insert(0, '_');
    }
    out.truncate(200);
    out
}

/// `s` for a `#` comment line: no line breaks or control characters.
pub(crate) fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_str("a"), "\"a\"");
        assert_eq!(nix_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(nix_str("${x} $y\n"), "\"\\${x} $y\\n\"");
    }

    #[test]
    fn store_names_are_sanitised() {
        assert_eq!(store_name("libgmp10_2%3a6.2.1+dfsg1-1.1_amd64.deb"), "libgmp10_2_6.2.1+dfsg1-1.1_amd64.deb");
        assert_eq!(store_name("a~b c"), "a_b_c");
        assert_eq!(store_name(".hidden"), "_.hidden");
    }

    #[test]
    fn nix_conf_values() {
        let conf = "# c\nsandbox = false\nsandbox = true # later wins\nsubstituters =\n";
        assert_eq!(conf_value(conf, "sandbox").as_deref(), Some("true"));
        assert_eq!(conf_value(conf, "substituters").as_deref(), Some(""));
        assert_eq!(conf_value(conf, "cores"), None);
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
