//! `nix::derive::rust_plan` against real Nix: the `.drv` and output paths it computes for a
//! `nix:rust` unit must be the ones `nix-instantiate` gives the expression `rust::generate` wrote.
//!
//! * `computed_paths_match_nix_instantiate` makes a tg-nix home in a temp dir whose imports are
//!   stand-ins (tiny trees added with `nix-store --add-fixed --recursive sha256` for busybox and
//!   the toolchain, made-up .debs, which `fetchDeb` never needs at evaluation), runs the real
//!   `nix::generate` on a small cargo plan (so the template, the library, builder-rust.sh and
//!   imports.nix are written exactly as for a build), then compares `rust_plan` with
//!   `nix-instantiate` + `nix-store -q --outputs`, for several units: features or none, the plan's
//!   root package or one below it, zero, two or three .debs. It needs Nix and root (it adds to the
//!   store); without them it panics when `CI=true` and otherwise prints a loud SKIPPED.
//! * `real_units_in_the_default_home` (optional) does the same for every unit `tg-nix run`/`gen`
//!   left in the default home (`TG_NIX_HOME`, else `$XDG_DATA_HOME/tg-nix`, else
//!   `~/.local/share/tg-nix`), with the real toolchain and sysroot, evaluated against this
//!   checkout's nix/tg-nix.nix: it reads each unit's inputs back from the `.drv` Nix wrote and
//!   recomputes every path. It checks nothing when there is no such unit.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tg_nix_builders::nix::derive::{rust_plan, rust_plan_derivations, RustPlanInputs};
use tg_nix_builders::nix::setup::{Deb, Imported, Imports, Sysroot};
use tg_nix_builders::nix::state::State;
use tg_nix_builders::store::{Derivation, StorePath};
use tg_nix_builders::BuildRequest;
use tg_nix_model::BuildUnit;

/// Runs a command and returns its trimmed stdout, failing the test with its stderr otherwise.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output").trim_end().to_string()
}

