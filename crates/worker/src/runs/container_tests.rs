//! The runner on the container driver, against a real engine: `FLOTILLA_TEST_DOCKER_HOST`
//! (`unix://...`) and `FLOTILLA_TEST_IMAGE` (a busybox image), which `cargo xtask test`
//! provides. Without them these tests say so and pass, unless `FLOTILLA_REQUIRE_CONTAINERS=1`
//! insists.

use std::time::Instant;

use bollard::query_parameters::ListContainersOptionsBuilder;

use super::tests::{
    BUSY_CPU_PER_WALL_MAX, BUSY_SECOND_SCRIPT, busy_seconds, data_dir, exit_of,
    messages_until_exit, order, stream_text,
};
use super::*;

/// An image no registry has, so it cannot be pulled either.
const ABSENT_IMAGE: &str = "flotilla-test/absent:1";

/// The engine and image the tests use.
struct TestEngine {
    socket: PathBuf,
    image: String,
}

fn test_engine() -> Option<TestEngine> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let (Some(host), Some(image)) =
        (var("FLOTILLA_TEST_DOCKER_HOST"), var("FLOTILLA_TEST_IMAGE"))
    {
        let socket = PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host));
        return Some(TestEngine { socket, image });
    }
    assert!(
        std::env::var("FLOTILLA_REQUIRE_CONTAINERS").as_deref() != Ok("1"),
        "FLOTILLA_REQUIRE_CONTAINERS=1 but FLOTILLA_TEST_DOCKER_HOST or FLOTILLA_TEST_IMAGE is unset"
    );
    eprintln!("no test Docker engine (FLOTILLA_TEST_DOCKER_HOST): the container test did not run");
    None
}

fn runner(engine: &TestEngine, data: &Path) -> Runner {
    Runner::with_sandbox(data, Sandbox::without_cgroups())
        .unwrap()
        .with_container_engine(Some(engine.socket.clone()))
}

fn image_order(run_id: &str, script: &str, image: &str) -> NodeOrder {
    let mut order = order(run_id, script);
    order.image = Some(image.to_owned());
    order
}

/// Containers of a run the engine still has, running or not.
async fn containers_of(engine: &TestEngine, run_id: &str) -> usize {
    let docker = Engine::new(engine.socket.clone(), Path::new("/unused"))
        .connect()
        .await
        .unwrap();
    let filter = HashMap::from([(
        "label",
        vec![format!("{}={run_id}", crate::container::LABEL_RUN_ID)],
    )]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filter)
        .build();
    docker.list_containers(Some(options)).await.unwrap().len()
}

