//! Developer tasks, in Rust rather than shell:
//!
//! - `cargo xtask test`: format check, clippy, bubblewrap (the worker's sandbox) and Chromium
//!   with chromedriver (the dashboard's tests) installed if missing, then every test on SQLite
//!   and on a throwaway PostgreSQL server started here (as a non-root user, on a free port) and
//!   stopped after; node network namespaces that killed workers left are removed at the end.
//! - `cargo xtask ptx`: compiles the CUDA prover's kernels with NVRTC (from PyPI, installed
//!   under `target/test-tools` on first use) into the PTX that `flotilla-proof-cuda` ships.
//! - `cargo xtask gpu-check`: builds the CUDA prover's tests, `flotilla`, the live check and the
//!   proof bench, with a script running them all, into `target/gpu-check/`, to carry to a
//!   machine with an NVIDIA GPU.
//! - `xtask gpu-live --flotilla PATH` (on the GPU machine): `flotilla dev` there, checked end
//!   to end: the GPU found, proven, reporting telemetry and seen by a job in the sandbox.
//! - `cargo xtask bench heartbeat [--workers N] [--measure-s S]`: N simulated workers
//!   heartbeating against one coordinator; prints one JSON line of figures last.
//! - `cargo xtask bench proof`: the CPU prover and the verifier on a CPU-class challenge, in a
//!   release build; prints one JSON line with `verifier_over_prover` last.
//! - `cargo xtask bench scheduler`: placements per second and decision latency at 100,000 and
//!   1,000 devices, and placement cost against the exact optimum and first-fit; one JSON line
//!   last.
//! - `cargo xtask bench ledger`: durable transfers per second in batches on SQLite and
//!   PostgreSQL, and batched over one transaction per transfer on SQLite; one JSON line last.
//! - `cargo xtask bench deploy [--deploys N]`: deploy to running and failover with a release
//!   coordinator and workers; one JSON line last.
//! - `cargo xtask bench tunnel [--transfer-mib N]`: throughput, round-trip latency and memory
//!   per idle connection through `flotilla connect`, against raw TCP and rathole (Noise and
//!   plain TCP, installed under `target/bench-tools/` on first use), in a release build; one
//!   JSON line last.
//! - `cargo xtask bench mesh [--ray-only]`: TCP throughput between two network namespaces over the bare
//!   veth, Flotilla's cluster mesh and wireguard-go (installed with apt-get when missing), as
//!   root, in a release build, then a 2-node Ray cluster's start (alone with `--ray-only`); one
//!   JSON line last.
//! - `cargo xtask bench pages`: p50 and p99 of the dashboard's main pages served by a release
//!   coordinator with 10,000 devices and 1,000 clusters in its SQLite database; one JSON line
//!   last.

mod bench;
mod deploy_bench;
mod docker;
mod gpu_check;
mod gpu_live;
mod ledger_bench;
mod mesh_bench;
mod pages_bench;
mod postgres;
mod proof_bench;
mod ptx;
mod ray_bench;
mod scheduler_bench;
mod tunnel_bench;

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("ptx") => ptx::run(&args[1..]),
        Some("gpu-check") => gpu_check::run(),
        Some("gpu-live") => gpu_live::run(&args[1..]),
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
        Some("bench") if args.get(1).map(String::as_str) == Some("tunnel") => {
            tunnel_bench::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("mesh") => {
            mesh_bench::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("pages") => {
            pages_bench::run(&args[2..])
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
    rerun_release_bench_with(name, &[])
}

/// [`rerun_release_bench`] passing `args` on after `--here`.
fn rerun_release_bench_with(name: &str, args: &[String]) -> Result<()> {
    run(cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "xtask",
            "--",
            "bench",
            name,
            "--here",
        ])
        .args(args))
}

/// Starts a coordinator (`command`, its stdout not yet set) and reads the address it prints
/// first: the process, and its URL.
pub(crate) fn spawn_coordinator(command: &mut Command) -> Result<(std::process::Child, String)> {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting target/release/flotilla")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .context("the coordinator prints its address")?
        .to_owned();
    Ok((child, url))
}

