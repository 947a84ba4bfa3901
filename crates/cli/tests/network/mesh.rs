//! Cluster meshes through the real binaries, with each worker in a network namespace of its
//! own (a veth pair to this machine's namespace, where the coordinator listens): a cluster's
//! nodes reach each other at their overlay addresses, directly or through the coordinator's
//! relay; another cluster's node does not reach them; and a replaced node rejoins the mesh.

use std::process::Command;
use std::time::Duration;

use flotilla_proto::api::{ClusterInfo, ClusterSpec};

use crate::clusters::{
    Market, all_logs, market_flags, market_from, sandbox_ready, spec, until_state, worker_index,
};
use crate::harness::{BIN, Coordinator, Db, eventually};
use crate::on_both_databases;

/// A network namespace for one worker, joined to this machine's by a veth pair on a /30 of
/// 10.66.0.0/16. Deleted when dropped, which must come after its worker process ended.
struct WorkerNamespace {
    name: String,
    host_address: String,
}

/// Prefix of the host ends of the workers' veth pairs.
const HOST_VETH_PREFIX: &str = "flwh";

impl WorkerNamespace {
    fn new(index: u32) -> WorkerNamespace {
        // Distinct per test process (tests of both databases run at once) and per worker.
        assert!(index < 16);
        let slot = (std::process::id() * 16 + index) % (1 << 14);
        let base = u32::from_be_bytes([10, 66, 0, 0]) + slot * 4;
        let host = std::net::Ipv4Addr::from(base + 1).to_string();
        let worker = std::net::Ipv4Addr::from(base + 2).to_string();
        let name = format!("flw-{}-{index}", std::process::id());
        let (host_if, worker_if) = (format!("{HOST_VETH_PREFIX}{slot}"), format!("flwn{slot}"));
        let _ = run("ip", &["netns", "delete", &name]);
        run("ip", &["netns", "add", &name]).unwrap();
        let n = name.as_str();
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &worker_if, "netns", n,
            ],
            &["addr", "add", &format!("{host}/30"), "dev", &host_if],
            &["link", "set", &host_if, "up"],
            &["-n", n, "link", "set", "lo", "up"],
            &[
                "-n",
                n,
                "addr",
                "add",
                &format!("{worker}/30"),
                "dev",
                &worker_if,
            ],
            &["-n", n, "link", "set", &worker_if, "up"],
            &["-n", n, "route", "add", "default", "via", &host],
        ];
        for step in steps {
            run("ip", step).unwrap();
        }
        WorkerNamespace {
            name,
            host_address: host,
        }
    }

    /// The coordinator's URL as seen from inside this namespace.
    fn coordinator_url(&self, coordinator: &Coordinator) -> String {
        coordinator.url.replace("127.0.0.1", &self.host_address)
    }
}

impl Drop for WorkerNamespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Lets this machine forward between the workers' namespaces (a FORWARD chain that drops by
/// default, as Docker leaves it, would keep them apart).
fn forward_between_workers() {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1").unwrap();
    let rule = ["FORWARD", "-i", "flwh+", "-o", "flwh+", "-j", "ACCEPT"];
    let check: Vec<&str> = ["-w", "-C"].iter().chain(&rule).copied().collect();
    if run("iptables", &check).is_err() {
        let insert: Vec<&str> = ["-w", "-I"].iter().chain(&rule).copied().collect();
        run("iptables", &insert).unwrap();
    }
}

/// Rank 1 serves port 7000 on its overlay address, answering with its attempt and the
/// address the connection came from; rank 0 connects to rank 1's overlay address every half
/// second and prints each new answer.
const MESH_PROGRAM: &str = "\
import os, socket, time
rank = int(os.environ['FLOTILLA_NODE_RANK'])
me = os.environ['FLOTILLA_MESH_ADDRESS']
peers = os.environ['FLOTILLA_MESH_ADDRESSES'].split(',')
print('address', me, flush=True)
if rank == 1:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((me, 7000)); s.listen(16)
    while True:
        c, peer = s.accept()
        c.sendall(('rank 1 attempt ' + os.environ['FLOTILLA_ATTEMPT'] + ' saw ' + peer[0]).encode())
        c.close()
