//! Choosing an upstream instance: power of two choices on in-flight
//! requests among the instances that are not ejected, and passive health:
//! an instance that fails `EJECT_AFTER` times in a row (connect errors,
//! timeouts, broken exchanges) is left out for `EJECT_FOR`, then tried again
//! (one more failure ejects it again at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::kernel::registry::Instance;

/// Consecutive failures that eject an instance.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected instance is left out.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Health {
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| now < until)
    }
}

/// Per-instance load and health, keyed by instance URL.
#[derive(Default)]
pub struct Balancer {
    states: Mutex<HashMap<String, Arc<Health>>>,
}

/// An instance chosen for one attempt; counts as in flight until dropped.
pub struct Lease {
    pub instance: Instance,
    health: Arc<Health>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    pub fn succeeded(&self) {
        self.health.failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; answers true when this one ejected the instance.
    pub fn failed(&self) -> bool {
        let failures = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER {
            let mut until = self
                .health
                .ejected_until
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *until = Some(Instant::now() + EJECT_FOR);
            // After the ejection, one more failure is enough to eject again.
            self.health
                .failures
                .store(EJECT_AFTER - 1, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl Balancer {
    fn health(&self, url: &str) -> Arc<Health> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.entry(url.to_owned()).or_default().clone()
    }

    /// Picks among `instances` not in `tried`: two at random among the
    /// healthy ones (all of them when none is healthy), the less loaded wins.
    pub fn pick(&self, instances: &[Instance], tried: &[String]) -> Option<Lease> {
        let now = Instant::now();
        let candidates: Vec<(&Instance, Arc<Health>)> = instances
            .iter()
            .filter(|i| !tried.contains(&i.url))
            .map(|i| (i, self.health(&i.url)))
            .collect();
        let healthy: Vec<&(&Instance, Arc<Health>)> =
            candidates.iter().filter(|(_, h)| !h.ejected(now)).collect();
        let pool: Vec<&(&Instance, Arc<Health>)> = if healthy.is_empty() {
            candidates.iter().collect()
        } else {
            healthy
        };
        let chosen = match pool.len() {
            0 => return None,
            1 => pool[0],
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |i: usize| pool[i].1.in_flight.load(Ordering::Relaxed);
                if load(b) < load(a) { pool[b] } else { pool[a] }
            }
        };
        chosen.1.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            instance: chosen.0.clone(),
            health: chosen.1.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances() -> Vec<Instance> {
        (1..=3)
            .map(|i| Instance::new("svc", format!("http://127.0.0.1:{i}")))
            .collect()
    }

    #[test]
    fn the_less_loaded_of_two_wins_and_failing_instances_are_ejected() {
        let b = Balancer::default();
        let all = instances();
        // Load two instances; the idle one is chosen whenever it is drawn.
        let busy: Vec<Lease> = (0..20).map(|_| b.pick(&all[..2], &[]).unwrap()).collect();
        let mut idle_chosen = 0;
        for _ in 0..100 {
            let lease = b.pick(&all, &[]).unwrap();
            if lease.instance.url == all[2].url {
                idle_chosen += 1;
            }
        }
        assert!(idle_chosen >= 60, "{idle_chosen}");
        drop(busy);

        for _ in 0..EJECT_AFTER {
            let lease = b.pick(&all[2..], &[]).unwrap();
            lease.failed();
        }
        for _ in 0..50 {
            assert_ne!(b.pick(&all, &[]).unwrap().instance.url, all[2].url);
        }
        // Already tried instances are skipped; when all are, there is none.
        let tried: Vec<String> = all.iter().map(|i| i.url.clone()).collect();
        assert!(b.pick(&all, &tried).is_none());
    }
}
