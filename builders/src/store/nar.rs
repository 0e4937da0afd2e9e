//! NAR (Nix ARchive) serialisation, the byte stream whose SHA-256 identifies a file tree in the store
//! (`dumpPath` in Nix C++, what `nix-store --dump` prints and `nix-hash --type sha256` hashes).
//!
//! Every token is a string: an 8-byte little-endian length, the bytes, zero padding to a multiple
//! of 8. A node is `( type regular [executable ""] contents <bytes> )`, `( type symlink target <t> )`
//! or `( type directory entry ( name <n> node <node> ) … )`. Only the owner's execute bit is
//! recorded (`S_IXUSR`): a file with mode 0645 is not executable in a NAR. Owners, times and other
//! mode bits are not recorded.
//!
//! The writer ([`Node`], [`Directory`]) refuses what would make a NAR Nix cannot read back: entries
//! out of bytewise order or repeated, entry names `.`, `..`, or with `/` or NUL, and file contents
//! whose length differs from the declared size.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Why a NAR could not be written.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("{}: {source}", path.display())]
    Fs { path: PathBuf, source: io::Error },
    #[error("{}: cannot be archived: only regular files, symlinks and directories can", path.display())]
    UnsupportedFileType { path: PathBuf },
    #[error("writing the NAR: {0}")]
    Io(#[from] io::Error),
    #[error("directory entry `{}` is not a valid NAR name (empty, `.`, `..`, or has `/` or NUL)", String::from_utf8_lossy(.0))]
    InvalidEntryName(Vec<u8>),
    #[error("directory entry `{}` comes after `{}`: entries must be strictly ascending bytewise", String::from_utf8_lossy(.name), String::from_utf8_lossy(.previous))]
    EntryOutOfOrder { previous: Vec<u8>, name: Vec<u8> },
    #[error("directory entry `{}` was opened but no node was written for it", String::from_utf8_lossy(.0))]
    EmptyEntry(Vec<u8>),
    #[error("file declared as {declared} bytes ended after {actual}")]
    FileTooShort { declared: u64, actual: u64 },
    #[error("file declared as {declared} bytes has more data")]
    FileTooLong { declared: u64 },
}

fn write_token(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)?;
    write_padding(out, bytes.len() as u64)
}

fn write_padding(out: &mut impl Write, len: u64) -> io::Result<()> {
    let pad = (8 - len % 8) % 8;
    // pad < 8, so the cast cannot truncate.
    out.write_all(&[0u8; 8][..pad as usize])
}

/// Starts a NAR on `out` and returns its root node, which must then be written exactly once.
pub fn start<W: Write>(out: &mut W) -> Result<Node<'_, W>, NarError> {
    write_token(out, b"nix-archive-1")?;
    Ok(Node { out, written: None })
}

/// A place in the archive where one file, symlink or directory goes. Consuming it writes that node.
#[must_use = "a NAR node must be written, or the archive is incomplete"]
pub struct Node<'a, W: Write> {
    out: &'a mut W,
    /// Set when this node is the child of a directory entry, so the directory can tell that it was
    /// written before closing the entry.
    written: Option<&'a mut bool>,
}

impl<'a, W: Write> Node<'a, W> {
    fn mark_written(&mut self) {
        if let Some(flag) = self.written.as_deref_mut() {
            *flag = true;
        }
    }

    /// A symlink to `target` (stored verbatim, not resolved).
    pub fn symlink(mut self, target: &[u8]) -> Result<(), NarError> {
        self.mark_written();
        for token in [&b"("[..], b"type", b"symlink", b"target", target, b")"] {
            write_token(self.out, token)?;
        }
        Ok(())
    }