last = None
while True:
    try:
        c = socket.create_connection((peers[1], 7000), timeout=2)
        reply = c.recv(200).decode(); c.close()
    except OSError:
        reply = None
    if reply and reply != last:
        print('reached', reply, flush=True); last = reply
    time.sleep(0.5)
";

/// Rank 0 tries each address of `TARGETS` and says whether it got through.
const STRANGER_PROGRAM: &str = "\
import os, socket, time
if os.environ['FLOTILLA_NODE_RANK'] == '0':
    for target in os.environ['TARGETS'].split(','):
        try:
            socket.create_connection((target, 7000), timeout=3).close()
            print('reached', target, flush=True)
        except OSError as e:
            print('isolated from', target, type(e).__name__, flush=True)
time.sleep(3600)
";

/// The text of a cluster's log lines of `rank` and `attempt`.
async fn output_of(market: &Market, cluster: &str, rank: u32, attempt: u32) -> String {
    let logs = all_logs(&market.renter, cluster).await;
    logs.lines
        .iter()
        .filter(|l| l.node_rank == rank && l.attempt == attempt)
        .map(|l| l.text.as_str())
        .collect()
}

/// Waits until `rank`'s output of `attempt` holds `needle`.
async fn until_output(
    market: &Market,
    cluster: &str,
    rank: u32,
    attempt: u32,
    needle: &str,
) -> String {
    until_output_within(market, cluster, rank, attempt, needle, 40).await
}

async fn until_output_within(
    market: &Market,
    cluster: &str,
    rank: u32,
    attempt: u32,
    needle: &str,
    limit_s: u64,
) -> String {
    let found = eventually(Duration::from_secs(limit_s), || async {
        let text = output_of(market, cluster, rank, attempt).await;
        text.contains(needle).then_some(text)
    })
    .await;
    match found {
        Some(text) => text,
        None => {
            let logs = all_logs(&market.renter, cluster).await;
            let everything: Vec<String> = logs
                .lines
                .iter()
                .map(|l| format!("[{} {}] {}", l.node_rank, l.attempt, l.text))
                .collect();
            let info: Option<ClusterInfo> =
                market.renter.get(&format!("clusters/{cluster}")).await.ok();
            let state = info.map(|i| {
                let nodes: Vec<String> = i
                    .nodes
                    .iter()
                    .map(|n| format!("{}/{} {} {}", n.rank, n.attempt, n.state, n.reason))
                    .collect();
                format!("{} ({:?}); nodes {nodes:?}", i.state, i.ended_because)
            });
            panic!(
                "rank {rank} attempt {attempt} never printed {needle:?}; the cluster: {state:?}; \
                 its log:\n{}",
                everything.concat()
            )
        }
    }
}

fn service(nodes: u32, program: &str) -> ClusterSpec {
    ClusterSpec {
        kind: "service".into(),
        ..spec(nodes, &["python3", "-c", program])
    }
}

async fn meshed_market(db: Db, spaces: &[WorkerNamespace], relay_only: bool) -> Market {
    let extra: &[&str] = if relay_only {
        &["--mesh-relay-only"]
    } else {
        &[]
    };
    meshed_market_with(db, spaces, "500", extra, &[]).await
}

/// A market whose workers live in `spaces`, with `extra` coordinator flags.
async fn meshed_market_with(
    db: Db,
    spaces: &[WorkerNamespace],
    rent_minute_ms: &str,
    extra: &[&str],
    worker_flags: &[&str],
) -> Market {
    forward_between_workers();
    let mut flags = market_flags(rent_minute_ms);
    flags.extend(["--tunnel-listen", "0.0.0.0:0"]);
    flags.extend(extra);
    let coordinator = Coordinator::start_on_every_address(db, &flags).await;
    market_from(
        coordinator,
        spaces.len(),
        |coordinator, dir, token, index| {
            let space = &spaces[index];
            let url = space.coordinator_url(coordinator);
            // nsenter changes the network namespace only: `ip netns exec` would also mount a fresh
            // /sys, hiding the cgroups the worker limits its nodes with.
            let network = format!("--net=/run/netns/{}", space.name);
            let program = ["nsenter", network.as_str(), BIN];
            coordinator.worker_through(&program, &url, dir, Some(token), "H100x1", worker_flags)
        },
    )
    .await
}