/// Waits for the run's `NodeStarted`, keeping what came before it.
async fn until_started(runner: &mut Runner, run_id: &str) {
    let wait = async {
        loop {
            match runner.next_message().await {
                WorkerMessage::NodeStarted { run_id: id } if id == run_id => return,
                WorkerMessage::NodeExited { message, .. } => panic!("ended early: {message}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(30_000), wait)
        .await
        .expect("the node started");
}

#[tokio::test]
async fn an_image_order_without_an_engine_does_not_start() {
    let data = data_dir();
    let mut runner = Runner::with_sandbox(data.path(), Sandbox::without_cgroups())
        .unwrap()
        .with_container_engine(None);
    runner.start(image_order("run_noengine", "true", "busybox"));
    let messages = messages_until_exit(&mut runner, "run_noengine").await;
    let (code, reason, message) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "start_failed"));
    assert_eq!(message, "this worker has no container engine");
}

#[tokio::test]
async fn a_container_node_streams_its_output_and_reports_its_exit() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    let script = "echo rank=$FLOTILLA_NODE_RANK peers=$FLOTILLA_PEERS greeting=$GREETING \
                  uid=$(id -u) cwd=$(pwd) gpus=[$CUDA_VISIBLE_DEVICES]; \
                  echo oops >&2; echo hi > /work/out && cat /work/out; \
                  touch /tmp/scratch && echo tmp-writable; exit 3";
    runner.start(image_order("run_ctr_a", script, &engine.image));
    let messages = messages_until_exit(&mut runner, "run_ctr_a").await;
    assert!(
        matches!(&messages[0], WorkerMessage::NodeStarted { run_id } if run_id == "run_ctr_a"),
        "{messages:?}"
    );
    let stdout = stream_text(&messages, LogStream::Stdout);
    assert!(
        stdout.starts_with(
            "rank=2 peers=a.example,b.example,c.example greeting=hello uid=65534 cwd=/work gpus=[]\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("hi\ntmp-writable\n"), "{stdout}");
    assert_eq!(stream_text(&messages, LogStream::Stderr), "oops\n");
    let (code, reason, _) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (Some(3), "exited"));
    assert_eq!(containers_of(&engine, "run_ctr_a").await, 0);
    assert!(!data.path().join("runs/run_ctr_a").exists());
}

#[tokio::test]
async fn a_container_over_its_memory_limit_ends_for_memory() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    let script = r#"x=$(head -c 200000000 /dev/zero | tr "\0" a); echo survived"#;
    let mut hungry = image_order("run_ctr_mem", script, &engine.image);
    hungry.memory_bytes_max = 32 * 1024 * 1024;
    runner.start(hungry);
    let messages = messages_until_exit(&mut runner, "run_ctr_mem").await;
    let (code, reason, message) = exit_of(&messages);
    assert_eq!(reason, "memory", "{code:?} {message} {messages:?}");
    assert!(!stream_text(&messages, LogStream::Stdout).contains("survived"));
}

#[tokio::test]
async fn a_container_gets_no_more_cpu_than_its_limit() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    let mut busy = image_order("run_ctr_cpu", BUSY_SECOND_SCRIPT, &engine.image);
    busy.cpu_millis_max = 200;
    runner.start(busy);
    let messages = messages_until_exit(&mut runner, "run_ctr_cpu").await;
    assert_eq!(exit_of(&messages).1, "exited", "{messages:?}");
    let stdout = stream_text(&messages, LogStream::Stdout);
    let (wall_s, cpu_s) = busy_seconds(&stdout).unwrap_or_else(|| panic!("{stdout}"));
    assert!(wall_s >= 1.0, "{stdout}");
    // An upper bound only, as for the exec driver: a loaded machine gives less, never more.
    assert!(
        cpu_s < BUSY_CPU_PER_WALL_MAX * wall_s,
        "{cpu_s} s of CPU in {wall_s} s: {stdout}"
    );
}

#[tokio::test]
async fn a_stopped_container_is_killed_and_removed() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    runner.start(image_order("run_ctr_stop", "sleep 60", &engine.image));
    until_started(&mut runner, "run_ctr_stop").await;
    let asked = Instant::now();
    runner.stop("run_ctr_stop", "the renter stopped the cluster");
    let messages = messages_until_exit(&mut runner, "run_ctr_stop").await;
    let (code, reason, message) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "stopped"));
    assert_eq!(message, "the renter stopped the cluster");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(containers_of(&engine, "run_ctr_stop").await, 0);

    let mut slow = image_order("run_ctr_slow", "sleep 60", &engine.image);
    slow.wall_limit_ms = 500;
    runner.start(slow);
    let messages = messages_until_exit(&mut runner, "run_ctr_slow").await;
    let (code, reason, _) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "timed_out"));
    assert_eq!(containers_of(&engine, "run_ctr_slow").await, 0);
}

#[tokio::test]
async fn a_container_sees_nothing_of_the_worker() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    let script = format!(
        "cat {data}/worker.key 2>/dev/null && echo KEY-READ; \
         ls {data} 2>/dev/null && echo DATA-DIR-SEEN; \
         touch /bin/x 2>/dev/null && echo ROOT-WRITABLE; \
         touch /x 2>/dev/null && echo ROOT-WRITABLE; \
         test -e /var/run/docker.sock && echo SOCKET; test -e /run/docker.sock && echo SOCKET; \
         grep -q '^CapEff:.0000000000000000' /proc/self/status && echo no-capabilities; \
         grep -q '^NoNewPrivs:.1' /proc/self/status && echo no-new-privileges; \
         echo done",
        data = data.path().display()
    );
    runner.start(image_order("run_ctr_conf", &script, &engine.image));
    let messages = messages_until_exit(&mut runner, "run_ctr_conf").await;
    let stdout = stream_text(&messages, LogStream::Stdout);
    assert_eq!(stdout, "no-capabilities\nno-new-privileges\ndone\n");
    let (code, reason, _) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (Some(0), "exited"));
}

