//! The runner with checkpoints, against the in-memory coordinator: a node's final state is
//! uploaded before its end is reported, the next run of its rank starts from it, and uploads
//! come while it runs. Real nodes: where bubblewrap is installed (or
//! FLOTILLA_REQUIRE_SANDBOX=1 insists).

use super::tests::{data_dir, exit_of, messages_until_exit, order, sandbox_available, stream_text};
use super::*;
use crate::checkpoint::tests::{FakeCoordinator, file_in};

/// A node that reads its counter, says it and writes the next one.
pub(super) const COUNTER_SCRIPT: &str = "n=$(cat /work/ckpt/n 2>/dev/null || echo 0); echo restored=$n; \
                              echo $((n + 1)) > /work/ckpt/n";

fn runner_for(data: &Path, coordinator: &FakeCoordinator) -> Runner {
    Runner::new(data)
        .unwrap()
        .with_coordinator(&coordinator.url, &[])
}

#[tokio::test]
async fn a_node_resumes_from_the_final_checkpoint_of_the_run_before() {
    if !sandbox_available() {
        return;
    }
    let coordinator = FakeCoordinator::start().await;
    let data = data_dir();
    let mut runner = runner_for(data.path(), &coordinator);
    for (attempt, run_id) in ["run_ck1", "run_ck2"].into_iter().enumerate() {
        let mut node = order(run_id, COUNTER_SCRIPT);
        node.checkpoint = Some(coordinator.add_run(run_id, 60_000));
        runner.start(node);
        let messages = messages_until_exit(&mut runner, run_id).await;
        assert_eq!(exit_of(&messages).1, "exited", "{messages:?}");
        let stdout = stream_text(&messages, LogStream::Stdout);
        assert_eq!(stdout, format!("restored={attempt}\n"), "{messages:?}");
        // Uploaded before the end was queued, so before the test saw it.
        let puts = coordinator.puts(run_id);
        assert_eq!(puts.len(), 1, "only the final upload at this interval");
        assert_eq!(puts[0].status, 204);
        let newest = coordinator.newest().expect("an archive is kept");
        assert_eq!(file_in(&newest, "ckpt/n"), format!("{}\n", attempt + 1));
    }
}

#[tokio::test]
async fn a_running_node_uploads_every_interval() {
    if !sandbox_available() {
        return;
    }
    let coordinator = FakeCoordinator::start().await;
    let data = data_dir();
    let mut runner = runner_for(data.path(), &coordinator);
    let mut node = order("run_ticks", "echo 1 > /work/ckpt/n; sleep 1.5; echo done");
    node.checkpoint = Some(coordinator.add_run("run_ticks", 200));
    runner.start(node);
    let messages = messages_until_exit(&mut runner, "run_ticks").await;
    assert_eq!(stream_text(&messages, LogStream::Stdout), "done\n");
    let puts = coordinator.puts("run_ticks");
    assert!(
        puts.len() >= 3,
        "2 while running and 1 at the end: {}",
        puts.len()
    );
    assert!(puts.iter().all(|put| put.status == 204));
}

#[tokio::test]
async fn uploads_stop_once_the_run_is_no_longer_live() {
    if !sandbox_available() {
        return;
    }
    let coordinator = FakeCoordinator::start().await;
    let data = data_dir();
    let mut runner = runner_for(data.path(), &coordinator);
    let mut node = order("run_gone", "sleep 1; echo done");
    node.checkpoint = Some(coordinator.add_run("run_gone", 100));
    coordinator.end_run("run_gone");
    runner.start(node);
    let messages = messages_until_exit(&mut runner, "run_gone").await;
    assert_eq!(exit_of(&messages).1, "exited");
    let puts = coordinator.puts("run_gone");
    assert_eq!(puts.len(), 1, "the first 409 ends the uploads: {puts:?}");
    assert_eq!(puts[0].status, 409);
}

#[tokio::test]
async fn a_refused_archive_leaves_the_node_a_fresh_directory() {
    if !sandbox_available() {
        return;
    }
    let coordinator = FakeCoordinator::start().await;
    coordinator.set_newest(b"not a tar.gz".to_vec());
    let data = data_dir();
    let mut runner = runner_for(data.path(), &coordinator);
    let mut node = order("run_bad", COUNTER_SCRIPT);
    node.checkpoint = Some(coordinator.add_run("run_bad", 60_000));
    runner.start(node);
    let messages = messages_until_exit(&mut runner, "run_bad").await;
    assert_eq!(stream_text(&messages, LogStream::Stdout), "restored=0\n");
    assert_eq!(exit_of(&messages).1, "exited");
}
