//! `tg-nix setup`: make this host ready for the nix:* builders. Idempotent; a second run checks
//! its records and finishes in milliseconds.
//!
//! 1. /etc/nix/nix.conf: sandbox on, no fallback to unsandboxed builds, no substituters (there is
//!    no binary cache offline, and the default one costs 4 s of DNS retries per build).
//! 2. /nix/var/nix/gcroots/tg-nix/: every import and every build output is rooted there.
//! 3. Imports, each keyed (what would change it) and recorded in the state DB:
//!    - busybox: the static /bin/busybox as `busybox-static/bin/busybox` (a single-file import
//!      would be named `<hash>-busybox` and busybox would not know which applet to run);
//!    - the Rust toolchain: `rustc --print sysroot` without share/doc, keyed by `rustc -vV`;
//!    - the Debian sysroot: the closure of gcc-12 libc6-dev zlib1g libgcc-s1, downloaded with apt,
//!      each .deb checked against apt's SHA256 and added as a flat fixed path, unpacked by a
//!      busybox derivation into glibc + gcc + binutils.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::state::State;
use super::{
    add_recursive, invalid_paths, io_err, nix_str, output, set_root, sha256_hex, store_name, write_if_changed,
};
use super::{GCROOTS, NIX_CONF, SETUP_FIX};
use crate::BuildError;

/// The nix.conf tg-nix needs (docs/nix.md explains each line).
pub const NIX_CONF_TEXT: &str = "\
# Written by `tg-nix setup` (docs/nix.md): single-user Nix for root, offline, every build sandboxed.
build-users-group = nixbld
sandbox = true
# Fail loudly instead of silently building without the sandbox.
sandbox-fallback = false
# No binary cache is reachable; the default one costs ~4 s of DNS retries per build.
substituters =
# Only for `nix show-derivation`, `nix path-info` and friends; nix-build needs nothing.
experimental-features = nix-command
max-jobs = auto
cores = 0
";

/// The Debian packages whose closure makes the C toolchain of Rust builds.
pub const SYSROOT_PACKAGES: &[&str] = &["gcc-12", "libc6-dev", "zlib1g", "libgcc-s1"];

const IMPORTS_TEMPLATE: &str = include_str!("../../../templates/imports.nix.hbs");
/// The library every generated expression imports, and the builder script of nix:rust.
pub(crate) const LIBRARY: &str = include_str!("../../../nix/tg-nix.nix");
pub(crate) const BUILDER_RUST: &str = include_str!("../../../templates/builder-rust.sh");

const BUSYBOX: &str = "/bin/busybox";
const KEY_BUSYBOX: &str = "import/busybox";
const KEY_RUST: &str = "import/rust";
const KEY_SYSROOT: &str = "import/sysroot";

/// A tree tg-nix added to the store: its key (what would change it), store name, path, NAR hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Imported {
    pub key: String,
    pub name: String,
    pub path: String,
    /// sha256, nix base32.
    pub nar_hash: String,
}

/// One Debian package of the sysroot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deb {
    /// The store name (Debian's file name, sanitised).
    pub name: String,
    pub url: String,
    /// Hex, from apt's index.
    pub sha256: String,
}

/// The Debian sysroot: the packages asked for, the .debs of their closure, the built path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sysroot {
    pub key: String,
    pub debs: Vec<Deb>,
    pub path: String,
}

/// Everything a generated expression needs from `tg-nix setup`.
#[derive(Debug, Clone)]
pub struct Imports {
    pub busybox: Imported,
    pub rust: Imported,
    pub sysroot: Sysroot,
}

impl Imports {
    /// The records of `tg-nix setup` in this home, or which one is missing.
    pub fn load(state_dir: &Path) -> Result<Imports, BuildError> {
        if !state_dir.exists() {
            return Err(BuildError::NotReady {
                message: format!(
                    "`tg-nix setup` has not been run for this tg-nix home (no state DB at {})",
                    state_dir.display()
                ),
                fix: SETUP_FIX.to_string(),
            });
        }
        Imports::from_state(&State::open(state_dir)?, state_dir)
    }

