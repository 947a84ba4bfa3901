//! X25519 static keys, and their derivation from ed25519 keys.
//!
//! A worker already has an ed25519 signing key, enrolled with the coordinator. Rather than
//! enrol a second key, the tunnel uses the X25519 key that the standard birational map gives:
//! the private scalar is the first half of SHA-512 of the ed25519 seed (the same scalar that
//! signs), the public key is the Montgomery form of the ed25519 point. The coordinator computes
//! the expected Noise static key from the enrolled public key alone.

use curve25519_dalek::MontgomeryPoint;
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroize;

use crate::{NOISE_PARAMS, TunnelError};

/// An X25519 key pair for the Noise handshake. `Debug` prints the public key only.
#[derive(Clone)]
pub struct StaticKeypair {
    private: [u8; 32],
    public: [u8; 32],
}

impl StaticKeypair {
    /// A fresh random key pair (for the coordinator, which persists [`Self::private`]).
    pub fn generate() -> Result<Self, TunnelError> {
        let params = NOISE_PARAMS.parse()?;
        let keypair = snow::Builder::new(params).generate_keypair()?;
        let private: [u8; 32] =
            keypair
                .private
                .as_slice()
                .try_into()
                .map_err(|_| TunnelError::Malformed {
                    what: "generated private key is not 32 bytes",
                })?;
        Ok(Self::from_private(private))
    }

    /// The key pair of an X25519 private key (clamped on use, as X25519 specifies).
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Self { private, public }
    }

    /// The X25519 key pair of a worker's ed25519 signing key. Its public half equals
    /// [`x25519_public_from_ed25519`] of the signing key's verifying key.
    pub fn from_ed25519(signing_key: &SigningKey) -> Self {
        Self::from_private(signing_key.to_scalar_bytes())
    }

    /// The public key, which the peer sees and checks.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The private key, for persisting a generated key pair.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

impl Drop for StaticKeypair {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &hex::encode(self.public))
            .field("private", &"***")
            .finish()
    }
}

/// The X25519 public key that [`StaticKeypair::from_ed25519`] yields for the owner of `key`.
pub fn x25519_public_from_ed25519(key: &VerifyingKey) -> [u8; 32] {
    key.to_montgomery().to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_derivation_matches_on_both_sides() {
        for seed in 0u8..16 {
            let signing = SigningKey::from_bytes(&[seed; 32]);
            let pair = StaticKeypair::from_ed25519(&signing);
            assert_eq!(
                pair.public(),
                &x25519_public_from_ed25519(&signing.verifying_key())
            );
        }
    }

    #[test]
    fn generated_keys_are_distinct_and_consistent() {
        let a = StaticKeypair::generate().unwrap();
        let b = StaticKeypair::generate().unwrap();
        assert_ne!(a.public(), b.public());
        assert_eq!(
            StaticKeypair::from_private(*a.private()).public(),
            a.public()
        );
        assert!(!format!("{a:?}").contains(&hex::encode(a.private())));
    }
}
