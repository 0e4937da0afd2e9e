//! [`StorePath`] and the functions that make one from a fingerprint, as Nix C++ does in
//! `makeStorePath`, `makeTextPath`, `makeFixedOutputPath` and `makeOutputPath`.
//!
//! Every store path is `/nix/store/<digest>-<name>`, where the digest is the nix-base32 of the
//! SHA-256 of a fingerprint `<type>:sha256:<inner hex>:/nix/store:<name>`, XOR-folded to 20 bytes.
//! Only the type and the inner hash differ between kinds of path.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use super::hash::{compress20, nixbase32_decode, nixbase32_encode, sha256, to_hex};
use super::hash::{FileIngestionMethod, HashAlgo, NixHash};

/// The store directory. tg-nix only targets the default store, so this is not configurable.
pub const STORE_DIR: &str = "/nix/store";
/// The longest name Nix accepts (`StorePath::MaxPathLen`).
pub const MAX_NAME_LEN: usize = 211;
/// Characters in the nix-base32 digest part of a store path.
pub const HASH_PART_LEN: usize = 32;
const NIXBASE32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a string is not a store path or a name is not a valid store-path name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    #[error("`{0}` is not a path in {STORE_DIR} (expected {STORE_DIR}/<32-character hash>-<name>)")]
    NotInStore(String),
    #[error("`{0}` is not a store path base name: expected <32-character hash>-<name>")]
    MissingDash(String),
    #[error("`{base_name}` has `{found}` at position {pos} of its hash part, which is not a nix-base32 character")]
    InvalidHashChar { base_name: String, pos: usize, found: char },
    #[error("a store path name must not be empty")]
    EmptyName,
    #[error("store path name `{name}…` is {len} characters long; Nix allows at most {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("store path name `{name}` has `{found}` at byte {pos}; only A-Z a-z 0-9 and + - . _ ? = are allowed")]
    InvalidNameChar { name: String, pos: usize, found: char },
    #[error("store path name `{0}` is reserved: `.`, `..` and names starting with `.-` or `..-` are not allowed")]
    ReservedName(String),
    #[error(
        "references are only allowed in a recursive sha256 path, not in a {method:?} {algo} fixed-output path `{name}`"
    )]
    ReferencesNotAllowed { name: String, method: FileIngestionMethod, algo: HashAlgo },
}

/// Checks a store-path name the way current Nix does (`checkName`): 1 to 211 characters from
/// `[A-Za-z0-9+._?=-]`, and not `.`, `..`, or starting with `.-` or `..-`.
///
/// Other names starting with `.` are accepted: Nix 2.8 on this machine makes
/// `builtins.toFile ".hidden" …` and `nix-store --add .dotfile` without complaint, and current Nix
/// documents leading periods as supported (NixOS/nix#912). Only a few Nix releases in between
/// rejected them.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if let Some((pos, found)) = name.char_indices().find(|(_, c)| !is_name_char(*c)) {
        return Err(StorePathError::InvalidNameChar { name: name.to_string(), pos, found });
    }
    if name.len() > MAX_NAME_LEN {
        // All characters are ASCII here, so slicing cannot split one.
        return Err(StorePathError::NameTooLong { name: name[..40].to_string(), len: name.len() });
    }
    if name == "." || name == ".." || name.starts_with(".-") || name.starts_with("..-") {
        return Err(StorePathError::ReservedName(name.to_string()));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// A path directly under `/nix/store`: a 20-byte digest and a validated name.
///
/// Ordering is that of the printed paths, which is the order Nix uses for `inputSrcs`, `inputDrvs`
/// and references in fingerprints (nix-base32 order is not the order of the raw digest bytes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    /// The digest in nix-base32, kept encoded so that the derived ordering is the printed order.
    hash_part: [u8; HASH_PART_LEN],
    name: String,
}

impl StorePath {
    /// A store path from its digest and name.
    pub fn from_digest(digest: [u8; 20], name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        let encoded = nixbase32_encode(&digest);
        let mut hash_part = [0u8; HASH_PART_LEN];
        hash_part.copy_from_slice(encoded.as_bytes());
        Ok(StorePath { hash_part, name: name.to_string() })
    }

