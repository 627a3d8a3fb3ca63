//! Signing keys: Ed25519 pairs kept in auth's schema with the secret half
//! encrypted at rest (XChaCha20-Poly1305 under the key-encryption key).
//!
//! Lifecycle, all in terms of the injected clock:
//! - a new key is *published* at once but *signs* only from `signs_from`,
//!   one verifier key-cache lifetime later, so no verifier meets its id
//!   before it has fetched it;
//! - the key it replaces stops signing then and stays published until every
//!   token it signed has expired (`published_until`).

use std::path::Path;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use diesel::prelude::*;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::paserk::Id;
use pasetors::version4::V4;

use super::error::AuthError;
use super::schema::signing_keys;
use crate::kernel::clock::Clock;
use crate::kernel::db::Db;
use crate::kernel::keyfile::KeyFileError;
use crate::kernel::locks;
use crate::kernel::outbox;
use crate::kernel::seal::{SealError, Sealer};
use crate::middleware::token::{key_id_of, public_key_from_paserk, public_key_paserk};
use crate::proto::events::v1::KeyEvent;

/// How long the signer is reused before the key table is read again (picks
/// up rotations made by other instances or the CLI).
pub(super) const SIGNER_RELOAD: std::time::Duration = std::time::Duration::from_secs(10);
/// How much longer than its last token's lifetime a retired key stays
/// published: instances may sign with it for one more `SIGNER_RELOAD`, and
/// their clocks may differ by up to a minute.
pub(super) const RETIRE_MARGIN: Duration = Duration::seconds(70);

/// The key-encryption key. Never logged, never stored in the database.
#[derive(Clone)]
pub struct Kek(Sealer);

impl Kek {
    /// From 64 hex characters in config, or from (creating if missing) the
    /// owner-only file `<data_dir>/auth.kek`.
    pub fn load(configured: &str, data_dir: &Path) -> Result<Kek, KeyFileError> {
        if configured.is_empty() {
            return Sealer::from_file(&data_dir.join("auth.kek")).map(Kek);
        }
        let bytes = hex::decode(configured.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or(KeyFileError::Configured {
                key: "auth.key_encryption_key",
                expected: 32,
            })?;
        Ok(Kek(Sealer::new(&bytes)))
    }

    /// Nonce (24 bytes) followed by the ciphertext.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0.seal(plain)
    }

    /// What [`Kek::seal`] sealed; an error for another key's work.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.0.open(sealed)
    }
}

#[derive(Queryable, Selectable, Insertable, Clone)]
#[diesel(table_name = signing_keys)]
pub struct KeyRow {
    pub kid: String,
    pub public_key: String,
    pub secret_key_enc: Vec<u8>,
    pub created_at: NaiveDateTime,
    pub signs_from: NaiveDateTime,
    pub published_until: Option<NaiveDateTime>,
}

/// The key tokens are signed with now.
#[derive(Clone)]
pub struct Signer {
    pub id: Id,
    pub secret: AsymmetricSecretKey<V4>,
}

/// A published public key.
#[derive(Debug, Clone)]
pub struct Published {
    pub kid: String,
    pub public: AsymmetricPublicKey<V4>,
    pub signs_from: DateTime<Utc>,
    pub published_until: Option<DateTime<Utc>>,
}

/// The signer, its key id, and when (by the injected clock) it was read.
type ReadSigner = (Signer, String, DateTime<Utc>);

/// Signing-key storage and rotation.
#[derive(Clone)]
pub struct KeyRing {
    pub(super) db: Db,
    pub(super) kek: Kek,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) cache_ttl: Duration,
    pub(super) access_ttl: Duration,
    signer: Arc<RwLock<Option<ReadSigner>>>,
    /// The ID-token keys read last, by id (see `oidc/keys.rs`).
    pub(super) id_token_signers: super::oidc::keys::Signers,
}

impl KeyRing {
    pub fn new(
        db: Db,
        kek: Kek,
        clock: Arc<dyn Clock>,
        cache_ttl: Duration,
        access_ttl: Duration,
    ) -> Self {
        Self {
            db,
            kek,
            clock,
            cache_ttl,
            access_ttl,
            signer: Arc::default(),
            id_token_signers: Arc::default(),
        }
    }

