//! Password hashing with scrypt, in PHC string format.
//!
//! Hashing is deliberately slow, so it never runs on the async workers: it
//! goes to the blocking pool behind a semaphore that bounds how many hashes
//! exist at once, 128 MiB each with the default cost. The permit travels
//! with the hash onto the blocking thread and is given back when the hash
//! is done, not when its request ends: a client that hangs up, or a call
//! that times out, leaves a hash running that still holds its permit, so
//! no more than `max_concurrent` hashes ever hold memory. Requests beyond
//! that wait in a bounded queue for a bounded time (`max_waiting`,
//! `max_wait_ms`); past either bound they are refused at once as
//! overloaded (503 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`) rather
//! than piling up. A request that goes away while it waits leaves the
//! queue and starts no hash. Verifying a hash made with other parameters
//! than today's tells the caller to re-hash (upgrade at login).

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use scrypt::Scrypt;
use scrypt::password_hash::rand_core::OsRng;
use scrypt::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::ScryptConfig;
use super::error::IdentityError;
use crate::kernel::config::ConfigError;
use crate::kernel::metrics::Metrics;
use crate::kernel::queue::Place;

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
    /// Requests waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    max_wait: Duration,
    metrics: Metrics,
    /// A hash with today's parameters that no password has, verified when
    /// the account does not exist so that case costs the same time.
    decoy: Arc<String>,
}

/// scrypt parameters that cannot be used, or a hash that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("identity.scrypt: {0}")]
    Params(#[from] scrypt::errors::InvalidParams),
    #[error("cannot hash: {0}")]
    Hash(#[from] scrypt::password_hash::Error),
}

pub fn params(config: &ScryptConfig) -> Result<scrypt::Params, HashError> {
    Ok(scrypt::Params::new(
        config.log_n,
        config.r,
        config.p,
        scrypt::Params::RECOMMENDED_LEN,
    )?)
}

/// Hashes on the calling thread; for the blocking pool and for benchmarks.
pub fn hash_blocking(params: &scrypt::Params, password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Scrypt
        .hash_password_customized(password.as_bytes(), None, None, *params, &salt)?
        .to_string())
}

/// A PHC string of scrypt with `params`, a random salt and random output:
/// verifying a password against it costs what verifying against a real
/// hash costs (the same key derivation, then a comparison that fails),
/// without spending a hash, its time and its memory, to make it.
fn decoy(params: &scrypt::Params) -> Result<String, HashError> {
    use scrypt::password_hash::rand_core::RngCore as _;
    use scrypt::password_hash::{Output, PasswordHash};
    let salt = SaltString::generate(&mut OsRng);
    let mut bytes = [0u8; scrypt::Params::RECOMMENDED_LEN];
    OsRng.fill_bytes(&mut bytes);
    let hash = PasswordHash {
        algorithm: scrypt::ALG_ID,
        version: None,
        params: (*params).try_into()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&bytes)?),
    };
    Ok(hash.to_string())
}

impl Hasher {
    /// A hasher with `config`'s cost, refused below the floor unless the
    /// tests' key allows it (then said at start, as a warning).
    pub async fn new(config: &ScryptConfig, metrics: Metrics) -> Result<Self, ConfigError> {
        config.check_floor()?;
        if config.is_weak() {
            tracing::warn!(
                log_n = config.log_n,
                r = config.r,
                "password hashing below the floor, allowed for tests: not for real users"
            );
        }
        let params = params(config).map_err(|e| ConfigError(e.to_string()))?;
        let concurrent = match config.max_concurrent {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let decoy = decoy(&params).map_err(|e| ConfigError(e.to_string()))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(concurrent)),
            waiting: Arc::default(),
            max_waiting: config.max_waiting,
            max_wait: Duration::from_millis(config.max_wait_ms),
            metrics,
            decoy: Arc::new(decoy),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, IdentityError> {
        let params = self.params;
        let text = password.clone();
        let permit = self.permit().await?;
        self.blocking(permit, "hash", move || {
            hash_blocking(&params, text.as_str())
        })
        .await?
        .map_err(|e| IdentityError::Internal(e.to_string()))
    }

    pub async fn verify(&self, password: &Password, phc: &str) -> Result<Verified, IdentityError> {
        self.turn().await?.verify(password, phc).await
    }

    /// Spends the time of one verification, for accounts that do not exist.
    pub async fn verify_decoy(&self, password: &Password) -> Result<(), IdentityError> {
        self.turn().await?.verify_decoy(password).await
    }

    /// A turn to verify one password, taken before the work that leads up
    /// to it, so that a request refused as overloaded has done nothing
    /// (counted no failed attempt, say).
    pub async fn turn(&self) -> Result<Turn, IdentityError> {
        Ok(Turn {
            permit: self.permit().await?,
            hasher: self.clone(),
        })
    }

    /// Runs `work` on the blocking pool, holding `permit` until `work`
    /// returns, whatever becomes of this future.
    async fn blocking<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        operation: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
        self.metrics
            .password_hash_duration_seconds
            .with_label_values(&[operation])
            .observe(start.elapsed().as_secs_f64());
        Ok(out)
    }

