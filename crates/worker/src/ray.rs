//! Ray on a node of a `ray` cluster: the worker keeps one Python environment with the pinned
//! Ray release (`ray[default]`, from PyPI, made once under the Ray directory and reused), and
//! runs a small supervisor in the node's sandbox instead of a renter's command. The supervisor
//! starts the Ray head on rank 0 at the node's mesh address and prints when every node has
//! joined; on other ranks it waits for the head's port on the mesh, joins with `ray start
//! --block`, and joins again whenever the head comes back (a replaced head restarts the Ray
//! cluster). CPUs and GPUs are declared from the node's assignment.

use std::path::{Path, PathBuf};

use flotilla_proto::mesh::{
    JUPYTER_PORT, JUPYTERLAB_VERSION, RAY_DASHBOARD_PORT, RAY_GCS_PORT, RAY_VERSION, RayOrder,
};
use tokio::sync::Mutex;

/// The Python the environment is made with: the system's, which nodes' sandboxes see too.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// Ray's object store on a node: this share of the node's memory limit, at least Ray's
/// minimum.
const OBJECT_STORE_SHARE_PCT: u64 = 25;
const OBJECT_STORE_BYTES_MIN: u64 = 80 << 20;
/// How long installing Ray may take.
const INSTALL_TIMEOUT_MS: u64 = 15 * 60 * 1000;

/// Makes one environment at a time in this process: workers of one process (`flotilla dev`)
/// may share a Ray directory.
static MAKING: Mutex<()> = Mutex::const_new(());

/// Where Ray environments live.
#[derive(Debug, Clone)]
pub struct RayEnvironments {
    dir: PathBuf,
}

impl RayEnvironments {
    pub fn new(dir: PathBuf) -> RayEnvironments {
        RayEnvironments { dir }
    }

    /// The pinned release's environment directory.
    pub fn path(&self) -> PathBuf {
        self.dir
            .join(format!("ray-{RAY_VERSION}-jupyterlab-{JUPYTERLAB_VERSION}"))
    }

    /// The environment, made first if it is not there (minutes, once per worker).
    pub async fn ready(&self) -> Result<PathBuf, String> {
        let path = self.path();
        if installed(&path) {
            return Ok(path);
        }
        let _making = MAKING.lock().await;
        if installed(&path) {
            return Ok(path);
        }
        tracing::info!(path = %path.display(), "installing Ray {RAY_VERSION}");
        // A venv's scripts name its path, so it is made in place; the marker says it is whole.
        let _ = tokio::fs::remove_dir_all(&path).await;
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("cannot make {}: {e}", self.dir.display()))?;
        let install = async {
            run(SYSTEM_PYTHON, &["-m", "venv", &path.to_string_lossy()]).await?;
            let pip = path.join("bin/pip");
            let ray = format!("ray[default]=={RAY_VERSION}");
            let jupyterlab = format!("jupyterlab=={JUPYTERLAB_VERSION}");
            run(
                &pip.to_string_lossy(),
                &["install", "-q", &ray, &jupyterlab],
            )
            .await
        };
        let limit = std::time::Duration::from_millis(INSTALL_TIMEOUT_MS);
        tokio::time::timeout(limit, install)
            .await
            .map_err(|_| "installing Ray timed out".to_owned())??;
        tokio::fs::write(path.join(READY_MARKER), b"")
            .await
            .map_err(|e| format!("cannot mark Ray's environment ready: {e}"))?;
        Ok(path)
    }
}

/// Written last into a whole environment.
pub const READY_MARKER: &str = ".flotilla-ready";

fn installed(path: &Path) -> bool {
    path.join(READY_MARKER).exists()
}

async fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .chars()
        .rev()
        .take(2_000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(format!("{program} {} failed: {tail}", args.join(" ")))
}

/// Where a node sees Ray's environment (read-only). Its scripts name the host's path, so they
/// run through the environment's Python, never by their `#!` line.
pub const RAY_MOUNT: &str = "/opt/flotilla-ray";

