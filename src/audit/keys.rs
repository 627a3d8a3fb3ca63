//! Audit's signing key (Ed25519): it signs checkpoints, and its public half
//! verifies them. It is kept in an owner-only file, `<data_dir>/audit.key`,
//! made on first use, never in the database whose entries it vouches for.

use std::path::Path;

use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::version4::V4;

/// The key file's name under the data directory.
pub const KEY_FILE: &str = "audit.key";

/// The signing key, its public half and the public half's id.
pub struct AuditKey {
    pub secret: AsymmetricSecretKey<V4>,
    pub public: AsymmetricPublicKey<V4>,
    /// PASERK `k4.pid` of the public key.
    pub id: String,
}

impl AuditKey {
    /// The key in `data_dir`, made there when there is none.
    pub fn load(data_dir: &Path) -> Result<AuditKey, String> {
        let bytes = crate::kernel::keyfile::read_or_create(&data_dir.join(KEY_FILE), || {
            AsymmetricKeyPair::<V4>::generate()
                .map(|pair| pair.secret.as_bytes().to_vec())
                .unwrap_or_default()
        })?;
        let secret = AsymmetricSecretKey::<V4>::from(&bytes)
            .map_err(|_| format!("{KEY_FILE}: not an Ed25519 secret key"))?;
        let public = AsymmetricPublicKey::<V4>::try_from(&secret)
            .map_err(|_| format!("{KEY_FILE}: not an Ed25519 secret key"))?;
        let id = crate::middleware::token::key_id_of(&public);
        Ok(AuditKey { secret, public, id })
    }
}