/// Two nodes on workers in separate namespaces talk over their overlay addresses; a node of
/// another cluster cannot reach those addresses; when rank 1's worker dies, its replacement
/// on another worker joins the mesh and rank 0 reaches it at the same address.
async fn a_clusters_nodes_reach_each_other_over_the_mesh_and_no_one_else_does(db: Db) {
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() {
        return;
    }
    let spaces: Vec<WorkerNamespace> = (0..5).map(WorkerNamespace::new).collect();
    let mut market = meshed_market(db, &spaces, false).await;
    let deployed: ClusterInfo = market
        .renter
        .post("clusters", &service(2, MESH_PROGRAM))
        .await
        .unwrap();
    let running = until_state(&market.renter, &deployed.id, "running", 30).await;
    let addresses: Vec<String> = (0..2)
        .map(|rank| flotilla_proto::mesh::node_address(&deployed.id, rank).to_string())
        .collect();
    let reached = until_output(&market, &deployed.id, 0, 1, "reached rank 1 attempt 1").await;
    assert!(
        reached.contains(&format!("saw {}", addresses[0])),
        "{reached}"
    );

    let mut stranger = service(2, STRANGER_PROGRAM);
    stranger.env.insert("TARGETS".into(), addresses.join(","));
    let other: ClusterInfo = market.renter.post("clusters", &stranger).await.unwrap();
    for address in &addresses {
        let said = until_output(&market, &other.id, 0, 1, &format!("from {address}")).await;
        assert!(!said.contains("reached"), "{said}");
    }

    let victim_worker = running.nodes[1].worker_id.clone();
    let victim = worker_index(&market, &victim_worker);
    market._workers[victim].kill();
    let replaced = until_output(&market, &deployed.id, 0, 1, "reached rank 1 attempt 2").await;
    assert!(
        replaced.contains(&format!("attempt 2 saw {}", addresses[0])),
        "{replaced}"
    );
    let info: ClusterInfo = market
        .renter
        .get(&format!("clusters/{}", deployed.id))
        .await
        .unwrap();
    assert_ne!(info.nodes[1].worker_id, victim_worker);
}
on_both_databases!(a_clusters_nodes_reach_each_other_over_the_mesh_and_no_one_else_does);

/// With the coordinator relaying everything, nodes still reach each other.
async fn the_relay_carries_a_mesh_when_nodes_are_given_no_direct_path(db: Db) {
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() {
        return;
    }
    let spaces: Vec<WorkerNamespace> = (10..12).map(WorkerNamespace::new).collect();
    let market = meshed_market(db, &spaces, true).await;
    let deployed: ClusterInfo = market
        .renter
        .post("clusters", &service(2, MESH_PROGRAM))
        .await
        .unwrap();
    until_state(&market.renter, &deployed.id, "running", 30).await;
    let rank0 = flotilla_proto::mesh::node_address(&deployed.id, 0);
    let reached = until_output(&market, &deployed.id, 0, 1, "reached rank 1 attempt 1").await;
    assert!(reached.contains(&format!("saw {rank0}")), "{reached}");
}
on_both_databases!(the_relay_carries_a_mesh_when_nodes_are_given_no_direct_path);

/// Where the test command put Ray's environment (`FLOTILLA_TEST_RAY_DIR`); without one (and
/// unless `FLOTILLA_REQUIRE_RAY=1`), the Ray test says so and stops.
fn ray_dir() -> Option<String> {
    let dir = std::env::var("FLOTILLA_TEST_RAY_DIR").ok();
    assert!(
        dir.is_some() || std::env::var("FLOTILLA_REQUIRE_RAY").as_deref() != Ok("1"),
        "FLOTILLA_REQUIRE_RAY=1 but FLOTILLA_TEST_RAY_DIR is not set"
    );
    if dir.is_none() {
        eprintln!("no Ray environment: the Ray test did not run");
    }
    dir
}