    /// [`Imports::load`] from an open state DB (in `state_dir`).
    pub(crate) fn from_state(state: &State, state_dir: &Path) -> Result<Imports, BuildError> {
        let missing = |what: &str| BuildError::NotReady {
            message: format!(
                "{what} has not been imported into the Nix store for this tg-nix home (no record in {})",
                state_dir.display()
            ),
            fix: SETUP_FIX.to_string(),
        };
        Ok(Imports {
            busybox: state.get(KEY_BUSYBOX).ok_or_else(|| missing("busybox"))?,
            rust: state.get(KEY_RUST).ok_or_else(|| missing("the Rust toolchain"))?,
            sysroot: state.get(KEY_SYSROOT).ok_or_else(|| missing("the Debian sysroot"))?,
        })
    }

    /// imports.nix: what nix/tg-nix.nix is called with.
    pub fn render(&self) -> String {
        render_imports(&self.busybox, &self.rust, &self.sysroot.debs)
    }
}

fn render_imports(busybox: &Imported, rust: &Imported, debs: &[Deb]) -> String {
    let fixed = |i: &Imported| serde_json::json!({ "name": nix_str(&i.name), "hash": nix_str(&i.nar_hash) });
    let data = serde_json::json!({
        "tg_nix_version": env!("CARGO_PKG_VERSION"),
        "busybox": fixed(busybox),
        "rust": fixed(rust),
        "debs_count": debs.len(),
        "debs": debs.iter().map(|d| serde_json::json!({
            "name": nix_str(&d.name), "url": nix_str(&d.url), "sha256": nix_str(&d.sha256),
        })).collect::<Vec<_>>(),
    });
    render(IMPORTS_TEMPLATE, &data)
}

/// Renders a template of ours. Values are escaped by the caller (Nix strings), never as HTML.
pub(crate) fn render(template: &str, data: &serde_json::Value) -> String {
    let mut hb = handlebars::Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    // Our own templates, checked by the unit tests: a failure here is a bug in tg-nix.
    hb.render_template(template, data).unwrap_or_else(|e| panic!("tg-nix template error: {e}"))
}

/// Writes tg-nix.nix, builder-rust.sh and imports.nix into `dir`; returns a digest of the three
/// (part of every generated file's key).
pub(crate) fn write_library(dir: &Path, imports_nix: &str) -> Result<String, BuildError> {
    write_if_changed(&dir.join("tg-nix.nix"), LIBRARY)?;
    write_if_changed(&dir.join("builder-rust.sh"), BUILDER_RUST)?;
    write_if_changed(&dir.join("imports.nix"), imports_nix)?;
    Ok(library_digest(imports_nix))
}

/// What [`write_library`] writes, hashed: a generated expression depends on all of it.
pub(crate) fn library_digest(imports_nix: &str) -> String {
    sha256_hex(format!("{LIBRARY}\0{BUILDER_RUST}\0{imports_nix}").as_bytes())
}

pub struct SetupOptions<'a> {
    /// The state DB directory (`<home>/data/state`).
    pub state_dir: &'a Path,
    /// tg-nix's work dir (`<home>/data/work`): staging for the imports under `nix/imports/`.
    pub work_dir: &'a Path,
    /// Import everything again even when the records say it is there.
    pub force: bool,
    /// A line for each step that takes a while.
    pub progress: &'a (dyn Fn(&str) + Sync),
}

/// What one setup step did.
#[derive(Debug, Clone, Serialize)]
pub struct SetupStep {
    pub name: String,
    /// `unchanged` / `written` / `created` / `cached` / `imported` / `built`.
    pub outcome: String,
    pub detail: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub steps: Vec<SetupStep>,
    pub seconds: f64,
}

struct Steps<'a> {
    steps: Vec<SetupStep>,
    progress: &'a (dyn Fn(&str) + Sync),
}

impl Steps<'_> {
    fn done(&mut self, name: &str, outcome: &str, detail: String, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        (self.progress)(&format!("{name}: {outcome} {detail} ({seconds:.2}s)"));
        self.steps.push(SetupStep { name: name.to_string(), outcome: outcome.to_string(), detail, seconds });
    }
}

