//! Nix store-path math without Nix: this module computes, in Rust, the store paths that Nix 2.8
//! would give a derivation's outputs, its `.drv` file, a text file and a content-addressed
//! (fixed-output or added) path, so tg-nix can tell whether a build is cached without evaluating
//! any Nix. It mirrors Nix C++ function by function: [`make_store_path`] is `makeStorePath`,
//! [`make_text_path`] is `makeTextPath`, [`make_fixed_output_path`] is `makeFixedOutputPath`,
//! [`Derivation::hash_derivation_modulo`] is `hashDerivationModulo`, [`Derivation::to_aterm`] is
//! `Derivation::unparse`, and [`nar_sha256`] hashes what `dumpPath` writes. Every one of them is
//! tested against paths that real `nix-instantiate`, `nix-store --add-fixed` and `nix-hash` printed
//! (`tests/store_paths.rs`, fixtures in `tests/store/`). It must not call Nix, except
//! [`invalid_paths`], which asks the local store in one batch which computed paths it lacks.
//!
//! The main types are [`StorePath`] (a validated digest and name), [`Derivation`] (a `.drv` file as
//! BTreeMaps) and [`NixHash`]; each submodule has its own error type.
//!
//! ```
//! use tg_nix_builders::store::Derivation;
//!
//! // derivation { name = "hello"; system = "x86_64-linux"; builder = "/bin/sh";
//! //              args = [ "-c" "echo hello > $out" ]; }
//! let mut drv = Derivation::new("hello", "x86_64-linux", "/bin/sh");
//! drv.args = vec!["-c".into(), "echo hello > $out".into()];
//! // No input derivations, so the lookup for their modulo hashes is never called.
//! drv.compute_output_paths(|_| None)?;
//! // What nix-instantiate printed for that expression:
//! assert_eq!(
//!     drv.output_path("out").unwrap().to_string(),
//!     "/nix/store/fvchbymk0m4jvldpb9m5hy0bjy2lf30k-hello"
//! );
//! assert_eq!(drv.drv_path()?.to_string(), "/nix/store/r3f9l9f32qpzwmdgizjpbwn3ff2n6ny7-hello.drv");
//! # Ok::<(), tg_nix_builders::store::DerivationError>(())
//! ```

mod aterm;
mod derivation;
mod hash;
mod nar;
mod path;
mod validity;

pub use aterm::AtermError;
pub use derivation::{Derivation, DerivationError, Output};
pub use hash::{
    compress20, from_hex, nixbase32_decode, nixbase32_encode, nixbase32_len, sha256, to_hex, FileIngestionMethod,
    HashAlgo, HashError, NixHash,
};
pub use nar::{dump_path, nar_sha256, start as start_nar, Directory as NarDirectory, NarError, Node as NarNode};
pub use path::{
    make_fixed_output_path, make_output_path, make_store_path, make_text_path, output_path_name, validate_name,
    StorePath, StorePathError, HASH_PART_LEN, MAX_NAME_LEN, STORE_DIR,
};
pub use validity::{invalid_paths, invalid_paths_with};
