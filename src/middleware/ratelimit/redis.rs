//! Rate limits counted in Redis, so that every replica of the gateway
//! spends from the same allowance. Each check is one script run on the
//! server: GCRA over a key's theoretical arrival time, read and written
//! atomically and timed by the server's own clock, so replicas on machines
//! whose clocks differ still agree.
//!
//! When Redis cannot answer, the config says what a check becomes: the
//! process's own limiter (`local`), let through (`open`) or refused with
//! 503 (`closed`).

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use fred::types::scripts::Script;
use http::StatusCode;

use super::{Limiter, RateKey, SharedLimit, Verdict, refusal};
use crate::kernel::error::Problem;
use crate::kernel::redis::Redis;

/// GCRA on the server. `KEYS[1]` holds the key's theoretical arrival time
/// in microseconds of the server's clock; `ARGV[1]` is the interval between
/// requests at the sustained rate (µs), `ARGV[2]` the burst. Answers
/// `{1, 0, remaining}` when the request conforms (and counts it), else
/// `{0, wait in µs, 0}`. The key expires when its allowance is whole again.
const GCRA: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
if tat - tolerance > now then
  return {0, tat - tolerance - now, 0}
end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX',
  math.max(1, math.ceil((next_tat - now) / 1000)))
return {1, 0, math.floor((now + tolerance - next_tat) / interval) + 1}
";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(GCRA));

/// One kind of key's limit: a sustained rate and a burst.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval_us: i64,
    burst: u32,
}

impl Gcra {
    /// `None` when `per_second` is 0 (no limit).
    fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            interval_us: (1_000_000 / i64::from(per_second)).max(1),
            burst: burst.max(1),
        })
    }
}

/// What a check becomes while Redis cannot answer.
pub enum Fallback {
    /// The process's own limiters (per address, per user).
    Local {
        per_ip: Option<Limiter>,
        per_user: Option<Limiter>,
    },
    /// Let through.
    Open,
    /// Refused with 503.
    Closed,
}

/// Limits per client address and per user, counted in Redis.
pub struct RedisLimits {
    redis: Redis,
    per_ip: Option<Gcra>,
    per_user: Option<Gcra>,
    fallback: Fallback,
}

impl RedisLimits {
    /// Rates per second and bursts as in `gateway.rate_limit`; a rate of 0
    /// turns its limit off.
    pub fn new(redis: Redis, per_ip: (u32, u32), per_user: (u32, u32), fallback: Fallback) -> Self {
        Self {
            redis,
            per_ip: Gcra::new(per_ip.0, per_ip.1),
            per_user: Gcra::new(per_user.0, per_user.1),
            fallback,
        }
    }

    fn name(key: RateKey) -> String {
        match key {
            RateKey::Address(IpAddr::V4(ip)) => format!("rl:ip:{ip}"),
            RateKey::Address(IpAddr::V6(ip)) => format!("rl:ip:{ip}"),
            RateKey::User(id) => format!("rl:user:{id}"),
            RateKey::Overflow => "rl:overflow".to_owned(),
        }
    }

    #[allow(
        clippy::result_large_err,
        reason = "the refusal is the response the client gets, made once"
    )]
    fn fall_back(&self, key: RateKey) -> Result<Option<Verdict>, Response> {
        match &self.fallback {
            Fallback::Local { per_ip, per_user } => {
                let local = match key {
                    RateKey::User(_) => per_user,
                    _ => per_ip,
                };
                match local {
                    Some(limiter) => limiter.spend(key).map(Some),
                    None => Ok(None),
                }
            }
            Fallback::Open => Ok(None),
            Fallback::Closed => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limit_unavailable",
                "The rate limit cannot be checked now",
            )
            .retry_after(1)
            .into_response()),
        }
    }
}

#[async_trait::async_trait]
impl SharedLimit for RedisLimits {
    async fn spend(&self, key: RateKey) -> Result<Option<Verdict>, Response> {
        let gcra = match key {
            RateKey::User(_) => self.per_user,
            _ => self.per_ip,
        };
        let Some(gcra) = gcra else {
            return Ok(None);
        };
        let response = self
            .redis
            .run::<(i64, i64, i64)>(
                &SCRIPT,
                vec![self.redis.key(&Self::name(key))],
                vec![gcra.interval_us.to_string(), gcra.burst.to_string()],
            )
            .await;
        match response {
            Ok((1, _, remaining)) => Ok(Some(Verdict::Allowed {
                limit: gcra.burst,
                remaining: u32::try_from(remaining.max(0)).unwrap_or(0),
            })),
            Ok((_, wait_us, _)) => Err(refusal(Verdict::Refused {
                limit: gcra.burst,
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            })),
            Err(_) => self.fall_back(key),
        }
    }
}
