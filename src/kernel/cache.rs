//! A cache for derived data. Every entry has a time to live, and losing the
//! cache loses no data: whatever is cached can be fetched again from its
//! owner. Values are bytes so every backend stores the same thing.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;

#[async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` for at most `ttl`.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration);
    async fn invalidate(&self, key: &str);
}

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &String, value: &Entry, _now: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Entry,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A bounded in-memory cache (moka), for one process.
pub struct InProcessCache {
    inner: moka::future::Cache<String, Entry>,
}

impl InProcessCache {
    /// A cache holding at most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        Self {
            inner: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

#[async_trait]
impl Cache for InProcessCache {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.get(key).await.map(|e| e.value)
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        self.inner
            .insert(key.to_owned(), Entry { value, ttl })
            .await;
    }

    async fn invalidate(&self, key: &str) {
        self.inner.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire_and_can_be_invalidated() {
        let cache = InProcessCache::new(100);
        cache
            .put("a", b"1".to_vec(), Duration::from_millis(50))
            .await;
        cache.put("b", b"2".to_vec(), Duration::from_secs(60)).await;
        assert_eq!(cache.get("a").await.as_deref(), Some(&b"1"[..]));
        cache.invalidate("b").await;
        assert_eq!(cache.get("b").await, None);
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("a").await, None);
    }
}
