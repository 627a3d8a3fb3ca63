//! Sign-in throttling: failed password checks slow guessing down, and never
//! lock an owner out.
//!
//! Each failure is counted on counters, each with its own wait before the
//! next attempt it covers: none for its first `free` failures, then
//! `first_delay`, doubling with each further failure up to `max_delay`.
//! An attempt goes on only when every counter it is subject to allows it;
//! one that comes early is refused at once (429, `Retry-After`), spends no
//! hash and counts nothing.
//!
//! - **Account and address** (`free_failures`): one client address's
//!   failures at one account.
//! - **Address** (`address_free_failures`): one address's failures across
//!   accounts, which bounds spraying one password over many accounts.
//! - **Account** (`account_free_failures`): every address's failures at one
//!   account. It holds only addresses that have failed at the account
//!   before: an address that has not gets its attempt at once, so an owner
//!   signing in from a new device elsewhere than the attacker is never held.
//! - **Device**: an attempt carrying a device token of the account (made at
//!   an earlier sign-in, see `device.rs`) is counted on that device alone
//!   and held by nothing else, so an owner on a device that signed in
//!   before signs in at once whatever others do.
//!
//! An attempt is counted as a failure when it is let through and forgiven
//! when its password proves right, so parallel guesses cannot all pass
//! under a counter's free failures; and attempts of one client at one
//! account (one address, or one device) take turns, each let through only
//! once the one before it is decided, so that a client's sign-ins made at
//! once are neither refused for each other nor let through together.
//! Counters live in memory, the same for
//! addresses with and without an account (so their responses never differ),
//! bounded in number, and are forgotten `forget_after` after their last
//! failure.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::config::ThrottleConfig;
use crate::kernel::locks;

/// What a counter counts failures of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    AccountAddress(String, Option<IpAddr>),
    Address(Option<IpAddr>),
    Account(String),
    Device(String, String),
}

/// Failures, and when the last one was counted.
#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    last: DateTime<Utc>,
}

/// Counters held at most.
const MAX_COUNTERS: u64 = 200_000;
/// Attempts of one client at one account that wait for their turn at most;
/// more are refused at once as overloaded.
const IN_LINE: usize = 4;

/// The turn of one client's attempts at one account, and how many wait.
#[derive(Default)]
struct Line {
    turn: Arc<tokio::sync::Mutex<()>>,
    waiting: std::sync::atomic::AtomicUsize,
}

/// The sign-in throttle of one identity instance. Cheap to clone.
#[derive(Clone)]
pub(super) struct Throttle {
    counts: moka::sync::Cache<Key, Count>,
    /// Each client's turn at an account (see [`Throttle::turn`]).
    turns: moka::sync::Cache<Key, Arc<Line>>,
    /// Admission reads and writes several counters as one step.
    turn: Arc<Mutex<()>>,
    config: ThrottleConfig,
}

/// An attempt let through: the counters its failure was counted on, until
/// its password proves right.
pub(super) struct Admitted {
    counted: Vec<Key>,
}

/// Who is signing in, as the throttle sees it.
pub(super) struct Attempt<'a> {
    /// The account's address, in its lookup form.
    pub email: &'a str,
    pub client: Option<IpAddr>,
    /// The id of a device token of this account the client sent.
    pub device: Option<&'a str>,
}

impl Throttle {
    pub(super) fn new(config: ThrottleConfig) -> Self {
        Self {
            counts: moka::sync::Cache::builder()
                .max_capacity(MAX_COUNTERS)
                .time_to_idle(Duration::from_secs(config.forget_after_secs.max(1)))
                .build(),
            turns: moka::sync::Cache::builder()
                .max_capacity(MAX_COUNTERS)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            turn: Arc::default(),
            config,
        }
    }

    /// Waits (at most `limit`) until the attempts of `attempt`'s client at
    /// its account before it are decided: the turn is held until the
    /// attempt is. `None` when [`IN_LINE`] attempts wait already, or the
    /// wait was too long.
    pub(super) async fn turn(
        &self,
        attempt: &Attempt<'_>,
        limit: Duration,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let line = self.turns.get_with(own_key(attempt), Arc::default);
        if let Ok(turn) = line.turn.clone().try_lock_owned() {
            return Some(turn);
        }
        let _place = crate::kernel::queue::Place::join(&line.waiting, IN_LINE)?;
        tokio::time::timeout(limit, line.turn.clone().lock_owned())
            .await
            .ok()
    }

