//! The container driver's policy, checked without an engine; the runner's container tests
//! (`runs/container_tests.rs`) run real containers.

use super::*;

fn spec(gpu_indices: Vec<u32>) -> SandboxSpec {
    SandboxSpec {
        argv: vec!["sh".into(), "-c".into(), "true".into()],
        env: vec![
            ("FLOTILLA_NODE_RANK".into(), "1".into()),
            ("NVIDIA_VISIBLE_DEVICES".into(), "all".into()),
        ],
        work_dir: PathBuf::from("/srv/data/runs/run_a"),
        gpu_indices,
        memory_bytes_max: 64 << 20,
        cpu_millis_max: 0,
        wall_limit: Duration::from_secs(5),
        network_namespace: None,
        read_only_binds: vec![],
    }
}

#[test]
fn the_policy_mounts_only_the_work_dir_and_drops_every_privilege() {
    let body = create_body(
        "busybox:1",
        &spec(vec![]),
        HashMap::new(),
        EngineFacts::default(),
    );
    let host = body.host_config.clone().unwrap();
    let mounts = host.mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].source.as_deref(), Some("/srv/data/runs/run_a"));
    assert_eq!(mounts[0].target.as_deref(), Some("/work"));
    assert!(host.binds.is_none() && host.volumes_from.is_none());
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.cap_add.is_none());
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_owned()])
    );
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.memory_swap, host.memory);
    assert_eq!(host.pids_limit, Some(PIDS_MAX));
    assert!(host.nano_cpus.is_none(), "no CPU limit ordered: none set");
    assert!(host.device_requests.is_none());
    assert!(host.network_mode.is_none() && host.pid_mode.is_none() && host.ipc_mode.is_none());
    assert_eq!(body.user.as_deref(), Some("65534:65534"));
    assert_eq!(body.working_dir.as_deref(), Some("/work"));
    assert!(body.entrypoint.is_none(), "the image's entrypoint stays");
    assert_eq!(
        body.cmd,
        Some(vec!["sh".into(), "-c".into(), "true".into()])
    );
    let json = serde_json::to_string(&body).unwrap();
    assert!(!json.contains("docker.sock"));
}

#[test]
fn the_node_cannot_choose_its_gpus() {
    let env = container_env(&spec(vec![]));
    assert!(env.contains(&"HOME=/work".to_owned()));
    assert!(env.contains(&"FLOTILLA_NODE_RANK=1".to_owned()));
    // The node's own NVIDIA_VISIBLE_DEVICES=all comes before, and so loses to, the worker's.
    let last = |name: &str| {
        env.iter()
            .rev()
            .find(|v| v.starts_with(&format!("{name}=")))
            .cloned()
    };
    assert_eq!(
        last("NVIDIA_VISIBLE_DEVICES").as_deref(),
        Some("NVIDIA_VISIBLE_DEVICES=void")
    );
    assert_eq!(
        last("CUDA_VISIBLE_DEVICES").as_deref(),
        Some("CUDA_VISIBLE_DEVICES=")
    );

    let gpus = spec(vec![2, 5]);
    let env = container_env(&gpus);
    assert!(env.ends_with(&[
        "CUDA_VISIBLE_DEVICES=0,1".to_owned(),
        "NVIDIA_VISIBLE_DEVICES=2,5".to_owned()
    ]));
    let nvidia = EngineFacts {
        nvidia: true,
        cpus: None,
    };
    let body = create_body("cuda:12", &gpus, HashMap::new(), nvidia);
    let requests = body.host_config.unwrap().device_requests.unwrap();
    assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
    assert_eq!(requests[0].device_ids, Some(vec!["2".into(), "5".into()]));
}

#[test]
fn image_names_that_could_reach_other_endpoints_are_refused() {
    for good in [
        "busybox",
        "flotilla-test/busybox:1",
        "registry.example:5000/team/app:v1.2",
        "nvcr.io/nvidia/pytorch@sha256:0123abcd",
    ] {
        assert!(check_image(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "../containers/x",
        "a/../../b",
        "a?x=1",
        "a b",
        "-x",
        "/abs",
        "a//b",
        "a#b",
        &"a".repeat(IMAGE_CHARS_MAX + 1),
    ] {
        assert!(check_image(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_configured_socket_wins() {
    let configured = Path::new("/run/custom.sock");
    assert_eq!(locate(Some(configured)).as_deref(), Some(configured));
}

#[test]
fn a_cpu_limit_becomes_nano_cpus_within_what_the_engine_takes() {
    let mut limited = spec(vec![]);
    limited.cpu_millis_max = 1_500;
    let facts = EngineFacts {
        nvidia: false,
        cpus: Some(8),
    };
    let host = create_body("busybox:1", &limited, HashMap::new(), facts)
        .host_config
        .unwrap();
    assert_eq!(host.nano_cpus, Some(1_500_000_000));
    assert_eq!(nano_cpus(0, Some(8)), None);
    assert_eq!(nano_cpus(200, None), Some(200_000_000));
    // Over the engine's cores it would refuse the container; under a hundredth of a core too.
    assert_eq!(nano_cpus(16_000, Some(8)), Some(8_000_000_000));
    assert_eq!(nano_cpus(1, Some(8)), Some(10_000_000));
    assert_eq!(nano_cpus(u64::MAX, None), Some(i64::MAX));
}