    /// A permit to hash, once one is free: refused as overloaded when
    /// `max_waiting` requests wait already, or after `max_wait`.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, IdentityError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let Some(_place) = Place::join(&self.waiting, self.max_waiting) else {
            return Err(self.refuse("queue_full"));
        };
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(IdentityError::Internal(closed.to_string())),
            Err(_) => Err(self.refuse("waited_too_long")),
        }
    }

    /// The longest a request waits for its turn to hash; other waits for
    /// a turn (see `throttle.rs`) keep to it too.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The response to work past its wait for a turn.
    pub fn overloaded(&self) -> IdentityError {
        self.refuse("waited_too_long")
    }

    fn refuse(&self, reason: &'static str) -> IdentityError {
        self.metrics
            .password_hash_refused_total
            .with_label_values(&[reason])
            .inc();
        IdentityError::Overloaded {
            retry_after_secs: RETRY_AFTER_SECS,
        }
    }
}

/// A hasher's permit for one verification (see [`Hasher::turn`]).
pub struct Turn {
    hasher: Hasher,
    permit: OwnedSemaphorePermit,
}

impl Turn {
    pub async fn verify(self, password: &Password, phc: &str) -> Result<Verified, IdentityError> {
        let current = self.hasher.params;
        let text = password.clone();
        let phc = phc.to_owned();
        self.hasher
            .blocking(self.permit, "verify", move || {
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
    pub async fn verify_decoy(self, password: &Password) -> Result<(), IdentityError> {
        let decoy = self.hasher.decoy.clone();
        self.verify(password, &decoy).await.map(|_| ())
    }
}

/// What an overloaded answer tells a client to wait before trying again.
const RETRY_AFTER_SECS: u64 = 1;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn cheap() -> ScryptConfig {
        ScryptConfig {
            log_n: 4,
            r: 8,
            p: 1,
            max_concurrent: 2,
            max_waiting: 16,
            max_wait_ms: 2_000,
            allow_weak_hashing_for_tests: true,
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

    #[tokio::test]
    async fn a_cost_below_the_floor_is_refused_unless_tests_allow_it() {
        let weak = ScryptConfig {
            allow_weak_hashing_for_tests: false,
            ..cheap()
        };
        let e = Hasher::new(&weak, Metrics::new().unwrap())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("below the floor of log_n = 17"), "{e}");
        assert!(e.contains("allow_weak_hashing_for_tests"), "{e}");
        let narrow = ScryptConfig {
            log_n: 17,
            r: 4,
            ..weak.clone()
        };
        assert!(narrow.check_floor().is_err());
        assert!(ScryptConfig::default().check_floor().is_ok());
        assert!(Hasher::new(&cheap(), Metrics::new().unwrap()).await.is_ok());
    }

    /// Work on the blocking pool that runs until `release` is sent to.
    fn held(hasher: &Hasher) -> (tokio::task::JoinHandle<()>, std::sync::mpsc::Sender<()>) {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let hasher = hasher.clone();
        let task = tokio::spawn(async move {
            let permit = hasher.permit().await.unwrap();
            hasher
                .blocking(permit, "hash", move || {
                    started.send(()).unwrap();
                    let _ = wait.recv();
                })
                .await
                .unwrap();
        });
        running.recv().unwrap();
        (task, release)
    }

    fn overloaded(r: Result<String, IdentityError>) -> bool {
        matches!(
            r,
            Err(IdentityError::Overloaded {
                retry_after_secs: 1
            })
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hash_keeps_its_permit_after_its_request_is_gone() {
        let one = ScryptConfig {
            max_concurrent: 1,
            max_waiting: 0,
            ..cheap()
        };
        let metrics = Metrics::new().unwrap();
        let hasher = Hasher::new(&one, metrics.clone()).await.unwrap();
        let pw = Password::new("correct horse battery".into());
        let (request, release) = held(&hasher);
        // The request is dropped (its client hung up); its hash goes on,
        // and so no other hash may start.
        request.abort();
        let _ = request.await;
        assert!(overloaded(hasher.hash(&pw).await));
        release.send(()).unwrap();
        // Once the hash is done, its permit is free again.
        let mut done = hasher.hash(&pw).await;
        for _ in 0..100 {
            if done.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            done = hasher.hash(&pw).await;
        }
        assert!(done.is_ok(), "{done:?}");
        let refused = metrics
            .password_hash_refused_total
            .with_label_values(&["queue_full"])
            .get();
        assert!(refused >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_is_bounded_in_places_and_in_time() {
        let config = ScryptConfig {
            max_concurrent: 1,
            max_waiting: 1,
            max_wait_ms: 300,
            ..cheap()
        };
        let metrics = Metrics::new().unwrap();
        let hasher = Hasher::new(&config, metrics.clone()).await.unwrap();
        let pw = Password::new("correct horse battery".into());
        let (_busy, release) = held(&hasher);
        // One request waits for its turn...
        let waiter = {
            let (hasher, pw) = (hasher.clone(), pw.clone());
            tokio::spawn(async move { hasher.hash(&pw).await })
        };
        while hasher.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // ...so the next finds the queue full and is refused at once.
        assert!(overloaded(hasher.hash(&pw).await));
        // The waiter is refused once it has waited max_wait_ms, and leaves.
        assert!(overloaded(waiter.await.unwrap()));
        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);
        for reason in ["queue_full", "waited_too_long"] {
            let n = metrics
                .password_hash_refused_total
                .with_label_values(&[reason])
                .get();
            assert_eq!(n, 1, "{reason}");
        }
        // A waiter whose request goes away leaves its place.
        let gone = {
            let (hasher, pw) = (hasher.clone(), pw.clone());
            tokio::spawn(async move { hasher.hash(&pw).await })
        };
        while hasher.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);
        release.send(()).unwrap();
    }

    #[test]
    fn password_debug_hides_the_text() {
        let pw = Password::new("hunter2hunter2".into());
        assert_eq!(format!("{pw:?}"), "Password(***)");
    }
}
