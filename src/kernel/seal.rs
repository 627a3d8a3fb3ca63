//! Secrets kept in a database sealed under a key the database does not
//! hold: XChaCha20-Poly1305, a random 24-byte nonce before each
//! ciphertext. Someone who reads the database reads nothing of them, and
//! someone who writes it cannot alter one unnoticed.

use std::path::Path;
use std::sync::Arc;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rand::RngCore;

use super::keyfile::KeyFileError;

const NONCE: usize = 24;

/// A value that cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("encryption failed")]
    Encrypt,
    #[error("sealed value too short")]
    TooShort,
    #[error("cannot decrypt: wrong key or damaged data")]
    Decrypt,
}

/// Seals and opens with one key. Never logged; cheap to clone.
#[derive(Clone)]
pub struct Sealer(Arc<XChaCha20Poly1305>);

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer(Arc::new(XChaCha20Poly1305::new(key.into())))
    }

    /// The key in the owner-only file at `path`, made there when missing.
    pub fn from_file(path: &Path) -> Result<Self, KeyFileError> {
        let bytes = super::keyfile::read_or_create(path, || {
            let mut key = vec![0u8; 32];
            rand::rng().fill_bytes(&mut key);
            key
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyFileError::Length {
            path: path.to_owned(),
            expected: 32,
        })?;
        Ok(Self::new(&key))
    }

    /// Nonce (24 bytes) followed by the ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        out.extend(
            self.0
                .encrypt(XNonce::from_slice(&nonce), plain)
                .map_err(|_| SealError::Encrypt)?,
        );
        Ok(out)
    }

    /// What `seal` sealed; an error for another key's work or damaged data.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE {
            return Err(SealError::TooShort);
        }
        let (nonce, body) = sealed.split_at(NONCE);
        self.0
            .decrypt(XNonce::from_slice(nonce), body)
            .map_err(|_| SealError::Decrypt)
    }
}

/// HMAC-SHA256 keyed with a 32-byte key. HMAC pads a key shorter than
/// its block (64 bytes) with zeros; padded here, the key has the block's
/// length and keying cannot fail.
pub fn hmac_sha256(key: &[u8; 32]) -> hmac::Hmac<sha2::Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    <hmac::Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new(&block.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_opens_with_its_key_only_and_not_once_altered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let sealer = Sealer::from_file(&path).unwrap();
        let sealed = sealer.seal(b"a secret").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"a secret"));
        // The same file gives the same key.
        let again = Sealer::from_file(&path).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"a secret");
        assert!(Sealer::new(&[7; 32]).open(&sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(sealer.open(&altered).is_err());
        assert!(sealer.open(&sealed[..10]).is_err());
    }

    #[test]
    fn a_padded_hmac_key_is_the_same_key() {
        use hmac::Mac as _;
        let key = [9u8; 32];
        let mut padded = hmac_sha256(&key);
        let mut sliced = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&key).unwrap();
        padded.update(b"message");
        sliced.update(b"message");
        assert_eq!(
            padded.finalize().into_bytes(),
            sliced.finalize().into_bytes()
        );
    }
}
