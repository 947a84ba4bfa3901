//! The runner's tests: the log decoder and order checks everywhere, real nodes where
//! bubblewrap is installed (or FLOTILLA_REQUIRE_SANDBOX=1 insists).

use super::*;

/// How long a test waits for a node's reports.
const REPORT_WAIT_MS_MAX: u64 = 30_000;

pub(super) fn order(run_id: &str, script: &str) -> NodeOrder {
    NodeOrder {
        run_id: run_id.to_owned(),
        cluster_id: "cls_test".to_owned(),
        node_rank: 2,
        node_count: 3,
        attempt: 1,
        argv: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        env: vec![("GREETING".to_owned(), "hello".to_owned())],
        device_ids: vec![],
        peers: vec!["a.example".into(), "b.example".into(), "c.example".into()],
        ports: vec![],
        memory_bytes_max: 512 * 1024 * 1024,
        cpu_millis_max: 0,
        wall_limit_ms: 20_000,
        image: None,
        checkpoint: None,
        mesh: None,
        ray: None,
    }
}

/// A data dir as a worker keeps it (outside /tmp, with its key), that the node's user can
/// pass through to its work dir.
pub(super) fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    crate::identity::load_or_create_key(dir.path()).unwrap();
    dir
}

/// Whether the real-sandbox tests can run here.
pub(super) fn sandbox_available() -> bool {
    if std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    assert!(
        std::env::var("FLOTILLA_REQUIRE_SANDBOX").as_deref() != Ok("1"),
        "FLOTILLA_REQUIRE_SANDBOX=1 but bwrap is missing"
    );
    eprintln!("bwrap is not installed: the runner test did not run");
    false
}

/// The runner's messages up to and including the `NodeExited` of `run_id`.
pub(super) async fn messages_until_exit(runner: &mut Runner, run_id: &str) -> Vec<WorkerMessage> {
    let mut messages = Vec::new();
    let collect = async {
        loop {
            let message = runner.next_message().await;
            let done =
                matches!(&message, WorkerMessage::NodeExited { run_id: id, .. } if id == run_id);
            messages.push(message);
            if done {
                return;
            }
        }
    };
    let waited = tokio::time::timeout(Duration::from_millis(REPORT_WAIT_MS_MAX), collect).await;
    assert!(waited.is_ok(), "no exit for {run_id}: {messages:?}");
    messages
}

/// The stream's text, checking that each chunk starts where the previous one ended.
pub(super) fn stream_text(messages: &[WorkerMessage], which: LogStream) -> String {
    let mut text = String::new();
    let mut expected_offset = 0;
    for message in messages {
        if let WorkerMessage::NodeLog {
            stream,
            offset,
            text: chunk,
            ..
        } = message
            && *stream == which
        {
            assert_eq!(*offset, expected_offset, "{which:?} offset");
            expected_offset += chunk.len() as u64;
            text.push_str(chunk);
        }
    }
    text
}

pub(super) fn exit_of(messages: &[WorkerMessage]) -> (Option<i32>, String, String) {
    match messages.last() {
        Some(WorkerMessage::NodeExited {
            exit_code,
            reason,
            message,
            ..
        }) => (*exit_code, reason.clone(), message.clone()),
        other => panic!("the last message is not an exit: {other:?}"),
    }
}

/// A busy loop for one second of wall time that forks nothing, so all its CPU time is the
/// shell's own; then that wall time (`wall_cs=`, hundredths of a second, from /proc/uptime,
/// which prints two decimals) and the shell's `times`. Plain `sh` builtins: dash and busybox.
pub(super) const BUSY_SECOND_SCRIPT: &str = "read u _ < /proc/uptime; start=${u%.*}${u#*.}; \
     now=$start; while [ $((now - start)) -lt 100 ]; do \
     read u _ < /proc/uptime; now=${u%.*}${u#*.}; done; \
     echo wall_cs=$((now - start)); times";

/// Most CPU time a node limited to a fifth of a core may report per second of wall time:
/// generous (an unlimited loop reports about 1), so a loaded machine cannot make it fail.
pub(super) const BUSY_CPU_PER_WALL_MAX: f64 = 0.6;