/// Runs every setup step; see the module docs.
pub fn setup(opts: &SetupOptions<'_>) -> Result<SetupReport, BuildError> {
    let started = Instant::now();
    if !super::is_root() {
        return Err(BuildError::NotReady {
            message: "tg-nix setup writes /etc/nix/nix.conf and imports into the root-owned Nix store".to_string(),
            fix: "run `tg-nix setup` as root".to_string(),
        });
    }
    if let Err(e) = output(Command::new("nix-store").arg("--version")) {
        return Err(BuildError::NotReady {
            message: format!(
                "Nix is not installed: {}",
                match e {
                    super::Failure::Spawn { source, .. } => format!("nix-store: {source}"),
                    super::Failure::Status { tail, .. } => tail,
                }
            ),
            fix: "apt-get install nix-bin busybox-static (scripts/setup.sh does it), then run `tg-nix setup`"
                .to_string(),
        });
    }
    let mut steps = Steps { steps: Vec::new(), progress: opts.progress };

    let t = Instant::now();
    let outcome = write_nix_conf()?;
    steps.done("nix.conf", &outcome, NIX_CONF.to_string(), t);

    let t = Instant::now();
    let outcome = if Path::new(GCROOTS).is_dir() { "unchanged" } else { "created" };
    std::fs::create_dir_all(GCROOTS).map_err(|e| io_err(Path::new(GCROOTS), e))?;
    steps.done("gc roots", outcome, GCROOTS.to_string(), t);

    let recorded = if opts.force { Recorded::default() } else { Recorded::read(&State::open(opts.state_dir)?) };
    // One validity check for every recorded path.
    let invalid = invalid_paths(&recorded.paths()).map_err(|f| f.for_setup("checking the recorded imports"))?;
    let Recorded { busybox, rust, sysroot } = recorded;
    let usable = |path: &str| !invalid.iter().any(|p| p == path);
    let imports_dir = opts.work_dir.join("nix/imports");

    // busybox
    let t = Instant::now();
    let bytes = std::fs::read(BUSYBOX).map_err(|e| BuildError::NotReady {
        message: format!("{BUSYBOX}: {e}"),
        fix: "apt-get install busybox-static (scripts/setup.sh does it)".to_string(),
    })?;
    if !is_static_elf(&bytes) {
        return Err(BuildError::NotReady {
            message: format!("{BUSYBOX} is not a static executable (Debian's `busybox` package?): the Nix sandbox has no libc for it"),
            fix: "apt-get install busybox-static".to_string(),
        });
    }
    let key = sha256_hex(&bytes);
    let busybox = match busybox.filter(|b| b.key == key && usable(&b.path)) {
        Some(b) => {
            set_root(&b.name, &b.path)?;
            steps.done("busybox", "cached", b.path.clone(), t);
            b
        }
        None => {
            let dir = imports_dir.join("busybox-static");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("bin")).map_err(|e| io_err(&dir, e))?;
            let bin = dir.join("bin/busybox");
            std::fs::write(&bin, &bytes).map_err(|e| io_err(&bin, e))?;
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| io_err(&bin, e))?;
            let (path, nar_hash) = add_recursive(&dir).map_err(|f| f.for_setup("importing busybox"))?;
            let b = Imported { key, name: "busybox-static".to_string(), path, nar_hash };
            set_root(&b.name, &b.path)?;
            State::open(opts.state_dir)?.put(KEY_BUSYBOX, &b)?;
            steps.done("busybox", "imported", b.path.clone(), t);
            b
        }
    };

    // The Rust toolchain
    let t = Instant::now();
    let (key, toolchain_dir, name) = host_toolchain()?;
    let rust = match rust.filter(|r| r.key == key && usable(&r.path)) {
        Some(r) => {
            set_root(&r.name, &r.path)?;
            steps.done("rust toolchain", "cached", r.path.clone(), t);
            r
        }
        None => {
            (opts.progress)(&format!(
                "rust toolchain: importing {} without share/doc (about 600 MB) …",
                toolchain_dir.display()
            ));
            let dir = toolchain_dir.to_string_lossy();
            let expr = format!(
                "builtins.path {{ path = /. + {}; name = {}; filter = path: type: path != {}; }}",
                nix_str(&dir),
                nix_str(&name),
                nix_str(&format!("{dir}/share/doc"))
            );
            // --read-write-mode: a plain --eval would print the path without copying it.
            let out = output(Command::new("nix-instantiate").args(["--eval", "--read-write-mode", "-E", &expr]))
                .map_err(|f| f.for_setup("importing the Rust toolchain"))?;
            let path = out.trim().trim_matches('"').to_string();
            let nar_hash = super::nar_hash(&path).map_err(|f| f.for_setup("importing the Rust toolchain"))?;
            let r = Imported { key, name, path, nar_hash };
            set_root(&r.name, &r.path)?;
            State::open(opts.state_dir)?.put(KEY_RUST, &r)?;
            steps.done("rust toolchain", "imported", r.path.clone(), t);
            r
        }
    };

    // The Debian sysroot
    let t = Instant::now();
    let key = format!("{} (amd64)", SYSROOT_PACKAGES.join(" "));
    match sysroot.filter(|s| s.key == key && usable(&s.path)) {
        Some(s) => {
            set_root("sysroot", &s.path)?;
            steps.done("debian sysroot", "cached", s.path.clone(), t);
        }
        None => {
            let debs = import_debs(&imports_dir, opts.progress)?;
            (opts.progress)(&format!("debian sysroot: unpacking {} .debs in the sandbox …", debs.len()));
            let dir = opts.work_dir.join("nix/setup");
            write_library(&dir, &render_imports(&busybox, &rust, &debs))?;
            let file = dir.join("sysroot.nix");
            write_if_changed(&file, "# Generated by `tg-nix setup`: the Debian sysroot of nix/tg-nix.nix.\n(import ./tg-nix.nix { imports = import ./imports.nix; }).sysroot\n")?;
            let link = Path::new(GCROOTS).join("sysroot");
            let out = output(Command::new("nix-build").arg(&file).arg("-o").arg(&link))
                .map_err(|f| f.for_setup("building the Debian sysroot"))?;
            let path = out.lines().last().unwrap_or("").trim().to_string();
            let s = Sysroot { key, debs, path };
            State::open(opts.state_dir)?.put(KEY_SYSROOT, &s)?;
            steps.done("debian sysroot", "built", s.path.clone(), t);
        }
    }

    Ok(SetupReport { steps: steps.steps, seconds: started.elapsed().as_secs_f64() })
}

