//! `flotilla dev`: one command, a whole network; a second run resumes it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{BIN, Proc};

fn start_dev(dir: &std::path::Path) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "3",
            "--heartbeat-interval-ms",
            "200",
            "--proof-target-ms",
            "20",
            "--data",
        ])
        .arg(dir)
        .env("FLOTILLA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("flotilla dev network running at http://"),
        "{line}"
    );
    (Proc { child }, line)
}

fn env_file(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(dir.join("dev.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `flotilla devices list --output json` with the supplier key, until `wanted` devices show.
fn list_devices(
    env: &std::collections::BTreeMap<String, String>,
    wanted: usize,
) -> Vec<serde_json::Value> {
    let started = std::time::Instant::now();
    loop {
        let output = Command::new(BIN)
            .args(["devices", "list", "--output", "json"])
            .env("FLOTILLA_URL", &env["FLOTILLA_URL"])
            .env("FLOTILLA_API_KEY", &env["FLOTILLA_SUPPLIER_API_KEY"])
            .env("FLOTILLA_CONFIG_DIR", "/nonexistent")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= wanted && items.iter().all(|d| d["state"] == "idle") {
            return items;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "devices did not all appear: {items:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_starts_writes_env_lists_devices_stops_fast_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, _) = start_dev(dir.path());
    let env = env_file(dir.path());
    for key in [
        "FLOTILLA_URL",
        "FLOTILLA_API_KEY",
        "FLOTILLA_SUPPLIER_API_KEY",
    ] {
        assert!(env.contains_key(key), "dev.env lacks {key}");
    }
    // Workers: RTX 4090x2 + CPU, H100x1, H100x4.
    let devices = list_devices(&env, 8);
    assert_eq!(devices.len(), 8);
    assert_eq!(
        devices.iter().filter(|d| d["kind"] == "cpu").count(),
        1,
        "the real CPU is offered once"
    );
    assert!(
        devices
            .iter()
            .filter(|d| d["kind"] == "gpu")
            .all(|d| d["simulated"] == true)
    );
    // A passing proof, signed by the coordinator, re-checks offline against its published key;
    // a signature from another key, or over another transcript, does not.
    signed_proof_verifies(&env, dir.path());
    deploy_runs_a_cluster(&env);

    // `flotilla login` saves a private profile that later commands use without any env.
    let config = tempfile::tempdir().unwrap();
    let with_profile_only = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .env("FLOTILLA_CONFIG_DIR", config.path())
            .env_remove("FLOTILLA_URL")
            .env_remove("FLOTILLA_API_KEY")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    let key = &env["FLOTILLA_SUPPLIER_API_KEY"];
    with_profile_only(&["login", "--url", &env["FLOTILLA_URL"], "--api-key", key]);
    let profile = std::fs::metadata(config.path().join("profile.json")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&profile.permissions()) & 0o777,
        0o600
    );
    let whoami = with_profile_only(&["whoami", "--output", "json"]);
    let me: serde_json::Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(me["account"]["name"], "demo-supplier");

    // A refused request prints one error line and exits 1.
    let output = Command::new(BIN)
        .args(["devices", "show", "dev_aaaaaaaaaaaaaaaaaaaa"])
        .env("FLOTILLA_URL", &env["FLOTILLA_URL"])
        .env("FLOTILLA_API_KEY", &env["FLOTILLA_SUPPLIER_API_KEY"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: device not found"), "{stderr}");
    let stopped_in = dev
        .interrupt(Duration::from_secs(5))
        .expect("Ctrl-C stops flotilla dev within 5 s");
    assert!(stopped_in < Duration::from_secs(5));

    let (mut dev, _) = start_dev(dir.path());
    let again = env_file(dir.path());
    assert_eq!(
        again["FLOTILLA_SUPPLIER_API_KEY"], env["FLOTILLA_SUPPLIER_API_KEY"],
        "the same accounts"
    );
    let resumed = list_devices(&again, 8);
    let ids = |list: &[serde_json::Value]| {
        let mut ids: Vec<String> = list
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(&resumed),
        ids(&devices),
        "the same devices, not new ones"
    );
    dev.interrupt(Duration::from_secs(5)).expect("stops again");
}

#[test]
fn verify_proof_rechecks_a_transcript_offline_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let verify = |path: &std::path::Path| {
        Command::new(BIN)
            .arg("verify-proof")
            .arg(path)
            .output()
            .unwrap()
    };
    let challenge = flotilla_proof::challenge_with_target(
        &flotilla_proof::cpu_class(),
        [7u8; 32],
        flotilla_proof::CHALLENGE_TARGET_MS,
        2,
    );
    let mut transcript = flotilla_proof::prove_on_cpu(&challenge)
        .unwrap()
        .finish(&"17".repeat(32))
        .unwrap();
    transcript.elapsed_ms = 1_500;
    transcript.answer_elapsed_ms = 40;
    let good = dir.path().join("good.json");
    std::fs::write(&good, serde_json::to_string_pretty(&transcript).unwrap()).unwrap();
    let output = verify(&good);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with(
        "valid: 97 checks of a 256x256 chain of 476 products and 40 checks of a 20 MiB memory fill"
    ));

    let mut tampered = transcript.clone();
    let first = &mut tampered.openings[0].next_values;
    let flipped = if first.starts_with('0') { "1" } else { "0" };
    first.replace_range(0..1, flipped);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&tampered).unwrap()).unwrap();
    let output = verify(&bad);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: invalid: row"), "{stderr}");

    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"not\": \"a transcript\"}").unwrap();
    let output = verify(&garbage);
    assert_eq!(output.status.code(), Some(1));
}

fn signed_proof_verifies(env: &std::collections::BTreeMap<String, String>, dir: &std::path::Path) {
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("FLOTILLA_URL", &env["FLOTILLA_URL"])
            .env("FLOTILLA_API_KEY", &env["FLOTILLA_API_KEY"])
            .output()
            .unwrap()
    };
    let list = run(&["proofs", "list", "--output", "json"]);
    let page: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let passed = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["passed"] == true)
        .expect("a passing proof");
    let id = passed["id"].as_str().unwrap();
    let info: serde_json::Value =
        serde_json::from_slice(&run(&["ledger", "info", "--output", "json"]).stdout).unwrap();
    let key = info["public_key"].as_str().unwrap();
    let signed = run(&["proofs", "get", id, "--signed"]);
    assert!(signed.status.success());
    let path = dir.join("signed-proof.json");
    std::fs::write(&path, &signed.stdout).unwrap();
    let path = path.to_str().unwrap();
    let ok = run(&["verify-proof", path, "--key", key]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout.contains("signed by the coordinator key"),
        "{stdout} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let other_key = "11".repeat(32);
    assert_eq!(
        run(&["verify-proof", path, "--key", &other_key])
            .status
            .code(),
        Some(1)
    );
    let mut document: serde_json::Value = serde_json::from_slice(&signed.stdout).unwrap();
    document["transcript"]["elapsed_ms"] = serde_json::json!(1);
    std::fs::write(dir.join("resigned.json"), document.to_string()).unwrap();
    let forged = run(&[
        "verify-proof",
        dir.join("resigned.json").to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_eq!(
        forged.status.code(),
        Some(1),
        "a changed timing breaks the signature"
    );
}

/// The demo renter deploys a 2-node cluster from the CLI; it runs on the dev workers and
/// completes (where bubblewrap is installed, which the test command sees to).
fn deploy_runs_a_cluster(env: &std::collections::BTreeMap<String, String>) {
    if Command::new("bwrap").arg("--version").output().is_err() {
        assert!(
            std::env::var("FLOTILLA_REQUIRE_SANDBOX").as_deref() != Ok("1"),
            "FLOTILLA_REQUIRE_SANDBOX=1 but bwrap is missing"
        );
        eprintln!("bwrap is not installed: the dev cluster did not run");
        return;
    }
    let try_flotilla = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .env("FLOTILLA_URL", &env["FLOTILLA_URL"])
            .env("FLOTILLA_API_KEY", &env["FLOTILLA_API_KEY"])
            .output()
            .unwrap();
        if output.status.success() {
            Ok(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    };
    let flotilla = |args: &[&str]| try_flotilla(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    // The demo devices are proved and priced a moment after start; until then nothing matches.
    let started = std::time::Instant::now();
    let deployed = loop {
        match try_flotilla(&[
            "deploy",
            "--nodes",
            "2",
            "--hours",
            "1",
            "--yes",
            "--output",
            "json",
            "--",
            "sh",
            "-c",
            "echo hello from $FLOTILLA_NODE_RANK",
        ]) {
            Ok(deployed) => break deployed,
            Err(error) if error.contains("no devices match") => {
                assert!(started.elapsed() < Duration::from_secs(60), "{error}");
                std::thread::sleep(Duration::from_millis(300));
            }
            Err(error) => panic!("deploy: {error}"),
        }
    };
    let id = deployed["id"].as_str().unwrap().to_owned();
    loop {
        let shown = flotilla(&["clusters", "show", &id, "--output", "json"]);
        if shown["state"] == "completed" {
            break;
        }
        assert!(
            shown["state"] == "deploying" || shown["state"] == "running",
            "{shown}"
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
