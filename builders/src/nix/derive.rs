//! The `.drv` and output paths of a generated `nix:rust` unit, computed in Rust without evaluating
//! any Nix.
//!
//! [`rust_plan`] builds, with [`crate::store`], exactly the derivations that `nix/tg-nix.nix`
//! makes for one unit (`templates/rust.nix.hbs`): a recursive fixed-output `fixedPath` for
//! busybox, the toolchain, the staged source and the vendored dependencies; a flat
//! `builtin:fetchurl` `fetchDeb` per Debian package; the sysroot that unpacks them; and
//! `mkRustPlan` itself, whose builder script is a path literal that Nix copies into the store.
//! That is the library called with `imports` (what `tg-nix setup` imported, tg-nix's own builds);
//! a flake's `toolchain` provision, taken from nixpkgs, is not computed here. So
//! "is this unit built?" is one `nix-store --check-validity` of the computed output path, and the
//! lock file can pin both paths.
//!
//! Every value the library sets is mirrored here, attribute by attribute, with the same string
//! coercions Nix applies (`false` → `""`, `true` → `"1"`, a list → its items joined by spaces, a
//! derivation → its output path, a path → its store copy). `builtins.pathExists` in `fixedPath`
//! does not change a derivation. `tests/derive_paths.rs` checks the result against what
//! `nix-instantiate` makes of the files `rust::generate` writes, and a unit test below checks that
//! the sysroot script copied here is still the one in `nix/tg-nix.nix`.
//!
//! This module must not run Nix or touch the store: it only computes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::setup::Imports;
use crate::store::{
    make_fixed_output_path, sha256, start_nar, Derivation, DerivationError, FileIngestionMethod, HashAlgo, NixHash,
    Output, StorePath,
};

/// `system` in nix/tg-nix.nix.
pub const SYSTEM: &str = "x86_64-linux";
/// The store name of the builder script: the file name of the path literal `./builder-rust.sh`.
pub const BUILDER_SCRIPT_NAME: &str = "builder-rust.sh";
/// The builder script `write_library` puts beside every generated unit (`templates/builder-rust.sh`).
pub const BUILDER_SCRIPT: &[u8] = super::setup::BUILDER_RUST.as_bytes();
/// The builder of `fixedPath`: never run, since the path is added before evaluation.
const FIXED_PATH_BUILDER: &str = "/tg-nix-imports-are-added-by-tg-nix-setup";
const SYSROOT_NAME: &str = "tg-nix-sysroot-debian";

/// The script of the Debian sysroot in nix/tg-nix.nix as Nix reads its indented string (`'' … ''`): the
/// common indentation and the line of the closing `''` removed. Its one antiquotation,
/// `${busybox}`, sits between these two parts. The unit test `sysroot_script_is_the_librarys`
/// parses the library and fails when the two differ.
const SYSROOT_SCRIPT: [&str; 2] = [
    "export PATH=",
    "/bin
mkdir -p $out
for d in $debs; do dpkg-deb -x $d $out; done
# Debian's alternatives (cc, gcc) are made by maintainer scripts, not shipped in the .debs.
ln -sf gcc-12 $out/usr/bin/gcc
ln -sf gcc-12 $out/usr/bin/cc
ln -sf x86_64-linux-gnu-gcc-12 $out/usr/bin/x86_64-linux-gnu-gcc
rm -rf $out/usr/share/doc $out/usr/share/man $out/usr/share/info $out/usr/share/locale $out/usr/share/lintian
",
];

/// What the generated expression of one `nix:rust` unit is made of: the values `rust::generate`
/// feeds the template, unescaped.
#[derive(Debug, Clone, Copy)]
pub struct RustPlanInputs<'a> {
    /// What `tg-nix setup` imported (busybox, the toolchain, the sysroot's .debs): imports.nix.
    pub imports: &'a Imports,
    /// The derivation name (`drv_name`: the plan's store name).
    pub name: &'a str,
    /// The staged source: its store name and NAR sha256 (hex or nix-base32, exactly as written in
    /// the expression, since Nix keeps that text in `outputHash`).
    pub src: (&'a str, &'a str),
    /// The vendored dependencies: store name and NAR sha256, as for `src`.
    pub deps: (&'a str, &'a str),
    pub package_dir: &'a str,
    pub bin: &'a str,
    pub features: &'a [String],
    /// The contents of builder-rust.sh beside the expression, a regular file that is not
    /// executable (as `write_library` writes it): [`BUILDER_SCRIPT`].
    pub builder_script: &'a [u8],
}

