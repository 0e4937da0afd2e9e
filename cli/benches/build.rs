//! `cargo bench -p tg-nix --bench build`: what the hermetic builder costs, measured side by side.
//!
//! 1. No-op build of a 4-unit composition (plans/ping-rust/compositions/ping-nix-4.toml, every unit
//!    already built): `tg-nix build` end to end, against one `nix-store --check-validity` of the
//!    same four outputs. Goal: under 50 ms, at most 2× the validity check.
//! 2. With `TG_NIX_BENCH_COLD=1` (minutes): cold build overhead. A copy of ping-rust with a
//!    one-line change (so its derivation is new; its dependencies are already vendored) built by
//!    `tg-nix build` (stage, hash, nix-build in the sandbox), against a plain
//!    `cargo build --release --offline` of the same copy with the same vendored crates into an
//!    empty target dir. Goal: under 15% overhead.
//!
//! Needs root, Nix and `tg-nix setup` for the home in TG_NIX_HOME (or the default home). Prints
//! figures; asserts nothing about time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 20;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn tg_nix() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tg-nix"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn must(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        eprintln!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// min / median / p90 of `RUNS` runs of `f`.
fn time(mut f: impl FnMut()) -> (Duration, Duration, Duration) {
    let mut all: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    all.sort();
    (all[0], all[RUNS / 2], all[RUNS * 9 / 10])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A copy of `composition` in a temp dir whose `global.plan` is the absolute plan directory (so
/// that the bench's tg-nix.lock is written there, not into the repo).
fn composition_copy(dir: &Path, composition: &str, plan: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join(composition)).expect("composition");
    let text = text.replace("plan = \"..\"", &format!("plan = {:?}", plan.display().to_string()));
    let path = dir.join(Path::new(composition).file_name().expect("file name"));
    std::fs::write(&path, text).expect("write composition");
    path
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here.
    }
    let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
    if !root || Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("bench build: needs root and Nix (scripts/setup.sh), as the nix:rust builder does");
        std::process::exit(1);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = repo().join("plans/ping-rust");
    let composition = composition_copy(dir.path(), "plans/ping-rust/compositions/ping-nix-4.toml", &plan);
    let composition = composition.to_str().expect("utf-8 path");

    eprintln!("warming: tg-nix build of the 4-unit composition (builds whatever is missing) …");
    let t = Instant::now();
    let built: serde_json::Value =
        serde_json::from_str(&must(tg_nix().args(["build", composition, "--json"]))).expect("build --json");
    eprintln!("warm-up took {:.1}s", t.elapsed().as_secs_f64());
    let outs: Vec<String> = built["units"]
        .as_array()
        .expect("units")
        .iter()
        .map(|u| u["out"].as_str().expect("nix unit has an out path").to_string())
        .collect();
    assert_eq!(outs.len(), 4, "{built:#}");

    let (noop_min, noop_med, noop_p90) = time(|| {
        must(tg_nix().args(["build", composition]));
    });
    let (check_min, check_med, check_p90) = time(|| {
        must(Command::new("nix-store").args(["--check-validity"]).args(&outs));
    });
    println!("\nno-op build of a 4-unit nix:rust composition ({RUNS} runs each)");
    println!("  {:<44} {:>8} {:>8} {:>8}", "", "min ms", "median", "p90");
    println!(
        "  {:<44} {:>8.1} {:>8.1} {:>8.1}",
        "tg-nix build (whole process)",
        ms(noop_min),
        ms(noop_med),
        ms(noop_p90)
    );
    println!(
        "  {:<44} {:>8.1} {:>8.1} {:>8.1}",
        "nix-store --check-validity (same 4 outputs)",
        ms(check_min),
        ms(check_med),
        ms(check_p90)
    );
    println!(
        "  ratio (median): {:.2}x   goal: under 50 ms and at most 2x the validity check",
        noop_med.as_secs_f64() / check_med.as_secs_f64()
    );

    if std::env::var("TG_NIX_BENCH_COLD").as_deref() == Ok("1") {
        cold(dir.path(), &plan);
    } else {
        println!("\ncold build overhead: skipped (TG_NIX_BENCH_COLD=1 runs it; about 5 minutes on 2 cores)");
    }
}

/// Cold: a changed copy of the plan through `tg-nix build` vs plain cargo on the same sources.
fn cold(dir: &Path, plan: &Path) {
    let copy = dir.join("ping-rust");
    must(Command::new("cp").arg("-r").arg(plan).arg(&copy));
    let _ = std::fs::remove_dir_all(copy.join("target"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let nonce = format!("// bench {}\n", now.as_nanos());
    let main_rs = copy.join("src/main.rs");
    let mut text = std::fs::read_to_string(&main_rs).expect("main.rs");
    text.push_str(&nonce);
    std::fs::write(&main_rs, text).expect("main.rs");

    let composition = dir.join("cold.toml");
    std::fs::write(
        &composition,
        format!(
            "[global]\nplan = {:?}\ncase = \"ping\"\nbuilder = \"nix:rust\"\nrunner = \"local:exec\"\ntotal_instances = 2\n\n\
             [[groups]]\nid = \"cold\"\ninstances = {{ count = 2 }}\n",
            copy.display().to_string()
        ),
    )
    .expect("composition");
    eprintln!("cold: tg-nix build of a changed copy of ping-rust …");
    let t = Instant::now();
    let built: serde_json::Value =
        serde_json::from_str(&must(tg_nix().args(["build", composition.to_str().expect("utf-8"), "--json"])))
            .expect("build --json");
    let nix_secs = t.elapsed().as_secs_f64();
    assert_eq!(built["units"][0]["outcome"], "built", "{built:#}");

    // The same vendored crates tg-nix used, for cargo's source replacement.
    let gen: serde_json::Value =
        serde_json::from_str(&must(tg_nix().args(["gen", composition.to_str().expect("utf-8"), "--json"])))
            .expect("gen --json");
    let deps = gen["groups"][0]["deps"].as_str().expect("deps").to_string();
    std::fs::create_dir_all(copy.join(".cargo")).expect(".cargo");
    std::fs::write(
        copy.join(".cargo/config.toml"),
        format!("[source.crates-io]\nreplace-with = \"vendored\"\n[source.vendored]\ndirectory = {deps:?}\n"),
    )
    .expect("config.toml");
    eprintln!("cold: cargo build --release --offline of the same copy …");
    let target = dir.join("cargo-target");
    let t = Instant::now();
    must(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--offline", "--locked", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&copy),
    );
    let cargo_secs = t.elapsed().as_secs_f64();
    println!("\ncold build of ping-rust (changed source, dependencies already vendored)");
    println!("  tg-nix build (stage, hash, nix-build in the sandbox): {nix_secs:>7.1} s");
    println!("  cargo build --release --offline (same crates):        {cargo_secs:>7.1} s");
    println!("  overhead: {:+.1}%   goal: under 15%", (nix_secs / cargo_secs - 1.0) * 100.0);
}