/// Writes NIX_CONF_TEXT unless the file already holds it; keeps the old file beside it.
fn write_nix_conf() -> Result<String, BuildError> {
    let path = Path::new(NIX_CONF);
    let current = std::fs::read_to_string(path).ok();
    if current.as_deref() == Some(NIX_CONF_TEXT) {
        return Ok("unchanged".to_string());
    }
    if current.is_some() {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let backup = PathBuf::from(format!("{NIX_CONF}.tg-nix-backup-{secs}"));
        std::fs::copy(path, &backup).map_err(|e| io_err(&backup, e))?;
        write_if_changed(path, NIX_CONF_TEXT)?;
        return Ok(format!("written (old file kept as {})", backup.display()));
    }
    write_if_changed(path, NIX_CONF_TEXT)?;
    Ok("written".to_string())
}

/// The host's toolchain: its key (`rustc -vV` and where it lives), directory and store name.
fn host_toolchain() -> Result<(String, PathBuf, String), BuildError> {
    let fail = |f: super::Failure| match f {
        super::Failure::Spawn { source, .. } => BuildError::NotReady {
            message: format!("rustc: {source}"),
            fix: "install Rust with rustup (https://rustup.rs), then run `tg-nix setup`".to_string(),
        },
        other => other.for_setup("asking rustc for its version"),
    };
    let vv = output(Command::new("rustc").arg("-vV")).map_err(fail)?;
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"])).map_err(fail)?;
    let dir = PathBuf::from(sysroot.trim());
    let dir = dir.canonicalize().map_err(|e| io_err(&dir, e))?;
    let field = |name: &str| vv.lines().find_map(|l| l.strip_prefix(name)).unwrap_or("unknown").trim().to_string();
    let name = store_name(&format!("rust-{}-{}", field("release:"), field("host:")));
    Ok((sha256_hex(format!("{vv}\n{}", dir.display()).as_bytes()), dir, name))
}

