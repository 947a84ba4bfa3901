//! The worker's identity: an ed25519 key made on first start and kept in the data directory
//! (mode 0600), and the worker id the coordinator gave it at enrollment.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::WorkerError;

const KEY_FILE: &str = "worker.key";
const ENROLLMENT_FILE: &str = "enrollment.json";

/// What enrollment produced, saved so later starts need no token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    pub worker_id: String,
    pub account_id: String,
    pub coordinator_url: String,
}

/// Loads the key from `data_dir`, or makes one there. Refuses a key file others can read.
pub fn load_or_create_key(data_dir: &Path) -> Result<SigningKey, WorkerError> {
    fs::create_dir_all(data_dir).map_err(|e| WorkerError::io(data_dir, e))?;
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        let mode = fs::metadata(&path)
            .map_err(|e| WorkerError::io(&path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(WorkerError::KeyFile {
                path,
                problem: format!("mode {:o} lets others read it; chmod 600", mode & 0o777),
            });
        }
        let text = fs::read_to_string(&path).map_err(|e| WorkerError::io(&path, e))?;
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| WorkerError::KeyFile {
            path: path.clone(),
            problem: "is not 32 hex-encoded bytes".to_owned(),
        })?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    let mut seed = [0u8; 32];
    getrandom_fill(&mut seed);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| WorkerError::io(&path, e))?;
    file.write_all(hex::encode(seed).as_bytes())
        .map_err(|e| WorkerError::io(&path, e))?;
    file.sync_all().map_err(|e| WorkerError::io(&path, e))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn getrandom_fill(seed: &mut [u8; 32]) {
    getrandom::fill(seed).expect("the operating system has a random source");
}

pub fn enrollment_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ENROLLMENT_FILE)
}

pub fn load_enrollment(data_dir: &Path) -> Result<Option<Enrollment>, WorkerError> {
    let path = enrollment_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).map_err(|e| WorkerError::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| WorkerError::KeyFile {
            path,
            problem: format!("is not a valid enrollment record: {e}"),
        })
}

pub fn save_enrollment(data_dir: &Path, enrollment: &Enrollment) -> Result<(), WorkerError> {
    let path = enrollment_path(data_dir);
    let text = serde_json::to_string_pretty(enrollment).expect("enrollment serializes");
    fs::write(&path, text).map_err(|e| WorkerError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create_key(dir.path()).unwrap();
        assert_eq!(key.to_bytes(), again.to_bytes());
        fs::set_permissions(dir.path().join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            load_or_create_key(dir.path()).is_err(),
            "a readable key is refused"
        );
    }

    #[test]
    fn two_workers_get_different_keys() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(
            load_or_create_key(a.path()).unwrap().to_bytes(),
            load_or_create_key(b.path()).unwrap().to_bytes()
        );
    }
}