/// The supervisor's program and variables for a node of `cpus` cores' time, `gpus` GPUs
/// and `memory_bytes` of memory, with the environment at [`RAY_MOUNT`].
pub fn node_command(
    order: &RayOrder,
    cpus: u64,
    gpus: usize,
    memory_bytes: u64,
) -> (Vec<String>, Vec<(String, String)>) {
    let python = format!("{RAY_MOUNT}/bin/python");
    let ray = format!("{RAY_MOUNT}/bin/ray");
    // Jobs run `python ...` through a shell: the environment's Python comes first.
    let path = format!("{RAY_MOUNT}/bin:/usr/local/bin:/usr/bin:/bin");
    let object_store = (memory_bytes * OBJECT_STORE_SHARE_PCT / 100).max(OBJECT_STORE_BYTES_MIN);
    let env = [
        ("FLOTILLA_RAY_BIN", ray),
        ("FLOTILLA_RAY_HEAD", order.head_address.to_string()),
        ("FLOTILLA_RAY_GCS_PORT", RAY_GCS_PORT.to_string()),
        (
            "FLOTILLA_RAY_DASHBOARD_PORT",
            RAY_DASHBOARD_PORT.to_string(),
        ),
        ("FLOTILLA_RAY_CPUS", cpus.max(1).to_string()),
        ("FLOTILLA_RAY_GPUS", gpus.to_string()),
        ("FLOTILLA_RAY_OBJECT_STORE_BYTES", object_store.to_string()),
        ("RAY_USAGE_STATS_ENABLED", "0".to_owned()),
        // Ray's own output reaches the node's log as it happens, not when a pipe's buffer fills.
        ("PYTHONUNBUFFERED", "1".to_owned()),
        ("PATH", path),
        (
            "FLOTILLA_JUPYTER_BASE_URL",
            order.jupyter_base_url.clone().unwrap_or_default(),
        ),
        ("FLOTILLA_JUPYTER_PORT", JUPYTER_PORT.to_string()),
    ];
    let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    (vec![python, "-c".to_owned(), SUPERVISOR.to_owned()], env)
}

/// Runs in the node's sandbox (see the module's comment).
const SUPERVISOR: &str = r#"
import glob, os, socket, subprocess, sys, threading, time
env = os.environ
JOIN_PATIENCE_S, LOG_FILES_SHOWN, LOG_TAIL_CHARS = 90, 40, 1500
# A head unreachable this long is taken for gone: Ray's own raylet would wait a minute before
# giving up on it, and a replaced head is a new Ray cluster to join.
HEAD_LOST_S = 10
# Ray's own startup deadlines can pass on a machine busy enough; the head tries again.
HEAD_START_ATTEMPTS = 3
ray_cli, head = [sys.executable, env['FLOTILLA_RAY_BIN']], env['FLOTILLA_RAY_HEAD']
gcs_port, count = int(env['FLOTILLA_RAY_GCS_PORT']), int(env['FLOTILLA_NODE_COUNT'])
rank, attempt = int(env['FLOTILLA_NODE_RANK']), int(env['FLOTILLA_ATTEMPT'])
common = ['--node-ip-address=' + env['FLOTILLA_MESH_ADDRESS'],
          '--num-cpus=' + env['FLOTILLA_RAY_CPUS'], '--num-gpus=' + env['FLOTILLA_RAY_GPUS'],
          '--object-store-memory=' + env['FLOTILLA_RAY_OBJECT_STORE_BYTES'], '--disable-usage-stats']

def say(*words):
    # One write per line, so that a line reaches the node's log whole.
    print(' '.join(['ray:'] + [str(w) for w in words]), flush=True)

def head_up():
    # Joining as soon as the GCS listens lets this node start while the head's dashboard is
    # still loading. A join that fails anyway (a head that restarted under it refuses its
    # cluster id) ends `ray start`, and the loop below joins again.
    try:
        socket.create_connection((head, gcs_port), timeout=1).close()
        return True
    except OSError:
        return False

def leave_when_head_lost(start):
    unreachable_since = None
    while start.poll() is None:
        try:
            socket.create_connection((head, gcs_port), timeout=1).close()
            unreachable_since = None
        except OSError:
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since >= HEAD_LOST_S:
                say('the head is unreachable; leaving, to join again when it is back')
                start.terminate()
                return
        time.sleep(1)

def tell_if_stuck(joined):
    # A node that has not joined by then says why, as far as Ray's own logs know.
    if joined.wait(JOIN_PATIENCE_S):
        return
    say('not joined after', JOIN_PATIENCE_S, 's; the ends of Ray\'s logs follow')
    for path in sorted(glob.glob('/tmp/ray/session_latest/logs/*'))[:LOG_FILES_SHOWN]:
        try:
            with open(path, errors='replace') as f:
                tail = f.read()[-LOG_TAIL_CHARS:]
        except OSError:
            continue
        print('==', path, '==', flush=True)
        print(tail, flush=True)

# A joining node's `ray start` asks the GCS for the head node's entry only to learn its temp and
# session directories, and polls every 2 s until the head's raylet has registered, which comes
# after the head's dashboard and agents, seconds of CPU. Every node here uses Ray's default temp
# directory, so the entry's answer is known as soon as the GCS answers: giving it at once lets
# this node's raylet and agents start beside the head's instead of after them.
JOIN_PATCH = '''
import os, types
import ray._private.node as node, ray._private.ray_constants as constants, ray._common.utils as utils
import ray.scripts.scripts as scripts
from ray.core.generated.gcs_pb2 import GcsNodeInfo
def head_directories(gcs_client, **_):
    session = gcs_client.internal_kv_get(b'session_name', constants.KV_NAMESPACE_SESSION).decode()
    temp = utils.get_default_ray_temp_dir()
    return [types.SimpleNamespace(state=GcsNodeInfo.GcsNodeState.ALIVE, temp_dir=temp,
                                  session_dir=os.path.join(temp, session))]
node.get_all_node_info_until_retrieved = head_directories
scripts.main()
'''
join_cli = [sys.executable, '-c', JOIN_PATCH]