/// The .debs of the sysroot: resolved, downloaded, checked against apt's SHA256, added.
fn import_debs(imports_dir: &Path, progress: &(dyn Fn(&str) + Sync)) -> Result<Vec<Deb>, BuildError> {
    const STEP: &str = "debian sysroot";
    let mut depends = Command::new("apt-cache");
    depends.args([
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
    ]);
    depends.args(SYSROOT_PACKAGES);
    let out = output(&mut depends).map_err(|f| f.for_setup(STEP))?;
    // Package names start the line; indented lines are relations, `<…>` are virtual packages.
    let mut packages: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    packages.sort();
    packages.dedup();
    progress(&format!(
        "{STEP}: {} packages in the closure of {}; downloading with apt …",
        packages.len(),
        SYSROOT_PACKAGES.join(" ")
    ));

    let dir = imports_dir.join("debs");
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    // apt's package lists may be older than the mirror (a fresh image): then the download 404s.
    // Refresh them once and try again.
    let entries = match download_debs(&packages, &dir) {
        Ok(entries) => entries,
        Err(first) => {
            progress(&format!("{STEP}: apt could not download the .debs; running apt-get update and trying again …"));
            output(Command::new("apt-get").args(["update", "-qq"])).map_err(|f| f.for_setup(STEP))?;
            download_debs(&packages, &dir).map_err(|again| match again {
                BuildError::Setup { step, message } => {
                    BuildError::Setup { step, message: format!("{message}\n(before apt-get update: {first})") }
                }
                other => other,
            })?
        }
    };
    let named = imports_dir.join("debs-named");
    let _ = std::fs::remove_dir_all(&named);
    std::fs::create_dir_all(&named).map_err(|e| io_err(&named, e))?;
    let mut debs = Vec::new();
    let mut files = Vec::new();
    for (url, file, sha256) in entries {
        let Some(path) = local_deb(&dir, &file) else {
            return Err(BuildError::Setup {
                step: STEP.to_string(),
                message: format!("apt-get download did not save {file} in {}", dir.display()),
            });
        };
        let actual = sha256_hex(&std::fs::read(&path).map_err(|e| io_err(&path, e))?);
        if actual != sha256 {
            return Err(BuildError::Setup {
                step: STEP.to_string(),
                message: format!(
                    "{}: SHA256 {actual} does not match apt's index ({sha256}); delete it and run `tg-nix setup` again",
                    path.display()
                ),
            });
        }
        let name = store_name(&file);
        let dst = named.join(&name);
        std::fs::copy(&path, &dst).map_err(|e| io_err(&dst, e))?;
        files.push(dst);
        debs.push(Deb { name, url, sha256 });
    }
    output(Command::new("nix-store").args(["--add-fixed", "sha256"]).args(&files)).map_err(|f| f.for_setup(STEP))?;
    Ok(debs)
}

/// The .debs' URLs and SHA256s from apt's index (`apt-get download --print-uris`), and the files
/// themselves in `dir`, downloaded unless they are there already with that hash.
fn download_debs(packages: &[String], dir: &Path) -> Result<Vec<(String, String, String)>, BuildError> {
    const STEP: &str = "debian sysroot";
    // apt prints nothing for a .deb already in the current directory, so ask from an empty one.
    let empty = tempfile::tempdir().map_err(|e| io_err(Path::new("/tmp"), e))?;
    let uris =
        output(Command::new("apt-get").args(["download", "--print-uris"]).args(packages).current_dir(empty.path()))
            .map_err(|f| f.for_setup(STEP))?;
    let mut entries = Vec::new();
    for line in uris.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(url), Some(file), Some(hash)) = (fields.first(), fields.get(1), fields.get(3)) else {
            return Err(BuildError::Setup {
                step: STEP.to_string(),
                message: format!("unexpected line from apt-get download --print-uris: {line}"),
            });
        };
        let Some(sha256) = hash.strip_prefix("SHA256:") else {
            return Err(BuildError::Setup {
                step: STEP.to_string(),
                message: format!("apt gives no SHA256 for {file}: {line}"),
            });
        };
        entries.push((url.trim_matches('\'').to_string(), file.to_string(), sha256.to_lowercase()));
    }
    if entries.len() != packages.len() {
        return Err(BuildError::Setup {
            step: STEP.to_string(),
            message: format!(
                "apt-get download --print-uris gave {} .debs for {} packages",
                entries.len(),
                packages.len()
            ),
        });
    }
    let verified = |file: &str, sha256: &str| {
        local_deb(dir, file).and_then(|p| std::fs::read(&p).ok()).map(|b| sha256_hex(&b) == sha256).unwrap_or(false)
    };
    if entries.iter().any(|(_, file, sha)| !verified(file, sha)) {
        output(Command::new("apt-get").args(["download", "-q"]).args(packages).current_dir(dir))
            .map_err(|f| f.for_setup(STEP))?;
    }
    Ok(entries)
}

/// A downloaded .deb: apt saves an epoch's `%3a` either escaped or as `:`, depending on version.
fn local_deb(dir: &Path, file: &str) -> Option<PathBuf> {
    [dir.join(file), dir.join(file.replace("%3a", ":"))].into_iter().find(|p| p.is_file())
}

