//! A throwaway PostgreSQL server from the machine's own binaries: a fresh cluster in a
//! temporary directory, on a free loopback port, stopped and deleted when dropped. PostgreSQL
//! refuses to run as root, so as root it runs as the `postgres` system user.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

pub struct Server {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_root: bool,
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn install() -> Result<()> {
    eprintln!("xtask: PostgreSQL not found; installing it with apt-get");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "postgresql"]))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// A server for tests: it skips syncing to disk (`fsync=off`), which a test never needs.
    pub fn start() -> Result<Server> {
        Server::start_with(false)
    }

    /// A server that syncs its commits to disk, as a deployment's does: for benchmarks.
    pub fn start_durable() -> Result<Server> {
        Server::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Server> {
        let bin = match find_bin_dir() {
            Some(bin) => bin,
            None => {
                install()?;
                find_bin_dir().context("PostgreSQL binaries still missing after install")?
            }
        };
        let as_root = is_root();
        let dir = std::env::temp_dir().join(format!("flotilla-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock"))?;
        if as_root {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir))?;
        }
        let server = Server {
            dir,
            bin,
            port: free_port()?,
            as_root,
        };
        let data = server.dir.join("data");
        server.run_pg(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        )?;
        let fsync = if durable { "on" } else { "off" };
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync={fsync}",
            server.port,
            path(&server.dir.join("sock"))
        );
        let log = server.dir.join("log");
        server.run_pg(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-o",
                &options,
                "start",
            ],
        )?;
        eprintln!("xtask: PostgreSQL running on 127.0.0.1:{}", server.port);
        Ok(server)
    }

    fn run_pg(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut command = if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        command.args(args).stdout(std::process::Stdio::null());
        let status = command
            .status()
            .with_context(|| format!("running {tool}"))?;
        if !status.success() {
            bail!(
                "{tool} failed with {status}; see {}",
                self.dir.join("log").display()
            );
        }
        Ok(())
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let port = self.port.to_string();
        self.run_pg(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name],
        )?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run_pg("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
