//! [`Derivation`]: the contents of a `.drv` file, its ATerm form, and the three hashes Nix derives
//! from it: `hashDerivationModulo` (what dependents see), the output paths of an input-addressed
//! derivation, and the `.drv` file's own store path.
//!
//! Fields are `BTreeMap`s and `BTreeSet`s so that the ATerm ordering (outputs, input derivations,
//! sources and environment sorted; arguments kept in order) comes from the types. Environment
//! values are bytes because `.drv` files can hold strings that are not UTF-8.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use super::aterm::{write_list, write_string, AtermError, Reader};
use super::hash::{sha256, to_hex, FileIngestionMethod, HashAlgo, HashError, NixHash};
use super::path::{make_fixed_output_path, make_output_path, make_text_path, StorePath, StorePathError};

/// Why a derivation's hashes or paths could not be computed, or a `.drv` file not read.
#[derive(Debug, thiserror::Error)]
pub enum DerivationError {
    #[error("the derivation has no `name` in its environment, or it is not UTF-8")]
    MissingName,
    #[error("the derivation has no outputs")]
    NoOutputs,
    #[error(
        "input derivation {0} has no known hashDerivationModulo: hash every input derivation before its dependents"
    )]
    UnknownInputDerivation(StorePath),
    #[error("output `{0}` has no path yet: call compute_output_paths first")]
    MissingOutputPath(String),
    #[error("a fixed-output derivation must have exactly one output, named `out`, with a hash (found outputs {0})")]
    InvalidFixedOutput(String),
    #[error("output `{output}`: `{hash_algo}` is not a supported fixed-output hash algorithm (floating and text content-addressed outputs are not supported)")]
    UnsupportedOutput { output: String, hash_algo: String },
    #[error("output `{output}`: {source}")]
    Hash { output: String, source: HashError },
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: AtermError },
}

/// One output of a derivation: `(name, path, hashAlgo, hash)` in the ATerm, keyed by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The output path; `None` is written as `""` (not computed yet).
    pub path: Option<StorePath>,
    /// Empty for input-addressed outputs; `sha256` (flat) or `r:sha256` (recursive) for fixed ones.
    pub hash_algo: String,
    /// Empty for input-addressed outputs; the fixed hash in lowercase hex otherwise.
    pub hash: String,
}

impl Output {
    /// A fixed output expecting `hash` (what `outputHashMode`/`outputHashAlgo`/`outputHash` become).
    pub fn fixed(method: FileIngestionMethod, hash: &NixHash) -> Self {
        Output { path: None, hash_algo: format!("{}{}", method.prefix(), hash.algo()), hash: hash.to_hex() }
    }

    /// Whether this output carries a fixed hash.
    pub fn is_fixed(&self) -> bool {
        !self.hash.is_empty()
    }

    /// The ingestion method and hash of a fixed output.
    pub fn fixed_hash(&self, output: &str) -> Result<(FileIngestionMethod, NixHash), DerivationError> {
        let (method, algo) = match self.hash_algo.strip_prefix("r:") {
            Some(algo) => (FileIngestionMethod::Recursive, algo),
            None => (FileIngestionMethod::Flat, self.hash_algo.as_str()),
        };
        let unsupported =
            || DerivationError::UnsupportedOutput { output: output.to_string(), hash_algo: self.hash_algo.clone() };
        let algo: HashAlgo = algo.parse().map_err(|_| unsupported())?;
        let hash = NixHash::parse(algo, &self.hash)
            .map_err(|source| DerivationError::Hash { output: output.to_string(), source })?;
        Ok((method, hash))
    }
}

/// A Nix derivation as stored in a `.drv` file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Derivation {
    pub outputs: BTreeMap<String, Output>,
    /// Input derivations and the outputs of each that are used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources: store paths that are not derivation outputs.
    pub input_srcs: BTreeSet<StorePath>,
    pub system: String,
    pub builder: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, Vec<u8>>,
}

/// How the input derivations are written: by path (the `.drv` file) or by their modulo hash
/// (the text `hashDerivationModulo` hashes).
enum InputDrvKeys<'a> {
    Paths,
    Hashes(&'a BTreeMap<String, &'a BTreeSet<String>>),
}

