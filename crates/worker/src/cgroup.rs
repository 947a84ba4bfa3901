//! One memory cgroup per run: the real memory limit of a node (the address-space limit is only
//! the fallback, since GPU programs map far more address space than they use).
//!
//! Two layouts are handled:
//! - cgroup v2 mounted at `/sys/fs/cgroup` with the memory controller: runs go under
//!   `/sys/fs/cgroup/flotilla/<name>` with `memory.max`, `memory.swap.max = 0` and
//!   `memory.oom.group = 1` (an out-of-memory kill takes the whole node);
//! - cgroup v1 with a memory hierarchy at `/sys/fs/cgroup/memory`: runs go under the worker's own
//!   memory cgroup, `<own>/flotilla/<name>`, so a limit set on the worker also bounds its nodes,
//!   with `memory.limit_in_bytes` and, where swap is accounted, `memory.memsw.limit_in_bytes`.
//!
//! Anything else (no such mount, not writable, not root) is "no cgroups": the caller falls back.
//! A cgroup left behind by a worker that died is removed by [`Cgroups::sweep_leftovers`].

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
}

/// One run's cgroup; [`RunCgroup::remove`] deletes it once its processes are gone.
#[derive(Debug)]
pub struct RunCgroup {
    version: Version,
    dir: PathBuf,
}

impl Cgroups {
    /// Finds a writable memory cgroup hierarchy on this machine, or says why there is none.
    pub fn detect() -> Result<Cgroups, String> {
        let root = Path::new(CGROUP_MOUNT);
        let v2_controllers = fs::read_to_string(root.join("cgroup.controllers"));
        if let Ok(controllers) = v2_controllers {
            if !controllers.split_whitespace().any(|c| c == "memory") {
                return Err(format!(
                    "{CGROUP_MOUNT} is cgroup v2 without the memory controller"
                ));
            }
            return Cgroups::prepare(Version::V2, root.join(PARENT_NAME));
        }
        let memory = root.join("memory");
        if !memory.join("memory.limit_in_bytes").exists() {
            return Err(format!("no memory cgroup hierarchy under {CGROUP_MOUNT}"));
        }
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_v1_path(&text, "memory"))
            .map(|own| memory.join(own.trim_start_matches('/')))
            .filter(|dir| dir.is_dir())
            .unwrap_or(memory);
        Cgroups::prepare(Version::V1, own.join(PARENT_NAME))
    }

    pub fn version(&self) -> Version {
        self.version
    }

    fn prepare(version: Version, parent: PathBuf) -> Result<Cgroups, String> {
        let failed = |what: &str, e: io::Error| format!("{what} {}: {e}", parent.display());
        fs::create_dir_all(&parent).map_err(|e| failed("cannot make", e))?;
        if version == Version::V2 {
            // Children of a v2 cgroup get a controller only when every ancestor hands it down.
            if let Some(root) = parent.parent() {
                enable_memory_controller(root).map_err(|e| failed("cannot delegate to", e))?;
            }
            enable_memory_controller(&parent).map_err(|e| failed("cannot delegate in", e))?;
        }
        Ok(Cgroups { version, parent })
    }

    /// Removes the empty run cgroups a previous worker left. Young ones are spared: another
    /// worker sharing the hierarchy (tests do) may have just made one that its process has not
    /// joined yet. A busy one fails to go and stays.
    pub fn sweep_leftovers(&self) {
        let Ok(entries) = fs::read_dir(&self.parent) else {
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

    /// Makes the cgroup `name` (a safe path component) with a memory limit and no swap.
    pub fn create(&self, name: &str, memory_bytes_max: u64) -> io::Result<RunCgroup> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad cgroup name",
            ));
        }
        let dir = self.parent.join(name);
        if let Err(error) = fs::create_dir(&dir) {
            // Left by a worker that died while running this very run; empty, it can go.
            if error.kind() != io::ErrorKind::AlreadyExists {
                return Err(error);
            }
            fs::remove_dir(&dir)?;
            fs::create_dir(&dir)?;
        }
        let run = RunCgroup {
            version: self.version,
            dir,
        };
        if let Err(error) = run.limit_memory(memory_bytes_max) {
            run.remove_now();
            return Err(error);
        }
        Ok(run)
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

    /// The file a process writes its pid to, to join this cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
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
        let pids: Vec<String> = fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .split_whitespace()
            .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
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

    /// Kills what is left and deletes the cgroup, waiting a little for the kernel to reap.
    pub async fn remove(self) {
        for _ in 0..REMOVE_TRIES_MAX {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(REMOVE_RETRY_MS)).await;
                }
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove a run's cgroup; left for the next start");
    }

    fn remove_now(&self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Turns on the memory controller for the children of `dir` (v2).
fn enable_memory_controller(dir: &Path) -> io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file)?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    fs::write(file, "+memory")
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
        assert_eq!(own_v1_path(text, "pids"), None);
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n";
        assert_eq!(read_counter(events, "oom_kill"), Some(1));
        assert_eq!(read_counter(events, "oom"), Some(2));
        assert_eq!(
            read_counter("oom_kill_disable 0\nunder_oom 0\n", "oom_kill"),
            None
        );
    }
}