/// The wall and CPU seconds (user and system, the shell's and its children's) that
/// [`BUSY_SECOND_SCRIPT`] printed: `times` prints lines of `<min>m<sec>s` pairs.
pub(super) fn busy_seconds(stdout: &str) -> Option<(f64, f64)> {
    let wall_cs: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("wall_cs="))?
        .trim()
        .parse()
        .ok()?;
    let mut cpu_s = 0.0;
    let times_lines = stdout
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_digit()) && line.ends_with('s'));
    for line in times_lines {
        for piece in line.split('s').map(str::trim).filter(|p| !p.is_empty()) {
            let (minutes, seconds) = piece.split_once('m')?;
            cpu_s +=
                minutes.trim().parse::<f64>().ok()? * 60.0 + seconds.trim().parse::<f64>().ok()?;
        }
    }
    Some((wall_cs / 100.0, cpu_s))
}

#[test]
fn the_decoder_keeps_characters_whole_and_offsets_raw() {
    let mut decoder = LogDecoder::default();
    let euro = "€".as_bytes(); // 3 bytes
    let first = decoder.push(&[b'a', euro[0], euro[1]]);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].offset, first[0].text.as_str()), (0, "a"));
    let second = decoder.push(&[euro[2], b'b', 0xff, b'c']);
    assert_eq!(second[0].offset, 1);
    assert_eq!(second[0].text, "€b\u{fffd}c");
    assert_eq!(second[0].raw_bytes, 6);
    let tail = decoder.push(&[0xe2]);
    assert!(tail.is_empty());
    let end = decoder.finish();
    assert_eq!((end[0].offset, end[0].text.as_str()), (7, "\u{fffd}"));
}

#[test]
fn the_decoder_cuts_long_output_into_bounded_pieces() {
    let mut decoder = LogDecoder::default();
    let mut input = "é".repeat(LOG_CHUNK_BYTES_MAX).into_bytes();
    input.extend(std::iter::repeat_n(0xffu8, LOG_CHUNK_BYTES_MAX));
    let pieces = decoder.push(&input);
    let mut offset = 0;
    for piece in &pieces {
        assert!(piece.text.len() <= LOG_CHUNK_BYTES_MAX);
        assert_eq!(piece.offset, offset);
        offset += piece.raw_bytes;
    }
    assert_eq!(offset, input.len() as u64);
}

#[test]
fn a_full_outbox_drops_logs_but_never_an_exit() {
    let outbox = Outbox::default();
    let log = |offset| WorkerMessage::NodeLog {
        run_id: "run_a".into(),
        stream: LogStream::Stdout,
        offset,
        text: "x".into(),
    };
    for offset in 0..LOG_CHUNKS_QUEUED_MAX as u64 {
        assert!(outbox.push(Kind::Log, log(offset)));
    }
    assert!(!outbox.push(Kind::Log, log(999)));
    assert!(outbox.push(
        Kind::Lifecycle,
        exited("run_a", Some(0), "exited", String::new())
    ));
    assert!(outbox.holds_exit_of("run_a"));
    assert_eq!(outbox.pop(), Some(log(0)));
    assert!(outbox.push(Kind::Log, log(1000)), "room again after a pop");
}

#[tokio::test]
async fn bad_orders_are_reported_start_failed() {
    let data = data_dir();
    let mut runner = Runner::with_sandbox(data.path(), Sandbox::without_cgroups()).unwrap();
    runner.set_devices(HashMap::from([("dev_gpu".to_owned(), Some(0))]));
    let mut bad = Vec::new();
    let mut no_program = order("run_noprog", "true");
    no_program.argv.clear();
    bad.push(no_program);
    bad.push(order("../escape", "true"));
    let mut bad_env = order("run_badenv", "true");
    bad_env.env.push(("A=B".into(), "x".into()));
    bad.push(bad_env);
    let mut foreign_device = order("run_foreign", "true");
    foreign_device.device_ids.push("dev_other".into());
    bad.push(foreign_device);
    let mut tiny = order("run_tiny", "true");
    tiny.memory_bytes_max = 1024;
    bad.push(tiny);
    for order in bad {
        let run_id = order.run_id.clone();
        runner.start(order);
        let messages = messages_until_exit(&mut runner, &run_id).await;
        let (code, reason, message) = exit_of(&messages);
        assert_eq!((code, reason.as_str()), (None, "start_failed"), "{run_id}");
        assert!(!message.is_empty());
        assert!(runner.running().is_empty());
    }
}