impl Derivation {
    /// A derivation with one output `out` and `name`, `system` and `builder` in its environment,
    /// as the `derivation` builtin makes them (it does not put `args` in the environment).
    pub fn new(name: &str, system: &str, builder: &str) -> Self {
        let mut drv = Derivation { system: system.to_string(), builder: builder.to_string(), ..Derivation::default() };
        drv.outputs.insert("out".to_string(), Output::default());
        drv.set_env("name", name);
        drv.set_env("system", system);
        drv.set_env("builder", builder);
        drv
    }

    /// Sets an environment variable.
    pub fn set_env(&mut self, key: &str, value: impl Into<Vec<u8>>) {
        self.env.insert(key.to_string(), value.into());
    }

    /// The derivation name, from `env.name` (Nix takes the `.drv` and output names from it).
    pub fn name(&self) -> Result<&str, DerivationError> {
        self.env.get("name").and_then(|n| std::str::from_utf8(n).ok()).ok_or(DerivationError::MissingName)
    }

    /// The path of output `name`, once computed.
    pub fn output_path(&self, name: &str) -> Option<&StorePath> {
        self.outputs.get(name).and_then(|o| o.path.as_ref())
    }

    /// The single fixed output `out`, if this is a fixed-output derivation. Nix 2.8 requires a
    /// fixed hash to be on the only output, and that output to be `out`.
    pub fn fixed_output(&self) -> Result<Option<&Output>, DerivationError> {
        if !self.outputs.values().any(Output::is_fixed) {
            return Ok(None);
        }
        match self.outputs.get("out") {
            Some(out) if self.outputs.len() == 1 && out.is_fixed() => Ok(Some(out)),
            _ => Err(DerivationError::InvalidFixedOutput(
                self.outputs.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// The `.drv` file contents: `Derive([outputs],[inputDrvs],[inputSrcs],system,builder,[args],[env])`
    /// (`Derivation::unparse` in Nix C++).
    pub fn to_aterm(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write_aterm(&mut out, false, InputDrvKeys::Paths);
        out
    }

    fn write_aterm(&self, out: &mut Vec<u8>, mask_outputs: bool, input_drvs: InputDrvKeys<'_>) {
        out.extend_from_slice(b"Derive(");
        write_list(out, &self.outputs, |out, (name, o)| {
            out.push(b'(');
            write_string(out, name.as_bytes());
            out.push(b',');
            match (&o.path, mask_outputs) {
                (Some(p), false) => write_string(out, p.to_string().as_bytes()),
                _ => write_string(out, b""),
            }
            out.push(b',');
            write_string(out, o.hash_algo.as_bytes());
            out.push(b',');
            write_string(out, o.hash.as_bytes());
            out.push(b')');
        });
        out.push(b',');
        let write_input = |out: &mut Vec<u8>, key: &[u8], outputs: &BTreeSet<String>| {
            out.push(b'(');
            write_string(out, key);
            out.push(b',');
            write_list(out, outputs, |out, o| write_string(out, o.as_bytes()));
            out.push(b')');
        };
        match input_drvs {
            InputDrvKeys::Paths => write_list(out, &self.input_drvs, |out, (path, outputs)| {
                write_input(out, path.to_string().as_bytes(), outputs)
            }),
            InputDrvKeys::Hashes(hashes) => {
                write_list(out, hashes, |out, (hash, outputs)| write_input(out, hash.as_bytes(), outputs))
            }
        }
        out.push(b',');
        write_list(out, &self.input_srcs, |out, p| write_string(out, p.to_string().as_bytes()));
        out.push(b',');
        write_string(out, self.system.as_bytes());
        out.push(b',');
        write_string(out, self.builder.as_bytes());
        out.push(b',');
        write_list(out, &self.args, |out, a| write_string(out, a.as_bytes()));
        out.push(b',');
        write_list(out, &self.env, |out, (key, value)| {
            out.push(b'(');
            write_string(out, key.as_bytes());
            out.push(b',');
            let masked = mask_outputs && self.outputs.contains_key(key);
            write_string(out, if masked { b"" } else { value });
            out.push(b')');
        });
        out.push(b')');
    }

    /// Parses a `.drv` file (`parseDerivation` in Nix C++). Store paths are validated; duplicate
    /// keys are rejected rather than silently merged. Unsorted input is accepted, as Nix does, and
    /// comes out sorted from [`Derivation::to_aterm`].
    pub fn parse_aterm(input: &[u8]) -> Result<Self, AtermError> {
        fn store_path(r: &mut Reader<'_>, what: &'static str) -> Result<StorePath, AtermError> {
            let pos = r.pos();
            let s = r.utf8_string(what)?;
            s.parse().map_err(|source| AtermError::StorePath { pos, source })
        }
        fn duplicate(pos: usize, what: &'static str, key: impl ToString) -> AtermError {
            AtermError::Duplicate { pos, what, key: key.to_string() }
        }

        let mut r = Reader::new(input);
        let mut drv = Derivation::default();
        r.expect("Derive(")?;
        for (pos, name, output) in r.list(|r| {
            r.expect("(")?;
            let pos = r.pos();
            let name = r.utf8_string("output name")?;
            r.expect(",")?;
            let path_pos = r.pos();
            let path = r.utf8_string("output path")?;
            let path = match path.as_str() {
                "" => None,
                p => Some(p.parse().map_err(|source| AtermError::StorePath { pos: path_pos, source })?),
            };
            r.expect(",")?;
            let hash_algo = r.utf8_string("output hash algorithm")?;
            r.expect(",")?;
            let hash = r.utf8_string("output hash")?;
            r.expect(")")?;
            Ok((pos, name, Output { path, hash_algo, hash }))
        })? {
            if drv.outputs.insert(name.clone(), output).is_some() {
                return Err(duplicate(pos, "output", name));
            }
        }
        r.expect(",")?;
        for (pos, path, outputs) in r.list(|r| {
            r.expect("(")?;
            let pos = r.pos();
            let path = store_path(r, "input derivation")?;
            r.expect(",")?;
            let mut outputs = BTreeSet::new();
            for (pos, o) in r.list(|r| Ok((r.pos(), r.utf8_string("input derivation output")?)))? {
                if !outputs.insert(o.clone()) {
                    return Err(duplicate(pos, "input derivation output", o));
                }
            }
            r.expect(")")?;
            Ok((pos, path, outputs))
        })? {
            if drv.input_drvs.insert(path.clone(), outputs).is_some() {
                return Err(duplicate(pos, "input derivation", path));
            }
        }
        r.expect(",")?;
        for (pos, path) in r.list(|r| Ok((r.pos(), store_path(r, "input source")?)))? {
            if !drv.input_srcs.insert(path.clone()) {
                return Err(duplicate(pos, "input source", path));
            }
        }
        r.expect(",")?;
        drv.system = r.utf8_string("system")?;
        r.expect(",")?;
        drv.builder = r.utf8_string("builder")?;
        r.expect(",")?;
        drv.args = r.list(|r| r.utf8_string("argument"))?;
        r.expect(",")?;
        for (pos, key, value) in r.list(|r| {
            r.expect("(")?;
            let pos = r.pos();
            let key = r.utf8_string("environment variable name")?;
            r.expect(",")?;
            let value = r.string()?;
            r.expect(")")?;
            Ok((pos, key, value))
        })? {
            if drv.env.insert(key.clone(), value).is_some() {
                return Err(duplicate(pos, "environment variable", key));
            }
        }
        r.expect(")")?;
        r.finish()?;
        Ok(drv)
    }

    /// Reads and parses a `.drv` file.
    pub fn read(path: &Path) -> Result<Self, DerivationError> {
        let bytes = std::fs::read(path).map_err(|source| DerivationError::Read { path: path.to_path_buf(), source })?;
        Derivation::parse_aterm(&bytes).map_err(|source| DerivationError::Parse { path: path.to_path_buf(), source })
    }

    /// `hashDerivationModulo` in Nix C++: the hash that stands for this derivation in the output
    /// paths of its dependents.
    ///
    /// * For a fixed-output derivation it is `sha256("fixed:out:<hashAlgo>:<hex>:<out path>")`, so
    ///   nothing but the fixed hash and the path (that is, the name) affects dependents.
    /// * Otherwise it is the SHA-256 of the ATerm in which every input derivation's path is replaced
    ///   by the hex of its own modulo hash, which `lookup` supplies. The caller memoises: hash
    ///   inputs before dependents and keep the results in a map. An input that `lookup` does not
    ///   know is an error, never a guess.
    pub fn hash_derivation_modulo(
        &self,
        lookup: impl FnMut(&StorePath) -> Option<[u8; 32]>,
    ) -> Result<[u8; 32], DerivationError> {
        // A match rather than `fixed_digest().unwrap_or(…)`: the input-addressed branch calls
        // `lookup` for every input and must not run for fixed-output derivations.
        match self.fixed_output()? {
            Some(out) => {
                let path = out.path.as_ref().ok_or_else(|| DerivationError::MissingOutputPath("out".into()))?;
                let fingerprint = format!("fixed:out:{}:{}:{path}", out.hash_algo, out.hash);
                Ok(sha256(fingerprint.as_bytes()))
            }
            None => self.hash_with_inputs_replaced(false, lookup),
        }
    }

    fn hash_with_inputs_replaced(
        &self,
        mask_outputs: bool,
        mut lookup: impl FnMut(&StorePath) -> Option<[u8; 32]>,
    ) -> Result<[u8; 32], DerivationError> {
        let mut by_hash: BTreeMap<String, &BTreeSet<String>> = BTreeMap::new();
        for (drv_path, outputs) in &self.input_drvs {
            let hash = lookup(drv_path).ok_or_else(|| DerivationError::UnknownInputDerivation(drv_path.clone()))?;
            // Nix 2.8 uses insert_or_assign here: two inputs with the same modulo hash keep the
            // output set of the later one.
            by_hash.insert(to_hex(&hash), outputs);
        }
        let mut aterm = Vec::with_capacity(1024);
        self.write_aterm(&mut aterm, mask_outputs, InputDrvKeys::Hashes(&by_hash));
        Ok(sha256(&aterm))
    }

    /// Fills in the output paths, in `outputs` and in the environment variable named after each
    /// output, as `derivationStrict` in Nix C++ does.
    ///
    /// * Fixed-output derivation: `makeFixedOutputPath` of its hash and name.
    /// * Input-addressed: the outputs and their environment variables are blanked, the result is
    ///   hashed as in [`Derivation::hash_derivation_modulo`] giving `H`, and each output `o` gets
    ///   the path of fingerprint `output:<o>:sha256:<H>:/nix/store:<name>[-<o>]`.
    ///
    /// Existing output paths are ignored and overwritten. On error `self` is unchanged.
    pub fn compute_output_paths(
        &mut self,
        lookup: impl FnMut(&StorePath) -> Option<[u8; 32]>,
    ) -> Result<(), DerivationError> {
        let name = self.name()?.to_string();
        if let Some(out) = self.fixed_output()? {
            let (method, hash) = out.fixed_hash("out")?;
            let path = make_fixed_output_path(method, &hash, &name, [])?;
            self.set_env("out", path.to_string());
            if let Some(out) = self.outputs.get_mut("out") {
                out.path = Some(path);
            }
            return Ok(());
        }
        if self.outputs.is_empty() {
            return Err(DerivationError::NoOutputs);
        }
        if let Some((output, o)) = self.outputs.iter().find(|(_, o)| !o.hash_algo.is_empty()) {
            return Err(DerivationError::UnsupportedOutput { output: output.clone(), hash_algo: o.hash_algo.clone() });
        }
        let mut blank = self.clone();
        for (output, o) in blank.outputs.iter_mut() {
            o.path = None;
            blank.env.insert(output.clone(), Vec::new());
        }
        let hash = blank.hash_with_inputs_replaced(true, lookup)?;
        let paths = self
            .outputs
            .keys()
            .map(|output| Ok((output.clone(), make_output_path(&hash, output, &name)?)))
            .collect::<Result<Vec<_>, StorePathError>>()?;
        for (output, path) in paths {
            self.set_env(&output, path.to_string());
            if let Some(o) = self.outputs.get_mut(&output) {
                o.path = Some(path);
            }
        }
        Ok(())
    }

    /// The store path of this derivation's `.drv` file (`writeDerivation` in Nix C++): a text path
    /// named `<name>.drv` over the ATerm, referencing the input sources and input derivations.
    pub fn drv_path(&self) -> Result<StorePath, DerivationError> {
        let name = self.name()?;
        if let Some((output, _)) = self.outputs.iter().find(|(_, o)| o.path.is_none()) {
            return Err(DerivationError::MissingOutputPath(output.clone()));
        }
        let references = self.input_srcs.iter().chain(self.input_drvs.keys());
        Ok(make_text_path(&format!("{name}.drv"), &sha256(&self.to_aterm()), references)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Derivation {
        let mut d = Derivation::new("hello", "x86_64-linux", "/bin/sh");
        d.args = vec!["-c".into(), "echo \"hi\"\n\tthere\\ > $out".into()];
        d.set_env("weird", &b"\xff\r\n"[..]);
        d
    }

    #[test]
    fn aterm_round_trips_and_masks() {
        let mut d = sample();
        d.compute_output_paths(|_| None).unwrap();
        let text = d.to_aterm();
        assert_eq!(Derivation::parse_aterm(&text).unwrap(), d);
        let out = d.output_path("out").unwrap().to_string();
        assert!(String::from_utf8_lossy(&text).contains(&format!("(\"out\",\"{out}\")")));
    }

    #[test]
    fn output_paths_do_not_depend_on_previous_values() {
        let mut a = sample();
        a.compute_output_paths(|_| None).unwrap();
        let mut b = a.clone();
        b.compute_output_paths(|_| None).unwrap();
        assert_eq!(a, b);
        let mut c = sample();
        c.set_env("out", "stale");
        c.compute_output_paths(|_| None).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn unknown_inputs_are_errors_and_leave_the_derivation_alone() {
        let mut d = sample();
        let input: StorePath = "/nix/store/00000000000000000000000000000000-dep.drv".parse().unwrap();
        d.input_drvs.insert(input.clone(), ["out".to_string()].into());
        let before = d.clone();
        let err = d.compute_output_paths(|_| None).unwrap_err();
        assert!(matches!(err, DerivationError::UnknownInputDerivation(ref p) if *p == input), "{err}");
        assert_eq!(d, before);
    }

    #[test]
    fn fixed_output_modulo_does_not_consult_inputs() {
        let mut d = Derivation::new("vendor", "x86_64-linux", "/bin/sh");
        let hash = NixHash::sha256([1; 32]);
        d.outputs.insert("out".into(), Output::fixed(FileIngestionMethod::Recursive, &hash));
        d.input_drvs
            .insert("/nix/store/00000000000000000000000000000000-dep.drv".parse().unwrap(), ["out".to_string()].into());
        d.compute_output_paths(|_| panic!("a fixed output's path must not look at inputs")).unwrap();
        let modulo = d.hash_derivation_modulo(|_| panic!("STYLE §4 defect (b): lookup called for a FOD")).unwrap();
        let path = d.output_path("out").unwrap();
        let want = sha256(format!("fixed:out:r:sha256:{}:{path}", hash.to_hex()).as_bytes());
        assert_eq!(modulo, want);
    }

    #[test]
    fn fixed_hash_must_be_on_the_only_output_out() {
        let mut d = sample();
        d.outputs.insert("dev".into(), Output::fixed(FileIngestionMethod::Flat, &NixHash::sha256([0; 32])));
        assert!(matches!(d.fixed_output(), Err(DerivationError::InvalidFixedOutput(ref o)) if o == "dev, out"));
    }

    #[test]
    fn drv_path_needs_output_paths() {
        let d = sample();
        assert!(matches!(d.drv_path(), Err(DerivationError::MissingOutputPath(ref o)) if o == "out"));
    }

    #[test]
    fn parse_rejects_duplicates_and_trailing_data() {
        let mut d = sample();
        d.compute_output_paths(|_| None).unwrap();
        let text = d.to_aterm();
        let mut trailing = text.clone();
        trailing.push(b'\n');
        assert!(matches!(
            Derivation::parse_aterm(&trailing),
            Err(AtermError::Unexpected { expected: "end of input", .. })
        ));
        let s = String::from_utf8_lossy(&text).into_owned();
        let dup = s.replacen("[(\"builder\"", "[(\"builder\",\"x\"),(\"builder\"", 1);
        assert!(matches!(
            Derivation::parse_aterm(dup.as_bytes()),
            Err(AtermError::Duplicate { what: "environment variable", .. })
        ));
        assert!(matches!(
            Derivation::parse_aterm(b"Derive([(\"out\",\"/tmp/x\",\"\",\"\")],[],[],\"\",\"\",[],[])"),
            Err(AtermError::StorePath { pos: 15, .. })
        ));
    }
}