/// Nix and root, or a loud SKIPPED (a panic in CI when the test is `required`).
fn prerequisites(test: &str, required: bool) -> bool {
    let why = if !Command::new("nix-instantiate").arg("--version").output().is_ok_and(|o| o.status.success()) {
        "nix-instantiate not found on PATH; install nix-bin"
    } else if !tg_nix_builders::nix::is_root() {
        "not root: the test adds paths to root's single-user Nix store"
    } else {
        return true;
    };
    if required && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: {why}, and CI=true: this test must run in CI");
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    let banner = format!(
        "\n********************************************************************\n\
         SKIPPED: {test} ({why}).\n\
         ********************************************************************\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), banner.as_bytes());
    false
}

/// `nix-instantiate FILE` (rooted at `root`) and `nix-store -q --outputs`: the .drv and out paths.
fn instantiate(file: &Path, root: &Path) -> Result<(String, String), String> {
    let out = Command::new("nix-instantiate")
        .arg("--add-root")
        .arg(root)
        .arg("--indirect")
        .arg(file)
        .output()
        .map_err(|e| format!("nix-instantiate: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let drv = fs::read_link(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let drv = drv.to_string_lossy().into_owned();
    let outs = run(Command::new("nix-store").args(["-q", "--outputs", &drv]));
    Ok((drv, outs))
}

/// The NAR hash Nix recorded for a valid path, nix-base32 (the form `fixedPath` is given).
fn nar_hash(path: &str) -> String {
    let h = run(Command::new("nix-store").args(["-q", "--hash", path]));
    h.strip_prefix("sha256:").unwrap_or(&h).to_string()
}

/// Where two derivations differ, field by field, for a failure message that can be read.
fn differences(ours: &Derivation, nix: &Derivation) -> String {
    let mut out = String::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push_str(&format!("  {name}:\n    ours: {a}\n    nix:  {b}\n"));
        }
    };
    field("outputs", format!("{:?}", ours.outputs), format!("{:?}", nix.outputs));
    field("inputDrvs", format!("{:?}", ours.input_drvs), format!("{:?}", nix.input_drvs));
    field("inputSrcs", format!("{:?}", ours.input_srcs), format!("{:?}", nix.input_srcs));
    field("system", ours.system.clone(), nix.system.clone());
    field("builder", ours.builder.clone(), nix.builder.clone());
    field("args", format!("{:?}", ours.args), format!("{:?}", nix.args));
    let keys: std::collections::BTreeSet<&String> = ours.env.keys().chain(nix.env.keys()).collect();
    for key in keys {
        let show = |v: Option<&Vec<u8>>| v.map(|v| format!("{:?}", String::from_utf8_lossy(v))).unwrap_or("-".into());
        field(&format!("env {key}"), show(ours.env.get(key)), show(nix.env.get(key)));
    }
    out
}

/// Where our derivation `ours` (one of `all`) differs from Nix's `.drv` file `nix_drv`; for an
/// input derivation whose path differs (paired by name), where that one differs, and so on down.
fn explain(all: &BTreeMap<StorePath, Derivation>, ours: &StorePath, nix_drv: &StorePath, depth: usize) -> String {
    let nix = Derivation::read(Path::new(&nix_drv.to_string())).unwrap_or_else(|e| panic!("{e}"));
    let Some(mine) = all.get(ours) else { return format!("{ours} is not one of ours\n") };
    let indent = "  ".repeat(depth);
    let mut out = format!("{indent}{nix_drv} (ours {ours}):\n");
    for line in differences(mine, &nix).lines() {
        out.push_str(&format!("{indent}{line}\n"));
    }
    for theirs in nix.input_drvs.keys().filter(|p| !mine.input_drvs.contains_key(*p)) {
        if let Some(same_name) = mine.input_drvs.keys().find(|p| p.name() == theirs.name()) {
            out.push_str(&explain(all, same_name, theirs, depth + 1));
        }
    }
    out
}

/// Compares what we compute for `inputs` with the .drv Nix wrote and its output.
fn check(what: &str, inputs: &RustPlanInputs<'_>, nix_drv: &str, nix_out: &str) {
    let (paths, all) = rust_plan_derivations(inputs).unwrap_or_else(|e| panic!("{what}: {e}"));
    if paths.drv.to_string() != nix_drv {
        let nix_path: StorePath = nix_drv.parse().unwrap();
        panic!(
            "{what}: our .drv path {} is not Nix's {nix_drv}; where the derivations differ:\n{}",
            paths.drv,
            explain(&all, &paths.drv, &nix_path, 0)
        );
    }
    let ours = &all[&paths.drv];
    assert_eq!(ours.to_aterm(), fs::read(nix_drv).unwrap(), "{what}: the .drv file's bytes");
    assert_eq!(paths.out.to_string(), nix_out, "{what}: output path");
    assert_eq!(rust_plan(inputs).unwrap_or_else(|e| panic!("{what}: {e}")), paths);
}

// ---- stand-in home ----------------------------------------------------------------------------

/// Writes `files` into `<dir>/<name>/` and adds that tree like `tg-nix setup` adds an import.
fn add_tree(dir: &Path, name: &str, files: &[(&str, &str)]) -> Imported {
    let root = dir.join(name);
    for (file, contents) in files {
        let path = root.join(file);
        fs::create_dir_all(path.parent().expect("a parent")).unwrap();
        fs::write(&path, contents).unwrap();
    }
    let path = run(Command::new("nix-store").args(["--add-fixed", "--recursive", "sha256"]).arg(&root));
    Imported { key: format!("test {name}"), name: name.to_string(), nar_hash: nar_hash(&path), path }
}

/// A cargo package without dependencies (so vendoring needs no network), with a lock file and
/// the features `a` and `b-c`.
fn write_package(dir: &Path, name: &str, main: &str) {
    fs::create_dir_all(dir.join(main).parent().expect("a parent")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[features]\na = []\nb-c = []\n"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("Cargo.lock"),
        format!("# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = 3\n\n[[package]]\nname = \"{name}\"\nversion = \"0.1.0\"\n"),
    )
    .unwrap();
    fs::write(dir.join(main), "fn main() { println!(\"derive\"); }\n").unwrap();
}

struct Case {
    group: &'static str,
    /// build_config.path, when the package is not the plan's root.
    path: Option<&'static str>,
    features: &'static [&'static str],
    debs: usize,
    /// The binary the package has.
    bin: &'static str,
}

const CASES: &[Case] = &[
    Case { group: "plain", path: None, features: &[], debs: 2, bin: "derive-plan" },
    Case { group: "sub-features", path: Some("crates/app"), features: &["a", "b-c"], debs: 3, bin: "app-bin" },
    Case { group: "no-debs", path: None, features: &["a"], debs: 0, bin: "derive-plan" },
];

