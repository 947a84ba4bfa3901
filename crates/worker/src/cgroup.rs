//! One cgroup per run: the real memory limit of a node (the address-space limit is only the
//! fallback, since GPU programs map far more address space than they use), and its CPU limit.
//!
//! Two layouts are handled:
//! - cgroup v2 mounted at `/sys/fs/cgroup` with the memory controller: runs go under
//!   `/sys/fs/cgroup/flotilla/<name>` with `memory.max`, `memory.swap.max = 0` and
//!   `memory.oom.group = 1` (an out-of-memory kill takes the whole node). Where the `cpu`
//!   controller can be delegated too, the same cgroup gets `cpu.max = "<quota_us> <period_us>"`;
//! - cgroup v1 with a memory hierarchy at `/sys/fs/cgroup/memory`: runs go under the worker's own
//!   memory cgroup, `<own>/flotilla/<name>`, so a limit set on the worker also bounds its nodes,
//!   with `memory.limit_in_bytes` and, where swap is accounted, `memory.memsw.limit_in_bytes`.
//!   The CPU limit lives in a second hierarchy, `/sys/fs/cgroup/cpu` (`cpu,cpuacct` on some
//!   machines): a run gets a second cgroup `<own cpu cgroup>/flotilla/<name>` with
//!   `cpu.cfs_period_us` and `cpu.cfs_quota_us`, and its first process joins both
//!   ([`RunCgroup::procs_files`]).
//!
//! A CPU limit is `cpu_millis_max` thousandths of a core: a quota of `cpu_millis_max * 100` µs
//! of CPU time per [`CPU_PERIOD_US`] (100 ms) period, shared by every process of the run; 0 is
//! no limit. The CPU controller is optional: where it is missing or not writable, runs get
//! their memory limit only ([`Cgroups::cpu_limits`] says why), and a run whose CPU limit cannot
//! be written runs without one, with a warning.
//!
//! Anything else (no memory hierarchy, not writable, not root) is "no cgroups": the caller
//! falls back. A cgroup left behind by a worker that died is removed by
//! [`Cgroups::sweep_leftovers`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory under the hierarchy that holds one cgroup per run.
const PARENT_NAME: &str = "flotilla";
/// Where cgroups are mounted.
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// Tries and pause when removing a cgroup whose last processes are still being reaped.
const REMOVE_TRIES_MAX: u32 = 40;
const REMOVE_RETRY_MS: u64 = 50;
/// A run cgroup older than this with no process in it is a leftover.
const LEFTOVER_AGE_S_MIN: u64 = 60;
/// The period a CPU quota is counted over (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel takes (1 ms per period): a smaller limit is raised to it.
const CPU_QUOTA_US_MIN: u64 = 1_000;
/// Limits above this (a million cores) are taken as this: the kernel refuses far larger
/// quotas, and no machine has the cores for the difference to matter.
const CPU_MILLIS_CEILING: u64 = 1_000_000_000;

/// Which cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A writable place to make run cgroups in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: Version,
    /// `.../flotilla`, made and checked writable at detection.
    parent: PathBuf,
    /// Where runs get their CPU limit, or why they get none.
    cpu: Result<CpuParent, String>,
}

/// Where a run's CPU limit is written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuParent {
    /// v2: in the run's own cgroup, the `cpu` controller being delegated to it.
    Shared,
    /// v1: in a second cgroup per run, under this `.../flotilla` of the `cpu` hierarchy.
    Separate(PathBuf),
}

/// One run's cgroup; [`RunCgroup::remove`] deletes it once its processes are gone.
#[derive(Debug)]
pub struct RunCgroup {
    version: Version,
    dir: PathBuf,
    /// v1: the run's cgroup in the `cpu` hierarchy, when it has a CPU limit.
    cpu_dir: Option<PathBuf>,
}