/// Where a unit's derivation is written and where its output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedPaths {
    /// The `.drv` file, as `nix-instantiate` prints it.
    pub drv: StorePath,
    /// The output `out`, as `nix-store -q --outputs` prints it; the program is `<out>/bin/<bin>`.
    pub out: StorePath,
}

/// The `.drv` and output paths Nix gives the unit described by `inputs` (see the module docs).
///
/// Fails only on inputs Nix would reject too: a hash that is not a SHA-256 in hex or nix-base32,
/// or a name that is not a valid store-path name.
pub fn rust_plan(inputs: &RustPlanInputs<'_>) -> Result<DerivedPaths, DerivationError> {
    Ok(rust_plan_derivations(inputs)?.0)
}

/// The unit's paths, and every derivation of the unit by `.drv` path (its own and all those it
/// depends on), each byte for byte the file Nix writes ([`Derivation::to_aterm`]). For
/// diagnostics and tests; [`rust_plan`] is the usual entry.
pub fn rust_plan_derivations(
    inputs: &RustPlanInputs<'_>,
) -> Result<(DerivedPaths, BTreeMap<StorePath, Derivation>), DerivationError> {
    let mut graph = Graph::default();
    let imports = inputs.imports;
    let busybox = graph.add(fixed_path(&imports.busybox.name, &imports.busybox.nar_hash)?)?;
    let rust = graph.add(fixed_path(&imports.rust.name, &imports.rust.nar_hash)?)?;

    let mut sysroot = Derivation::new(SYSROOT_NAME, SYSTEM, &format!("{}/bin/busybox", busybox.out));
    sysroot.args =
        vec!["sh".into(), "-euc".into(), format!("{}{}{}", SYSROOT_SCRIPT[0], busybox.out, SYSROOT_SCRIPT[1])];
    let mut debs = Vec::with_capacity(imports.sysroot.debs.len());
    for deb in &imports.sysroot.debs {
        let deb = graph.add(fetch_deb(&deb.name, &deb.url, &deb.sha256)?)?;
        deb.use_in(&mut sysroot);
        debs.push(deb.out.to_string());
    }
    sysroot.set_env("debs", debs.join(" "));
    busybox.use_in(&mut sysroot);
    let sysroot = graph.add(sysroot)?;

    let src = graph.add(fixed_path(inputs.src.0, inputs.src.1)?)?;
    let deps = graph.add(fixed_path(inputs.deps.0, inputs.deps.1)?)?;
    let script = added_file_path(BUILDER_SCRIPT_NAME, inputs.builder_script, false)?.to_string();

    let mut plan = Derivation::new(inputs.name, SYSTEM, &format!("{}/bin/busybox", busybox.out));
    for (key, input) in [("busybox", &busybox), ("rust", &rust), ("sysroot", &sysroot), ("src", &src), ("deps", &deps)]
    {
        plan.set_env(key, input.out.to_string());
        input.use_in(&mut plan);
    }
    plan.set_env("bin", inputs.bin);
    plan.set_env("packageDir", inputs.package_dir);
    plan.set_env("features", inputs.features.join(","));
    plan.set_env("script", script.as_str());
    plan.args = vec!["sh".into(), script.clone(), "outer".into()];
    plan.input_srcs.insert(script.parse()?);
    let plan = graph.add(plan)?;
    Ok((DerivedPaths { drv: plan.drv, out: plan.out }, graph.drvs))
}

/// The store path Nix gives a regular file it copies into the store under `name`, as it does for
/// a path literal such as `./builder-rust.sh` (recursive SHA-256 over the file's NAR, type
/// `source`, no references). Only the owner's execute bit of the file matters.
pub fn added_file_path(name: &str, contents: &[u8], executable: bool) -> Result<StorePath, DerivationError> {
    let mut nar = Vec::with_capacity(contents.len() + 128);
    // Writing into memory cannot fail, and the declared size is the slice's own length.
    start_nar(&mut nar)
        .and_then(|node| node.file(executable, contents.len() as u64, &mut &contents[..]))
        .expect("a NAR of an in-memory file is always written");
    let hash = NixHash::sha256(sha256(&nar));
    Ok(make_fixed_output_path(FileIngestionMethod::Recursive, &hash, name, [])?)
}

