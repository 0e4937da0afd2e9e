//! Copying a plan (or a patch target) into a staging directory, leaving out what is not source:
//! `.git` anywhere, cargo's `target/` beside a Cargo.toml, and `result*` links to the Nix store.
//! What is copied is exactly what Nix will hash: file contents, the executable bit, symlinks.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::nix::io_err;
use crate::BuildError;

/// One entry of a source tree, as [`walk`] hands it over.
pub(crate) enum Entry<'a> {
    Dir,
    File { path: &'a Path },
    Symlink { target: PathBuf },
}

/// Visits the source entries under `from` in sorted order (directories before their contents),
/// with their path relative to `from`, leaving out the top-level entries named in `exclude_top`
/// and what is not source. The one definition of "the plan's source" for staging and digests.
pub(crate) fn walk(
    from: &Path,
    exclude_top: &[&str],
    visit: &mut dyn FnMut(&Path, Entry<'_>) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    walk_in(from, Path::new(""), exclude_top, visit)
}

fn walk_in(
    dir: &Path,
    rel: &Path,
    exclude_top: &[&str],
    visit: &mut dyn FnMut(&Path, Entry<'_>) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    let has_manifest = dir.join("Cargo.toml").is_file();
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?.collect::<Result<_, _>>().map_err(|e| io_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let src = entry.path();
        let kind = entry.file_type().map_err(|e| io_err(&src, e))?;
        if exclude_top.iter().any(|x| name == *x) || skip(&name.to_string_lossy(), kind.is_dir(), has_manifest, &src) {
            continue;
        }
        let rel = rel.join(&name);
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| io_err(&src, e))?;
            visit(&rel, Entry::Symlink { target })?;
        } else if kind.is_dir() {
            visit(&rel, Entry::Dir)?;
            walk_in(&src, &rel, &[], visit)?;
        } else if kind.is_file() {
            visit(&rel, Entry::File { path: &src })?;
        }
        // Sockets, fifos and devices are not source: left out.
    }
    Ok(())
}

/// Copies the tree at `from` into `to`, leaving out the top-level entries named in `exclude_top`.
pub(crate) fn copy_tree(from: &Path, to: &Path, exclude_top: &[&str]) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(|e| io_err(to, e))?;
    walk(from, exclude_top, &mut |rel, entry| {
        let dst = to.join(rel);
        match entry {
            Entry::Dir => std::fs::create_dir_all(&dst).map_err(|e| io_err(&dst, e)),
            Entry::File { path } => std::fs::copy(path, &dst).map(drop).map_err(|e| io_err(path, e)),
            Entry::Symlink { target } => std::os::unix::fs::symlink(&target, &dst).map_err(|e| io_err(&dst, e)),
        }
    })
}

/// SHA-256 (hex) over what [`copy_tree`] would copy: names, kinds, the executable bit, file
/// contents and link targets. Equal digests mean equal staged trees, without copying anything.
pub(crate) fn digest_tree(from: &Path, exclude_top: &[&str]) -> Result<String, BuildError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let mut hasher = Sha256::new();
    walk(from, exclude_top, &mut |rel, entry| {
        hasher.update(rel.as_os_str().as_bytes());
        match entry {
            Entry::Dir => hasher.update(b"\0d\0"),
            Entry::Symlink { target } => {
                hasher.update(b"\0l\0");
                hasher.update(target.as_os_str().as_bytes());
            }
            Entry::File { path } => {
                let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
                hasher.update(if meta.permissions().mode() & 0o100 != 0 { b"\0x\0" } else { b"\0f\0" });
                hasher.update(meta.len().to_le_bytes());
                hasher.update(std::fs::read(path).map_err(|e| io_err(path, e))?);
            }
        }
        hasher.update(b"\0");
        Ok(())
    })?;
    Ok(crate::nix::hex(&hasher.finalize()))
}

fn skip(name: &str, is_dir: bool, beside_manifest: bool, path: &Path) -> bool {
    if name == ".git" {
        return true;
    }
    if is_dir && name == "target" && beside_manifest {
        return true;
    }
    // nix-build's out-links.
    if name.starts_with("result") {
        if let Ok(t) = std::fs::read_link(path) {
            return t.starts_with("/nix/store");
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_out_target_git_and_out_links() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("plan");
        std::fs::create_dir_all(src.join("src/target")).unwrap();
        std::fs::create_dir_all(src.join("target/release")).unwrap();
        std::fs::create_dir_all(src.join(".git")).unwrap();
        std::fs::write(src.join("Cargo.toml"), "[package]").unwrap();
        std::fs::write(src.join("src/main.rs"), "fn main() {}").unwrap();
        std::fs::write(src.join("src/target/mod.rs"), "").unwrap();
        std::fs::write(src.join("manifest.toml"), "").unwrap();
        std::os::unix::fs::symlink("/nix/store/x-y", src.join("result")).unwrap();
        std::os::unix::fs::symlink("main.rs", src.join("src/link.rs")).unwrap();
        let dst = dir.path().join("out");
        copy_tree(&src, &dst, &["manifest.toml"]).unwrap();
        assert!(!dst.join("manifest.toml").exists());
        assert!(dst.join("src/main.rs").is_file());
        assert!(dst.join("src/target/mod.rs").is_file(), "a module named target is source");
        assert!(!dst.join("target").exists());
        assert!(!dst.join(".git").exists());
        assert!(std::fs::symlink_metadata(dst.join("result")).is_err());
        assert_eq!(std::fs::read_link(dst.join("src/link.rs")).unwrap(), Path::new("main.rs"));

        // The digest sees what the copy holds: same for the plan and its copy, changed by an edit,
        // not by what is left out.
        let digest = digest_tree(&src, &["manifest.toml"]).unwrap();
        assert_eq!(digest, digest_tree(&dst, &[]).unwrap());
        std::fs::write(src.join("target/release/x"), "build output").unwrap();
        std::fs::write(src.join("manifest.toml"), "edited").unwrap();
        assert_eq!(digest, digest_tree(&src, &["manifest.toml"]).unwrap());
        std::fs::write(src.join("src/main.rs"), "fn main() { }").unwrap();
        assert_ne!(digest, digest_tree(&src, &["manifest.toml"]).unwrap());
    }
}
