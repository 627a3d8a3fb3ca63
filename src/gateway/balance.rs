//! Choosing an upstream instance: power of two choices on in-flight
//! requests among the instances that are not ejected, and passive health:
//! an instance that fails `EJECT_AFTER` times in a row (connect errors,
//! timeouts, broken exchanges) is left out until it is readmitted, by an
//! active probe (see `probe.rs`) or by a request it served while every
//! instance was out. After a probe readmits it, one more failure ejects it
//! again; after a served request, it takes `EJECT_AFTER` as at first.
//!
//! State is kept per instance id (service and address), so one service's
//! trouble with an address does not take it from another service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::kernel::registry::Instance;

/// Consecutive failures that eject an instance.
pub const EJECT_AFTER: u32 = 3;

#[derive(Default)]
struct Health {
    in_flight: AtomicUsize,
    failures: AtomicU32,
    ejected: AtomicBool,
    /// A probe task is running for this instance.
    probing: AtomicBool,
}

/// Per-instance load and health, keyed by instance id. Ids come from the
/// registry, not from clients, so the map hashes them with a fast hash.
#[derive(Default)]
pub struct Balancer {
    states: Mutex<HashMap<String, Arc<Health>, foldhash::fast::RandomState>>,
}

/// An instance chosen for one attempt; counts as in flight until dropped.
pub struct Lease {
    /// The instance's place in the list it was picked from.
    pub index: usize,
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
        self.health.ejected.store(false, Ordering::Relaxed);
    }

    /// Counts a failure; answers true when this one ejected the instance
    /// and no probe is running for it yet (so the caller starts one).
    pub fn failed(&self) -> bool {
        let failures = self.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER {
            return false;
        }
        // Readmitted instances start one failure short of ejection.
        self.health
            .failures
            .store(EJECT_AFTER - 1, Ordering::Relaxed);
        let newly = !self.health.ejected.swap(true, Ordering::Relaxed);
        newly && !self.health.probing.swap(true, Ordering::Relaxed)
    }
}

impl Balancer {
    /// `f` of the instance `id`'s state, if the instance is known.
    fn with<R>(&self, id: &str, f: impl FnOnce(&Health) -> R) -> Option<R> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.get(id).map(|h| f(h))
    }

    /// Whether the instance `id` is out of rotation.
    pub fn is_ejected(&self, id: &str) -> bool {
        self.with(id, |h| h.ejected.load(Ordering::Relaxed))
            .unwrap_or(false)
    }

    /// Puts the instance `id` back into rotation.
    pub fn readmit(&self, id: &str) {
        self.with(id, |h| h.ejected.store(false, Ordering::Relaxed));
    }

    /// Says that the probe of instance `id` has ended.
    pub fn probe_ended(&self, id: &str) {
        self.with(id, |h| h.probing.store(false, Ordering::Relaxed));
    }

    /// Drops what is known of an instance that left the registry.
    pub fn forget(&self, id: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states.remove(id);
    }

    /// Picks among `instances` whose URLs are not in `tried`: two at random
    /// among the healthy ones (all of them when none is healthy), the less
    /// loaded wins.
    pub fn pick(&self, instances: &[Instance], tried: &[&str]) -> Option<Lease> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = |instance: &Instance| -> Arc<Health> {
            match states.get(instance.id.as_str()) {
                Some(health) => health.clone(),
                None => states.entry(instance.id.clone()).or_default().clone(),
            }
        };
        let (index, health) = match instances {
            // One instance, the usual case: it is the choice, healthy or not.
            [only] if !tried.contains(&only.url.as_str()) => (0, state(only)),
            [_] | [] => return None,
            _ => {
                let candidates: Vec<(usize, Arc<Health>)> = instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| !tried.contains(&i.url.as_str()))
                    .map(|(index, i)| (index, state(i)))
                    .collect();
                let healthy: Vec<&(usize, Arc<Health>)> = candidates
                    .iter()
                    .filter(|(_, h)| !h.ejected.load(Ordering::Relaxed))
                    .collect();
                let pool: Vec<&(usize, Arc<Health>)> = if healthy.is_empty() {
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
                (chosen.0, chosen.1.clone())
            }
        };
        drop(states);
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { index, health })
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
        // Load two instances; the idle one is chosen whenever it is drawn,
        // which is 2 draws in 3 (a uniform choice would be 1 in 3). The
        // bound is 4.5 standard deviations below the expected 667.
        let busy: Vec<Lease> = (0..20).map(|_| b.pick(&all[..2], &[]).unwrap()).collect();
        let mut idle_chosen = 0;
        for _ in 0..1000 {
            let lease = b.pick(&all, &[]).unwrap();
            if lease.index == 2 {
                idle_chosen += 1;
            }
        }
        assert!(idle_chosen >= 600, "{idle_chosen}");
        drop(busy);

        let ejections: Vec<bool> = (0..EJECT_AFTER + 1)
            .map(|_| b.pick(&all[2..], &[]).unwrap().failed())
            .collect();
        // Only the failure that ejects says so: one probe per ejection.
        assert_eq!(ejections, [false, false, true, false]);
        assert!(b.is_ejected(&all[2].id));
        // While a probe runs, a second ejection starts no other probe.
        b.readmit(&all[2].id);
        assert!(!b.pick(&all[2..], &[]).unwrap().failed());
        assert!(b.is_ejected(&all[2].id));
        for _ in 0..50 {
            assert_ne!(b.pick(&all, &[]).unwrap().index, 2);
        }
        // Readmitted by its probe, it takes traffic again; one more failure
        // ejects it and starts a new probe.
        b.readmit(&all[2].id);
        b.probe_ended(&all[2].id);
        assert!((0..50).any(|_| b.pick(&all, &[]).unwrap().index == 2));
        assert!(b.pick(&all[2..], &[]).unwrap().failed());
        // Already tried instances are skipped; when all are, there is none.
        let tried: Vec<&str> = all.iter().map(|i| i.url.as_str()).collect();
        assert!(b.pick(&all, &tried).is_none());
    }
}