/// A new account with `role`, made through the API.
pub(crate) async fn create_account(
    anonymous: &flotilla_client::Client,
    name: &str,
    role: flotilla_proto::api::Role,
) -> Result<flotilla_proto::api::CreateAccountResponse> {
    let request = flotilla_proto::api::CreateAccountRequest {
        name: name.to_owned(),
        roles: vec![role],
    };
    Ok(anonymous.post("accounts", &request).await?)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Installs Debian `packages` quietly, without their recommended packages (wireguard-tools,
/// for one, recommends a kernel image these machines never boot).
pub(crate) fn apt_install_without_recommends(packages: &[&str]) -> Result<()> {
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null()))
}

/// Installs Debian `packages` when `present` says they are missing; where that is impossible
/// (no root, no package mirror) the tests that need them say they did not run instead of
/// failing the whole command. True when they are there.
fn ensure_installed(what: &str, present: impl Fn() -> bool, packages: &[&str]) -> bool {
    if present() {
        return true;
    }
    eprintln!(
        "xtask: {what} not found; installing {} with apt-get",
        packages.join(" ")
    );
    let result = run(Command::new("apt-get").arg("update")).and_then(|()| {
        run(Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(packages))
    });
    if let Err(error) = result {
        eprintln!("xtask: could not install {what} ({error}); its tests will not run");
    }
    present()
}

fn answers(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The worker's sandbox runs commands under bubblewrap.
fn ensure_bubblewrap() -> bool {
    ensure_installed(
        "bubblewrap",
        || answers("bwrap", "--version"),
        &["bubblewrap"],
    )
}

/// The dashboard's tests drive real headless Chromium through chromedriver.
fn ensure_chromium() -> bool {
    let present = || {
        std::path::Path::new("/usr/bin/chromium").exists() && answers("chromedriver", "--version")
    };
    ensure_installed("chromium", present, &["chromium", "chromium-driver"])
}

/// Ray clusters' tests need Ray's environment: made once under `target/test-tools` (the
/// worker's own code installs it, from PyPI); none where that fails (no network, no Python),
/// and those tests say they did not run.
fn ensure_ray() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools");
    let environments = flotilla_worker::ray::RayEnvironments::new(dir.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    match runtime.block_on(environments.ready()) {
        Ok(_) => Some(dir),
        Err(error) => {
            eprintln!("xtask: no Ray environment ({error}); the Ray tests will not run");
            None
        }
    }
}

/// Removes the network namespaces of nodes whose workers the tests killed (a killed worker
/// cannot remove its nodes' namespaces; a restarted one sweeps its own, but a test's data
/// directory is gone). Only namespaces no process is in are removed.
fn sweep_node_networks() {
    let Ok(listed) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let names = String::from_utf8_lossy(&listed.stdout).into_owned();
    for name in names.lines().filter_map(|l| l.split_whitespace().next()) {
        if !name.starts_with("flotilla-run_") {
            continue;
        }
        let empty = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.is_empty());
        if empty {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
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
    let browser = ensure_chromium();
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
    if browser {
        command.env("FLOTILLA_REQUIRE_BROWSER", "1");
    }
    // The CUDA kernels also build as C++, and run on the host against the Rust prover.
    if ensure_installed("g++", || answers("g++", "--version"), &["g++"]) {
        command.env("FLOTILLA_REQUIRE_CXX", "1");
    }
    if let Some(lib) = ptx::ensure_nvrtc() {
        command
            .env("LD_LIBRARY_PATH", ptx::library_path_with(&lib))
            .env("FLOTILLA_REQUIRE_NVRTC", "1");
    }
    if let Some(dir) = ensure_ray() {
        command
            .env("FLOTILLA_TEST_RAY_DIR", dir)
            .env("FLOTILLA_REQUIRE_RAY", "1");
    }
    let result = run(&mut command);
    drop(server);
    sweep_node_networks();
    result
}