    /// Lets `attempt` through at `now`, counting it as a failure until
    /// [`Throttle::forgive`]; or answers how long until it may come.
    pub(super) fn admit(
        &self,
        attempt: &Attempt<'_>,
        now: DateTime<Utc>,
    ) -> Result<Admitted, Duration> {
        let email = attempt.email.to_owned();
        let gates: Vec<(Key, u32)> = match attempt.device {
            Some(device) => vec![(
                Key::Device(email, device.to_owned()),
                self.config.free_failures,
            )],
            None => vec![
                (
                    Key::AccountAddress(email.clone(), attempt.client),
                    self.config.free_failures,
                ),
                (
                    Key::Address(attempt.client),
                    self.config.address_free_failures,
                ),
                (Key::Account(email), self.config.account_free_failures),
            ],
        };
        let _turn = locks::lock(&self.turn);
        // The account's counter holds only an address that failed there.
        let known = match attempt.device {
            Some(_) => true,
            None => self.counts.get(&gates[0].0).is_some_and(|c| c.failures > 0),
        };
        let wait = gates
            .iter()
            .filter(|(key, _)| known || !matches!(key, Key::Account(_)))
            .filter_map(|(key, free)| self.counts.get(key).map(|c| self.wait(c, *free, now)))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Err(wait);
        }
        let mut counted = Vec::with_capacity(gates.len());
        for (key, _) in gates {
            let failures = self.counts.get(&key).map_or(0, |c| c.failures);
            self.counts.insert(
                key.clone(),
                Count {
                    failures: failures.saturating_add(1),
                    last: now,
                },
            );
            counted.push(key);
        }
        Ok(Admitted { counted })
    }

    /// The password of an admitted attempt proved right: its own counter
    /// (the address's at the account, or the device's) starts again, and
    /// the other counters take back the failure it was counted as.
    pub(super) fn forgive(&self, admitted: Admitted) {
        self.uncount(admitted, true);
    }

    /// An admitted attempt was not made after all (no turn to hash): every
    /// counter takes back the failure it was counted as.
    pub(super) fn take_back(&self, admitted: Admitted) {
        self.uncount(admitted, false);
    }

    fn uncount(&self, admitted: Admitted, clear_own: bool) {
        let _turn = locks::lock(&self.turn);
        for (n, key) in admitted.counted.into_iter().enumerate() {
            if n == 0 && clear_own {
                self.counts.invalidate(&key);
            } else if let Some(count) = self.counts.get(&key) {
                self.counts.insert(
                    key,
                    Count {
                        failures: count.failures.saturating_sub(1),
                        ..count
                    },
                );
            }
        }
    }

    /// How long after `now` a counter at `count` lets the next attempt in.
    fn wait(&self, count: Count, free: u32, now: DateTime<Utc>) -> Duration {
        let delay = delay(&self.config, count.failures, free);
        let passed = (now - count.last).to_std().unwrap_or_default();
        delay.saturating_sub(passed)
    }
}

/// The counter of `attempt`'s own client at its account: its device's when
/// it has one, else its address's.
fn own_key(attempt: &Attempt<'_>) -> Key {
    let email = attempt.email.to_owned();
    match attempt.device {
        Some(device) => Key::Device(email, device.to_owned()),
        None => Key::AccountAddress(email, attempt.client),
    }
}

/// The wait after `failures` failures on a counter allowing `free` of them.
pub(super) fn delay(config: &ThrottleConfig, failures: u32, free: u32) -> Duration {
    if failures < free {
        return Duration::ZERO;
    }
    let doublings = (failures - free).min(32);
    let first = Duration::from_millis(config.first_delay_ms);
    let max = Duration::from_millis(config.max_delay_ms);
    first.saturating_mul(1 << doublings.min(31)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            free_failures: 3,
            address_free_failures: 20,
            account_free_failures: 10,
            first_delay_ms: 1_000,
            max_delay_ms: 60_000,
            ..ThrottleConfig::default()
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn from(email: &str, last: u8) -> Attempt<'_> {
        Attempt {
            email,
            client: Some(IpAddr::from([127, 0, 0, last])),
            device: None,
        }
    }

    #[test]
    fn waits_begin_after_the_free_failures_and_double_up_to_the_cap() {
        let c = config();
        let waits: Vec<u64> = (0..12).map(|n| delay(&c, n, 3).as_secs()).collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(&c, u32::MAX, 3).as_secs(), 60);
    }

    #[test]
    fn guesses_from_one_address_slow_down_and_its_owner_elsewhere_is_not_held() {
        let throttle = Throttle::new(config());
        for _ in 0..3 {
            throttle.admit(&from("ann", 1), at(0)).unwrap();
        }
        // The fourth guess waits a second, the fifth two more.
        assert_eq!(
            throttle.admit(&from("ann", 1), at(0)).err(),
            Some(Duration::from_secs(1))
        );
        throttle.admit(&from("ann", 1), at(1)).unwrap();
        assert_eq!(
            throttle.admit(&from("ann", 1), at(2)).err(),
            Some(Duration::from_secs(1))
        );
        // Another address, never failed at the account: at once.
        let owner = throttle.admit(&from("ann", 9), at(2)).unwrap();
        throttle.forgive(owner);
        assert!(throttle.admit(&from("ann", 9), at(2)).is_ok());
    }

    #[test]
    fn the_account_holds_addresses_that_failed_there_and_a_device_is_held_by_nothing_else() {
        let throttle = Throttle::new(config());
        // Ten addresses, three guesses each: their free failures, but the
        // account's counter passes its ten.
        for last in 1..=10 {
            for _ in 0..3 {
                let _ = throttle.admit(&from("ann", last), at(0));
            }
        }
        let refused = throttle.admit(&from("ann", 1), at(0));
        assert!(refused.is_err());
        // A new address: at once; a device of the account: at once.
        assert!(throttle.admit(&from("ann", 50), at(0)).is_ok());
        let device = Attempt {
            device: Some("d1"),
            ..from("ann", 1)
        };
        assert!(throttle.admit(&device, at(0)).is_ok());
        // Another account from a guessing address: only the address's own
        // counter across accounts, not yet at its twenty.
        assert!(throttle.admit(&from("bob", 1), at(0)).is_ok());
    }

    #[test]
    fn a_right_password_takes_its_failure_back_and_clears_its_own_counter() {
        let throttle = Throttle::new(config());
        for _ in 0..2 {
            throttle.admit(&from("ann", 1), at(0)).unwrap();
        }
        let right = throttle.admit(&from("ann", 1), at(0)).unwrap();
        throttle.forgive(right);
        for _ in 0..3 {
            throttle.admit(&from("ann", 1), at(0)).unwrap();
        }
        assert!(throttle.admit(&from("ann", 1), at(0)).is_err());
    }
}
