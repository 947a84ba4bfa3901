//! Where client commands find the coordinator and the key: flags, then `FLOTILLA_URL` and
//! `FLOTILLA_API_KEY`, then the profile written by `flotilla login`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: String,
    pub api_key: String,
    /// The private CA file trusted for this coordinator (`--ca-cert` at login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// `$FLOTILLA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/flotilla`, else `~/.config/flotilla`.
pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("flotilla");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config").join("flotilla")
}

/// The CA certificates (PEM) in `path`, for `--ca-cert`.
pub fn read_ca_cert(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))
}

pub fn load() -> Option<Profile> {
    let text = std::fs::read_to_string(config_dir().join("profile.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Saves the profile, readable by the owner only.
pub fn save(profile: &Profile) -> Result<PathBuf> {
    let dir = config_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("profile.json");
    let text = serde_json::to_string_pretty(profile)?;
    flotilla_coordinator::files::write_private(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
