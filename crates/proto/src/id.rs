//! Random ids prefixed by their kind (`dev_`, `wrk_`, ...), and the secrets the API hands out.
//!
//! Ids are unguessable (100 random bits) so knowing one grants nothing, and the prefix lets a
//! handler reject an id of the wrong kind before touching storage.

/// The kinds of object that have ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Account,
    ApiKey,
    Worker,
    Device,
    EnrollmentToken,
    AuditEvent,
    Proof,
    Request,
    Transfer,
    Proposal,
    Cluster,
    Run,
}

impl IdKind {
    /// The prefix, including the underscore.
    pub const fn prefix(self) -> &'static str {
        match self {
            IdKind::Account => "usr_",
            IdKind::ApiKey => "key_",
            IdKind::Worker => "wrk_",
            IdKind::Device => "dev_",
            IdKind::EnrollmentToken => "enr_",
            IdKind::AuditEvent => "aud_",
            IdKind::Proof => "prf_",
            IdKind::Request => "req_",
            IdKind::Transfer => "ltx_",
            IdKind::Proposal => "prp_",
            IdKind::Cluster => "clu_",
            IdKind::Run => "run_",
        }
    }
}

const ID_RANDOM_CHARS: usize = 20;
const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Prefix of API keys, so that secret scanners recognise a leaked one.
pub const API_KEY_PREFIX: &str = "flt_";
/// Prefix of enrollment tokens.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "fle_";
/// Random characters in a secret (5 bits each: 260 bits).
const SECRET_RANDOM_CHARS: usize = 52;

fn random_base32(chars: usize) -> String {
    let mut bytes = vec![0u8; chars];
    getrandom::fill(&mut bytes).expect("the operating system has a random source");
    bytes
        .iter()
        .map(|byte| BASE32_ALPHABET[usize::from(byte & 31)] as char)
        .collect()
}

/// A fresh id of the given kind.
pub fn new_id(kind: IdKind) -> String {
    format!("{}{}", kind.prefix(), random_base32(ID_RANDOM_CHARS))
}

/// Whether `text` has the shape of an id of `kind`. Cheap, done before any lookup.
pub fn is_id(kind: IdKind, text: &str) -> bool {
    let Some(rest) = text.strip_prefix(kind.prefix()) else {
        return false;
    };
    rest.len() == ID_RANDOM_CHARS && rest.bytes().all(|b| BASE32_ALPHABET.contains(&b))
}

/// A fresh secret with the given prefix: `flt_...` for API keys, `fle_...` for enrollment tokens.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", random_base32(SECRET_RANDOM_CHARS))
}

/// The stored form of a secret: hex SHA-256. Secrets carry 260 random bits, so a plain hash is
/// enough; a slow password hash would only add latency to every request.
pub fn secret_hash(secret: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The first characters of a secret, stored so a user can tell keys apart in a list.
pub fn secret_display_prefix(secret: &str) -> String {
    secret.chars().take(API_KEY_PREFIX.len() + 6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_kind() {
        let id = new_id(IdKind::Device);
        assert!(is_id(IdKind::Device, &id), "{id}");
        assert!(!is_id(IdKind::Worker, &id));
        assert!(!is_id(IdKind::Device, "dev_short"));
        assert!(!is_id(IdKind::Device, &id.to_uppercase()));
        assert_ne!(new_id(IdKind::Device), id);
    }

    #[test]
    fn secrets_hash_stably_and_differ() {
        let secret = new_secret(API_KEY_PREFIX);
        assert!(secret.starts_with("flt_"));
        assert_eq!(secret.len(), 4 + SECRET_RANDOM_CHARS);
        assert_eq!(secret_hash(&secret), secret_hash(&secret));
        assert_ne!(
            secret_hash(&secret),
            secret_hash(&new_secret(API_KEY_PREFIX))
        );
        assert!(!secret_hash(&secret).contains(&secret[4..]));
    }
}
