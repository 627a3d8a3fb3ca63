//! Authz's answers shared by the replicas of one service in Redis.
//!
//! An answer is kept as `<revision>:<0|1>:<tag>` for as long as a replica
//! keeps its own. The tag is an HMAC of the question, the revision and the
//! answer under a key only the service's replicas hold (derived from the
//! service's own key), so whoever can write to Redis cannot grant a
//! permission: an answer without a good tag is not read.
//!
//! A change raises a floor, the user's or everyone's, to its revision; an
//! answer given before the higher of the two floors is neither read nor
//! written. The write checks the floors in one script run on the server,
//! so a replica that asked before a change and writes after another
//! replica saw it cannot bring the old answer back. A floor lives twice as
//! long as an answer, so no answer it voids can outlive it. When a floor
//! could not be raised, this replica reads nothing from Redis for as long
//! as an answer is kept, since answers the change voids may still be
//! there. Whatever Redis cannot answer is asked of authz.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::types::scripts::Script;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::{Kept, SharedDecisions};
use crate::kernel::locks;
use crate::kernel::redis::Redis;
use crate::middleware::ids::{Subject, UserId};

/// `KEYS`: the answer, the user's floor, everyone's floor. Answers the
/// kept value (nil when there is none) and the higher floor.
const READ: &str = r"
local floor = math.max(tonumber(redis.call('GET', KEYS[2])) or 0,
  tonumber(redis.call('GET', KEYS[3])) or 0)
return {redis.call('GET', KEYS[1]), floor}
";

/// `KEYS` as for `READ`; `ARGV`: the answer's revision, the value to keep,
/// milliseconds to keep it. Keeps it unless a floor is above the revision.
const WRITE: &str = r"
local floor = math.max(tonumber(redis.call('GET', KEYS[2])) or 0,
  tonumber(redis.call('GET', KEYS[3])) or 0)
if tonumber(ARGV[1]) < floor then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// `KEYS[1]`: a floor; `ARGV`: a change's revision, milliseconds to keep
/// the floor. Raises the floor to the revision; never lowers it.
const RAISE: &str = r"
local floor = tonumber(redis.call('GET', KEYS[1])) or 0
if tonumber(ARGV[1]) > floor then
  floor = tonumber(ARGV[1])
end
redis.call('SET', KEYS[1], string.format('%.0f', floor), 'PX', ARGV[2])
return floor
";

static SCRIPTS: LazyLock<[Script; 3]> =
    LazyLock::new(|| [READ, WRITE, RAISE].map(Script::from_lua));

/// The answers of one service's replicas, kept in Redis for `keep`.
pub struct RedisDecisions {
    redis: Redis,
    service: String,
    tag_key: [u8; 32],
    keep: Duration,
    keep_ms: String,
    floor_ms: String,
    /// Until when nothing is read: a change's floor could not be raised.
    distrust_until: Mutex<Option<Instant>>,
}

impl RedisDecisions {
    /// Answers of `service`, tagged with `tag_key` (which only its
    /// replicas hold), kept for `keep`.
    pub fn new(redis: Redis, service: &str, tag_key: [u8; 32], keep: Duration) -> Self {
        let keep_ms = keep.as_millis().max(1);
        Self {
            redis,
            service: service.to_owned(),
            tag_key,
            keep,
            keep_ms: keep_ms.to_string(),
            floor_ms: keep_ms.saturating_mul(2).to_string(),
            distrust_until: Mutex::new(None),
        }
    }

    fn trusted(&self) -> bool {
        let mut until = locks::lock(&self.distrust_until);
        match *until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// The answer's key, the user's floor and everyone's floor.
    fn keys(&self, subject: Subject, permission: &str, resource: Option<&str>) -> Vec<String> {
        // The permission's length keeps `a:b` + `c` apart from `a` + `b:c`.
        let resource = resource.unwrap_or_default();
        vec![
            self.redis.key(&format!(
                "permit:{}:{subject}:{}:{permission}:{resource}",
                self.service,
                permission.len()
            )),
            self.floor(subject),
            self.redis
                .key(&format!("permit-floor:{}:all", self.service)),
        ]
    }

    fn floor(&self, subject: Subject) -> String {
        self.redis
            .key(&format!("permit-floor:{}:{subject}", self.service))
    }

    /// The tag of `answer` (`<revision>:<0|1>`) kept at `key`.
    fn tag(&self, key: &str, decision: &str) -> Hmac<Sha256> {
        let mut mac = crate::kernel::seal::hmac_sha256(&self.tag_key);
        mac.update(key.as_bytes());
        mac.update(b"\0");
        mac.update(decision.as_bytes());
        mac
    }

    /// The answer in `kept` (`<revision>:<0|1>:<until ms, 0 for none>:<tag>`),
    /// if its tag is good and it was given at or after `floor`.
    fn read(&self, key: &str, kept: &str, floor: u64) -> Option<Kept> {
        let (decision, tag) = kept.rsplit_once(':')?;
        self.tag(key, decision)
            .verify_slice(&hex::decode(tag).ok()?)
            .ok()?;
        let mut fields = decision.split(':');
        let (revision, allowed, until) = (fields.next()?, fields.next()?, fields.next()?);
        if revision.parse::<u64>().ok()? < floor {
            return None;
        }
        let allowed = match allowed {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        let until_ms = Some(until.parse::<i64>().ok()?).filter(|ms| *ms != 0);
        Some(Kept { allowed, until_ms })
    }
}

#[async_trait::async_trait]
impl SharedDecisions for RedisDecisions {
    async fn get(
        &self,
        subject: Subject,
        permission: &str,
        resource: Option<&str>,
    ) -> Option<Kept> {
        if !self.trusted() {
            return None;
        }
        let keys = self.keys(subject, permission, resource);
        let key = keys[0].clone();
        let (kept, floor) = self
            .redis
            .run::<(Option<String>, u64)>(&SCRIPTS[0], keys, Vec::new())
            .await
            .ok()?;
        self.read(&key, &kept?, floor)
    }

    async fn put(
        &self,
        subject: Subject,
        permission: &str,
        resource: Option<&str>,
        revision: u64,
        kept: Kept,
    ) {
        let keys = self.keys(subject, permission, resource);
        let decision = format!(
            "{revision}:{}:{}",
            u8::from(kept.allowed),
            kept.until_ms.unwrap_or(0)
        );
        let tag = self.tag(&keys[0], &decision);
        let tag = hex::encode(tag.finalize().into_bytes());
        let args = vec![
            revision.to_string(),
            format!("{decision}:{tag}"),
            self.keep_ms.clone(),
        ];
        // Not kept: the next replica asks authz, as without Redis.
        let _ = self.redis.run::<i64>(&SCRIPTS[1], keys, args).await;
    }

    async fn forget(&self, users: Option<&[Uuid]>, revision: u64) {
        let floors = match users {
            Some(users) => users
                .iter()
                .map(|u| self.floor(Subject::User(UserId::from_uuid(*u))))
                .collect(),
            None => vec![
                self.redis
                    .key(&format!("permit-floor:{}:all", self.service)),
            ],
        };
        let args = vec![revision.to_string(), self.floor_ms.clone()];
        for floor in floors {
            let raised = self
                .redis
                .run::<i64>(&SCRIPTS[2], vec![floor], args.clone())
                .await;
            if raised.is_err() {
                *locks::lock(&self.distrust_until) = Some(Instant::now() + self.keep);
            }
        }
    }
}
