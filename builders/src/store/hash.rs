//! The hash encodings that appear in store paths and derivations: nix-base32 (Nix's own
//! little-endian alphabet without `e o u t`), lowercase hex, the 32→20 byte XOR fold that turns a
//! fingerprint's SHA-256 into a store-path digest (`compressHash` in Nix C++), and [`NixHash`], an
//! algorithm plus a digest of the right length, which is what fixed-output paths are made from.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256, Sha512};

/// Why a hash or hash algorithm was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hash algorithm `{0}` (known: md5, sha1, sha256, sha512)")]
    UnknownAlgorithm(String),
    #[error("a {algo} hash has {expected} bytes, got {got}")]
    WrongLength { algo: HashAlgo, expected: usize, got: usize },
    #[error("`{value}` is not a {algo} hash in hex ({hex} characters) or nix-base32 ({base32} characters)")]
    InvalidEncoding { algo: HashAlgo, value: String, hex: usize, base32: usize },
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Lowercase hex, the form Nix prints inside fingerprints and `.drv` files.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parses hex in either case; `None` on an odd length or a non-hex character.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs.map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// The length of the nix-base32 form of `n` bytes: `ceil(8n / 5)`.
pub const fn nixbase32_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes bytes in nix-base32 (`printHash32` in Nix C++): 32 characters for a 20-byte store-path
/// digest, 52 for a SHA-256. This is not RFC 4648 base32.
pub fn nixbase32_encode(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        // nix_base32::to_nix_base32 underflows on an empty slice.
        return String::new();
    }
    nix_base32::to_nix_base32(bytes)
}

/// Decodes nix-base32. Only canonical lengths (`nixbase32_len` of some byte count) are accepted, and
/// bits beyond the last byte must be zero, as in Nix.
pub fn nixbase32_decode(s: &str) -> Option<Vec<u8>> {
    let n = s.len() * 5 / 8;
    if n == 0 {
        return s.is_empty().then(Vec::new);
    }
    // nix_base32::from_nix_base32 indexes out of bounds on non-canonical lengths, so check first.
    if nixbase32_len(n) != s.len() {
        return None;
    }
    nix_base32::from_nix_base32(s)
}

/// XOR-folds a hash into `20` bytes: byte `i` of the input goes into byte `i % 20` of the output
/// (`compressHash` in Nix C++). This turns a fingerprint's SHA-256 into a store-path digest.
pub fn compress20(hash: &[u8]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, b) in hash.iter().enumerate() {
        out[i % 20] ^= b;
    }
    out
}

/// The hash algorithms Nix accepts for fixed outputs (`HashType` in Nix C++).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// The name Nix prints: `md5`, `sha1`, `sha256`, `sha512`.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// The digest length in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, HashError> {
        match s {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(HashError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// How content was turned into bytes before hashing (`FileIngestionMethod` in Nix C++).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestionMethod {
    /// The hash is over the file's bytes (`outputHashMode = "flat"`, `--add-fixed` without
    /// `--recursive`). Only a single regular file can be ingested this way.
    Flat,
    /// The hash is over the NAR serialisation of a file, symlink or directory tree
    /// (`outputHashMode = "recursive"`, `builtins.path`, `nix-store --add`).
    Recursive,
}

impl FileIngestionMethod {
    /// The prefix Nix puts before the algorithm in `.drv` files and fingerprints: `r:` or nothing.
    pub const fn prefix(self) -> &'static str {
        match self {
            FileIngestionMethod::Flat => "",
            FileIngestionMethod::Recursive => "r:",
        }
    }
}