/// `fixedPath { name, narHash }`: a recursive SHA-256 fixed-output derivation whose output is the
/// path `nix-store --add-fixed --recursive sha256` gives a tree of that name and hash.
fn fixed_path(name: &str, nar_hash: &str) -> Result<Derivation, DerivationError> {
    let hash = NixHash::parse(HashAlgo::Sha256, nar_hash)
        .map_err(|source| DerivationError::Hash { output: format!("out of {name}"), source })?;
    let mut drv = Derivation::new(name, SYSTEM, FIXED_PATH_BUILDER);
    drv.set_env("outputHashMode", "recursive");
    drv.set_env("outputHashAlgo", "sha256");
    drv.set_env("outputHash", nar_hash);
    drv.outputs.insert("out".into(), Output::fixed(FileIngestionMethod::Recursive, &hash));
    Ok(drv)
}

/// `fetchDeb { name, url, sha256 }`: a flat SHA-256 `builtin:fetchurl` derivation.
fn fetch_deb(name: &str, url: &str, sha256_hex: &str) -> Result<Derivation, DerivationError> {
    let hash = NixHash::parse(HashAlgo::Sha256, sha256_hex)
        .map_err(|source| DerivationError::Hash { output: format!("out of {name}"), source })?;
    let mut drv = Derivation::new(name, SYSTEM, "builtin:fetchurl");
    drv.set_env("url", url);
    drv.set_env("urls", url); // a list of one
    drv.set_env("outputHashMode", "flat");
    drv.set_env("outputHashAlgo", "sha256");
    drv.set_env("outputHash", sha256_hex);
    drv.set_env("executable", ""); // false
    drv.set_env("unpack", ""); // false
    drv.set_env("preferLocalBuild", "1"); // true
    drv.outputs.insert("out".into(), Output::fixed(FileIngestionMethod::Flat, &hash));
    Ok(drv)
}

/// A derivation whose paths are known.
struct Built {
    drv: StorePath,
    out: StorePath,
}

impl Built {
    /// Records that `dependent` uses this derivation's `out` (what string context does when its
    /// output path is interpolated or inherited).
    fn use_in(&self, dependent: &mut Derivation) {
        dependent.input_drvs.insert(self.drv.clone(), BTreeSet::from(["out".to_string()]));
    }
}

/// The derivations computed so far, by `.drv` path, and their `hashDerivationModulo`, which
/// dependents need.
#[derive(Default)]
struct Graph {
    drvs: BTreeMap<StorePath, Derivation>,
    modulo: HashMap<StorePath, [u8; 32]>,
}

impl Graph {
    /// Fills in the output paths of `drv`, whose inputs must all have been added before, and
    /// remembers it and its modulo hash.
    fn add(&mut self, mut drv: Derivation) -> Result<Built, DerivationError> {
        drv.compute_output_paths(|p| self.modulo.get(p).copied())?;
        let path = drv.drv_path()?;
        let modulo = drv.hash_derivation_modulo(|p| self.modulo.get(p).copied())?;
        let out = drv.output_path("out").cloned().ok_or_else(|| DerivationError::MissingOutputPath("out".into()))?;
        self.modulo.insert(path.clone(), modulo);
        self.drvs.insert(path.clone(), drv);
        Ok(Built { drv: path, out })
    }
}

#[cfg(test)]
mod tests {
    use super::super::setup::{Deb, Imported, Sysroot, LIBRARY};
    use super::*;

    /// One piece of a Nix indented string: text, or the expression of an antiquotation.
    #[derive(Debug, PartialEq)]
    enum Part {
        Text(String),
        Antiquote(String),
    }

    /// The indented string that starts at `''` in `text`, as Nix 2.8's lexer and
    /// `stripIndentation` make it: the spaces and newline right after the opening `''` dropped,
    /// the smallest indentation of the non-blank lines removed from every line (an antiquotation
    /// counts as non-blank), and a last line of only spaces dropped. Escapes (`''$`, `'''`, `''\`)
    /// are refused: the sysroot script has none, and supporting them would be untested code.
    fn indented_string(text: &str) -> Vec<Part> {
        let body = text.strip_prefix("''").expect("starts with ''");
        let body = match body.find(|c| c != ' ') {
            Some(i) if body[i..].starts_with('\n') => &body[i + 1..],
            _ => body,
        };
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut rest = body;
        loop {
            if let Some(after) = rest.strip_prefix("''") {
                assert!(
                    !after.starts_with(['\'', '$', '\\']),
                    "escape in the sysroot script: teach this parser Nix's indented-string escapes"
                );
                break;
            }
            if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').expect("antiquotation closed");
                parts.push(Part::Text(std::mem::take(&mut current)));
                parts.push(Part::Antiquote(after[..end].to_string()));
                rest = &after[end + 1..];
                continue;
            }
            let c = rest.chars().next().expect("indented string closed");
            current.push(c);
            rest = &rest[c.len_utf8()..];
        }
        parts.push(Part::Text(current));