impl Cgroups {
    /// Finds a writable memory cgroup hierarchy on this machine, or says why there is none,
    /// and the CPU controller beside it where there is one.
    pub fn detect() -> Result<Cgroups, String> {
        let root = Path::new(CGROUP_MOUNT);
        let v2_controllers = fs::read_to_string(root.join("cgroup.controllers"));
        if let Ok(controllers) = v2_controllers {
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err(format!(
                    "{CGROUP_MOUNT} is cgroup v2 without the memory controller"
                ));
            }
            let mut cgroups = Cgroups::prepare(Version::V2, root.join(PARENT_NAME))?;
            cgroups.cpu = prepare_cpu_v2(root, &cgroups.parent, &controllers);
            return Ok(cgroups);
        }
        let memory = root.join("memory");
        if !memory.join("memory.limit_in_bytes").exists() {
            return Err(format!("no memory cgroup hierarchy under {CGROUP_MOUNT}"));
        }
        let own = own_v1_dir(&memory, "memory");
        let mut cgroups = Cgroups::prepare(Version::V1, own.join(PARENT_NAME))?;
        cgroups.cpu = prepare_cpu_v1(&root.join("cpu"));
        Ok(cgroups)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether runs get CPU limits, or why not.
    pub fn cpu_limits(&self) -> Result<(), &str> {
        self.cpu.as_ref().map(|_| ()).map_err(String::as_str)
    }

    fn prepare(version: Version, parent: PathBuf) -> Result<Cgroups, String> {
        let failed = |what: &str, e: io::Error| format!("{what} {}: {e}", parent.display());
        fs::create_dir_all(&parent).map_err(|e| failed("cannot make", e))?;
        if version == Version::V2 {
            // Children of a v2 cgroup get a controller only when every ancestor hands it down.
            if let Some(root) = parent.parent() {
                enable_controller(root, "memory").map_err(|e| failed("cannot delegate to", e))?;
            }
            enable_controller(&parent, "memory").map_err(|e| failed("cannot delegate in", e))?;
        }
        Ok(Cgroups {
            version,
            parent,
            cpu: Err("not looked for yet".to_owned()),
        })
    }

    /// Removes the empty run cgroups a previous worker left. Young ones are spared: another
    /// worker sharing the hierarchy (tests do) may have just made one that its process has not
    /// joined yet. A busy one fails to go and stays.
    pub fn sweep_leftovers(&self) {
        sweep_leftovers_in(&self.parent);
        if let Ok(CpuParent::Separate(cpu_parent)) = &self.cpu {
            sweep_leftovers_in(cpu_parent);
        }
    }

    /// Makes the cgroup `name` (a safe path component) with a memory limit and no swap, and a
    /// CPU limit of `cpu_millis_max` thousandths of a core (0: none) where this machine can.
    pub fn create(
        &self,
        name: &str,
        memory_bytes_max: u64,
        cpu_millis_max: u64,
    ) -> io::Result<RunCgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad cgroup name",
            ));
        }
        let mut run = RunCgroup {
            version: self.version,
            dir: fresh_dir(&self.parent.join(name))?,
            cpu_dir: None,
        };
        if let Err(error) = run.limit_memory(memory_bytes_max) {
            run.remove_now();
            return Err(error);
        }
        if cpu_millis_max > 0 {
            self.limit_cpu(&mut run, name, cpu_millis_max);
        }
        Ok(run)
    }

    /// Gives the run its CPU limit. A run without one still runs (its memory limit holds): on
    /// a machine without the controller that was said once at detection, a failure here is
    /// said now.
    fn limit_cpu(&self, run: &mut RunCgroup, name: &str, cpu_millis_max: u64) {
        let written = match &self.cpu {
            Err(_) => return,
            Ok(CpuParent::Shared) => write_cpu_limit(&run.dir, self.version, cpu_millis_max),
            Ok(CpuParent::Separate(cpu_parent)) => {
                let made =
                    fresh_dir(&cpu_parent.join(name)).and_then(|dir| {
                        match write_cpu_limit(&dir, self.version, cpu_millis_max) {
                            Ok(()) => Ok(dir),
                            Err(error) => {
                                let _ = fs::remove_dir(&dir);
                                Err(error)
                            }
                        }
                    });
                made.map(|dir| run.cpu_dir = Some(dir))
            }
        };
        if let Err(error) = written {
            tracing::warn!(cgroup = %name, cpu_millis_max, %error, "cannot set a run's CPU limit; it runs without one");
        }
    }
}

impl RunCgroup {
    fn limit_memory(&self, memory_bytes_max: u64) -> io::Result<()> {
        let bytes = memory_bytes_max.to_string();
        match self.version {
            Version::V2 => {
                fs::write(self.dir.join("memory.max"), &bytes)?;
                // Both are absent on kernels without swap accounting or group kills; the
                // limit above still holds.
                let _ = fs::write(self.dir.join("memory.swap.max"), "0");
                let _ = fs::write(self.dir.join("memory.oom.group"), "1");
            }
            Version::V1 => {
                fs::write(self.dir.join("memory.limit_in_bytes"), &bytes)?;
                // Memory plus swap at the same bound: no swapping past the limit. Absent when
                // the kernel does not account swap.
                let _ = fs::write(self.dir.join("memory.memsw.limit_in_bytes"), &bytes);
            }
        }
        Ok(())
    }

