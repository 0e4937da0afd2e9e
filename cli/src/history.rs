//! Run history: every run (`tg-nix run` with either runner, every cell `tg-nix matrix` runs) is
//! recorded in the state DB when it ends, under `run/<run_id>`; `tg-nix runs list|show` read the
//! records back, and `tg-nix outputs <id>` packs a run's outputs into `<run_id>.tgz`, laid out as
//! `testground collect` does.
//!
//! A record is small (no instance list): the full report stays beside the outputs as result.json,
//! and `runs show` reads it from there.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use tg_nix_builders::nix::state::State;
use tg_nix_runner::Verdict;

use crate::error::{exit, CliError};
use crate::home::Home;
use crate::report::RunReport;

/// The prefix of a run's record in the state DB: `run/<run_id>`.
pub const RUN_PREFIX: &str = "run/";

/// What the history keeps of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub plan: String,
    pub case: String,
    pub runner: String,
    /// The composition's [[runs]] id, or the matrix cell's name.
    pub composition_run: String,
    /// The composition file (the matrix file for a matrix cell); absent for `run --plan`.
    pub composition: Option<PathBuf>,
    /// RFC 3339, UTC, to the second.
    pub started_at: String,
    /// Milliseconds since the Unix epoch: orders runs that started in the same second.
    pub started_ms: u64,
    pub duration_secs: f64,
    /// `success`, `failure` or `canceled`.
    pub outcome: String,
    pub passed: bool,
    pub instances: u64,
    pub instances_passed: u64,
    pub instances_failed: u64,
    /// How many instances got each verdict (`pass`, `failure`, `timeout`, …).
    pub verdicts: BTreeMap<String, u64>,
    pub outputs_dir: PathBuf,
}

impl RunRecord {
    pub fn from_report(r: &RunReport, composition: Option<&Path>) -> RunRecord {
        let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
        for i in &r.instances {
            *verdicts.entry(i.verdict.label().to_string()).or_default() += 1;
        }
        let passed_count = r.instances.iter().filter(|i| i.verdict.is_pass()).count() as u64;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        RunRecord {
            run_id: r.run_id.clone(),
            plan: r.plan.clone(),
            case: r.case.clone(),
            runner: r.runner.clone(),
            composition_run: r.composition_run.clone(),
            composition: composition.map(absolute),
            started_at: r.started_at.clone(),
            started_ms: now_ms.saturating_sub((r.duration_secs * 1000.0) as u64),
            duration_secs: r.duration_secs,
            outcome: r.outcome.clone(),
            passed: r.passed(),
            instances: r.instances.len() as u64,
            instances_passed: passed_count,
            instances_failed: r.instances.len() as u64 - passed_count,
            verdicts,
            outputs_dir: r.outputs_dir.clone(),
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Records a finished run in the history. The one hook, called by `run` (both runners) and by
/// `matrix` for each run of a cell. Never fails: a record that cannot be written is a warning and
/// does not change the run's verdict or exit code.
pub fn record(report: &RunReport, composition: Option<&Path>, home: &Home) {
    let state_dir = home.state_dir();
    let record = RunRecord::from_report(report, composition);
    let key = format!("{RUN_PREFIX}{}", record.run_id);
    // Opening may wait for another tg-nix process: keep an async worker free meanwhile.
    let stored = blocking(|| State::open(&state_dir).and_then(|state| state.put(&key, &record)));
    if let Err(e) = stored {
        eprintln!("warning: run {} was not recorded in the history: {e}", record.run_id);
    }
}

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Every recorded run, newest first.
fn load(home: &Home) -> Result<Vec<RunRecord>, CliError> {
    let dir = home.state_dir();
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let state = State::open(&dir)?;
    let mut runs: Vec<RunRecord> = state.scan_prefix(RUN_PREFIX)?.into_iter().map(|(_, r)| r).collect();
    runs.sort_by(|a, b| (b.started_ms, &b.run_id).cmp(&(a.started_ms, &a.run_id)));
    Ok(runs)
}

/// The record of run `id`: the exact id, or a prefix (at least 4 characters) only one run has.
fn find(home: &Home, id: &str) -> Result<RunRecord, CliError> {
    let dir = home.state_dir();
    let unknown = || {
        CliError::input(
            format!("no run `{id}` in the history ({})", dir.display()),
            "`tg-nix runs list` shows the recorded runs and their ids",
        )
    };
    if id.is_empty() || id.contains('/') || !dir.exists() {
        return Err(unknown());
    }
    let state = State::open(&dir)?;
    if let Some(record) = state.get::<RunRecord>(&format!("{RUN_PREFIX}{id}")) {
        return Ok(record);
    }
    if id.len() < 4 {
        return Err(unknown());
    }
    let mut found = state.scan_prefix::<RunRecord>(&format!("{RUN_PREFIX}{id}"))?;
    match found.len() {
        0 => Err(unknown()),
        1 => Ok(found.remove(0).1),
        n => Err(CliError::input(
            format!("`{id}` is the start of {n} run ids"),
            "give more of the id (`tg-nix runs list` shows them)",
        )),
    }
}

/// `tg-nix runs list`.
pub fn list(home: &Home, plan: Option<&str>, limit: usize, json: bool) -> Result<i32, CliError> {
    let mut runs = load(home)?;
    if let Some(plan) = plan {
        runs.retain(|r| r.plan == plan);
    }
    if limit > 0 {
        runs.truncate(limit);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "runs": runs })).unwrap_or_default());
    } else if runs.is_empty() {
        eprintln!("no runs recorded{}", plan.map(|p| format!(" for plan {p}")).unwrap_or_default());
    } else {
        print!("{}", render_list(&runs));
    }
    Ok(exit::OK)
}