#[tokio::test]
async fn a_missing_image_is_reported_by_name() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut runner = runner(&engine, data.path());
    runner.start(image_order("run_ctr_absent", "true", ABSENT_IMAGE));
    let messages = messages_until_exit(&mut runner, "run_ctr_absent").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let (code, reason, message) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "start_failed"));
    assert!(
        message.contains(&format!("image {ABSENT_IMAGE} is not on this worker")),
        "{message}"
    );
}

#[tokio::test]
async fn an_unreachable_engine_fails_the_start_clearly() {
    let data = data_dir();
    let socket = data.path().join("no-engine.sock");
    let mut runner = Runner::with_sandbox(data.path(), Sandbox::without_cgroups())
        .unwrap()
        .with_container_engine(Some(socket.clone()));
    runner.start(image_order("run_ctr_down", "true", "busybox"));
    let messages = messages_until_exit(&mut runner, "run_ctr_down").await;
    let (code, reason, message) = exit_of(&messages);
    assert_eq!((code, reason.as_str()), (None, "start_failed"));
    assert!(
        message.contains(&format!(
            "container engine at {} is unreachable",
            socket.display()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn a_new_runner_removes_what_a_previous_one_left() {
    let Some(engine) = test_engine() else { return };
    let data = data_dir();
    let mut old = runner(&engine, data.path());
    old.start(image_order("run_ctr_left", "sleep 60", &engine.image));
    until_started(&mut old, "run_ctr_left").await;
    assert_eq!(containers_of(&engine, "run_ctr_left").await, 1);
    // The next process of this worker: same runs dir, another runner.
    Engine::new(engine.socket.clone(), &data.path().join("runs"))
        .sweep_leftovers()
        .await;
    assert_eq!(containers_of(&engine, "run_ctr_left").await, 0);
    // Another worker's runs dir is not this one's business.
    let other_data = data_dir();
    let mut other = runner(&engine, other_data.path());
    other.start(image_order("run_ctr_other", "sleep 60", &engine.image));
    until_started(&mut other, "run_ctr_other").await;
    Engine::new(engine.socket.clone(), &data.path().join("runs"))
        .sweep_leftovers()
        .await;
    assert_eq!(containers_of(&engine, "run_ctr_other").await, 1);
    other.shutdown().await;
    assert_eq!(containers_of(&engine, "run_ctr_other").await, 0);
    other_data.close().unwrap();
    drop(old);
}

#[tokio::test]
async fn a_container_node_resumes_from_its_checkpoint() {
    use crate::checkpoint::tests::{FakeCoordinator, file_in};
    let Some(engine) = test_engine() else { return };
    let coordinator = FakeCoordinator::start().await;
    let data = data_dir();
    let mut runner = runner(&engine, data.path()).with_coordinator(&coordinator.url, &[]);
    for (attempt, run_id) in ["run_ctr_ck1", "run_ctr_ck2"].into_iter().enumerate() {
        let script = super::checkpoint_tests::COUNTER_SCRIPT;
        let mut node = image_order(run_id, script, &engine.image);
        node.checkpoint = Some(coordinator.add_run(run_id, 60_000));
        runner.start(node);
        let messages = messages_until_exit(&mut runner, run_id).await;
        assert_eq!(exit_of(&messages).1, "exited", "{messages:?}");
        let stdout = stream_text(&messages, LogStream::Stdout);
        assert_eq!(stdout, format!("restored={attempt}\n"), "{messages:?}");
        let newest = coordinator.newest().expect("an archive is kept");
        assert_eq!(file_in(&newest, "ckpt/n"), format!("{}\n", attempt + 1));
    }
}