if rank != 0:
    while True:
        while not head_up():
            time.sleep(0.5)
        say('joining the head at', head)
        joined = threading.Event()
        threading.Thread(target=tell_if_stuck, args=(joined,), daemon=True).start()
        start = subprocess.Popen(join_cli + ['start', '--address=%s:%d' % (head, gcs_port), '--block'] + common,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=leave_when_head_lost, args=(start,), daemon=True).start()
        for line in start.stdout:
            print(line, end='', flush=True)
            if 'Ray runtime started' in line:
                joined.set()
                say('joined the Ray cluster at', head)
        start.wait()
        joined.set()
        say('lost the head; joining again when it is back')
        subprocess.run(ray_cli + ['stop', '--force'], capture_output=True)
        time.sleep(1)

if attempt > 1:
    say('the head was replaced: the Ray cluster restarted, and jobs of the old head are gone')
# No autoscaler monitor: a Flotilla cluster's size is its placement's, so it would only take a
# core while the other nodes start. No Ray Client server either (`ray start` has no flag for
# that: the CLI is run with its check for the client's packages answering "absent"): renters
# reach the cluster through the dashboard's job API and Jupyter, and it would take seconds of
# CPU while the nodes start.
head_cli = [sys.executable, '-c', 'import ray.scripts.scripts as s; '
            's.get_ray_client_dependency_error = lambda: "not served"; s.main()']
for head_try in range(1, HEAD_START_ATTEMPTS + 1):
    head_start = head_cli + ['start', '--head', '--port=%d' % gcs_port, '--dashboard-host=0.0.0.0',
                            '--dashboard-port=' + env['FLOTILLA_RAY_DASHBOARD_PORT'],
                            '--include-dashboard=true', '--no-monitor'] + common
    if subprocess.run(head_start).returncode == 0:
        break
    say('the head did not start (try', head_try, 'of', HEAD_START_ATTEMPTS, ')')
    subprocess.run(ray_cli + ['stop', '--force'], capture_output=True)
else:
    sys.exit('ray: the head did not start')
if env['FLOTILLA_JUPYTER_BASE_URL']:
    # Behind the coordinator, which checks who may come in: no token of Jupyter's own, and any
    # origin (the renter's browser is on the coordinator's). Notebooks live in the work directory.
    os.makedirs('/tmp/jupyter', exist_ok=True)
    jupyter_env = dict(env, JUPYTER_RUNTIME_DIR='/tmp/jupyter', JUPYTER_DATA_DIR='/tmp/jupyter/data',
                       JUPYTER_CONFIG_DIR='/tmp/jupyter/config', IPYTHONDIR='/tmp/jupyter/ipython')
    jupyter_log = open('/tmp/jupyter/log', 'w')
    jupyter = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root',
                      '--ip=0.0.0.0', '--port=' + env['FLOTILLA_JUPYTER_PORT'],
                      '--ServerApp.base_url=' + env['FLOTILLA_JUPYTER_BASE_URL'],
                      '--IdentityProvider.token=', '--ServerApp.password=',
                      '--ServerApp.allow_origin=*', '--ServerApp.root_dir=' + os.getcwd()],
                     env=jupyter_env, stdout=jupyter_log, stderr=subprocess.STDOUT)
    while jupyter.poll() is None:
        try:
            socket.create_connection(('127.0.0.1', int(env['FLOTILLA_JUPYTER_PORT'])), timeout=1).close()
            say('jupyter ready at', env['FLOTILLA_JUPYTER_BASE_URL'])
            break
        except OSError:
            time.sleep(0.5)
    else:
        with open('/tmp/jupyter/log', errors='replace') as f:
            say('jupyter did not start (exit', jupyter.returncode, '):', f.read()[-LOG_TAIL_CHARS:])
# Nodes are counted through the dashboard's state API rather than by a driver of our own:
# attaching one (`import ray; ray.init()`) costs seconds of CPU while the other nodes join.
NODES_URL = 'http://127.0.0.1:%s/api/v0/nodes?limit=1000' % env['FLOTILLA_RAY_DASHBOARD_PORT']
import json, urllib.request

def alive_nodes():
    try:
        with urllib.request.urlopen(NODES_URL, timeout=5) as answer:
            nodes = json.load(answer)['data']['result']['result']
        return sum(1 for n in nodes if n.get('state') == 'ALIVE')
    except (OSError, ValueError, KeyError, TypeError):
        return None

seen, ready = -1, False
while True:
    alive = alive_nodes()
    if alive is None:
        time.sleep(0.5)
        continue
    if alive != seen:
        seen = alive
        if alive >= count and not ready:
            ready = True
            say('cluster ready:', alive, 'of', count, 'nodes joined')
        else:
            say(alive, 'of', count, 'nodes joined')
    time.sleep(0.5)
"#;