fn render_list(runs: &[RunRecord]) -> String {
    let plan_w = runs.iter().map(|r| r.plan.len()).max().unwrap_or(0).max(4);
    let case_w = runs.iter().map(|r| r.case.len()).max().unwrap_or(0).max(4);
    let mut out = format!(
        "{:<20}  {:<20}  {:<plan_w$}  {:<case_w$}  {:<12}  {:<7}  {:>9}  {:>9}\n",
        "run", "started", "plan", "case", "runner", "verdict", "passed", "duration"
    );
    for r in runs {
        let verdict = match r.outcome.as_str() {
            "success" => "PASS",
            "canceled" => "CANCEL",
            _ => "FAIL",
        };
        let _ = writeln!(
            out,
            "{:<20}  {:<20}  {:<plan_w$}  {:<case_w$}  {:<12}  {:<7}  {:>9}  {:>8.2}s",
            r.run_id,
            r.started_at,
            r.plan,
            r.case,
            r.runner,
            verdict,
            format!("{}/{}", r.instances_passed, r.instances),
            r.duration_secs
        );
    }
    out
}

/// The parts of result.json that `runs show` prints.
#[derive(Deserialize)]
struct StoredResult {
    #[serde(default)]
    groups: BTreeMap<String, StoredGroup>,
    #[serde(default)]
    instances: Vec<StoredInstance>,
}

#[derive(Deserialize)]
struct StoredGroup {
    ok: u64,
    total: u64,
}

#[derive(Deserialize)]
struct StoredInstance {
    group: String,
    group_index: u64,
    verdict: Verdict,
    outputs_dir: PathBuf,
}

/// `tg-nix runs show`.
pub fn show(home: &Home, id: &str, json: bool) -> Result<i32, CliError> {
    let record = find(home, id)?;
    let result_path = record.outputs_dir.join("result.json");
    let result: Option<serde_json::Value> = match std::fs::read(&result_path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("warning: {}: not valid JSON: {e}", result_path.display());
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CliError::infra(format!("cannot read {}: {e}", result_path.display()))),
    };
    if json {
        let doc = serde_json::json!({ "run": record, "result": result });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", render_show(&record, result.as_ref(), &result_path));
    }
    Ok(exit::OK)
}

fn render_show(r: &RunRecord, result: Option<&serde_json::Value>, result_path: &Path) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {} · plan {} · case {} · {}", r.run_id, r.plan, r.case, r.runner);
    let _ = writeln!(out, "  started     {} ({:.2}s)", r.started_at, r.duration_secs);
    if let Some(c) = &r.composition {
        let _ = writeln!(out, "  composition {} (run `{}`)", c.display(), r.composition_run);
    } else {
        let _ = writeln!(out, "  composition --plan (run `{}`)", r.composition_run);
    }
    let verdicts: Vec<String> = r.verdicts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(
        out,
        "  outcome     {} · {}/{} instances passed ({})",
        r.outcome,
        r.instances_passed,
        r.instances,
        verdicts.join(", ")
    );
    let _ = writeln!(out, "  outputs     {}", r.outputs_dir.display());
    let Some(parsed) = result.and_then(|v| serde_json::from_value::<StoredResult>(v.clone()).ok()) else {
        let _ = writeln!(out, "  ({} is missing or unreadable: no per-group details)", result_path.display());
        return out;
    };
    let width = parsed.groups.keys().map(String::len).max().unwrap_or(0);
    for (id, g) in &parsed.groups {
        let mark = if g.ok == g.total { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark} {id:width$}  {}/{} passed", g.ok, g.total);
    }
    for i in parsed.instances.iter().filter(|i| !i.verdict.is_pass()) {
        let _ = writeln!(
            out,
            "  FAIL {}[{}]: {} — {}\n       outputs: {}",
            i.group,
            i.group_index,
            i.verdict.label(),
            i.verdict.reason(),
            i.outputs_dir.display()
        );
    }
    out
}

