//! The keys ID tokens are signed with: one lifecycle per algorithm, the
//! same as the access tokens' keys (`auth/keys.rs`). A new key is published
//! at once and signs one key-cache lifetime later; the key it replaces
//! stays published until the last ID token it signed has expired. The
//! secret half is PKCS#8, sealed under the key-encryption key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde_json::{Value, json};

use super::jws::{Alg, SigningKey, generate};
use crate::auth::error::AuthError;
use crate::auth::keys::{KeyRing, RETIRE_MARGIN, SIGNER_RELOAD};
use crate::auth::schema::id_token_keys;
use crate::kernel::locks;

/// The ID-token keys opened, by key id, and the one each algorithm signs
/// with now, with when that was read.
pub type Signers = Arc<RwLock<Opened>>;

#[derive(Default)]
pub struct Opened {
    by_kid: HashMap<String, Arc<SigningKey>>,
    current: HashMap<Alg, (String, DateTime<Utc>)>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = id_token_keys)]
struct Row {
    kid: String,
    alg: String,
    public_jwk: String,
    secret_key_enc: Vec<u8>,
    created_at: NaiveDateTime,
    signs_from: NaiveDateTime,
    published_until: Option<NaiveDateTime>,
}

impl KeyRing {
    /// Makes the first ID-token key of `alg`, signing at once, when there
    /// is none. Called when the provider first needs the algorithm, not at
    /// start: an RSA key costs a moment's CPU, and a platform that signs
    /// no ID token needs none.
    pub async fn ensure_id_token_key(&self, alg: Alg) -> Result<(), AuthError> {
        let name = alg.name();
        let any: i64 = self
            .db
            .run(move |c| {
                Ok::<_, AuthError>(
                    id_token_keys::table
                        .filter(id_token_keys::alg.eq(name))
                        .count()
                        .get_result(c)?,
                )
            })
            .await?;
        if any == 0 {
            let now = self.clock.now();
            self.insert_id_token_key(alg, now, now).await?;
        }
        Ok(())
    }

    /// For each algorithm with a key, publishes a new one that signs one
    /// key-cache lifetime from now; the others of its algorithm stay
    /// published until the last ID token they signed has expired.
    pub async fn rotate_id_token_keys(&self) -> Result<Vec<String>, AuthError> {
        let used: Vec<String> = self
            .db
            .run(|c| {
                Ok::<_, AuthError>(
                    id_token_keys::table
                        .select(id_token_keys::alg)
                        .distinct()
                        .load(c)?,
                )
            })
            .await?;
        let now = self.clock.now();
        let signs_from = now + self.cache_ttl;
        let retire_at = (signs_from + self.access_ttl + RETIRE_MARGIN).naive_utc();
        let mut made = Vec::new();
        for alg in used.iter().filter_map(|name| Alg::parse(name)) {
            let kid = self.insert_id_token_key(alg, now, signs_from).await?;
            let keep = kid.clone();
            self.db
                .run(move |c| {
                    diesel::update(
                        id_token_keys::table
                            .filter(id_token_keys::alg.eq(alg.name()))
                            .filter(id_token_keys::kid.ne(keep))
                            .filter(id_token_keys::published_until.is_null()),
                    )
                    .set(id_token_keys::published_until.eq(Some(retire_at)))
                    .execute(c)
                    .map_err(AuthError::from)
                })
                .await?;
            tracing::info!(kid = %kid, alg = alg.name(), signs_from = %signs_from,
                "ID-token key rotated");
            made.push(kid);
        }
        Ok(made)
    }