    /// Whether this ring's key-encryption key opens every signing key still
    /// published in the database, any of which another auth instance may
    /// have sealed; true when there is none yet.
    pub async fn opens_stored_keys(&self) -> Result<bool, AuthError> {
        let rows = self.published_rows().await?;
        Ok(rows
            .iter()
            .all(|r| self.kek.open(&r.secret_key_enc).is_ok()))
    }

    /// Creates the first key, signing at once, when there is none. Under
    /// the rotation lock, so that of replicas starting on an empty database
    /// together, one makes it.
    pub async fn ensure_one(&self) -> Result<(), AuthError> {
        let now = self.clock.now();
        let row = self.new_row(now, now)?;
        self.db
            .run(move |c| {
                c.transaction(|c| {
                    lock_rotation(c)?;
                    let any: i64 = signing_keys::table.count().get_result(c)?;
                    if any == 0 {
                        diesel::insert_into(signing_keys::table)
                            .values(&row)
                            .execute(c)?;
                    }
                    Ok::<_, AuthError>(())
                })
            })
            .await
    }

    /// Publishes a new key that signs one key-cache lifetime from now; the
    /// current key then stays published until its last token expired. The
    /// ID-token keys rotate with it (see `oidc/keys.rs`).
    pub async fn rotate(&self) -> Result<String, AuthError> {
        let kid = self.rotate_unless_newer_than(None).await?;
        kid.ok_or_else(|| AuthError::Internal("a rotation made no key".into()))
    }

    /// Rotates when the newest key is at least `every` old, and answers the
    /// new key's id; `None` when it was not due. Replicas looking at once
    /// publish one key between them: the look and the rotation are one
    /// transaction, under a lock they share.
    pub async fn rotate_when_older_than(
        &self,
        every: Duration,
    ) -> Result<Option<String>, AuthError> {
        self.rotate_unless_newer_than(Some(every)).await
    }

    async fn rotate_unless_newer_than(
        &self,
        every: Option<Duration>,
    ) -> Result<Option<String>, AuthError> {
        let now = self.clock.now();
        let signs_from = now + self.cache_ttl;
        let row = self.new_row(now, signs_from)?;
        let kid = row.kid.clone();
        let retire_at = (signs_from + self.access_ttl + RETIRE_MARGIN).naive_utc();
        let keep = kid.clone();
        let event = crate::events::auth::KEY_ROTATED.row(
            kid.clone(),
            &KeyEvent {
                key_id: kid.clone(),
                signs_from_unix_ms: signs_from.timestamp_millis(),
            },
        );
        let rotated = self
            .db
            .run(move |c| {
                c.transaction(|c| {
                    lock_rotation(c)?;
                    if let Some(every) = every {
                        let newest: Option<NaiveDateTime> = signing_keys::table
                            .select(diesel::dsl::max(signing_keys::created_at))
                            .first(c)?;
                        if newest.is_some_and(|at| now.naive_utc() - at < every) {
                            return Ok(false);
                        }
                    }
                    diesel::insert_into(signing_keys::table)
                        .values(&row)
                        .execute(c)?;
                    diesel::update(
                        signing_keys::table
                            .filter(signing_keys::kid.ne(keep))
                            .filter(signing_keys::published_until.is_null()),
                    )
                    .set(signing_keys::published_until.eq(Some(retire_at)))
                    .execute(c)?;
                    outbox::enqueue(c, &event, now)?;
                    Ok::<_, AuthError>(true)
                })
            })
            .await?;
        if !rotated {
            return Ok(None);
        }
        tracing::info!(kid = %kid, signs_from = %signs_from, "signing key rotated");
        self.rotate_id_token_keys().await?;
        Ok(Some(kid))
    }

