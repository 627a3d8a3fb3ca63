//! What audit signs with its key: checkpoints (the chain's head at a
//! moment) and markers (what audit itself did to the chain: where retention
//! stopped, from which entry on entries carry a MAC). Each is a PASETO
//! v4.public token over a message naming exactly what it vouches for, so
//! whoever cannot read `audit.key` can neither make one nor move one.

use chrono::{DateTime, Utc};
use pasetors::Public;
use pasetors::keys::AsymmetricPublicKey;
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};

use super::keys::{AuditKey, KeyError};
use super::model::canonical_time;

/// The chain's head at a moment, signed: `signature` is a PASETO v4.public
/// token whose message is [`Checkpoint::message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub at: DateTime<Utc>,
    /// PASERK `k4.pid` of the key that signed it.
    pub key_id: String,
    pub signature: String,
}

impl Checkpoint {
    /// What is signed: the entry's number and hash, and when.
    pub fn message(seq: i64, hash: &str, at: DateTime<Utc>) -> String {
        format!(
            "gatehouse.audit.checkpoint.v1|{seq}|{hash}|{}",
            canonical_time(at)
        )
    }

    /// Signs the head `(seq, hash)` at `at` with `key`.
    pub fn sign(
        seq: i64,
        hash: &str,
        at: DateTime<Utc>,
        key: &AuditKey,
    ) -> Result<Checkpoint, KeyError> {
        let signature = sign(&Checkpoint::message(seq, hash, at), key)?;
        Ok(Checkpoint {
            seq,
            hash: hash.to_owned(),
            at,
            key_id: key.id.clone(),
            signature,
        })
    }

    /// Whether `key` signed exactly this checkpoint.
    pub fn signed_by(&self, key: &AsymmetricPublicKey<V4>) -> bool {
        signed(
            &self.signature,
            key,
            &Checkpoint::message(self.seq, &self.hash, self.at),
        )
    }
}

/// What audit itself did to the chain, signed like a checkpoint: the
/// entries up to `seq` removed by retention ([`Marker::RETAINED`], `hash`
/// that entry's), or entries from `seq` on carrying a MAC
/// ([`Marker::MACS_FROM`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub kind: String,
    pub seq: i64,
    pub hash: String,
    pub at: DateTime<Utc>,
    pub key_id: String,
    pub signature: String,
}

impl Marker {
    pub const RETAINED: &str = "retained";
    pub const MACS_FROM: &str = "macs_from";

    fn message(kind: &str, seq: i64, hash: &str, at: DateTime<Utc>) -> String {
        format!(
            "gatehouse.audit.marker.v1|{kind}|{seq}|{hash}|{}",
            canonical_time(at)
        )
    }

    /// Signs that `kind` holds at `(seq, hash)`, at `at`, with `key`.
    pub fn sign(
        kind: &str,
        seq: i64,
        hash: &str,
        at: DateTime<Utc>,
        key: &AuditKey,
    ) -> Result<Marker, KeyError> {
        let signature = sign(&Marker::message(kind, seq, hash, at), key)?;
        Ok(Marker {
            kind: kind.to_owned(),
            seq,
            hash: hash.to_owned(),
            at,
            key_id: key.id.clone(),
            signature,
        })
    }

    /// Whether `key` signed exactly this marker.
    pub fn signed_by(&self, key: &AsymmetricPublicKey<V4>) -> bool {
        signed(
            &self.signature,
            key,
            &Marker::message(&self.kind, self.seq, &self.hash, self.at),
        )
    }
}

/// `key`'s signature over `message`: a PASETO v4.public token.
fn sign(message: &str, key: &AuditKey) -> Result<String, KeyError> {
    Ok(PublicToken::sign(
        &key.secret,
        message.as_bytes(),
        None,
        None,
    )?)
}

/// Whether `signature` is `key`'s over exactly `message`.
fn signed(signature: &str, key: &AsymmetricPublicKey<V4>, message: &str) -> bool {
    UntrustedToken::<Public, V4>::try_from(signature)
        .ok()
        .and_then(|token| PublicToken::verify(key, &token, None, None).ok())
        .is_some_and(|trusted| trusted.payload() == message)
}
