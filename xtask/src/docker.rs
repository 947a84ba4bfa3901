//! A throwaway Docker engine for the worker's container tests: Debian's `docker.io` installed
//! when `dockerd` is missing, one `dockerd` started as root with its state, sockets and pid
//! file in a short temporary directory, a test image built `FROM scratch` with a static
//! busybox (no registry is reachable), and the engine stopped and its directory removed when
//! dropped.
//!
//! Setup never fails the test command: when it cannot work (no root, no package mirror) it
//! says why and the container tests skip. When it works, the tests get
//! `FLOTILLA_TEST_DOCKER_HOST`, `FLOTILLA_TEST_IMAGE` and `FLOTILLA_REQUIRE_CONTAINERS=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The image the worker's container tests run.
pub const TEST_IMAGE: &str = "flotilla-test/busybox:1";
/// Where Debian's busybox-static puts its binary.
const BUSYBOX: &str = "/bin/busybox";
/// How long the engine may take to answer after it is started.
const START_MS_MAX: u64 = 30_000;
/// How long the engine may take to stop before it is killed.
const STOP_MS_MAX: u64 = 10_000;
const POLL_MS: u64 = 100;
const DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\n\
                          RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n";

/// A running test engine; dropping it stops the engine and removes its files.
pub struct Engine {
    /// Holds the engine's state; short, since unix socket paths under it are limited to 108
    /// bytes.
    dir: PathBuf,
    dockerd: Child,
}

impl Engine {
    /// Starts an engine and gives `command` what the container tests need, or says why not
    /// and leaves `command` as it is.
    pub fn for_tests(command: &mut Command) -> Option<Engine> {
        let started = Instant::now();
        match Engine::start() {
            Ok(engine) => {
                eprintln!(
                    "xtask: Docker engine at {} with {TEST_IMAGE}, ready in {} ms",
                    engine.host(),
                    started.elapsed().as_millis()
                );
                command
                    .env("FLOTILLA_TEST_DOCKER_HOST", engine.host())
                    .env("FLOTILLA_TEST_IMAGE", TEST_IMAGE)
                    .env("FLOTILLA_REQUIRE_CONTAINERS", "1");
                Some(engine)
            }
            Err(error) => {
                eprintln!(
                    "xtask: no Docker engine for the tests ({error:#}); the container tests will not run"
                );
                None
            }
        }
    }

    fn start() -> Result<Engine> {
        if !is_root() {
            bail!("starting dockerd needs root");
        }
        install_missing()?;
        let dir = PathBuf::from(format!("/tmp/fdk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("log"))?;
        let dockerd = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("d"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("s").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        // From here on, dropping the engine stops dockerd.
        let mut engine = Engine { dir, dockerd };
        engine.wait_until_ready()?;
        engine.build_image()?;
        Ok(engine)
    }

    /// The engine's address, as `DOCKER_HOST` spells it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.join("s").display())
    }

    fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        command.arg("-H").arg(self.host());
        command
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_millis(START_MS_MAX);
        while Instant::now() < deadline {
            if let Some(status) = self.dockerd.try_wait()? {
                bail!(
                    "dockerd exited with {status}; see {}",
                    self.dir.join("log").display()
                );
            }
            let answered = self
                .docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        bail!(
            "dockerd did not answer within {START_MS_MAX} ms; see {}",
            self.dir.join("log").display()
        )
    }

    /// Builds the test image from the host's static busybox: a root filesystem of busybox and
    /// its links, nothing else.
    fn build_image(&self) -> Result<()> {
        let context = self.dir.join("img");
        std::fs::create_dir_all(&context)?;
        std::fs::copy(BUSYBOX, context.join("busybox"))
            .with_context(|| format!("copying {BUSYBOX}"))?;
        std::fs::write(context.join("Dockerfile"), DOCKERFILE)?;
        // The classic builder needs no buildx plugin and works with old and new engines alike;
        // its deprecation notice is noise unless the build fails.
        let built = self
            .docker()
            .args(["build", "--quiet", "--tag", TEST_IMAGE])
            .arg(&context)
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .context("running docker build")?;
        if !built.status.success() {
            bail!(
                "docker build failed with {}: {}",
                built.status,
                String::from_utf8_lossy(&built.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containers and unmount their layers first.
        let _ = Command::new("kill")
            .arg(self.dockerd.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_millis(STOP_MS_MAX);
        while Instant::now() < deadline {
            if matches!(self.dockerd.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        if matches!(self.dockerd.try_wait(), Ok(None)) {
            eprintln!("xtask: dockerd outlived {STOP_MS_MAX} ms; killing it");
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!(
                "xtask: could not remove {} ({error}); a mount may be left",
                self.dir.display()
            );
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs `docker.io` when `dockerd` is missing and `busybox-static` when the static busybox
/// is (Debian's plain `busybox` is linked against the host's libc, useless in a bare image).
fn install_missing() -> Result<()> {
    let mut packages = Vec::new();
    if !on_path("dockerd") || !on_path("docker") {
        packages.push("docker.io");
    }
    if !package_installed("busybox-static") {
        packages.push("busybox-static");
    }
    if packages.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    crate::apt_install_without_recommends(&packages)?;
    eprintln!("xtask: installed in {} ms", started.elapsed().as_millis());
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
