//! Audit's signing key (Ed25519): it signs checkpoints, and its public half
//! verifies them. It is kept in an owner-only file, `<data_dir>/audit.key`,
//! made on first use, never in the database whose entries it vouches for.

use std::path::Path;

use hmac::{Hmac, Mac};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::version4::V4;
use sha2::Sha256;

/// The key file's name under the data directory.
pub const KEY_FILE: &str = "audit.key";

/// Audit's key cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    File(#[from] crate::kernel::keyfile::KeyFileError),
    #[error("{KEY_FILE}: not an Ed25519 secret key")]
    NotEd25519,
    #[error("cannot sign a checkpoint: {0}")]
    Sign(#[from] pasetors::errors::Error),
}

/// The signing key, its public half and the public half's id.
pub struct AuditKey {
    pub secret: AsymmetricSecretKey<V4>,
    pub public: AsymmetricPublicKey<V4>,
    /// PASERK `k4.pid` of the public key.
    pub id: String,
}

impl AuditKey {
    /// The key in `data_dir`, made there when there is none.
    pub fn load(data_dir: &Path) -> Result<AuditKey, KeyError> {
        let bytes = crate::kernel::keyfile::read_or_create(&data_dir.join(KEY_FILE), || {
            AsymmetricKeyPair::<V4>::generate()
                .map(|pair| pair.secret.as_bytes().to_vec())
                .unwrap_or_default()
        })?;
        let secret = AsymmetricSecretKey::<V4>::from(&bytes).map_err(|_| KeyError::NotEd25519)?;
        let public =
            AsymmetricPublicKey::<V4>::try_from(&secret).map_err(|_| KeyError::NotEd25519)?;
        let id = crate::middleware::token::key_id_of(&public);
        Ok(AuditKey { secret, public, id })
    }

    /// The key each entry's MAC is made with: derived from the signing key,
    /// so it is kept with it and nowhere else.
    pub fn entry_key(&self) -> EntryKey {
        use sha2::Digest as _;
        let mut derive = sha2::Sha256::new();
        derive.update(b"gatehouse audit entry mac v1\0");
        derive.update(self.secret.as_bytes());
        EntryKey {
            keyed: crate::kernel::seal::hmac_sha256(&derive.finalize().into()),
        }
    }
}

/// Makes and checks entries' MACs (HMAC-SHA256 over the entry's hash, which
/// covers its fields and the chain before it).
#[derive(Clone)]
pub struct EntryKey {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for EntryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryKey(***)")
    }
}

impl EntryKey {
    /// The MAC of an entry whose hash is `hash`, in hex.
    pub fn mac(&self, hash: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(hash.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `entry`'s MAC is this key's over its hash.
    pub fn holds(&self, entry: &super::model::Entry) -> bool {
        let Ok(given) = hex::decode(&entry.mac) else {
            return false;
        };
        let mut mac = self.keyed.clone();
        mac.update(entry.hash.as_bytes());
        mac.verify_slice(&given).is_ok()
    }
}
