//! flake.nix and the nix/ library it exposes (docs/nix.md, "Using tg-nix from a flake"), checked
//! with the real Nix. nixpkgs is not reachable here, so nothing the flake describes is built: the
//! tests parse both files, evaluate every output against a stub nixpkgs (tests/flake/stub-nixpkgs),
//! run `nix flake check --no-build` on a copy of the flake, and pin the .drv paths the library
//! makes for tg-nix's own `imports`, so that giving it another shape (the flake's `toolchain`)
//! cannot silently rebuild every plan tg-nix generated.
//!
//! Nix must be installed (scripts/setup.sh installs nix-bin) and its store usable: root with
//! nix-bin's single-user store, or a Nix daemon. Two tests add small paths to the store. With
//! CI=true a missing requirement fails the test; otherwise it is skipped loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::repo;

fn fixtures() -> PathBuf {
    repo().join("tests/flake")
}

/// Why Nix cannot be used here, if it cannot: not installed, or no store this user may open
/// (nix-bin's single-user store is root's; another user needs a Nix daemon).
fn nix_unusable() -> Option<String> {
    if !Command::new("nix").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("Nix (`nix` not found; scripts/setup.sh installs nix-bin)".to_string());
    }
    match Command::new("nix-instantiate").args(["--eval", "--expr", "1"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "a Nix store it may use (run as root, or with a Nix daemon): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("nix-instantiate ({e}; scripts/setup.sh installs nix-bin)")),
    }
}

/// True when the test can run. Outside CI a missing requirement is said loudly; in CI it fails.
fn ready(test: &str) -> bool {
    common::ready(test, nix_unusable().as_deref())
}