    /// Parses `<32-character hash>-<name>`, the last component of a store path.
    pub fn from_base_name(base_name: &str) -> Result<Self, StorePathError> {
        let bytes = base_name.as_bytes();
        if bytes.len() < HASH_PART_LEN + 1 || bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base_name.to_string()));
        }
        // Checked before slicing: a non-ASCII character here would make the slice panic.
        if let Some((pos, found)) = base_name
            .char_indices()
            .take_while(|(i, _)| *i < HASH_PART_LEN)
            .find(|(_, c)| !c.is_ascii() || !NIXBASE32_ALPHABET.contains(&(*c as u8)))
        {
            return Err(StorePathError::InvalidHashChar { base_name: base_name.to_string(), pos, found });
        }
        let name = &base_name[HASH_PART_LEN + 1..];
        validate_name(name)?;
        let mut hash_part = [0u8; HASH_PART_LEN];
        hash_part.copy_from_slice(&bytes[..HASH_PART_LEN]);
        Ok(StorePath { hash_part, name: name.to_string() })
    }

    /// Parses an absolute path `/nix/store/<hash>-<name>`. Paths below a store path
    /// (`/nix/store/…-busybox/bin/busybox`) are rejected; see [`StorePath::from_path_prefix`].
    pub fn from_absolute_path(path: &str) -> Result<Self, StorePathError> {
        let base_name = path
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_string()))?;
        StorePath::from_base_name(base_name)
    }

    /// The store path that contains `path` (a store path or anything below one).
    pub fn from_path_prefix(path: &str) -> Result<Self, StorePathError> {
        let rest = path
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| StorePathError::NotInStore(path.to_string()))?;
        StorePath::from_base_name(rest.split('/').next().unwrap_or(rest))
    }

    /// The 32 nix-base32 characters before the dash.
    pub fn hash_part(&self) -> &str {
        // Only alphabet bytes are ever stored, so this cannot fail; fall back to "" rather than panic.
        std::str::from_utf8(&self.hash_part).unwrap_or("")
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 20-byte digest the hash part encodes.
    pub fn digest(&self) -> [u8; 20] {
        let mut digest = [0u8; 20];
        // 32 alphabet characters always decode to exactly 20 bytes.
        if let Some(bytes) = nixbase32_decode(self.hash_part()) {
            digest.copy_from_slice(&bytes);
        }
        digest
    }

    /// `<hash>-<name>`, the path's file name in the store.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    /// Same as [`StorePath::from_absolute_path`].
    fn from_str(s: &str) -> Result<Self, StorePathError> {
        StorePath::from_absolute_path(s)
    }
}

/// The store path for a fingerprint (`makeStorePath` in Nix C++):
/// `<ty>:sha256:<hex(inner)>:/nix/store:<name>`, hashed with SHA-256 and folded to 20 bytes.
///
/// `ty` is `text:<refs…>`, `source:<refs…>`, `output:<output name>` or `output:out` (for fixed
/// outputs); the helpers below build it.
pub fn make_store_path(ty: &str, inner_sha256: &[u8; 32], name: &str) -> Result<StorePath, StorePathError> {
    validate_name(name)?;
    let fingerprint = format!("{ty}:sha256:{}:{STORE_DIR}:{name}", to_hex(inner_sha256));
    StorePath::from_digest(compress20(&sha256(fingerprint.as_bytes())), name)
}

/// Appends `:<path>` for each reference in sorted, deduplicated order (`makeType` in Nix C++).
fn type_with_references<'a>(ty: &str, references: impl IntoIterator<Item = &'a StorePath>) -> String {
    let sorted: BTreeSet<&StorePath> = references.into_iter().collect();
    let mut out = ty.to_string();
    for r in sorted {
        out.push(':');
        out.push_str(&r.to_string());
    }
    out
}

/// The path of a text file added with its references (`makeTextPath` in Nix C++): what
/// `builtins.toFile` and `.drv` files get. `content_sha256` is the SHA-256 of the file's bytes.
pub fn make_text_path<'a>(
    name: &str,
    content_sha256: &[u8; 32],
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    make_store_path(&type_with_references("text", references), content_sha256, name)
}

/// The path of content with a known hash (`makeFixedOutputPath` in Nix C++): fixed-output
/// derivations, `nix-store --add-fixed`, `nix-store --add` and `builtins.path`.
///
/// Recursive SHA-256 uses the `source` type with the NAR hash directly, which is why `--add` and
/// `--add-fixed --recursive sha256` give the same path. Anything else (flat, or another algorithm)
/// hashes `fixed:out:<r:?><algo>:<hex>:` and uses the type `output:out`; such paths cannot have
/// references. (The `nixdrv` crate uses `source` for both, which is wrong for flat hashes.)
pub fn make_fixed_output_path<'a>(
    method: FileIngestionMethod,
    hash: &NixHash,
    name: &str,
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
        let mut inner = [0u8; 32];
        inner.copy_from_slice(hash.digest());
        return make_store_path(&type_with_references("source", references), &inner, name);
    }
    if references.into_iter().next().is_some() {
        return Err(StorePathError::ReferencesNotAllowed { name: name.to_string(), method, algo: hash.algo() });
    }
    let inner = format!("fixed:out:{}{}:{}:", method.prefix(), hash.algo(), hash.to_hex());
    make_store_path("output:out", &sha256(inner.as_bytes()), name)
}

/// The name of a derivation output's path: the derivation name, plus `-<output>` unless the output
/// is `out` (`outputPathName` in Nix C++).
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_string()
    } else {
        format!("{drv_name}-{output}")
    }
}