        // The smallest indentation of a line that has something other than spaces.
        let mut min_indent = usize::MAX;
        let (mut at_line_start, mut indent) = (true, 0);
        for part in &parts {
            match part {
                Part::Antiquote(_) if at_line_start => {
                    at_line_start = false;
                    min_indent = min_indent.min(indent);
                }
                Part::Antiquote(_) => {}
                Part::Text(s) => {
                    for c in s.chars() {
                        match (at_line_start, c) {
                            (true, ' ') => indent += 1,
                            (true, '\n') => indent = 0,
                            (true, _) => {
                                at_line_start = false;
                                min_indent = min_indent.min(indent);
                            }
                            (false, '\n') => (at_line_start, indent) = (true, 0),
                            (false, _) => {}
                        }
                    }
                }
            }
        }
        // Drop that many spaces at the start of every line.
        let (mut at_line_start, mut dropped) = (true, 0);
        let last = parts.len() - 1;
        for (i, part) in parts.iter_mut().enumerate() {
            match part {
                Part::Antiquote(_) => (at_line_start, dropped) = (false, 0),
                Part::Text(s) => {
                    let mut out = String::new();
                    for c in s.chars() {
                        if at_line_start && c == ' ' {
                            dropped += 1;
                            if dropped > min_indent {
                                out.push(c);
                            }
                            continue;
                        }
                        if at_line_start && c != '\n' {
                            at_line_start = false;
                        }
                        if c == '\n' {
                            (at_line_start, dropped) = (true, 0);
                        }
                        out.push(c);
                    }
                    if i == last {
                        if let Some(nl) = out.rfind('\n') {
                            if out[nl + 1..].chars().all(|c| c == ' ') {
                                out.truncate(nl + 1);
                            }
                        }
                    }
                    *s = out;
                }
            }
        }
        parts
    }

    #[test]
    fn indented_strings_lose_their_common_indentation() {
        let parts = indented_string("''\n    a ${x}\n      b\n\n    c\n  '' ];");
        assert_eq!(parts, [Part::Text("a ".into()), Part::Antiquote("x".into()), Part::Text("\n  b\n\nc\n".into())]);
        // A last line with text keeps its spaces; the first line keeps text after ''.
        let parts = indented_string("''a\n  b ''");
        assert_eq!(parts, [Part::Text("a\n  b ".into())]);
    }

    #[test]
    fn sysroot_script_is_the_librarys() {
        // Found by the derivation's name, which no refactoring of the library may change.
        let start = LIBRARY.find(&format!("name = \"{SYSROOT_NAME}\";")).expect("nix/tg-nix.nix names the sysroot");
        let from = start + LIBRARY[start..].find("''").expect("the sysroot script is an indented string");
        let parts = indented_string(&LIBRARY[from..]);
        assert_eq!(
            parts,
            [
                Part::Text(SYSROOT_SCRIPT[0].into()),
                Part::Antiquote("busybox".into()),
                Part::Text(SYSROOT_SCRIPT[1].into())
            ],
            "the sysroot script in nix/tg-nix.nix changed: update SYSROOT_SCRIPT in builders/src/nix/derive.rs"
        );
    }

    /// Paths `nix-instantiate` printed for these derivations on a machine set up by
    /// `tg-nix setup` (content-addressed: the same on every machine).
    #[test]
    fn fixed_inputs_match_recorded_nix_paths() {
        let mut graph = Graph::default();
        let busybox = graph
            .add(fixed_path("busybox-static", "0h2cvvd5bkprq91zyak0149xwqr6p5hc0vw1xrshlzfg6z8dlk29").unwrap())
            .unwrap();
        assert_eq!(busybox.drv.to_string(), "/nix/store/yl37wabmhi9c2dgmrlscyz9p2z56mxqv-busybox-static.drv");
        assert_eq!(busybox.out.to_string(), "/nix/store/z56a0nzrpznn3zcjqsyl9ppklasap124-busybox-static");
        let deb = graph
            .add(
                fetch_deb(
                    "liblsan0_12.2.0-14+deb12u1_amd64.deb",
                    "http://deb.debian.org/debian/pool/main/g/gcc-12/liblsan0_12.2.0-14%2bdeb12u1_amd64.deb",
                    "d234ab339c0ba31a4fb44e2334cf5a8d15b87f2c2f9e74fadfaa877f92dcf22a",
                )
                .unwrap(),
            )
            .unwrap();
        assert_eq!(
            deb.drv.to_string(),
            "/nix/store/0rb37isgq980ck09asrxdjpywz1110cl-liblsan0_12.2.0-14+deb12u1_amd64.deb.drv"
        );
        assert_eq!(
            deb.out.to_string(),
            "/nix/store/f4cf7df1bh6xrkv0vkcqpa8wby00ch8h-liblsan0_12.2.0-14+deb12u1_amd64.deb"
        );
    }

    fn imports(debs: usize) -> Imports {
        let imported = |name: &str| Imported {
            key: String::new(),
            name: name.into(),
            path: String::new(),
            nar_hash: "0h2cvvd5bkprq91zyak0149xwqr6p5hc0vw1xrshlzfg6z8dlk29".into(),
        };
        Imports {
            busybox: imported("busybox-static"),
            rust: imported("rust"),
            sysroot: Sysroot {
                key: String::new(),
                debs: (0..debs)
                    .map(|i| Deb {
                        name: format!("d{i}.deb"),
                        url: format!("http://deb.invalid/d{i}.deb"),
                        sha256: format!("{i:064x}"),
                    })
                    .collect(),
                path: String::new(),
            },
        }
    }

    #[test]
    fn every_input_changes_the_paths() {
        let (two, three) = (imports(2), imports(3));
        let features = ["a".to_string(), "b".to_string()];
        let hash = "1p7dfmf593cisc51z2m51fh93z4105kg239zq1ksm4jk4irh2vpl";
        let base = RustPlanInputs {
            imports: &two,
            name: "p",
            src: ("p-src", hash),
            deps: ("p-deps", hash),
            package_dir: ".",
            bin: "p",
            features: &features,
            builder_script: BUILDER_SCRIPT,
        };
        let paths = rust_plan(&base).unwrap();
        assert_eq!(paths.out.name(), "p");
        assert_eq!(paths.drv.name(), "p.drv");
        let (root, drvs) = rust_plan_derivations(&base).unwrap();
        assert_eq!(root, paths);
        // busybox, rust, 2 debs, sysroot, src, deps, the unit.
        assert_eq!(drvs.len(), 8);
        let drv = &drvs[&paths.drv];
        assert_eq!(drv.env["features"], b"a,b");
        assert_eq!(drv.input_drvs.len(), 5);
        assert_eq!(drv.input_srcs.len(), 1);
        let variants = [
            RustPlanInputs { imports: &three, ..base },
            RustPlanInputs { name: "q", ..base },
            RustPlanInputs { package_dir: "sub", ..base },
            RustPlanInputs { bin: "other", ..base },
            RustPlanInputs { features: &features[..1], ..base },
            RustPlanInputs { src: ("p-src", "0000000000000000000000000000000000000000000000000000"), ..base },
            RustPlanInputs { builder_script: b"#!/bin/sh\n", ..base },
        ];
        for (i, v) in variants.iter().enumerate() {
            let other = rust_plan(v).unwrap();
            assert_ne!(other.out, paths.out, "variant {i}");
            assert_ne!(other.drv, paths.drv, "variant {i}");
        }
    }

    #[test]
    fn bad_hashes_name_the_input() {
        let imports = imports(0);
        let inputs = RustPlanInputs {
            imports: &imports,
            name: "p",
            src: ("p-src", "not-a-hash"),
            deps: ("p-deps", "0000000000000000000000000000000000000000000000000000"),
            package_dir: ".",
            bin: "p",
            features: &[],
            builder_script: BUILDER_SCRIPT,
        };
        let err = rust_plan(&inputs).unwrap_err().to_string();
        assert!(err.contains("out of p-src") && err.contains("not-a-hash"), "{err}");
    }
}