    async fn insert_id_token_key(
        &self,
        alg: Alg,
        now: DateTime<Utc>,
        signs_from: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        // An RSA key takes a moment to make: off the async threads.
        let der = tokio::task::spawn_blocking(move || generate(alg))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))??;
        let key = SigningKey::from_pkcs8(alg, &der)?;
        let kid = key.kid().to_owned();
        let row = Row {
            kid: kid.clone(),
            alg: alg.name().to_owned(),
            public_jwk: key.public_jwk().to_string(),
            secret_key_enc: self.kek.seal(&der)?,
            created_at: now.naive_utc(),
            signs_from: signs_from.naive_utc(),
            published_until: None,
        };
        self.db
            .run(move |c| {
                diesel::insert_into(id_token_keys::table)
                    .values(&row)
                    .execute(c)
                    .map_err(AuthError::from)
            })
            .await?;
        Ok(kid)
    }

    /// The key of `alg` to sign an ID token with now: the newest whose
    /// `signs_from` has come, read again every `SIGNER_RELOAD` (rotations
    /// publish a key that long and more before it signs). An algorithm
    /// with no key yet gets its first.
    pub async fn id_token_signer(&self, alg: Alg) -> Result<Arc<SigningKey>, AuthError> {
        let read_at = self.clock.now();
        {
            let opened = locks::read(&self.id_token_signers);
            if let Some((kid, at)) = opened.current.get(&alg)
                // A clock set back leaves the choice read as fresh.
                && (read_at - *at).to_std().map_or(true, |age| age < SIGNER_RELOAD)
                && let Some(key) = opened.by_kid.get(kid)
            {
                return Ok(key.clone());
            }
        }
        let row = match self.signing_row(alg, read_at).await? {
            Some(row) => row,
            None => {
                self.ensure_id_token_key(alg).await?;
                self.signing_row(alg, read_at).await?.ok_or_else(|| {
                    AuthError::Internal(format!("no {} ID-token key signs yet", alg.name()))
                })?
            }
        };
        let known = locks::read(&self.id_token_signers)
            .by_kid
            .get(&row.kid)
            .cloned();
        let key = match known {
            Some(key) => key,
            None => Arc::new(SigningKey::from_pkcs8(
                alg,
                &self.kek.open(&row.secret_key_enc)?,
            )?),
        };
        let mut opened = locks::write(&self.id_token_signers);
        opened.by_kid.insert(row.kid.clone(), key.clone());
        opened.current.insert(alg, (row.kid, read_at));
        Ok(key)
    }

    /// The newest key of `alg` whose `signs_from` has come by `at`.
    async fn signing_row(&self, alg: Alg, at: DateTime<Utc>) -> Result<Option<Row>, AuthError> {
        let at = at.naive_utc();
        self.db
            .run(move |c| {
                id_token_keys::table
                    .filter(id_token_keys::alg.eq(alg.name()))
                    .filter(id_token_keys::signs_from.le(at))
                    .order(id_token_keys::signs_from.desc())
                    .select(Row::as_select())
                    .first(c)
                    .optional()
                    .map_err(AuthError::from)
            })
            .await
    }

    /// The JWKS: every ID-token key published now, oldest first.
    pub async fn jwks(&self) -> Result<Value, AuthError> {
        let keys = self
            .published_id_token_keys()
            .await?
            .iter()
            .map(|(jwk, _)| serde_json::from_str(jwk))
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| AuthError::Internal(format!("a stored JWK: {e}")))?;
        Ok(json!({ "keys": keys }))
    }

    /// The claims of an ID token a key published now signed (expired ones
    /// included: an `id_token_hint` may be old).
    pub async fn read_id_token(&self, token: &str) -> Result<Option<Value>, AuthError> {
        let published = self.published_id_token_keys().await?;
        Ok(published.iter().find_map(|(jwk, _)| {
            let jwk: Value = serde_json::from_str(jwk).ok()?;
            super::jws::verify(&jwk, token).map(|(_, claims)| claims)
        }))
    }

    /// Whether this ring's key-encryption key opens every ID-token key
    /// still published; true when there is none.
    pub async fn opens_id_token_keys(&self) -> Result<bool, AuthError> {
        let published = self.published_id_token_keys().await?;
        Ok(published.iter().all(|(_, s)| self.kek.open(s).is_ok()))
    }

    /// The public JWK and the sealed secret of every ID-token key
    /// published now, oldest first.
    async fn published_id_token_keys(&self) -> Result<Vec<(String, Vec<u8>)>, AuthError> {
        let now = self.clock.now().naive_utc();
        self.db
            .run(move |c| {
                id_token_keys::table
                    .filter(
                        id_token_keys::published_until
                            .is_null()
                            .or(id_token_keys::published_until.gt(now)),
                    )
                    .order(id_token_keys::signs_from.asc())
                    .select((id_token_keys::public_jwk, id_token_keys::secret_key_enc))
                    .load(c)
                    .map_err(AuthError::from)
            })
            .await
    }
}

#[cfg(test)]
#[cfg(feature = "sqlite")]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::auth::keys::Kek;
    use crate::kernel::clock::ManualClock;
    use crate::kernel::config::DatabaseConfig;

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_new_key_is_published_before_it_signs_and_the_old_one_kept_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::auth::open_db(&DatabaseConfig::default(), dir.path())
            .await
            .unwrap();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let ring = KeyRing::new(
            db,
            Kek::load("", dir.path()).unwrap(),
            clock.clone(),
            Duration::seconds(300),
            Duration::minutes(15),
        );
        ring.ensure_id_token_key(Alg::Rs256).await.unwrap();
        ring.ensure_id_token_key(Alg::Rs256).await.unwrap();
        let first = ring.id_token_signer(Alg::Rs256).await.unwrap();
        assert_eq!(kids(&ring.jwks().await.unwrap()), [first.kid()]);
        assert!(ring.opens_id_token_keys().await.unwrap());
        let token = first.sign(&json!({"sub": "ann"})).unwrap();

        let made = ring.rotate_id_token_keys().await.unwrap();
        assert_eq!(made.len(), 1, "only the algorithms in use rotate");
        let jwks = ring.jwks().await.unwrap();
        assert_eq!(kids(&jwks), [first.kid(), made[0].as_str()]);
        // Published now, but signing only after the verifiers' cache lifetime.
        assert_eq!(
            ring.id_token_signer(Alg::Rs256).await.unwrap().kid(),
            first.kid()
        );
        clock.advance(Duration::seconds(301));
        assert_eq!(
            ring.id_token_signer(Alg::Rs256).await.unwrap().kid(),
            made[0]
        );
        // The first key still verifies its token as published, until every
        // token it signed has expired.
        let published: openidconnect::core::CoreJsonWebKey =
            serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let signature =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, signature)
                .unwrap();
        openidconnect::JsonWebKey::verify_signature(
            &published,
            &openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            input.as_bytes(),
            &signature,
        )
        .unwrap();
        clock.advance(Duration::minutes(17));
        assert_eq!(kids(&ring.jwks().await.unwrap()), [made[0].as_str()]);

        // Another key-encryption key opens none of them.
        let elsewhere = tempfile::tempdir().unwrap();
        let other = KeyRing::new(
            ring.db.clone(),
            Kek::load("", elsewhere.path()).unwrap(),
            clock.clone(),
            Duration::seconds(300),
            Duration::minutes(15),
        );
        assert!(!other.opens_id_token_keys().await.unwrap());
    }
}