/// The path of an input-addressed derivation output (`makeOutputPath` in Nix C++).
/// `drv_hash_modulo` is the masked [`hashDerivationModulo`](super::Derivation::hash_derivation_modulo).
pub fn make_output_path(drv_hash_modulo: &[u8; 32], output: &str, drv_name: &str) -> Result<StorePath, StorePathError> {
    make_store_path(&format!("output:{output}"), drv_hash_modulo, &output_path_name(drv_name, output))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSYBOX: &str = "/nix/store/z56a0nzr9b8bsd1p32i5bsvlzwd8brgb-busybox-static";

    #[test]
    fn parses_and_prints_absolute_paths() {
        let p: StorePath = BUSYBOX.parse().unwrap();
        assert_eq!(p.name(), "busybox-static");
        assert_eq!(p.hash_part(), "z56a0nzr9b8bsd1p32i5bsvlzwd8brgb");
        assert_eq!(p.to_string(), BUSYBOX);
        assert_eq!(StorePath::from_digest(p.digest(), p.name()).unwrap(), p);
        assert_eq!(StorePath::from_path_prefix(&format!("{BUSYBOX}/bin/busybox")).unwrap(), p);
    }

    #[test]
    fn rejects_malformed_paths_with_exact_errors() {
        use StorePathError::*;
        let h = "z56a0nzr9b8bsd1p32i5bsvlzwd8brgb";
        assert_eq!("/tmp/x".parse::<StorePath>(), Err(NotInStore("/tmp/x".into())));
        assert_eq!("/nix/storex".parse::<StorePath>(), Err(NotInStore("/nix/storex".into())));
        assert_eq!(StorePath::from_base_name("abc"), Err(MissingDash("abc".into())));
        assert_eq!(StorePath::from_base_name(&format!("{h}_x")), Err(MissingDash(format!("{h}_x"))));
        let bad_hash = format!("e{}-x", &h[1..]);
        assert_eq!(
            StorePath::from_base_name(&bad_hash),
            Err(InvalidHashChar { base_name: bad_hash.clone(), pos: 0, found: 'e' })
        );
        let unicode = format!("ä{}-x", &h[2..]);
        assert!(matches!(StorePath::from_base_name(&unicode), Err(InvalidHashChar { pos: 0, found: 'ä', .. })));
        assert_eq!(StorePath::from_base_name(&format!("{h}-")), Err(EmptyName));
        assert_eq!(
            format!("/nix/store/{h}-a/b").parse::<StorePath>(),
            Err(InvalidNameChar { name: "a/b".into(), pos: 1, found: '/' })
        );
    }

    #[test]
    fn validates_names_like_nix() {
        use StorePathError::*;
        for ok in ["a", "hello-1.0", "A+b_c?d=e", ".hidden", "..x", ".a-b", &"x".repeat(211)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_name(""), Err(EmptyName));
        assert_eq!(validate_name("a b"), Err(InvalidNameChar { name: "a b".into(), pos: 1, found: ' ' }));
        assert_eq!(validate_name("1:2"), Err(InvalidNameChar { name: "1:2".into(), pos: 1, found: ':' }));
        assert_eq!(validate_name("v~1"), Err(InvalidNameChar { name: "v~1".into(), pos: 1, found: '~' }));
        assert_eq!(validate_name(&"x".repeat(212)), Err(NameTooLong { name: "x".repeat(40), len: 212 }));
        for reserved in [".", "..", ".-x", "..-x"] {
            assert_eq!(validate_name(reserved), Err(ReservedName(reserved.into())));
        }
    }

    #[test]
    fn orders_like_printed_paths() {
        // Digest byte order and nix-base32 order disagree; the printed order is what Nix sorts by.
        let mut paths: Vec<StorePath> = (0u8..40)
            .map(|i| StorePath::from_digest([i.wrapping_mul(97); 20], if i % 2 == 0 { "a" } else { "a-b" }).unwrap())
            .collect();
        paths.sort();
        let printed: Vec<String> = paths.iter().map(ToString::to_string).collect();
        let mut sorted = printed.clone();
        sorted.sort();
        assert_eq!(printed, sorted);
    }

    #[test]
    fn fixed_output_fingerprint_kinds() {
        // Values checked against real Nix are in tests/store_paths.rs; this checks the branches.
        let nar = NixHash::sha256([7; 32]);
        let a = make_fixed_output_path(FileIngestionMethod::Recursive, &nar, "x", []).unwrap();
        let b = make_store_path("source", &[7; 32], "x").unwrap();
        assert_eq!(a, b, "recursive sha256 is a source path");
        let flat = make_fixed_output_path(FileIngestionMethod::Flat, &nar, "x", []).unwrap();
        assert_ne!(flat, a, "flat sha256 must not use the source fingerprint");
        let refs = [b.clone()];
        assert!(matches!(
            make_fixed_output_path(FileIngestionMethod::Flat, &nar, "x", &refs),
            Err(StorePathError::ReferencesNotAllowed { .. })
        ));
    }
}