/// Runs `command`, fails the test with its stderr unless it succeeds, and returns its stdout.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?} did not start: {e}"));
    assert!(out.status.success(), "{command:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// `nix` with flakes enabled for this call only: tg-nix's nix.conf leaves them off, and nix-bin
/// 2.8 calls them experimental.
fn nix_flakes(cache: &Path) -> Command {
    let mut command = Command::new("nix");
    command
        .args(["--extra-experimental-features", "nix-command flakes"])
        // Nix's fetcher and evaluation caches, away from the user's.
        .env("XDG_CACHE_HOME", cache);
    command
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}

#[test]
fn flake_and_library_parse() {
    if !ready("flake_and_library_parse") {
        return;
    }
    let root = repo();
    for file in [
        root.join("flake.nix"),
        root.join("nix/tg-nix.nix"),
        fixtures().join("outputs.nix"),
        fixtures().join("library-golden.nix"),
        fixtures().join("stub-nixpkgs/flake.nix"),
    ] {
        run(Command::new("nix-instantiate").arg("--parse").arg(&file));
    }
}

#[test]
fn flake_outputs_evaluate_against_a_stub_nixpkgs() {
    if !ready("flake_outputs_evaluate_against_a_stub_nixpkgs") {
        return;
    }
    let root = repo();
    let v = json(&run(Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(fixtures().join("outputs.nix"))
        .args(["--argstr", "repo", path_str(&root)])));

    // The flake itself: one input, nixpkgs, and an outputs function of it.
    assert_eq!(v["inputNames"], serde_json::json!(["nixpkgs"]), "{v:#}");
    assert!(v["nixpkgsUrl"].as_str().is_some_and(|u| u.starts_with("github:NixOS/nixpkgs/")), "{v:#}");
    assert_eq!(v["outputsIsFunction"], true);
    assert_eq!(v["outputsArgs"], serde_json::json!(["nixpkgs", "self"]));
    assert_eq!(v["outputNames"], serde_json::json!(["apps", "devShells", "lib", "overlays", "packages"]), "{v:#}");
    for output in ["packages", "apps", "devShells"] {
        assert_eq!(v["systems"][output], serde_json::json!(["aarch64-linux", "x86_64-linux"]), "{output}");
    }

    // The package: tg-nix from cli/, the workspace's version and lock, tests off.
    let package = &v["package"];
    assert_eq!(package["pname"], "tg-nix");
    assert_eq!(package["version"], v["workspaceVersion"]);
    assert_eq!(package["doCheck"], false);
    assert_eq!(package["cargoBuildFlags"], serde_json::json!(["--package", "tg-nix"]));
    assert_eq!(package["lockFile"].as_str(), Some(path_str(&root.join("Cargo.lock"))));
    assert_eq!(package["mainProgram"], "tg-nix");
    assert_eq!(package["names"], serde_json::json!(["default", "tg-nix"]));
    assert_eq!(package["tgNixIsDefault"], true);

    // The app runs that package's binary.
    assert_eq!(v["app"]["type"], "app");
    let out = v["app"]["packageOut"].as_str().expect("package out");
    assert_eq!(v["app"]["program"].as_str(), Some(format!("{out}/bin/tg-nix").as_str()));

    let shell: Vec<&str> = v["shellPackages"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    for tool in ["rustc", "cargo", "clippy", "rustfmt", "nix", "iproute2", "docker-client", "nodejs"] {
        assert!(shell.contains(&tool), "the devShell lacks {tool}: {shell:?}");
    }
    assert_eq!(v["overlay"]["pname"], "tg-nix");
    assert_eq!(v["overlay"]["isFunction"], true);

    assert_eq!(
        v["libNames"],
        serde_json::json!(["builderRust", "mkRustPlan", "tgNix", "toolchainFromNixpkgs", "withNixpkgs"])
    );

    // The toolchain from nixpkgs: busybox, rustc + cargo, and a sysroot of stdenv's compiler.
    let toolchain = &v["toolchain"];
    assert_eq!(toolchain["system"], "x86_64-linux");
    assert_eq!(toolchain["busybox"], "busybox");
    assert_eq!(toolchain["rust"], serde_json::json!(["rustc", "cargo"]));
    let script = toolchain["sysrootScript"].as_str().expect("sysroot script");
    for needed in
        ["mkdir -p $out/usr/bin $out/lib $out/lib64", "-gcc-wrapper/bin/*", "/lib/ld-linux-x86-64.so.2 $out/lib64/"]
    {
        assert!(script.contains(needed), "the sysroot script lacks `{needed}`:\n{script}");
    }

    // A plan through lib.mkRustPlan: the library's own derivation with the flake's toolchain, the
    // builder script of templates/, and the plan's lock vendored by nixpkgs.
    let plan = &v["plan"];
    assert_eq!(plan["name"], "stub-plan");
    assert_eq!(plan["system"], "x86_64-linux");
    assert_eq!(plan["bin"], "stub-plan");
    assert_eq!(plan["packageDir"], ".");
    assert_eq!(plan["features"], "x,y");
    assert!(plan["builder"].as_str().is_some_and(|b| b.ends_with("-busybox/bin/busybox")), "{plan:#}");
    let args = plan["args"].as_array().expect("args");
    assert_eq!(args.len(), 3, "{plan:#}");
    assert_eq!(args[0], "sh");
    assert!(args[1].as_str().is_some_and(|s| s.ends_with("-builder-rust.sh")), "{plan:#}");
    assert_eq!(args[2], "outer");
    assert_eq!(plan["script"].as_str(), Some(path_str(&root.join("templates/builder-rust.sh"))));
    assert_eq!(plan["busybox"], "busybox");
    assert_eq!(plan["rust"], "tg-nix-rust");
    assert_eq!(plan["sysroot"], "tg-nix-sysroot-nixpkgs");
    assert_eq!(plan["deps"], "cargo-vendor-dir");
    assert_eq!(plan["depsLockFile"].as_str(), Some(path_str(&fixtures().join("stub-plan/Cargo.lock"))));
    assert_eq!(plan["sameAsByHand"], true, "lib.mkRustPlan differs from tgNix {{ toolchain }}: {plan:#}");

    assert_eq!(v["refuses"], serde_json::json!({ "both": true, "neither": true, "incomplete": true }));
}

#[test]
fn library_says_what_to_pass() {
    if !ready("library_says_what_to_pass") {
        return;
    }
    let library = repo().join("nix/tg-nix.nix");
    for (call, says) in [
        ("{ }", "pass `imports` (imports.nix, written by tg-nix setup) or `toolchain`"),
        ("{ imports = { }; toolchain = { }; }", "not both"),
        ("{ toolchain = { busybox = ./.; }; }", "the toolchain has no rust, sysroot"),
    ] {
        let out = Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--expr"])
            .arg(format!("{{ library }}: (import (/. + library) {call}).busybox"))
            .args(["--argstr", "library", path_str(&library)])
            .output()
            .expect("nix-instantiate runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "tg-nix.nix {call} evaluated");
        assert!(stderr.contains(says), "tg-nix.nix {call}: expected `{says}` in:\n{stderr}");
    }
}

#[test]
fn nix_flake_check_passes_against_a_stub_nixpkgs() {
    if !ready("nix_flake_check_passes_against_a_stub_nixpkgs") {
        return;
    }
    // A copy of what the flake reads, plus two folders its package source must leave out. (The
    // checkout itself would be copied to the store whole, target/ included, or, as a git flake,
    // without the files not committed yet.)
    let dir = tempfile::Builder::new().prefix("tg-nix-flake-").tempdir().expect("temp dir");
    let flake = dir.path().join("flake");
    let root = repo();
    std::fs::create_dir_all(flake.join("docs")).expect("mkdir");
    std::fs::create_dir_all(flake.join("plans/p")).expect("mkdir");
    std::fs::write(flake.join("docs/guide.md"), "left out\n").expect("write");
    std::fs::write(flake.join("plans/p/Cargo.toml"), "left out\n").expect("write");
    for file in ["flake.nix", "Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root.join(file), flake.join(file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    for folder in ["nix", "templates"] {
        std::fs::create_dir_all(flake.join(folder)).expect("mkdir");
        for entry in std::fs::read_dir(root.join(folder)).expect("read_dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), flake.join(folder).join(entry.file_name())).expect("copy");
        }
    }
    let url = format!("path:{}", path_str(&flake));
    let stub = format!("path:{}", path_str(&fixtures().join("stub-nixpkgs")));
    let cache = dir.path().join("cache");
    let with_stub = ["--override-input", "nixpkgs", stub.as_str(), "--no-write-lock-file"];

    // Every output's type as Nix checks it: packages and devShells are derivations, the app names
    // a program, the overlay is `final: prev:`.
    run(nix_flakes(&cache).args(["flake", "check", "--no-build", &url]).args(with_stub));

    let show = json(&run(nix_flakes(&cache).args(["flake", "show", "--json", &url]).args(with_stub)));
    for system in ["x86_64-linux", "aarch64-linux"] {
        assert_eq!(show["packages"][system]["default"]["type"], "derivation", "{show:#}");
        assert_eq!(show["packages"][system]["default"]["name"], "tg-nix-0.1.0", "{show:#}");
        assert_eq!(show["apps"][system]["default"]["type"], "app", "{show:#}");
        assert_eq!(show["devShells"][system]["default"]["type"], "derivation", "{show:#}");
    }
    assert_eq!(show["overlays"]["default"]["type"], "nixpkgs-overlay", "{show:#}");

    // The package's source: what cargo reads, not the plans or the docs.
    let source = run(nix_flakes(&cache)
        .args(["eval", "--raw", &format!("{url}#packages.x86_64-linux.default.stubArgs.src")])
        .args(with_stub));
    let mut names: Vec<String> = std::fs::read_dir(source.trim())
        .unwrap_or_else(|e| panic!("{source}: {e}"))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Cargo.lock", "Cargo.toml", "nix", "templates"]);
}

/// The NAR hashes of the stand-in trees (`tg-nix-golden-<name>/bin/<name>`), and the .drv paths
/// nix/tg-nix.nix gave for them before it took a `toolchain` (tests/flake/library-golden.nix).
/// A library change that moves one of these rebuilds every unit tg-nix generated: make it on
/// purpose, and update them with the new paths.
const GOLDEN_HASHES: [(&str, &str); 4] = [
    ("busybox", "0p04cfrmh37gwsqc2ahivchfmqdl85dw6zkgg6l7ns8x4zpd0q06"),
    ("rust", "1g2akwflphwp016kvdr8rc3srdbrfam4jnchcnx8asr72zd3j0sr"),
    ("src", "0m6pr293765386ns4q4rav67dz4zs0fh3n9s273klh4nz51l31k8"),
    ("deps", "0q66vygdnnb4li5fsnnr4w2d803543qv0w46w2p492448apds0i3"),
];
const GOLDEN_DRVS: [(&str, &str); 6] = [
    ("busybox", "/nix/store/az6kda8rayr8qcf3p30msl131fyyb3r3-tg-nix-golden-busybox.drv"),
    ("rust", "/nix/store/4rnmqnla0y35v0zzl7ag0ccx84rx86cx-tg-nix-golden-rust.drv"),
    ("deb", "/nix/store/wzl1164vpqp8rlkhxf86xiv0g5f1579a-tg-nix-golden-a_1.0-1_amd64.deb.drv"),
    ("sysroot", "/nix/store/iy98rbg74rc9c97fx6c2kiw1vakxq22v-tg-nix-sysroot-debian.drv"),
    ("plan", "/nix/store/zjihp4ci81yr6kdnilhk47d1s1kcffga-tg-nix-golden.drv"),
    ("planDefaults", "/nix/store/7p50c2bj39cr99ja8mpi389cz4rg55ms-tg-nix-golden-defaults.drv"),
];

#[test]
fn library_derivations_for_imports_are_unchanged() {
    if !ready("library_derivations_for_imports_are_unchanged") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("tg-nix-golden-").tempdir().expect("temp dir");
    let mut hashes = serde_json::Map::new();
    for (name, expected) in GOLDEN_HASHES {
        let tree = dir.path().join(format!("tg-nix-golden-{name}"));
        std::fs::create_dir_all(tree.join("bin")).expect("mkdir");
        std::fs::write(tree.join("bin").join(name), format!("tg-nix golden stand-in: {name}\n")).expect("write");
        let hash = run(Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(&tree));
        assert_eq!(hash.trim(), expected, "NAR hash of the stand-in {name}");
        // fixedPath refuses a path that is not in the store.
        run(Command::new("nix-store").args(["--add-fixed", "--recursive", "sha256"]).arg(&tree));
        hashes.insert(name.to_string(), Value::String(hash.trim().to_string()));
    }
    let builder = dir.path().join("builder.sh");
    std::fs::write(&builder, "# stand-in builder\n").expect("write");

    let v = json(&run(Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(fixtures().join("library-golden.nix"))
        .args(["--argstr", "library", path_str(&repo().join("nix/tg-nix.nix"))])
        .args(["--argstr", "hashes", &Value::Object(hashes).to_string()])
        .args(["--argstr", "builderScript", path_str(&builder)])));

    assert_eq!(v["system"], "x86_64-linux");
    for (what, drv) in GOLDEN_DRVS {
        assert_eq!(v[what].as_str(), Some(drv), "the library's {what} derivation changed:\n{v:#}");
    }
    // The same busybox, toolchain and sysroot given as a `toolchain` make the same plan.
    assert_eq!(v["planSwapped"], v["plan"], "{v:#}");
}