#[test]
fn computed_paths_match_nix_instantiate() {
    if !prerequisites("computed_paths_match_nix_instantiate", true) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let imports_dir = t.join("imports");
    let busybox = add_tree(&imports_dir, "tg-nix-derive-test-busybox", &[("bin/busybox", "a stand-in for busybox\n")]);
    let rust = add_tree(&imports_dir, "tg-nix-derive-test-rust", &[("bin/rustc", "a stand-in for rustc\n")]);

    // The plan: a package at its root, another one below it.
    let plan_dir = t.join("derive-plan");
    write_package(&plan_dir, "derive-plan", "src/main.rs");
    write_package(&plan_dir.join("crates/app"), "app", "src/bin/app-bin.rs");
    fs::write(plan_dir.join("manifest.toml"), "name = \"derive-plan\"\n").unwrap();

    for case in CASES {
        let home = t.join(format!("home-{}", case.group));
        let (state_dir, work_dir) = (home.join("state"), home.join("work"));
        let debs: Vec<Deb> = (0..case.debs)
            .map(|i| Deb {
                name: format!("tg-nix-derive-test-{i}_1.0-1+deb12u1_amd64.deb"),
                url: format!("http://deb.invalid/pool/t/tg-nix-derive-test-{i}_1.0-1%2bdeb12u1_amd64.deb"),
                sha256: format!("{:064x}", 0xdeb0 + i),
            })
            .collect();
        let imports = Imports {
            busybox: busybox.clone(),
            rust: rust.clone(),
            sysroot: Sysroot { key: "test".into(), debs, path: busybox.path.clone() },
        };
        {
            // The records `Imports::load` reads (setup.rs: KEY_BUSYBOX, KEY_RUST, KEY_SYSROOT).
            // Dropped before generate opens the DB: sled takes an exclusive lock per process.
            let state = State::open(&state_dir).unwrap();
            state.put("import/busybox", &imports.busybox).unwrap();
            state.put("import/rust", &imports.rust).unwrap();
            state.put("import/sysroot", &imports.sysroot).unwrap();
        }

        let mut build_config = toml::Table::new();
        if let Some(p) = case.path {
            build_config.insert("path".into(), p.into());
        }
        if !case.features.is_empty() {
            build_config.insert(
                "features".into(),
                toml::Value::Array(case.features.iter().map(|f| toml::Value::from(*f)).collect()),
            );
        }
        let unit = BuildUnit {
            group_id: case.group.to_string(),
            builder: "nix:rust".into(),
            build_config,
            selectors: Vec::new(),
            dependencies: Vec::new(),
            artifact: None,
        };
        let req = BuildRequest {
            plan_dir: &plan_dir,
            unit: &unit,
            cargo_target_dir: &t.join("target"),
            work_dir: &work_dir,
            state_dir: &state_dir,
            progress: &|_| {},
            locked: None,
        };
        let gen = tg_nix_builders::nix::generate(&req).unwrap_or_else(|e| panic!("{}: generate: {e}", case.group));
        assert_eq!(gen.bin, case.bin);
        let (nix_drv, nix_out) = instantiate(&gen.file, &t.join(format!("{}.drv", case.group)))
            .unwrap_or_else(|e| panic!("{}: nix-instantiate {}:\n{e}", case.group, gen.file.display()));

        let src: StorePath = gen.src.parse().unwrap();
        let deps: StorePath = gen.deps.parse().unwrap();
        let (src_hash, deps_hash) = (nar_hash(&gen.src), nar_hash(&gen.deps));
        let features: Vec<String> = case.features.iter().map(|f| f.to_string()).collect();
        let script = fs::read(gen.file.with_file_name("builder-rust.sh")).unwrap();
        let inputs = RustPlanInputs {
            imports: &imports,
            name: "derive-plan",
            src: (src.name(), &src_hash),
            deps: (deps.name(), &deps_hash),
            package_dir: case.path.unwrap_or("."),
            bin: &gen.bin,
            features: &features,
            builder_script: &script,
        };
        check(case.group, &inputs, &nix_drv, &nix_out);
        assert_eq!(script, tg_nix_builders::nix::derive::BUILDER_SCRIPT, "write_library writes BUILDER_SCRIPT");
        println!("{}: {nix_drv} -> {nix_out}", case.group);
    }
}

// ---- the default home -------------------------------------------------------------------------