/// A rent minute of the Ray tests: real ones, since an hour of the usual half-second minutes
/// would run out while Ray starts.
const RAY_RENT_MINUTE_MS: &str = "60000";

/// A Ray job that runs tasks spread over the cluster and prints on how many nodes they ran.
const RAY_JOB: &str = "\
import ray, time
ray.init()

@ray.remote(num_cpus=1)
def where():
    time.sleep(1)
    return ray.get_runtime_context().get_node_id()

@ray.remote
def square(x):
    return x * x

ids = set(ray.get([where.options(scheduling_strategy='SPREAD').remote() for _ in range(8)]))
print('node ids:', sorted(ids))
print('nodes:', len(ids))
print('sum of squares:', sum(ray.get([square.remote(i) for i in range(10)])))
";

/// JupyterLab on the head answers through the coordinator under its public path, the
/// renter's key let in; `clusters show` names it.
async fn assert_jupyter_serves(market: &Market, cluster: &str) {
    until_output_within(market, cluster, 0, 1, "jupyter ready at", 120).await;
    let base = format!("/t/{cluster}/0/8888/");
    let status: serde_json::Value = market
        .renter
        .get(&format!("{base}api/status"))
        .await
        .expect("Jupyter's status through the tunnel");
    assert!(status.get("started").is_some(), "{status}");
    let page = market.renter.get_text(&format!("{base}lab")).await.unwrap();
    assert!(page.contains(&base), "the page's links carry the prefix");
    let args = ["clusters", "show", cluster];
    let (ok, stdout, stderr) = crate::clusters::cli(&market.coordinator, &market.renter_key, &args);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Jupyter") && stdout.contains(&base),
        "{stdout}"
    );
}

/// Submits the job with the CLI; its output.
fn submit_job(market: &Market, cluster: &str, dir: &std::path::Path) -> String {
    let dir = dir.to_string_lossy();
    let args = [
        "ray",
        "submit",
        cluster,
        "--working-dir",
        &dir,
        "--",
        "python",
        "job.py",
    ];
    let (ok, stdout, stderr) = crate::clusters::cli(&market.coordinator, &market.renter_key, &args);
    assert!(ok, "ray submit failed: {stdout}\n{stderr}");
    stdout
}

/// A one-node Ray cluster starts its head with the dashboard and JupyterLab reachable through
/// the tunnel, and a job submitted with `flotilla ray submit` runs in the uploaded working
/// directory and reports its result. Ray does not touch the database, so this runs on SQLite
/// only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ray_cluster_starts_and_runs_a_submitted_job() {
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() {
        return;
    }
    let Some(ray_dir) = ray_dir() else { return };
    let worker_flags = ["--ray-dir", ray_dir.as_str()];
    let market =
        crate::clusters::market_with(Db::Sqlite, 1, RAY_RENT_MINUTE_MS, &worker_flags).await;
    let ray = ClusterSpec {
        kind: "ray".into(),
        cpus: Some(2),
        jupyter: true,
        ..spec(1, &[])
    };
    let deployed: ClusterInfo = market.renter.post("clusters", &ray).await.unwrap();
    let running = until_state(&market.renter, &deployed.id, "running", 60).await;
    let named: Vec<(u16, Option<&str>)> = running
        .port_links
        .iter()
        .map(|l| (l.port, l.name.as_deref()))
        .collect();
    assert_eq!(
        named,
        [(8265, Some("Ray dashboard")), (8888, Some("Jupyter"))]
    );
    until_output_within(&market, &deployed.id, 0, 1, "cluster ready: 1 of 1", 300).await;
    assert_jupyter_serves(&market, &deployed.id).await;
    let job_dir = tempfile::tempdir().unwrap();
    std::fs::write(job_dir.path().join("job.py"), RAY_JOB).unwrap();
    let output = submit_job(&market, &deployed.id, job_dir.path());
    assert!(output.contains("nodes: 1"), "{output}");
    assert!(output.contains("sum of squares: 285"), "{output}");
    // A job that fails says so, and the command exits non-zero.
    std::fs::write(job_dir.path().join("job.py"), "raise SystemExit(3)\n").unwrap();
    let dir = job_dir.path().to_string_lossy();
    let args = [
        "ray",
        "submit",
        &deployed.id,
        "--working-dir",
        &dir,
        "--",
        "python",
        "job.py",
    ];
    let (ok, _, stderr) = crate::clusters::cli(&market.coordinator, &market.renter_key, &args);
    assert!(!ok && stderr.contains("failed"), "{stderr}");
}