#[test]
fn the_node_env_has_the_order_and_the_worker_variables() {
    let mut order = order("run_env", "true");
    order.env.push(("FLOTILLA_NODE_RANK".into(), "99".into()));
    let env = node_env(&order, false);
    let get = |name: &str| {
        env.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        get("FLOTILLA_NODE_RANK"),
        vec!["2"],
        "the worker's value only"
    );
    assert_eq!(get("FLOTILLA_PEERS"), vec!["a.example,b.example,c.example"]);
    assert_eq!(get("FLOTILLA_RUN_ID"), vec!["run_env"]);
    assert_eq!(get("GREETING"), vec!["hello"]);
}

#[tokio::test]
async fn a_node_reports_start_output_and_exit() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let mut runner = Runner::new(data.path()).unwrap();
    let script = "echo rank=$FLOTILLA_NODE_RANK of $FLOTILLA_NODE_COUNT peers=$FLOTILLA_PEERS; \
                  echo $GREETING; echo oops >&2; echo second-err >&2; exit 4";
    runner.start(order("run_hello", script));
    assert_eq!(runner.running(), vec!["run_hello".to_owned()]);
    let messages = messages_until_exit(&mut runner, "run_hello").await;
    assert_eq!(
        messages.first(),
        Some(&WorkerMessage::NodeStarted {
            run_id: "run_hello".into()
        })
    );
    let stdout = stream_text(&messages, LogStream::Stdout);
    let stderr = stream_text(&messages, LogStream::Stderr);
    assert_eq!(
        stdout,
        "rank=2 of 3 peers=a.example,b.example,c.example\nhello\n"
    );
    assert_eq!(stderr, "oops\nsecond-err\n");
    assert_eq!(
        exit_of(&messages),
        (Some(4), "exited".to_owned(), String::new())
    );
    assert!(runner.running().is_empty(), "handed over: not running");
    assert!(
        !data.path().join("runs/run_hello").exists(),
        "the work dir is removed"
    );
}

#[tokio::test]
async fn a_node_over_its_memory_limit_is_killed_and_reported() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let mut runner = Runner::new(data.path()).unwrap();
    // The shell holds 150 MB of text in a variable: more than the 64 MiB it may use.
    let script = "x=$(head -c 150000000 /dev/zero | tr '\\0' a); echo survived ${#x}";
    let mut hungry = order("run_hungry", script);
    hungry.memory_bytes_max = 64 * 1024 * 1024;
    runner.start(hungry);
    let messages = messages_until_exit(&mut runner, "run_hungry").await;
    let (code, reason, _) = exit_of(&messages);
    assert!(
        !stream_text(&messages, LogStream::Stdout).contains("survived"),
        "{messages:?}"
    );
    if runner.memory_limited_by_cgroup() {
        assert_eq!(reason, "memory", "{messages:?}");
    } else {
        eprintln!("no writable cgroup: only the address-space limit was checked");
        assert_ne!(code, Some(0), "{messages:?}");
    }
}

#[tokio::test]
async fn stop_kills_a_node_at_once() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let mut runner = Runner::new(data.path()).unwrap();
    runner.start(order("run_sleepy", "echo up; sleep 60 & sleep 60"));
    let started = match runner.next_message().await {
        WorkerMessage::NodeStarted { run_id } => run_id,
        other => panic!("expected a start, got {other:?}"),
    };
    assert_eq!(started, "run_sleepy");
    let stopping = std::time::Instant::now();
    runner.stop("run_sleepy", "terminated by the renter");
    let messages = messages_until_exit(&mut runner, "run_sleepy").await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopping.elapsed()
    );
    let (code, reason, message) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "stopped"));
    assert_eq!(message, "terminated by the renter");
    assert!(runner.running().is_empty());
}

