//! Password hashing with scrypt, in PHC string format.
//!
//! Hashing is deliberately slow, so it never runs on the async workers: it
//! goes to the blocking pool behind a semaphore that bounds how many hashes
//! run at once (the rest wait their turn instead of piling up memory, at
//! 128 MiB each with the default cost). Verifying a hash made with other
//! parameters than today's tells the caller to re-hash (upgrade at login).

use std::sync::Arc;
use std::time::Instant;

use scrypt::Scrypt;
use scrypt::password_hash::rand_core::OsRng;
use scrypt::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;

use super::config::ScryptConfig;
use super::error::IdentityError;
use crate::kernel::metrics::Metrics;

/// A password as typed by a user. Its `Debug` never shows the text.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but the hash uses other parameters than today's.
    YesRehash,
}

#[derive(Clone)]
pub struct Hasher {
    params: scrypt::Params,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    /// A hash with today's parameters that no password has, verified when
    /// the account does not exist so that case costs the same time.
    decoy: Arc<String>,
}

pub fn params(config: &ScryptConfig) -> Result<scrypt::Params, String> {
    scrypt::Params::new(
        config.log_n,
        config.r,
        config.p,
        scrypt::Params::RECOMMENDED_LEN,
    )
    .map_err(|e| format!("identity.scrypt: {e}"))
}

/// Hashes on the calling thread; for the blocking pool and for benchmarks.
pub fn hash_blocking(params: &scrypt::Params, password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Scrypt
        .hash_password_customized(password.as_bytes(), None, None, *params, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A PHC string of scrypt with `params`, a random salt and random output:
/// verifying a password against it costs what verifying against a real
/// hash costs (the same key derivation, then a comparison that fails),
/// without spending a hash, its time and its memory, to make it.
fn decoy(params: &scrypt::Params) -> Result<String, String> {
    use scrypt::password_hash::rand_core::RngCore as _;
    use scrypt::password_hash::{Output, PasswordHash};
    let salt = SaltString::generate(&mut OsRng);
    let mut bytes = [0u8; scrypt::Params::RECOMMENDED_LEN];
    OsRng.fill_bytes(&mut bytes);
    let hash = PasswordHash {
        algorithm: scrypt::ALG_ID,
        version: None,
        params: (*params).try_into().map_err(|e| format!("{e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&bytes).map_err(|e| e.to_string())?),
    };
    Ok(hash.to_string())
}

impl Hasher {
    pub async fn new(config: &ScryptConfig, metrics: Metrics) -> Result<Self, String> {
        let params = params(config)?;
        let concurrent = match config.max_concurrent {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let decoy = decoy(&params)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrent)),
            metrics,
            decoy: Arc::new(decoy),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, IdentityError> {
        let params = self.params;
        let text = password.clone();
        self.blocking("hash", move || hash_blocking(&params, text.as_str()))
            .await?
            .map_err(IdentityError::Internal)
    }

    pub async fn verify(&self, password: &Password, phc: &str) -> Result<Verified, IdentityError> {
        let current = self.params;
        let text = password.clone();
        let phc = phc.to_owned();
        self.blocking("verify", move || {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Verified::No;
            };
            if Scrypt
                .verify_password(text.as_str().as_bytes(), &parsed)
                .is_err()
            {
                return Verified::No;
            }
            let same = scrypt::Params::try_from(&parsed).is_ok_and(|p| {
                p.log_n() == current.log_n() && p.r() == current.r() && p.p() == current.p()
            });
            if same {
                Verified::Yes
            } else {
                Verified::YesRehash
            }
        })
        .await
    }

    /// Spends the time of one verification, for accounts that do not exist.
    pub async fn verify_decoy(&self, password: &Password) -> Result<(), IdentityError> {
        let decoy = self.decoy.clone();
        self.verify(password, &decoy).await.map(|_| ())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        self.metrics
            .password_hash_duration_seconds
            .with_label_values(&[operation])
            .observe(start.elapsed().as_secs_f64());
        Ok(out)
    }
}

/// Finds the scrypt `log_n` whose hash takes closest to `target` on this
/// machine (r and p fixed), measuring each candidate once.
pub fn calibrate(target: std::time::Duration, r: u32, p: u32) -> Result<Vec<(u8, f64)>, String> {
    let mut results = Vec::new();
    for log_n in 10..=22u8 {
        let params = scrypt::Params::new(log_n, r, p, scrypt::Params::RECOMMENDED_LEN)
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        hash_blocking(&params, "calibration password")?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        results.push((log_n, ms));
        if ms > target.as_secs_f64() * 1000.0 * 2.0 {
            break;
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> ScryptConfig {
        ScryptConfig {
            log_n: 4,
            r: 8,
            p: 1,
            max_concurrent: 2,
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_old_parameters_ask_for_rehash() {
        let metrics = Metrics::new().unwrap();
        let hasher = Hasher::new(&cheap(), metrics.clone()).await.unwrap();
        let pw = Password::new("correct horse battery".into());
        let phc = hasher.hash(&pw).await.unwrap();
        assert!(phc.starts_with("$scrypt$ln=4,r=8,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert_eq!(hasher.verify(&pw, &phc).await.unwrap(), Verified::Yes);
        let wrong = Password::new("correct horse battery!".into());
        assert_eq!(hasher.verify(&wrong, &phc).await.unwrap(), Verified::No);
        assert_eq!(
            hasher.verify(&pw, "not a phc string").await.unwrap(),
            Verified::No
        );

        let stronger = ScryptConfig {
            log_n: 5,
            ..cheap()
        };
        let newer = Hasher::new(&stronger, metrics).await.unwrap();
        assert_eq!(newer.verify(&pw, &phc).await.unwrap(), Verified::YesRehash);
    }

    #[tokio::test]
    async fn the_decoy_is_a_hash_of_todays_parameters_that_no_password_matches() {
        let hasher = Hasher::new(&cheap(), Metrics::new().unwrap())
            .await
            .unwrap();
        assert!(
            hasher.decoy.starts_with("$scrypt$ln=4,r=8,p=1$"),
            "{}",
            hasher.decoy
        );
        let parsed = PasswordHash::new(&hasher.decoy).unwrap();
        assert_eq!(parsed.hash.unwrap().len(), scrypt::Params::RECOMMENDED_LEN);
        for guess in ["", "correct horse battery", &hasher.decoy] {
            let pw = Password::new(guess.to_owned());
            assert_eq!(
                hasher.verify(&pw, &hasher.decoy).await.unwrap(),
                Verified::No
            );
        }
        // Each hasher has its own.
        let other = Hasher::new(&cheap(), Metrics::new().unwrap())
            .await
            .unwrap();
        assert_ne!(hasher.decoy, other.decoy);
    }

    #[test]
    fn password_debug_hides_the_text() {
        let pw = Password::new("hunter2hunter2".into());
        assert_eq!(format!("{pw:?}"), "Password(***)");
    }
}
