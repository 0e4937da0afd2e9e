//! Copying a plan (or a patch target) into a staging directory, leaving out what is not source:
//! `.git` anywhere, cargo's `target/` beside a Cargo.toml, and `result*` links to the Nix store.
//! What is copied is exactly what Nix will hash: file contents, the executable bit, symlinks.

use std::path::Path;

use crate::nix::io_err;
use crate::BuildError;

/// Copies the tree at `from` into `to`, leaving out the top-level entries named in `exclude_top`.
pub(crate) fn copy_tree(from: &Path, to: &Path, exclude_top: &[&str]) -> Result<(), BuildError> {
    std::fs::create_dir_all(to).map_err(|e| io_err(to, e))?;
    let has_manifest = from.join("Cargo.toml").is_file();
    let mut entries: Vec<_> =
        std::fs::read_dir(from).map_err(|e| io_err(from, e))?.collect::<Result<_, _>>().map_err(|e| io_err(from, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let src = entry.path();
        let dst = to.join(&name);
        let kind = entry.file_type().map_err(|e| io_err(&src, e))?;
        if exclude_top.iter().any(|x| name == *x) || skip(&name.to_string_lossy(), kind.is_dir(), has_manifest, &src) {
            continue;
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| io_err(&src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| io_err(&dst, e))?;
        } else if kind.is_dir() {
            copy_tree(&src, &dst, &[])?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| io_err(&src, e))?;
        }
        // Sockets, fifos and devices are not source: left out.
    }
    Ok(())
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
    }
}