/// True for an ELF executable without a PT_INTERP program header (no dynamic loader needed).
fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[0..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (entsize, count) = (u16_at(54), u16_at(56));
    for i in 0..count {
        let off = phoff + i * entsize;
        let Some(kind) = b.get(off..off + 4) else { return false };
        if u32::from_le_bytes([kind[0], kind[1], kind[2], kind[3]]) == 3 {
            return false;
        }
    }
    true
}

/// One line of `tg-nix doctor` about the imports.
#[derive(Debug, Clone, Serialize)]
pub struct ImportStatus {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What `tg-nix setup` imported for this home and whether it is still in the store.
pub fn status(state_dir: &Path) -> Vec<ImportStatus> {
    let line = |name: &str, ok: bool, detail: String| ImportStatus { name: name.to_string(), ok, detail };
    if !state_dir.exists() {
        return vec![line("nix imports", false, format!("none recorded in {}: {SETUP_FIX}", state_dir.display()))];
    }
    let state = match State::open(state_dir) {
        Ok(s) => s,
        Err(e) => return vec![line("nix imports", false, e.to_string())],
    };
    let recorded = Recorded::read(&state);
    drop(state);
    let invalid = invalid_paths(&recorded.paths()).unwrap_or_default();
    let Recorded { busybox, rust, sysroot } = recorded;
    let describe = |path: &str, what: String| {
        if invalid.iter().any(|p| p == path) {
            (false, format!("{path} is recorded but no longer in the store: {SETUP_FIX}"))
        } else {
            (true, what)
        }
    };
    let mut out = Vec::new();
    match &busybox {
        Some(b) => {
            let (ok, detail) = describe(&b.path, b.path.clone());
            out.push(line("nix import: busybox", ok, detail));
        }
        None => out.push(line("nix import: busybox", false, format!("not imported: {SETUP_FIX}"))),
    }
    match &sysroot {
        Some(s) => {
            let (ok, detail) = describe(&s.path, format!("{} ({} .debs of {})", s.path, s.debs.len(), s.key));
            out.push(line("nix import: debian sysroot", ok, detail));
        }
        None => out.push(line("nix import: debian sysroot", false, format!("not imported: {SETUP_FIX}"))),
    }
    match &rust {
        Some(r) => {
            let (ok, mut detail) = describe(&r.path, r.path.clone());
            if ok {
                if let Ok((key, dir, _)) = host_toolchain() {
                    if key != r.key {
                        detail.push_str(&format!(
                            " (the host's toolchain {} changed since: `tg-nix setup` imports it)",
                            dir.display()
                        ));
                    }
                }
            }
            out.push(line("nix import: rust toolchain", ok, detail));
        }
        None => out.push(line("nix import: rust toolchain", false, format!("not imported: {SETUP_FIX}"))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_nix_renders_escaped() {
        let i = |name: &str| Imported {
            key: "k".into(),
            name: name.into(),
            path: "/nix/store/x".into(),
            nar_hash: "0abc".into(),
        };
        let debs = vec![Deb {
            name: "libc6_2.36_amd64.deb".into(),
            url: "http://d/libc6_2.36%2b_amd64.deb".into(),
            sha256: "ff".into(),
        }];
        let text = render_imports(&i("busybox-static"), &i("rust-1.95.0-x86_64-unknown-linux-gnu"), &debs);
        assert!(text.contains(r#"busybox = { name = "busybox-static"; narHash = "0abc"; };"#), "{text}");
        assert!(
            text.contains(
                r#"{ name = "libc6_2.36_amd64.deb"; url = "http://d/libc6_2.36%2b_amd64.deb"; sha256 = "ff"; }"#
            ),
            "{text}"
        );
        assert!(text.contains("(1 packages)"));
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // This test binary is dynamically linked (it has an interpreter).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }
}

/// What `tg-nix setup` recorded in the state DB, read in one place for setup and doctor.
#[derive(Default)]
struct Recorded {
    busybox: Option<Imported>,
    rust: Option<Imported>,
    sysroot: Option<Sysroot>,
}

impl Recorded {
    fn read(state: &State) -> Recorded {
        Recorded { busybox: state.get(KEY_BUSYBOX), rust: state.get(KEY_RUST), sysroot: state.get(KEY_SYSROOT) }
    }

    /// The recorded store paths, for one validity check.
    fn paths(&self) -> Vec<&str> {
        [
            self.busybox.as_ref().map(|i| i.path.as_str()),
            self.rust.as_ref().map(|i| i.path.as_str()),
            self.sysroot.as_ref().map(|s| s.path.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}