/// `tg-nix outputs`: writes `<run_id>.tgz` (or `output`) and prints its path.
pub fn outputs(home: &Home, id: &str, output: Option<PathBuf>) -> Result<i32, CliError> {
    let record = find(home, id)?;
    let dest = output.unwrap_or_else(|| PathBuf::from(format!("{}.tgz", record.run_id)));
    let packed = pack(&record.outputs_dir, &record.run_id, &dest)?;
    for skipped in &packed.skipped {
        eprintln!("warning: left out {skipped}");
    }
    eprintln!("run {}: {} files from {}", record.run_id, packed.files, record.outputs_dir.display());
    println!("{}", dest.display());
    Ok(exit::OK)
}

/// What `pack` put in the archive.
#[derive(Debug, Default)]
pub struct Packed {
    pub files: usize,
    /// Entries left out, each with why (symlinks leaving the run's outputs, sockets, …).
    pub skipped: Vec<String>,
}

/// Packs the outputs dir `root` of run `run_id` into the gzipped tar `dest`, laid out as
/// `testground collect` does: every entry under `<run_id>/` (`<run_id>/<group>/<idx>/<file>`, and
/// tg-nix's `<run_id>/result.json`). Deterministic: entries sorted by name, owner 0:0 without
/// names, mode and mtime from the files, gzip header without time or name; packing the same
/// unchanged files twice gives the same bytes. Symlinks are never followed: one that resolves
/// inside `root` is stored as a symlink, any other is left out (listed in `skipped`).
pub fn pack(root: &Path, run_id: &str, dest: &Path) -> Result<Packed, CliError> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::input(
                format!("run {run_id}: its outputs dir {} does not exist any more", root.display()),
                format!("it was deleted or moved; `tg-nix runs show {run_id}` still shows the run's record"),
            ))
        }
        Err(e) => return Err(CliError::infra(format!("cannot read {}: {e}", root.display()))),
    };
    if !meta.is_dir() {
        return Err(CliError::input(
            format!("run {run_id}: {} is not a directory (a symlink is not followed)", root.display()),
            "restore the run's outputs directory, or pack it by hand",
        ));
    }
    let canonical_root = root.canonicalize().map_err(|e| CliError::infra(format!("{}: {e}", root.display())))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "outputs.tgz".into());
    let partial = dest.with_file_name(format!(".{name}.partial"));
    let write_err = |e: std::io::Error| CliError::infra(format!("cannot write {}: {e}", dest.display()));
    let file = File::create(&partial).map_err(write_err)?;
    let gz = flate2::GzBuilder::new().mtime(0).write(BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut packed = Packed::default();
    let top = PathBuf::from(run_id);
    let result = (|| -> Result<(), CliError> {
        append_dir_header(&mut tar, &top, &meta).map_err(write_err)?;
        add_dir(&mut tar, root, &canonical_root, &top, &mut packed)?;
        let gz = tar.into_inner().map_err(write_err)?;
        let mut buf = gz.finish().map_err(write_err)?;
        buf.flush().map_err(write_err)?;
        buf.get_ref().sync_all().map_err(write_err)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            std::fs::rename(&partial, dest).map_err(write_err)?;
            Ok(packed)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

type TarGz = tar::Builder<flate2::write::GzEncoder<BufWriter<File>>>;

fn header(kind: tar::EntryType, meta: &std::fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

fn append_dir_header(tar: &mut TarGz, path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    let mut h = header(tar::EntryType::Directory, meta, 0);
    tar.append_data(&mut h, path, std::io::empty())
}

fn add_dir(tar: &mut TarGz, dir: &Path, root: &Path, at: &Path, packed: &mut Packed) -> Result<(), CliError> {
    let read_err = |p: &Path, e: std::io::Error| CliError::infra(format!("cannot read {}: {e}", p.display()));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| read_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = at.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&path).map_err(|e| read_err(&path, e))?;
        let ty = meta.file_type();
        let tar_err = |e: std::io::Error| CliError::infra(format!("cannot pack {}: {e}", path.display()));
        if ty.is_dir() {
            append_dir_header(tar, &name, &meta).map_err(tar_err)?;
            add_dir(tar, &path, root, &name, packed)?;
        } else if ty.is_file() {
            // O_NOFOLLOW: a file swapped for a symlink since it was listed is not followed.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| read_err(&path, e))?;
            let meta = file.metadata().map_err(|e| read_err(&path, e))?;
            let mut h = header(tar::EntryType::Regular, &meta, meta.len());
            // Exactly the size in the header, even if the file grew since.
            tar.append_data(&mut h, &name, std::io::Read::take(file, meta.len())).map_err(tar_err)?;
            packed.files += 1;
        } else if ty.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| read_err(&path, e))?;
            match path.canonicalize() {
                Ok(resolved) if resolved.starts_with(root) => {
                    let mut h = header(tar::EntryType::Symlink, &meta, 0);
                    tar.append_link(&mut h, &name, &target).map_err(tar_err)?;
                }
                _ => packed.skipped.push(format!(
                    "{}: a symlink to {}, which is not inside the run's outputs",
                    path.display(),
                    target.display()
                )),
            }
        } else {
            packed.skipped.push(format!("{}: not a file, directory or symlink", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn record_round_trip_through_the_state_db() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().to_path_buf()));
        let mut report = sample();
        report.outputs_dir = home.outputs_dir("local_exec", "placebo-rust").join(&report.run_id);
        record(&report, Some(Path::new("plans/placebo-rust/compositions/x.toml")), &home);
        let got = find(&home, &report.run_id).unwrap();
        assert_eq!(
            got,
            RunRecord { started_ms: got.started_ms, ..RunRecord::from_report(&report, got.composition.as_deref()) }
        );
        assert!(got.composition.as_ref().unwrap().is_absolute());
        assert_eq!((got.instances, got.instances_passed, got.instances_failed), (10, 1, 9));
        assert_eq!(got.verdicts["pass"], 1);
        assert_eq!(got.verdicts["failure"], 1);
        assert!(!got.passed);
        // A prefix finds it; an unknown id is bad input (exit 2) pointing at `runs list`.
        assert_eq!(find(&home, &report.run_id[..8]).unwrap().run_id, report.run_id);
        let err = find(&home, "nosuchrun").unwrap_err();
        assert_eq!(err.code, exit::BAD_INPUT);
        assert!(err.hint.unwrap().contains("tg-nix runs list"));
        assert_eq!(load(&home).unwrap().len(), 1);
    }

    fn listing(tgz: &Path) -> Vec<(String, tar::EntryType, String)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(tgz).unwrap()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type();
                let mut body = String::new();
                if kind == tar::EntryType::Symlink {
                    body = e.link_name().unwrap().unwrap().to_string_lossy().into_owned();
                } else {
                    e.read_to_string(&mut body).unwrap();
                }
                (path, kind, body)
            })
            .collect()
    }

    #[test]
    fn pack_lays_out_like_collect_and_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r1");
        for (file, body) in [
            ("result.json", "{}"),
            ("single/1/stdout", "one"),
            ("single/0/stdout", "zero"),
            ("single/0/stderr", ""),
            ("b/0/run.out", "b0"),
        ] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), body).unwrap();
        }
        std::os::unix::fs::symlink("stdout", root.join("single/0/inside")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("single/0/outside")).unwrap();
        std::os::unix::fs::symlink("../../../secret", root.join("single/0/escape")).unwrap();
        std::fs::write(tmp.path().join("secret"), "s").unwrap();

        let a = tmp.path().join("a.tgz");
        let packed = pack(&root, "r1", &a).unwrap();
        assert_eq!(packed.files, 5);
        assert_eq!(packed.skipped.len(), 2, "{:?}", packed.skipped);
        let names: Vec<String> = listing(&a).into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(
            names,
            [
                "r1",
                "r1/b",
                "r1/b/0",
                "r1/b/0/run.out",
                "r1/result.json",
                "r1/single",
                "r1/single/0",
                "r1/single/0/inside",
                "r1/single/0/stderr",
                "r1/single/0/stdout",
                "r1/single/1",
                "r1/single/1/stdout",
            ]
        );
        let entries = listing(&a);
        assert!(entries.contains(&("r1/single/0/stdout".into(), tar::EntryType::Regular, "zero".into())));
        assert!(entries.contains(&("r1/single/0/inside".into(), tar::EntryType::Symlink, "stdout".into())));

        let b = tmp.path().join("b.tgz");
        pack(&root, "r1", &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same files, same bytes");
        assert!(!tmp.path().join(".a.tgz.partial").exists());
    }

    #[test]
    fn pack_refuses_missing_and_symlinked_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let err = pack(&tmp.path().join("gone"), "gone", &tmp.path().join("x.tgz")).unwrap_err();
        assert_eq!(err.code, exit::BAD_INPUT);
        assert!(err.headline.contains("does not exist"), "{}", err.headline);
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("link")).unwrap();
        let err = pack(&tmp.path().join("link"), "link", &tmp.path().join("y.tgz")).unwrap_err();
        assert!(err.headline.contains("not a directory"), "{}", err.headline);
        assert!(!tmp.path().join("x.tgz").exists() && !tmp.path().join("y.tgz").exists());
    }
}