/// Two workers in separate namespaces form a 2-node Ray cluster over the mesh, and a submitted
/// job runs tasks on both nodes; when the Ray worker node's machine dies, its replacement joins
/// the same Ray cluster and a new job runs on two nodes again; when the head's machine dies,
/// the replaced head says the Ray cluster restarted and the worker node joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_node_ray_cluster_forms_over_the_mesh_and_survives_a_lost_worker() {
    if !sandbox_ready() || !flotilla_worker::sandbox::running_as_root() {
        return;
    }
    let Some(ray_dir) = ray_dir() else { return };
    let spaces: Vec<WorkerNamespace> = (12..16).map(WorkerNamespace::new).collect();
    // Starting Ray saturates this machine's cores for seconds: a grace of 1.5 s would take
    // busy workers for lost ones.
    let coordinator_flags = ["--heartbeat-grace-ms", "10000"];
    let worker_flags = ["--ray-dir", ray_dir.as_str()];
    let mut market = meshed_market_with(
        Db::Sqlite,
        &spaces,
        RAY_RENT_MINUTE_MS,
        &coordinator_flags,
        &worker_flags,
    )
    .await;
    let ray = ClusterSpec {
        kind: "ray".into(),
        cpus: Some(2),
        ..spec(2, &[])
    };
    let started = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6} ms: {what}", started.elapsed().as_millis());
    let deployed: ClusterInfo = market.renter.post("clusters", &ray).await.unwrap();
    let running = until_state(&market.renter, &deployed.id, "running", 60).await;
    until_output_within(&market, &deployed.id, 0, 1, "cluster ready: 2 of 2", 300).await;
    phase("2 of 2 joined");
    let job_dir = tempfile::tempdir().unwrap();
    std::fs::write(job_dir.path().join("job.py"), RAY_JOB).unwrap();
    let output = submit_job(&market, &deployed.id, job_dir.path());
    assert!(output.contains("nodes: 2"), "{output}");
    assert!(output.contains("sum of squares: 285"), "{output}");

    phase("a job ran on both nodes");
    let victim_worker = running.nodes[1].worker_id.clone();
    let victim = worker_index(&market, &victim_worker);
    market._workers[victim].kill();
    until_output_within(&market, &deployed.id, 1, 2, "joined the Ray cluster", 300).await;
    phase("the replaced worker node joined");
    let output = submit_job(&market, &deployed.id, job_dir.path());
    assert!(output.contains("nodes: 2"), "{output}");

    phase("a job ran on both nodes again");
    let head = worker_index(&market, &running.nodes[0].worker_id);
    market._workers[head].kill();
    let restarted = "the head was replaced: the Ray cluster restarted";
    until_output_within(&market, &deployed.id, 0, 2, restarted, 300).await;
    phase("the head was replaced");
    until_output_within(&market, &deployed.id, 0, 2, "cluster ready: 2 of 2", 300).await;
    phase("the restarted cluster is whole");
    let output = submit_job(&market, &deployed.id, job_dir.path());
    assert!(output.contains("nodes: 2"), "{output}");
    phase("a job ran on both nodes of the restarted cluster");
}
