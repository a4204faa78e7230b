//! The keys client tokens are verified with, as loaded: from files, secrets and key sets
//! (`tokens`, `jwks`), HMAC secrets keyed once for the one-pass check (`tokens/hmac.rs`).

use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use sha2::{Sha256, Sha384, Sha512};

/// A key tokens are verified with: from a file, a secret or a key set; `kid` selects it.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
    /// An HMAC secret, keyed for the one-pass check (`tokens/hmac.rs`).
    pub(crate) hmac: Option<Box<HmacKey>>,
}

impl VerifyKey {
    pub(crate) fn new(kid: Option<String>, key: DecodingKey) -> Self {
        let hmac = match key.try_get_as_bytes() {
            Ok(secret) if key.family() == AlgorithmFamily::Hmac => HmacKey::new(secret).map(Box::new),
            _ => None,
        };
        VerifyKey { kid, key, hmac }
    }
}

/// An HMAC secret keyed once for each of the three hashes: verifying a token clones a keyed
/// state instead of hashing the secret again.
pub(crate) struct HmacKey {
    hs256: Hmac<Sha256>,
    hs384: Hmac<Sha384>,
    hs512: Hmac<Sha512>,
}

impl HmacKey {
    /// `None` only if the hmac crate refuses the secret's length, which HMAC itself never does.
    pub(crate) fn new(secret: &[u8]) -> Option<Self> {
        Some(HmacKey {
            hs256: Hmac::new_from_slice(secret).ok()?,
            hs384: Hmac::new_from_slice(secret).ok()?,
            hs512: Hmac::new_from_slice(secret).ok()?,
        })
    }

    /// Whether `signature` is `message`'s under `alg` (compared in constant time).
    pub(crate) fn signed(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match alg {
            Algorithm::HS256 => mac_matches(&self.hs256, message, signature),
            Algorithm::HS384 => mac_matches(&self.hs384, message, signature),
            Algorithm::HS512 => mac_matches(&self.hs512, message, signature),
            _ => false,
        }
    }
}

fn mac_matches<M: Mac + Clone>(keyed: &M, message: &[u8], signature: &[u8]) -> bool {
    let mut mac = keyed.clone();
    mac.update(message);
    mac.verify_slice(signature).is_ok()
}