    /// The files a process writes its pid to, to join this run's cgroups: the memory one,
    /// then (v1 with a CPU limit) the one in the `cpu` hierarchy.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// The run's cgroup directories, the memory one first.
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.dir).chain(&self.cpu_dir)
    }

    /// Whether the kernel killed a process of this cgroup for running out of memory.
    pub fn oom_killed(&self) -> bool {
        let counter = |file: &str, key: &str| {
            fs::read_to_string(self.dir.join(file))
                .ok()
                .and_then(|text| read_counter(&text, key))
        };
        match self.version {
            Version::V2 => counter("memory.events", "oom_kill").unwrap_or(0) > 0,
            // `oom_kill` is in memory.oom_control since Linux 4.13; before that, hitting the
            // limit at all is the best sign there is.
            Version::V1 => match counter("memory.oom_control", "oom_kill") {
                Some(kills) => kills > 0,
                None => fs::read_to_string(self.dir.join("memory.failcnt"))
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .is_some_and(|failures| failures > 0),
            },
        }
    }

    /// Kills every process in the cgroup. The sandbox's PID namespace already dies with its
    /// first process; this catches anything that outlived it.
    pub fn kill(&self) {
        if self.version == Version::V2 && fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        // Both v1 groups: a process that joined one and not yet the other is still the run's.
        let pids: Vec<String> = self
            .procs_files()
            .iter()
            .flat_map(|file| {
                fs::read_to_string(file)
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        if pids.is_empty() {
            return;
        }
        // The shell's builtin kill: no unsafe code and no dependency for one rare signal.
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg("kill -KILL \"$@\" 2>/dev/null")
            .arg("sh")
            .args(&pids)
            .status();
    }

    /// Kills what is left and deletes the cgroups, waiting a little for the kernel to reap.
    pub async fn remove(self) {
        for dir in self.dirs() {
            self.remove_dir(dir).await;
        }
    }

    async fn remove_dir(&self, dir: &Path) {
        for _ in 0..REMOVE_TRIES_MAX {
            match fs::remove_dir(dir) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(REMOVE_RETRY_MS)).await;
                }
            }
        }
        tracing::warn!(cgroup = %dir.display(), "cannot remove a run's cgroup; left for the next start");
    }

    fn remove_now(&self) {
        for dir in self.dirs() {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// The CFS quota, in µs per [`CPU_PERIOD_US`], of a limit of `cpu_millis_max` thousandths of a
/// core (more than 0).
pub fn cpu_quota_us(cpu_millis_max: u64) -> u64 {
    let quota_us = cpu_millis_max.min(CPU_MILLIS_CEILING) * CPU_PERIOD_US / 1_000;
    quota_us.max(CPU_QUOTA_US_MIN)
}

/// The files written, in order, to limit a run's cgroup to `cpu_millis_max` thousandths of a
/// core, and what is written to each.
fn cpu_limit_writes(version: Version, cpu_millis_max: u64) -> Vec<(&'static str, String)> {
    let quota_us = cpu_quota_us(cpu_millis_max);
    match version {
        Version::V2 => vec![("cpu.max", format!("{quota_us} {CPU_PERIOD_US}"))],
        // The period first: the quota is checked against the period in force.
        Version::V1 => vec![
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", quota_us.to_string()),
        ],
    }
}

fn write_cpu_limit(dir: &Path, version: Version, cpu_millis_max: u64) -> io::Result<()> {
    for (file, value) in cpu_limit_writes(version, cpu_millis_max) {
        fs::write(dir.join(file), value)?;
    }
    Ok(())
}

/// Makes the empty cgroup `dir`. One already there was left by a worker that died while
/// running this very run; empty, it can go.
fn fresh_dir(dir: &Path) -> io::Result<PathBuf> {
    if let Err(error) = fs::create_dir(dir) {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return Err(error);
        }
        fs::remove_dir(dir)?;
        fs::create_dir(dir)?;
    }
    Ok(dir.to_owned())
}

/// Delegates `cpu` to the v2 run cgroups under `parent`, checked by making one.
fn prepare_cpu_v2(root: &Path, parent: &Path, controllers: &str) -> Result<CpuParent, String> {
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        return Err(format!(
            "{CGROUP_MOUNT} is cgroup v2 without the cpu controller"
        ));
    }
    for dir in [root, parent] {
        enable_controller(dir, "cpu")
            .map_err(|e| format!("cannot delegate cpu in {}: {e}", dir.display()))?;
    }
    probe(parent, "cpu.max", "max")?;
    Ok(CpuParent::Shared)
}

