//! `flotilla ray submit`: a thin wrapper over Ray's job API on a `ray` cluster's head, reached
//! through the coordinator's tunnel (`/t/CLUSTER/0/8265/`). The working directory, if given,
//! goes up first as a Ray package (a zip, stored without compression); the job's logs are
//! printed as they grow, and the command exits 0 only when the job succeeded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flotilla_client::Client;
use flotilla_proto::mesh::RAY_DASHBOARD_PORT;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client_commands::Connection;

/// How often the job's status and logs are read.
const POLL_MS: u64 = 1_000;
/// Largest working directory sent, and most files in it.
const PACKAGE_BYTES_MAX: u64 = 8 << 20;
const PACKAGE_FILES_MAX: usize = 1_000;

#[derive(Debug, Subcommand)]
pub enum RayCommand {
    /// Submit a job (a shell command run on the head) and print its logs until it ends.
    Submit {
        #[command(flatten)]
        connection: Connection,
        cluster: String,
        /// A local directory the job runs in (sent along; at most 8 MiB).
        #[arg(long)]
        working_dir: Option<PathBuf>,
        /// The job's command (after --), such as: -- python train.py
        #[arg(last = true, required = true)]
        entrypoint: Vec<String>,
    },
}

pub async fn run(command: RayCommand) -> Result<()> {
    match command {
        RayCommand::Submit {
            connection,
            cluster,
            working_dir,
            entrypoint,
        } => {
            submit(
                &connection.client()?,
                &cluster,
                working_dir.as_deref(),
                &entrypoint,
            )
            .await
        }
    }
}

async fn submit(
    client: &Client,
    cluster: &str,
    working_dir: Option<&Path>,
    entrypoint: &[String],
) -> Result<()> {
    let head = format!("/t/{cluster}/0/{RAY_DASHBOARD_PORT}/api");
    let mut job = json!({ "entrypoint": shell_words(entrypoint) });
    if let Some(dir) = working_dir {
        let package = zip_directory(dir)?;
        let name = format!(
            "_ray_pkg_{}.zip",
            hex::encode(&Sha256::digest(&package)[..16])
        );
        client
            .put_bytes(&format!("{head}/packages/gcs/{name}"), package)
            .await
            .context("uploading the working directory")?;
        job["runtime_env"] = json!({ "working_dir": format!("gcs://{name}") });
    }
    let submitted: Value = client
        .post(&format!("{head}/jobs/"), &job)
        .await
        .context("submitting the job")?;
    let id = submitted["submission_id"]
        .as_str()
        .context("Ray's answer has no submission_id")?
        .to_owned();
    eprintln!("submitted {id}");
    let mut printed = 0;
    loop {
        let status: Value = client.get(&format!("{head}/jobs/{id}")).await?;
        let logs: Value = client.get(&format!("{head}/jobs/{id}/logs")).await?;
        let text = logs["logs"].as_str().unwrap_or_default();
        if let Some(new) = text.get(printed..) {
            print!("{new}");
            printed = text.len();
        }
        match status["status"].as_str().unwrap_or_default() {
            "SUCCEEDED" => return Ok(()),
            ended @ ("FAILED" | "STOPPED") => {
                let message = status["message"].as_str().unwrap_or_default();
                bail!("job {id} {}: {message}", ended.to_lowercase())
            }
            _ => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
        }
    }
}

/// The words as one shell command line, each quoted where it needs to be.
fn shell_words(words: &[String]) -> String {
    let quote = |word: &String| {
        let plain = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c));
        if plain {
            word.clone()
        } else {
            format!("'{}'", word.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// The files under `dir` (paths relative to it), as a zip without compression.
fn zip_directory(dir: &Path) -> Result<Vec<u8>> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut zip = ZipWriter::default();
    let mut total: u64 = 0;
    for (name, path) in files {
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        total += data.len() as u64;
        if total > PACKAGE_BYTES_MAX {
            bail!("{} holds more than 8 MiB", dir.display());
        }
        zip.add(&name, &data);
    }
    Ok(zip.finish())
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let kind = std::fs::symlink_metadata(&path)?.file_type();
        if kind.is_dir() {
            collect_files(root, &path, files)?;
        } else if kind.is_file() {
            let name = path
                .strip_prefix(root)?
                .to_string_lossy()
                .replace('\\', "/");
            files.push((name, path));
            if files.len() > PACKAGE_FILES_MAX {
                bail!(
                    "{} holds more than {PACKAGE_FILES_MAX} files",
                    root.display()
                );
            }
        }
    }
    Ok(())
}

/// A zip archive of stored (uncompressed) files: local headers, then the central directory.
#[derive(Default)]
struct ZipWriter {
    bytes: Vec<u8>,
    central: Vec<u8>,
    count: u16,
}

impl ZipWriter {
    fn add(&mut self, name: &str, data: &[u8]) {
        let offset = self.bytes.len() as u32;
        let (crc, size, name_len) = (crc32(data), data.len() as u32, name.len() as u16);
        // Version 2.0, no flags, stored, no time (1980-01-01).
        let common = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&0x21u16.to_le_bytes());
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&name_len.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
        };
        self.bytes.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        common(&mut self.bytes);
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(data);
        self.central
            .extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        self.central.extend_from_slice(&20u16.to_le_bytes());
        common(&mut self.central);
        // Comment length, disk, internal and external attributes (0644 regular file).
        self.central.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        self.central
            .extend_from_slice(&((0o100_644u32) << 16).to_le_bytes());
        self.central.extend_from_slice(&offset.to_le_bytes());
        self.central.extend_from_slice(name.as_bytes());
        self.count += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        let (offset, size) = (self.bytes.len() as u32, self.central.len() as u32);
        self.bytes.append(&mut self.central);
        self.bytes.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        self.bytes.extend_from_slice(&[0, 0, 0, 0]);
        self.bytes.extend_from_slice(&self.count.to_le_bytes());
        self.bytes.extend_from_slice(&self.count.to_le_bytes());
        self.bytes.extend_from_slice(&size.to_le_bytes());
        self.bytes.extend_from_slice(&offset.to_le_bytes());
        self.bytes.extend_from_slice(&0u16.to_le_bytes());
        self.bytes
    }
}

/// CRC-32 (IEEE), as zip wants it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn words_are_quoted_only_where_needed() {
        let words: Vec<String> = ["python", "job.py", "--name", "it's here", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_words(&words),
            r"python job.py --name 'it'\''s here' ''"
        );
    }

    #[test]
    fn a_zip_python_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("job.py"), "print('hi')\n").unwrap();
        std::fs::write(dir.path().join("sub/data.txt"), "x".repeat(1000)).unwrap();
        let zip = zip_directory(dir.path()).unwrap();
        let file = dir.path().join("out.zip");
        std::fs::write(&file, zip).unwrap();
        let listed = std::process::Command::new("python3")
            .args(["-c", "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(sorted(z.namelist()))"])
            .arg(&file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout);
        assert_eq!(text.trim(), "['job.py', 'sub/data.txt']", "{listed:?}");
    }
}
