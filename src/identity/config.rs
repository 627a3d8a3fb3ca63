//! The `[identity]` config section, with its documented defaults.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::kernel::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Address the service's HTTP and gRPC server binds.
    pub listen: SocketAddr,
    /// URL other services reach this instance at; defaults to `http://<listen>`.
    pub advertise_url: Option<String>,
    /// Base of the links sent to users (password reset, email verification);
    /// the token is appended as `?token=...`. Empty: `server.public_url`.
    pub link_base_url: String,
    /// Whether `POST /v1/users` is open to anyone.
    pub registration_enabled: bool,
    pub password: PasswordPolicy,
    pub scrypt: ScryptConfig,
    /// How failed sign-ins slow guessing down (see `identity::throttle`).
    pub throttle: ThrottleConfig,
    /// Replaced by `throttle`: a config that still has it starts, with a
    /// warning that it is not used.
    #[serde(skip_serializing)]
    pub lockout: Option<serde::de::IgnoredAny>,
    /// Lifetime of a password-reset token.
    pub reset_token_ttl_secs: u64,
    /// Lifetime of an email-verification token.
    pub verification_token_ttl_secs: u64,
    /// Registration answers 202, without the user, whether or not the
    /// address had an account, and tells an existing account's owner by
    /// mail instead of answering 409 `email_taken`. Off: 201 with the user.
    pub conceal_existing_accounts: bool,
    /// Links (reset, verification) one address is sent at most in a burst;
    /// one more each `links_window_secs / links_per_address` after. 0: no limit.
    pub links_per_address: u32,
    /// The window over which `links_per_address` links are sent to one address.
    pub links_window_secs: u64,
    /// Moved to `rpc.permission_cache_ms`: a config that still has it is
    /// refused with a message saying so.
    #[serde(skip_serializing)]
    pub permission_cache_ms: Option<serde::de::IgnoredAny>,
    /// How links reach users (`[identity.mail]`).
    pub mail: super::mail::config::MailConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4102)),
            advertise_url: None,
            link_base_url: String::new(),
            registration_enabled: true,
            password: PasswordPolicy::default(),
            scrypt: ScryptConfig::default(),
            throttle: ThrottleConfig::default(),
            lockout: None,
            reset_token_ttl_secs: 3600,
            verification_token_ttl_secs: 86_400,
            conceal_existing_accounts: false,
            links_per_address: 3,
            links_window_secs: 900,
            permission_cache_ms: None,
            mail: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    /// Fewest characters (Unicode scalar values) a password may have.
    pub min_length: usize,
    /// Most characters a password may have.
    pub max_length: usize,
    /// Most bytes a password may have; bounds the work one request can cause.
    pub max_bytes: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 12,
            max_length: 256,
            max_bytes: 1024,
        }
    }
}

/// scrypt cost. The defaults are `scrypt::Params::recommended()`
/// (log_n 17, r 8, p 1: 128 MiB and a few hundred ms per hash);
/// `gatehouse hash calibrate` prints values for a chosen time on this machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScryptConfig {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
    /// Hashes computed at once; 0 means one per CPU core. Requests beyond it wait.
    pub max_concurrent: usize,
    /// Hashes that may wait for their turn; a request that finds this many
    /// waiting is answered 503 `overloaded` at once.
    pub max_waiting: usize,
    /// The longest a hash waits for its turn before its request is answered
    /// 503 `overloaded`.
    pub max_wait_ms: u64,
    /// Lets identity start with a cost below the floor ([`SCRYPT_FLOOR`]);
    /// for test suites only, where hashing at the real cost would take
    /// most of their time.
    pub allow_weak_hashing_for_tests: bool,
}

/// The weakest scrypt cost identity starts with, unless told it is under
/// test: OWASP's minimum, N = 2^17 with r = 8 and p = 1 (128 MiB a hash).
pub const SCRYPT_FLOOR: (u8, u32) = (17, 8);

impl ScryptConfig {
    /// Whether the cost is below [`SCRYPT_FLOOR`]: less memory per hash
    /// (N or r smaller).
    pub fn is_weak(&self) -> bool {
        self.log_n < SCRYPT_FLOOR.0 || self.r < SCRYPT_FLOOR.1
    }

    /// Refuses a cost below the floor unless the tests' key is set.
    pub fn check_floor(&self) -> Result<(), ConfigError> {
        if !self.is_weak() || self.allow_weak_hashing_for_tests {
            return Ok(());
        }
        let (log_n, r) = SCRYPT_FLOOR;
        Err(ConfigError(format!(
            "identity.scrypt: log_n = {} and r = {} are below the floor of log_n = {log_n} and \
             r = {r} (OWASP's minimum for scrypt, N = 2^{log_n}); raise them (`gatehouse hash \
             calibrate` suggests values), or set identity.scrypt.allow_weak_hashing_for_tests = \
             true in a test suite, never with real users",
            self.log_n, self.r
        )))
    }
}

impl Default for ScryptConfig {
    fn default() -> Self {
        let p = scrypt::Params::recommended();
        Self {
            log_n: p.log_n(),
            r: p.r(),
            p: p.p(),
            max_concurrent: 0,
            max_waiting: 16,
            max_wait_ms: 2_000,
            allow_weak_hashing_for_tests: false,
        }
    }
}

/// Sign-in throttling: counters of failed password checks, each with a
/// wait before the next attempt after its free failures (see
/// `identity::throttle`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures at one account from one address (or one device) before
    /// its attempts wait.
    pub free_failures: u32,
    /// Failures from one address across accounts before its attempts wait.
    pub address_free_failures: u32,
    /// Failures at one account from addresses that failed there before.
    pub account_free_failures: u32,
    /// The first wait, doubled with each failure after.
    pub first_delay_ms: u64,
    /// The longest wait.
    pub max_delay_ms: u64,
    /// A counter without a failure for this long is forgotten.
    pub forget_after_secs: u64,
    /// How long a device token is good for after the sign-in that made it.
    pub device_ttl_secs: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 3,
            address_free_failures: 20,
            account_free_failures: 10,
            first_delay_ms: 1_000,
            max_delay_ms: 60_000,
            forget_after_secs: 86_400,
            device_ttl_secs: 90 * 86_400,
        }
    }
}
