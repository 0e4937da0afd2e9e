//! placebo-rust: one test case per outcome a runner must tell apart. Nothing is tested here
//! except the runner itself: each case joins the run and then ends in one specific way.
//!
//! | case                 | what the instance does                                     | exit      |
//! |----------------------|------------------------------------------------------------|-----------|
//! | `ok`                 | `record_success`                                           | 0         |
//! | `failure`            | `record_failure("placebo failure")`                        | 0         |
//! | `panic`              | the case body panics; the panic is caught and reported     | 1         |
//! |                      | with `record_crash(message, stacktrace)`                   |           |
//! | `exit-after-success` | `record_success`, then exits with status 3                 | 3         |
//! | `no-event`           | records nothing at all                                     | 0         |
//! | `stall`              | sleeps forever (the runner's timeout must end it)          | —         |
//! | `abort`              | `std::process::abort()`: killed by SIGABRT, no event       | signal 6  |
//! | `flaky`              | fails the first time (leaves a marker file in the          | 0         |
//! |                      | `marker_dir` param), `record_success` once the marker is   |           |
//! |                      | there: fails on a first attempt, passes on a retry         |           |
//! | anything else        | `record_failure("unknown test case ...")`                  | 2         |
//!
//! With the verdict rule "success_event AND exit status 0 within the timeout", only `ok` passes.
//!
//! Facts about the `testground` 0.4.0 SDK (crates.io) this plan relies on (read from its source):
//!  - `Client::new_and_init().await -> Result<Client, Box<dyn std::error::Error>>` parses the
//!    environment with clap (all TEST_* variables plus HOSTNAME, INFLUXDB_URL and REDIS_HOST are
//!    required; clap also reads argv, so start the binary without arguments), connects to the
//!    hard-coded `testground-sync-service:5050`, waits for `network-initialized` (TEST_SIDECAR
//!    must be true), then signals and waits on `initialized_global` and
//!    `initialized_group_<group id>`, and prints a `message_event` line with the claimed seqs.
//!  - `client.run_parameters().test_case` is TEST_CASE.
//!  - `record_success(self)`, `record_failure(self, error)` and `record_crash(self, error,
//!    stacktrace)` consume the client (it is `Clone`), print `{"ts":…,"event":{…}}` on stdout,
//!    publish the event to the run's `run_events` topic and return once the sync service
//!    acknowledged it (`Result<(), testground::errors::Error>`). The crash event carries the
//!    group under the key `groups` (sic).
//!  - Nothing is recorded automatically: an instance that never calls `record_*` has no outcome.

use std::backtrace::Backtrace;
use std::process::ExitCode;
use std::sync::Mutex;

use testground::client::Client;

/// The message, location and stack trace of the last panic, saved by the panic hook (a stack
/// trace can only be taken while the panic is happening, not after it was caught).
static LAST_PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

#[tokio::main]
async fn main() -> ExitCode {
    install_panic_hook();

    let client = match Client::new_and_init().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("placebo-rust: could not initialise the Testground client: {e}");
            return ExitCode::FAILURE;
        }
    };

    let case = client.run_parameters().test_case;
    match case.as_str() {
        "ok" => {
            client.record_message("placebo: ok");
            report(client.record_success().await, 0)
        }
        "failure" => report(client.record_failure("placebo failure").await, 0),
        "panic" => {
            // Run the body as its own task: a panic there unwinds that task only, and the join
            // handle hands it back to us.
            let body = tokio::spawn(panicking_body());
            match body.await {
                Ok(()) => report(
                    client
                        .record_failure("placebo: the panic case did not panic")
                        .await,
                    1,
                ),
                Err(e) if e.is_panic() => {
                    let payload = payload_text(&*e.into_panic());
                    let (error, stacktrace) = LAST_PANIC
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .take()
                        .unwrap_or_else(|| (payload, String::from("(no stack trace captured)")));
                    report(client.record_crash(error, stacktrace).await, 1)
                }
                Err(e) => report(
                    client
                        .record_failure(format!("placebo: panic task: {e}"))
                        .await,
                    1,
                ),
            }
        }
        "exit-after-success" => {
            if let Err(e) = client.record_success().await {
                eprintln!("placebo-rust: could not record success: {e}");
            }
            // Exits without unwinding: the success event is out, but the status says otherwise.
            std::process::exit(3)
        }
        "no-event" => {
            eprintln!("placebo-rust: no-event: exiting with status 0 without recording an outcome");
            ExitCode::SUCCESS
        }
        "stall" => {
            client.record_message("placebo: stalling until killed");
            std::future::pending::<()>().await;
            unreachable!("a pending future never completes")
        }
        "abort" => {
            eprintln!("placebo-rust: abort: calling std::process::abort()");
            std::process::abort()
        }
        "flaky" => {
            let params = client.run_parameters();
            let dir = params.test_instance_params.get("marker_dir").cloned().unwrap_or_default();
            if dir.is_empty() {
                return report(client.record_failure("placebo: flaky needs the marker_dir param").await, 2);
            }
            // One marker per instance, so every instance fails once and passes afterwards.
            let name = format!("flaky-{}-{}", params.test_group_id, client.global_seq());
            let marker = std::path::Path::new(&dir).join(name);
            if marker.exists() {
                client.record_message("placebo: flaky: marker found, passing");
                report(client.record_success().await, 0)
            } else {
                let made = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&marker, b"failed once\n"));
                if let Err(e) = made {
                    eprintln!("placebo-rust: flaky: cannot write {}: {e}", marker.display());
                }
                report(client.record_failure("placebo flaky failure (first attempt)").await, 0)
            }
        }
        other => report(
            client
                .record_failure(format!(
                    "placebo: unknown test case {other:?} (known: ok, failure, panic, \
                     exit-after-success, no-event, stall, abort, flaky)"
                ))
                .await,
            2,
        ),
    }
}

/// The body of the `panic` case.
async fn panicking_body() {
    tokio::task::yield_now().await;
    let cases: Vec<&str> = Vec::new();
    // Index out of bounds: a genuine runtime panic rather than a bare `panic!()`.
    let first = cases[0];
    println!("unreachable: {first}");
}

/// Exits with `status` once the event is recorded; if recording failed, says so and exits 1.
fn report(recorded: Result<(), testground::errors::Error>, status: u8) -> ExitCode {
    match recorded {
        Ok(()) => ExitCode::from(status),
        Err(e) => {
            eprintln!("placebo-rust: could not record the outcome: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the default panic output on stderr and also saves message, location and stack trace
/// for `record_crash`.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = payload_text(info.payload());
        let error = match info.location() {
            Some(at) => format!("{message} (at {}:{}:{})", at.file(), at.line(), at.column()),
            None => message,
        };
        let stacktrace = Backtrace::force_capture().to_string();
        *LAST_PANIC
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((error, stacktrace));
        default_hook(info);
    }));
}

/// The text of a panic payload (`&str` or `String` for `panic!`-style panics).
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("(non-string panic payload)")
    }
}