/// A digest together with its algorithm; the length always matches the algorithm.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NixHash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl NixHash {
    /// Wraps a digest, checking its length against `algo`.
    pub fn new(algo: HashAlgo, digest: Vec<u8>) -> Result<Self, HashError> {
        if digest.len() != algo.digest_len() {
            return Err(HashError::WrongLength { algo, expected: algo.digest_len(), got: digest.len() });
        }
        Ok(NixHash { algo, digest })
    }

    /// A SHA-256 digest, such as [`nar_sha256`](super::nar_sha256) returns.
    pub fn sha256(digest: [u8; 32]) -> Self {
        NixHash { algo: HashAlgo::Sha256, digest: digest.to_vec() }
    }

    /// Hashes `data` with `algo`. MD5 and SHA-1 are not offered: tg-nix only ever produces SHA-256
    /// and SHA-512, and reads other algorithms from existing derivations.
    pub fn of_bytes(algo: HashAlgo, data: &[u8]) -> Option<Self> {
        let digest = match algo {
            HashAlgo::Sha256 => Sha256::digest(data).to_vec(),
            HashAlgo::Sha512 => Sha512::digest(data).to_vec(),
            HashAlgo::Md5 | HashAlgo::Sha1 => return None,
        };
        Some(NixHash { algo, digest })
    }

    /// Parses a hash written in hex or nix-base32, told apart by length as Nix does.
    pub fn parse(algo: HashAlgo, s: &str) -> Result<Self, HashError> {
        let hex_len = algo.digest_len() * 2;
        let b32_len = nixbase32_len(algo.digest_len());
        let digest = if s.len() == hex_len {
            from_hex(s)
        } else if s.len() == b32_len {
            nixbase32_decode(s)
        } else {
            None
        };
        match digest {
            Some(digest) => NixHash::new(algo, digest),
            None => Err(HashError::InvalidEncoding { algo, value: s.to_string(), hex: hex_len, base32: b32_len }),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Lowercase hex, the form used in `.drv` files and fingerprints.
    pub fn to_hex(&self) -> String {
        to_hex(&self.digest)
    }

    /// nix-base32, the form `nix-hash --base32` prints and `outputHash` usually holds.
    pub fn to_nixbase32(&self) -> String {
        nixbase32_encode(&self.digest)
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nixbase32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nixbase32_matches_values_nix_printed() {
        // `nix-hash --type sha256 --to-base32` of sha256("") on this machine's Nix 2.8.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let digest = from_hex(empty).unwrap();
        assert_eq!(nixbase32_encode(&digest), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(nixbase32_decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"), Some(digest));
    }

    #[test]
    fn nixbase32_round_trips_and_rejects_bad_input() {
        for len in [0usize, 1, 2, 5, 16, 20, 32, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = nixbase32_encode(&bytes);
            assert_eq!(s.len(), nixbase32_len(len));
            assert_eq!(nixbase32_decode(&s), Some(bytes));
        }
        assert_eq!(nixbase32_decode("e000"), None, "e is not in the alphabet");
        assert_eq!(nixbase32_decode("000"), None, "3 characters is no canonical length");
        assert_eq!(nixbase32_decode("0"), None);
        assert_eq!(nixbase32_decode("zz"), None, "bits beyond the last byte are set");
    }

    #[test]
    fn compress20_xor_folds() {
        let mut h = [0u8; 32];
        h[0] = 0b1010;
        h[20] = 0b0110;
        h[31] = 0xff;
        let c = compress20(&h);
        assert_eq!(c[0], 0b1100);
        assert_eq!(c[11], 0xff);
        assert_eq!(c.iter().filter(|b| **b != 0).count(), 2);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(to_hex(&[0x00, 0xab, 0x1f]), "00ab1f");
        assert_eq!(from_hex("00AB1f"), Some(vec![0x00, 0xab, 0x1f]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("0g"), None);
    }

    #[test]
    fn nix_hash_parses_hex_and_base32_and_checks_lengths() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let a = NixHash::parse(HashAlgo::Sha256, hex).unwrap();
        let b = NixHash::parse(HashAlgo::Sha256, &a.to_nixbase32()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, NixHash::of_bytes(HashAlgo::Sha256, b"").unwrap());
        assert_eq!(a.to_hex(), hex);
        assert!(matches!(
            NixHash::parse(HashAlgo::Sha1, hex),
            Err(HashError::InvalidEncoding { hex: 40, base32: 32, .. })
        ));
        assert_eq!(
            NixHash::new(HashAlgo::Sha1, vec![0; 32]),
            Err(HashError::WrongLength { algo: HashAlgo::Sha1, expected: 20, got: 32 })
        );
        assert_eq!("sha3".parse::<HashAlgo>(), Err(HashError::UnknownAlgorithm("sha3".into())));
    }
}