    /// A regular file of exactly `size` bytes read from `contents`.
    pub fn file(mut self, executable: bool, size: u64, contents: &mut impl Read) -> Result<(), NarError> {
        self.mark_written();
        write_token(self.out, b"(")?;
        write_token(self.out, b"type")?;
        write_token(self.out, b"regular")?;
        if executable {
            write_token(self.out, b"executable")?;
            write_token(self.out, b"")?;
        }
        write_token(self.out, b"contents")?;
        self.out.write_all(&size.to_le_bytes())?;
        let actual = io::copy(&mut contents.take(size), self.out)?;
        if actual != size {
            return Err(NarError::FileTooShort { declared: size, actual });
        }
        if contents.read(&mut [0u8; 1])? != 0 {
            return Err(NarError::FileTooLong { declared: size });
        }
        write_padding(self.out, size)?;
        write_token(self.out, b")")?;
        Ok(())
    }

    /// A directory; add entries with [`Directory::entry`] in ascending order, then
    /// [`Directory::close`] it.
    pub fn directory(mut self) -> Result<Directory<'a, W>, NarError> {
        self.mark_written();
        for token in [&b"("[..], b"type", b"directory"] {
            write_token(self.out, token)?;
        }
        Ok(Directory { out: self.out, previous: None, child_written: true })
    }
}

/// A directory being written; entries must come in strictly ascending bytewise order.
#[must_use = "a NAR directory must be closed"]
pub struct Directory<'a, W: Write> {
    out: &'a mut W,
    previous: Option<Vec<u8>>,
    child_written: bool,
}

impl<W: Write> Directory<'_, W> {
    /// Closes the previous entry, if any, checking that its node was written.
    fn finish_entry(&mut self) -> Result<(), NarError> {
        if let Some(previous) = &self.previous {
            if !self.child_written {
                return Err(NarError::EmptyEntry(previous.clone()));
            }
            write_token(self.out, b")")?;
        }
        Ok(())
    }

    /// Opens the entry `name` and returns the node to write into it.
    pub fn entry(&mut self, name: &[u8]) -> Result<Node<'_, W>, NarError> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(NarError::InvalidEntryName(name.to_vec()));
        }
        if let Some(previous) = &self.previous {
            if name <= previous.as_slice() {
                return Err(NarError::EntryOutOfOrder { previous: previous.clone(), name: name.to_vec() });
            }
        }
        self.finish_entry()?;
        for token in [&b"entry"[..], b"(", b"name", name, b"node"] {
            write_token(self.out, token)?;
        }
        self.previous = Some(name.to_vec());
        self.child_written = false;
        Ok(Node { out: &mut *self.out, written: Some(&mut self.child_written) })
    }

    /// Ends the directory.
    pub fn close(mut self) -> Result<(), NarError> {
        self.finish_entry()?;
        write_token(self.out, b")")?;
        Ok(())
    }
}

/// Writes the NAR of the file, symlink or directory at `path` to `out`, as `nix-store --dump` does.
pub fn dump_path(path: &Path, out: &mut impl Write) -> Result<(), NarError> {
    dump_node(path, start(out)?)
}

fn dump_node<W: Write>(path: &Path, node: Node<'_, W>) -> Result<(), NarError> {
    let fs_err = |source| NarError::Fs { path: path.to_path_buf(), source };
    let meta = fs::symlink_metadata(path).map_err(fs_err)?;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(fs_err)?;
        node.symlink(target.as_os_str().as_bytes())
    } else if file_type.is_file() {
        let mut file = File::open(path).map_err(fs_err)?;
        let executable = meta.permissions().mode() & 0o100 != 0;
        node.file(executable, meta.len(), &mut file).map_err(|e| match e {
            // A read error is about this file; a write error is not, but naming the file helps.
            NarError::Io(source) => NarError::Fs { path: path.to_path_buf(), source },
            NarError::FileTooShort { .. } | NarError::FileTooLong { .. } => NarError::Fs {
                path: path.to_path_buf(),
                source: io::Error::other(format!("{e} (the file changed while it was archived)")),
            },
            other => other,
        })
    } else if file_type.is_dir() {
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(fs_err)? {
            names.push(entry.map_err(fs_err)?.file_name().into_vec());
        }
        names.sort();
        let mut dir = node.directory()?;
        for name in names {
            let child = path.join(std::ffi::OsStr::from_bytes(&name));
            dump_node(&child, dir.entry(&name)?)?;
        }
        dir.close()
    } else {
        Err(NarError::UnsupportedFileType { path: path.to_path_buf() })
    }
}