#[tokio::test]
async fn a_node_cannot_read_the_key_nor_write_outside_its_work_dir() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let key = data.path().join("worker.key");
    assert!(key.exists());
    let mut runner = Runner::new(data.path()).unwrap();
    let script = format!(
        "cat {key} 2>/dev/null && echo KEY-READ || echo no-key; \
         cat /work/../worker.key 2>/dev/null && echo KEY-READ || echo no-key-above; \
         echo x > {data}/planted 2>/dev/null && echo PLANTED || echo no-data-dir; \
         touch /usr/planted 2>/dev/null && echo PLANTED || echo usr-read-only; \
         echo x >> /etc/hosts 2>/dev/null && echo PLANTED || echo etc-read-only; \
         echo hi > /work/out && cat /work/out",
        key = key.display(),
        data = data.path().display()
    );
    runner.start(order("run_nosy", &script));
    let messages = messages_until_exit(&mut runner, "run_nosy").await;
    let stdout = stream_text(&messages, LogStream::Stdout);
    for expected in [
        "no-key\n",
        "no-key-above\n",
        "no-data-dir\n",
        "usr-read-only\n",
        "etc-read-only\n",
        "hi\n",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from {stdout}"
        );
    }
    assert!(
        !stdout.contains("KEY-READ") && !stdout.contains("PLANTED"),
        "{stdout}"
    );
    assert!(!data.path().join("planted").exists());
    assert!(!Path::new("/usr/planted").exists());
    assert_eq!(exit_of(&messages).1, "exited");
}

#[tokio::test]
async fn the_same_run_twice_runs_once() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let mut runner = Runner::new(data.path()).unwrap();
    let twice = order("run_twice", "echo ran; sleep 0.3");
    runner.start(twice.clone());
    runner.start(twice.clone());
    assert_eq!(runner.running(), vec!["run_twice".to_owned()]);
    let messages = messages_until_exit(&mut runner, "run_twice").await;
    let starts = messages
        .iter()
        .filter(|m| matches!(m, WorkerMessage::NodeStarted { .. }))
        .count();
    assert_eq!(starts, 1);
    assert_eq!(stream_text(&messages, LogStream::Stdout), "ran\n");
    let first_exit = messages.last().cloned();
    // Ordered again after its end was handed over: the same report, no new run.
    runner.start(twice);
    assert!(runner.running().is_empty());
    let again = messages_until_exit(&mut runner, "run_twice").await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again.last().cloned(), first_exit);
}

#[test]
fn the_busy_loop_report_parses() {
    let dash = "wall_cs=101\n0m0.110000s 0m0.090000s\n0m1.000000s 1m0.000000s\n";
    assert_eq!(busy_seconds(dash), Some((1.01, 61.2)));
    let busybox = "wall_cs=100\n0m 0.11s 0m 0.09s\n0m 0.00s 0m 0.00s\n";
    let (wall_s, cpu_s) = busy_seconds(busybox).unwrap();
    assert_eq!(wall_s, 1.0);
    assert!((cpu_s - 0.2).abs() < 1e-9);
    assert_eq!(busy_seconds("0m0.1s 0m0.1s\n"), None);
}

#[tokio::test]
async fn a_node_gets_no_more_cpu_than_its_limit() {
    if !sandbox_available() {
        return;
    }
    let data = data_dir();
    let mut runner = Runner::new(data.path()).unwrap();
    if !runner.cpu_limited_by_cgroup() {
        eprintln!("no writable cpu cgroup: the CPU limit test did not run");
        return;
    }
    let mut busy = order("run_busy", BUSY_SECOND_SCRIPT);
    busy.cpu_millis_max = 200;
    runner.start(busy);
    let messages = messages_until_exit(&mut runner, "run_busy").await;
    assert_eq!(exit_of(&messages).1, "exited", "{messages:?}");
    let stdout = stream_text(&messages, LogStream::Stdout);
    let (wall_s, cpu_s) = busy_seconds(&stdout).unwrap_or_else(|| panic!("{stdout}"));
    assert!(wall_s >= 1.0, "{stdout}");
    // A fifth of a core: about 0.2 s of CPU per second. Only an upper bound: a loaded machine
    // gives less, never more.
    assert!(
        cpu_s < BUSY_CPU_PER_WALL_MAX * wall_s,
        "{cpu_s} s of CPU in {wall_s} s: {stdout}"
    );
}