/// Makes `<own cpu cgroup>/flotilla` in the v1 hierarchy mounted at `mount`, checked by
/// making a run cgroup in it.
fn prepare_cpu_v1(mount: &Path) -> Result<CpuParent, String> {
    if !mount.join("cpu.cfs_quota_us").exists() {
        return Err(format!(
            "no cpu cgroup hierarchy with quotas at {}",
            mount.display()
        ));
    }
    let parent = own_v1_dir(mount, "cpu").join(PARENT_NAME);
    fs::create_dir_all(&parent).map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    probe(&parent, "cpu.cfs_quota_us", "-1")?;
    Ok(CpuParent::Separate(parent))
}

/// Makes a child of `parent`, writes `value` (its default) to its `file`, and removes it:
/// whether run cgroups there can get a CPU limit. The name cannot be a run's (a leading dot)
/// and is random, since workers sharing the hierarchy (tests) probe at once.
fn probe(parent: &Path, file: &str, value: &str) -> Result<(), String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
    let dir = parent.join(format!(".probe-{}", hex::encode(bytes)));
    fs::create_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let written = fs::write(dir.join(file), value);
    let _ = fs::remove_dir(&dir);
    written.map_err(|e| format!("cannot write {file} under {}: {e}", parent.display()))
}

/// Removes the empty, old enough run cgroups under `parent` (see [`Cgroups::sweep_leftovers`]).
fn sweep_leftovers_in(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let old = |entry: &fs::DirEntry| {
        entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age >= Duration::from_secs(LEFTOVER_AGE_S_MIN))
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) && old(&entry) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// Turns on `controller` for the children of `dir` (v2).
fn enable_controller(dir: &Path, controller: &str) -> io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file)?;
    if enabled.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    fs::write(file, format!("+{controller}"))
}

/// This process's own cgroup in the v1 hierarchy of `controller` mounted at `mount`, or the
/// hierarchy's root when /proc does not say or that cgroup is not visible here.
fn own_v1_dir(mount: &Path, controller: &str) -> PathBuf {
    fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| own_v1_path(&text, controller))
        .map(|own| mount.join(own.trim_start_matches('/')))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| mount.to_owned())
}

/// This process's cgroup path in the v1 hierarchy holding `controller`, from /proc/self/cgroup
/// (lines `id:controller,controller:/path`).
fn own_v1_path(proc_self_cgroup: &str, controller: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_owned())
    })
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn read_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_and_counters_parse() {
        let text = "5:devices:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            own_v1_path(text, "memory").as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_v1_path(text, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(own_v1_path(text, "cpu").as_deref(), Some("/x"));
        assert_eq!(own_v1_path(text, "pids"), None);
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n";
        assert_eq!(read_counter(events, "oom_kill"), Some(1));
        assert_eq!(read_counter(events, "oom"), Some(2));
        assert_eq!(
            read_counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
    }

    #[test]
    fn a_cpu_limit_is_a_quota_per_100_ms() {
        assert_eq!(
            cpu_limit_writes(Version::V2, 1_500),
            vec![("cpu.max", "150000 100000".to_owned())]
        );
        assert_eq!(
            cpu_limit_writes(Version::V1, 1_500),
            vec![
                ("cpu.cfs_period_us", "100000".to_owned()),
                ("cpu.cfs_quota_us", "150000".to_owned())
            ]
        );
        assert_eq!(cpu_quota_us(200), 20_000);
        assert_eq!(cpu_quota_us(2_000), 200_000);
        // Under the kernel's 1 ms quota, raised to it; absurd limits neither overflow nor
        // reach what the kernel refuses.
        assert_eq!(cpu_quota_us(1), CPU_QUOTA_US_MIN);
        assert_eq!(cpu_quota_us(u64::MAX), 100_000_000_000);
    }
}