/// An `io::Write` that feeds a SHA-256.
struct HashingWriter(Sha256);

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The SHA-256 of the NAR of `path`: what `nix-hash --type sha256 <path>` prints, the hash behind
/// `nix-store --add`, `builtins.path` and recursive fixed outputs. The NAR is streamed, not kept.
pub fn nar_sha256(path: &Path) -> Result<[u8; 32], NarError> {
    let mut out = BufWriter::with_capacity(64 * 1024, HashingWriter(Sha256::new()));
    dump_path(path, &mut out)?;
    let hasher = out.into_inner().map_err(|e| NarError::Io(e.into_error()))?;
    Ok(hasher.0.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_token(&mut v, s).unwrap();
        v
    }

    #[test]
    fn tokens_are_length_prefixed_and_padded() {
        assert_eq!(token(b""), [0u8; 8]);
        assert_eq!(token(b"("), [&[1, 0, 0, 0, 0, 0, 0, 0][..], b"(", &[0; 7]].concat());
        assert_eq!(token(b"12345678").len(), 16);
        assert_eq!(token(b"123456789").len(), 24);
    }

    #[test]
    fn single_file_nar_is_exact() {
        let mut out = Vec::new();
        start(&mut out).unwrap().file(true, 3, &mut &b"hi\n"[..]).unwrap();
        let mut want = Vec::new();
        for t in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"executable", b"", b"contents", b"hi\n", b")"] {
            want.extend(token(t));
        }
        assert_eq!(out, want);
    }

    #[test]
    fn writer_enforces_sizes() {
        let mut out = Vec::new();
        let err = start(&mut out).unwrap().file(false, 4, &mut &b"abc"[..]).unwrap_err();
        assert!(matches!(err, NarError::FileTooShort { declared: 4, actual: 3 }), "{err}");
        let mut out = Vec::new();
        let err = start(&mut out).unwrap().file(false, 2, &mut &b"abc"[..]).unwrap_err();
        assert!(matches!(err, NarError::FileTooLong { declared: 2 }), "{err}");
    }

    #[test]
    fn writer_enforces_entry_order_and_names() {
        let mut out = Vec::new();
        let mut dir = start(&mut out).unwrap().directory().unwrap();
        dir.entry(b"b").unwrap().symlink(b"x").unwrap();
        let err = dir.entry(b"a").err().unwrap();
        assert!(matches!(err, NarError::EntryOutOfOrder { .. }), "{err}");
        let err = dir.entry(b"b").err().unwrap();
        assert!(matches!(err, NarError::EntryOutOfOrder { .. }), "duplicate: {err}");
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(matches!(dir.entry(bad), Err(NarError::InvalidEntryName(_))));
        }
        // Uppercase sorts before lowercase bytewise.
        let mut out = Vec::new();
        let mut dir = start(&mut out).unwrap().directory().unwrap();
        dir.entry(b"B").unwrap().symlink(b"x").unwrap();
        dir.entry(b"a").unwrap().symlink(b"x").unwrap();
        dir.close().unwrap();
    }

    #[test]
    fn writer_rejects_an_entry_without_node() {
        let mut out = Vec::new();
        let mut dir = start(&mut out).unwrap().directory().unwrap();
        let _unwritten = dir.entry(b"a").unwrap();
        let err = dir.close().unwrap_err();
        assert!(matches!(err, NarError::EmptyEntry(ref n) if n == b"a"), "{err}");
    }

    #[test]
    fn dump_path_reports_missing_paths() {
        let err = nar_sha256(Path::new("/nonexistent/tg-nix")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/tg-nix: "), "{err}");
    }
}