fn default_home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("TG_NIX_HOME") {
        return Some(PathBuf::from(h));
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return Some(PathBuf::from(d).join("tg-nix"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/tg-nix"))
}

/// Generated units: `<home>/data/work/nix/<plan>/<group>-<12 hex>.nix`.
fn generated_units(home: &Path) -> Vec<PathBuf> {
    let mut units = Vec::new();
    for plan in fs::read_dir(home.join("data/work/nix")).into_iter().flatten().filter_map(Result::ok) {
        for file in fs::read_dir(plan.path()).into_iter().flatten().filter_map(Result::ok) {
            let name = file.file_name().to_string_lossy().into_owned();
            let key = name.strip_suffix(".nix").and_then(|s| s.rsplit_once('-')).map(|(_, k)| k);
            if key.is_some_and(|k| k.len() == 12 && k.bytes().all(|b| b.is_ascii_hexdigit())) {
                units.push(file.path());
            }
        }
    }
    units.sort();
    units
}

/// The input derivation of `drv` whose output is `out` (an env value of `drv`).
fn input_named(drv: &Derivation, key: &str) -> (String, Derivation) {
    let out = String::from_utf8(drv.env[key].clone()).unwrap();
    let input = drv
        .input_drvs
        .keys()
        .map(|p| Derivation::read(Path::new(&p.to_string())).unwrap())
        .find(|d| d.output_path("out").map(ToString::to_string).as_deref() == Some(out.as_str()))
        .unwrap_or_else(|| panic!("no input derivation gives `{key}` = {out}"));
    (out, input)
}

fn env(drv: &Derivation, key: &str) -> String {
    String::from_utf8(drv.env.get(key).cloned().unwrap_or_default()).unwrap()
}

#[test]
fn real_units_in_the_default_home() {
    let Some(home) = default_home() else { return };
    let units = generated_units(&home);
    if units.is_empty() {
        println!("no generated unit in {}: nothing to check (optional test)", home.display());
        return;
    }
    if !prerequisites("real_units_in_the_default_home (optional)", false) {
        return;
    }
    let library = include_str!("../../nix/tg-nix.nix");
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (i, file) in units.iter().enumerate() {
        // The unit with its imports.nix and builder-rust.sh, but this checkout's library: the home
        // may hold one written by an older tg-nix.
        let dir = tmp.path().join(format!("unit-{i}"));
        fs::create_dir_all(&dir).unwrap();
        for name in ["imports.nix", "builder-rust.sh"] {
            fs::copy(file.with_file_name(name), dir.join(name)).unwrap();
        }
        fs::write(dir.join("tg-nix.nix"), library).unwrap();
        let copy = dir.join(file.file_name().unwrap());
        fs::copy(file, &copy).unwrap();
        let started = Instant::now();
        let instantiated = instantiate(&copy, &tmp.path().join(format!("{i}.drv")));
        let nix_secs = started.elapsed().as_secs_f64();
        let (nix_drv, nix_out) = match instantiated {
            Ok(paths) => paths,
            Err(e) => {
                println!("skipped {}: does not evaluate here: {}", file.display(), e.trim());
                continue;
            }
        };
        // The unit's inputs, read back from what Nix made of it.
        let drv = Derivation::read(Path::new(&nix_drv)).unwrap();
        let fixed = |key: &str| {
            let (path, d) = input_named(&drv, key);
            Imported { key: String::new(), name: env(&d, "name"), path, nar_hash: env(&d, "outputHash") }
        };
        let (_, sysroot) = input_named(&drv, "sysroot");
        let debs = env(&sysroot, "debs")
            .split_whitespace()
            .map(|out| {
                let d = sysroot
                    .input_drvs
                    .keys()
                    .map(|p| Derivation::read(Path::new(&p.to_string())).unwrap())
                    .find(|d| d.output_path("out").is_some_and(|o| o.to_string() == out))
                    .unwrap_or_else(|| panic!("no input of the sysroot gives {out}"));
                Deb { name: env(&d, "name"), url: env(&d, "url"), sha256: env(&d, "outputHash") }
            })
            .collect();
        let imports = Imports {
            busybox: fixed("busybox"),
            rust: fixed("rust"),
            sysroot: Sysroot { key: String::new(), debs, path: String::new() },
        };
        let (src, deps) = (fixed("src"), fixed("deps"));
        let features: Vec<String> =
            env(&drv, "features").split(',').filter(|f| !f.is_empty()).map(String::from).collect();
        let (name, package_dir, bin) = (env(&drv, "name"), env(&drv, "packageDir"), env(&drv, "bin"));
        let script = fs::read(dir.join("builder-rust.sh")).unwrap();
        let inputs = RustPlanInputs {
            imports: &imports,
            name: &name,
            src: (&src.name, &src.nar_hash),
            deps: (&deps.name, &deps.nar_hash),
            package_dir: &package_dir,
            bin: &bin,
            features: &features,
            builder_script: &script,
        };
        check(&file.display().to_string(), &inputs, &nix_drv, &nix_out);
        let started = Instant::now();
        rust_plan(&inputs).unwrap();
        let ours_secs = started.elapsed().as_secs_f64();
        println!(
            "{}: {nix_drv} -> {nix_out} ({} .debs; rust_plan {:.2} ms, nix-instantiate {:.0} ms)",
            file.display(),
            imports.sysroot.debs.len(),
            ours_secs * 1e3,
            nix_secs * 1e3
        );
        checked += 1;
    }
    println!("{checked} of {} generated unit(s) in {} checked", units.len(), home.display());
}