    /// A new key pair's row, its secret half sealed.
    fn new_row(&self, now: DateTime<Utc>, signs_from: DateTime<Utc>) -> Result<KeyRow, AuthError> {
        let pair =
            AsymmetricKeyPair::<V4>::generate().map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(KeyRow {
            kid: key_id_of(&pair.public),
            public_key: public_key_paserk(&pair.public),
            secret_key_enc: self.kek.seal(pair.secret.as_bytes())?,
            created_at: now.naive_utc(),
            signs_from: signs_from.naive_utc(),
            published_until: None,
        })
    }

    /// The key to sign with now: the newest one whose `signs_from` has come.
    pub async fn signer(&self) -> Result<Signer, AuthError> {
        let read_at = self.clock.now();
        if let Some((signer, _, at)) = locks::read(&self.signer).as_ref()
            // A clock set back leaves the signer read as fresh.
            && (read_at - *at)
                .to_std()
                .map_or(true, |age| age < SIGNER_RELOAD)
        {
            return Ok(signer.clone());
        }
        let now = read_at.naive_utc();
        let row: Option<KeyRow> = self
            .db
            .run(move |c| {
                signing_keys::table
                    .filter(signing_keys::signs_from.le(now))
                    .order(signing_keys::signs_from.desc())
                    .select(KeyRow::as_select())
                    .first(c)
                    .optional()
                    .map_err(AuthError::from)
            })
            .await?;
        let row = row.ok_or_else(|| AuthError::Internal("no signing key is active".into()))?;
        let cached = locks::read(&self.signer).clone();
        let signer = match cached {
            Some((signer, kid, _)) if kid == row.kid => signer,
            _ => {
                let secret = self.kek.open(&row.secret_key_enc)?;
                let secret = AsymmetricSecretKey::<V4>::from(&secret)?;
                let public = public_key_from_paserk(&row.public_key)?;
                Signer {
                    id: Id::from(&public),
                    secret,
                }
            }
        };
        *locks::write(&self.signer) = Some((signer.clone(), row.kid, read_at));
        Ok(signer)
    }

    /// Every key published now.
    pub async fn published(&self) -> Result<Vec<Published>, AuthError> {
        let rows = self.published_rows().await?;
        rows.into_iter()
            .map(|r| {
                Ok(Published {
                    public: public_key_from_paserk(&r.public_key)?,
                    kid: r.kid,
                    signs_from: r.signs_from.and_utc(),
                    published_until: r.published_until.map(|t| t.and_utc()),
                })
            })
            .collect()
    }

    /// The rows of every key published now, oldest first.
    async fn published_rows(&self) -> Result<Vec<KeyRow>, AuthError> {
        let now = self.clock.now().naive_utc();
        self.db
            .run(move |c| {
                signing_keys::table
                    .filter(
                        signing_keys::published_until
                            .is_null()
                            .or(signing_keys::published_until.gt(now)),
                    )
                    .order(signing_keys::signs_from.asc())
                    .select(KeyRow::as_select())
                    .load(c)
                    .map_err(AuthError::from)
            })
            .await
    }
}

/// Takes, for the rest of the transaction, the lock that lets one auth
/// replica at a time make or rotate keys. SQLite needs none: one writer at
/// a time, and a transaction that read before another's write cannot write
/// after it.
fn lock_rotation(conn: &mut crate::kernel::db::DbConnection) -> QueryResult<()> {
    match conn {
        #[cfg(feature = "postgres")]
        crate::kernel::db::DbConnection::Pg(pg) => {
            diesel::sql_query("SELECT pg_advisory_xact_lock(72616304)").execute(pg)?;
            Ok(())
        }
        #[cfg(feature = "sqlite")]
        crate::kernel::db::DbConnection::Sqlite(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let kek = Kek::load("", dir.path()).unwrap();
        let sealed = kek.seal(b"secret half").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"secret half"));
        assert_eq!(kek.open(&sealed).unwrap(), b"secret half");
        // The file is reused on the next start, and only its owner may read it.
        let again = Kek::load("", dir.path()).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"secret half");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("auth.kek"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = Kek::load(&"11".repeat(32), dir.path()).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(Kek::load("abc", dir.path()).is_err());
    }
}
