//! Developer tasks, in Rust rather than shell:
//!
//! - `cargo xtask test`: format check, clippy, bubblewrap installed if missing (the worker's
//!   sandbox), then every test on SQLite and on a throwaway PostgreSQL server started here (as
//!   a non-root user, on a free port) and stopped after.
//! - `cargo xtask bench heartbeat [--workers N] [--measure-s S]`: N simulated workers
//!   heartbeating against one coordinator; prints one JSON line of figures last.
//! - `cargo xtask bench proof`: the CPU prover and the verifier on a CPU-class challenge, in a
//!   release build; prints one JSON line with `verifier_over_prover` last.
//! - `cargo xtask bench scheduler`: placements per second and decision latency at 100,000 and
//!   1,000 devices, and placement cost against the exact optimum and first-fit; one JSON line
//!   last.
//! - `cargo xtask bench ledger`: durable transfers per second in batches on SQLite and
//!   PostgreSQL, and batched over one transaction per transfer on SQLite; one JSON line last.

mod bench;
mod deploy_bench;
mod docker;
mod ledger_bench;
mod postgres;
mod proof_bench;
mod scheduler_bench;

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") if args.get(1).map(String::as_str) == Some("proof") => {
            proof_bench::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("ledger") => {
            ledger_bench::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("deploy") => {
            deploy_bench::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("scheduler") => {
            scheduler_bench::run(&args[2..])
        }
        Some("bench") => bench::run(&args[1..]),
        _ => bail!(
            "usage: cargo xtask test | cargo xtask bench heartbeat [--workers N] [--measure-s S]"
        ),
    }
}

/// Runs a command, failing with its name if it fails.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let description = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {description}"))?;
    if !status.success() {
        bail!("{description} failed with {status}");
    }
    Ok(())
}

/// Runs `cargo xtask bench NAME --here` as a release build, so a benchmark's figures are the
/// shipped code's.
fn rerun_release_bench(name: &str) -> Result<()> {
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "xtask",
        "--",
        "bench",
        name,
        "--here",
    ]))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// The worker's sandbox runs commands under bubblewrap; its tests need it. Installs it when
/// missing; where that is impossible (no root, no package mirror) the sandbox's test says it
/// did not run instead of failing the whole command. True when bubblewrap is there.
fn ensure_bubblewrap() -> bool {
    let installed = || {
        Command::new("bwrap")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if installed() {
        return true;
    }
    eprintln!("xtask: bubblewrap not found; installing it with apt-get");
    let result = run(Command::new("apt-get").arg("update")).and_then(|()| {
        run(Command::new("apt-get").args([
            "install",
            "-y",
            "--no-install-recommends",
            "bubblewrap",
        ]))
    });
    if let Err(error) = result {
        eprintln!("xtask: could not install bubblewrap ({error}); the sandbox test will not run");
    }
    installed()
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The whole check: format, lints, every test on SQLite and a throwaway PostgreSQL. With
/// filters (`cargo xtask test clusters::`), only the tests they name run, on both databases,
/// and format and lints are left out.
fn test(filters: &[String]) -> Result<()> {
    if filters.is_empty() {
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
        run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    let sandbox = ensure_bubblewrap();
    let server = postgres::Server::start()?;
    let mut command = cargo();
    if has_nextest() {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command.args(filters);
    // Stopped when dropped, after the tests.
    let _docker = docker::Engine::for_tests(&mut command);
    command
        .env("FLOTILLA_TEST_POSTGRES_URL", server.admin_url())
        .env("FLOTILLA_REQUIRE_POSTGRES", "1");
    if sandbox {
        command.env("FLOTILLA_REQUIRE_SANDBOX", "1");
    }
    let result = run(&mut command);
    drop(server);
    result
}
