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
//!
//! Health is shared by every thread. Load is counted per thread: each
//! thread balances the requests it sends, as each of nginx's workers does,
//! and a request writes no memory that requests on other threads write.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use crate::kernel::locks;
use crate::kernel::registry::Instance;

/// Consecutive failures that eject an instance.
pub const EJECT_AFTER: u32 = 3;

#[derive(Default)]
struct Health {
    failures: AtomicU32,
    ejected: AtomicBool,
    /// A probe task is running for this instance.
    probing: AtomicBool,
}

/// Instance ids come from the registry, not from clients, so maps of them
/// hash with a fast hash.
type ById<T> = HashMap<String, T, foldhash::fast::RandomState>;

/// Per-instance health, keyed by instance id, and each thread's load.
pub struct Balancer {
    /// Tells this balancer apart in the threads' tables.
    id: u64,
    states: Mutex<ById<Arc<Health>>>,
    /// Moves on when an instance is forgotten, so that threads let go of
    /// what they kept of it.
    generation: AtomicU64,
}

impl Default for Balancer {
    fn default() -> Balancer {
        static BALANCERS: AtomicU64 = AtomicU64::new(0);
        Balancer {
            id: BALANCERS.fetch_add(1, Ordering::Relaxed),
            states: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }
}

/// What one thread keeps of an instance: its shared health, and the
/// attempts this thread has in flight to it.
struct Local {
    health: Arc<Health>,
    in_flight: AtomicUsize,
}

/// What one thread keeps of one balancer's instances.
struct Kept {
    generation: u64,
    by_id: ById<Arc<Local>>,
}

/// Most instances of one balancer a thread keeps; past it, it starts over.
const KEPT_PER_THREAD: usize = 4096;
/// Most balancers a thread keeps instances of (a process has one, tests
/// make more); past it, it starts over.
const BALANCERS_PER_THREAD: usize = 64;

thread_local! {
    /// Each thread's instances, by balancer.
    static KEPT: RefCell<HashMap<u64, Kept, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

/// An instance chosen for one attempt; counts as in flight until dropped.
pub struct Lease {
    /// The instance's place in the list it was picked from.
    pub index: usize,
    local: Arc<Local>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.local.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease {
    pub fn succeeded(&self) {
        // Written only when it changes: the state is read by every thread,
        // and a write takes it from the others' caches.
        if self.local.health.failures.load(Ordering::Relaxed) != 0 {
            self.local.health.failures.store(0, Ordering::Relaxed);
        }
        if self.local.health.ejected.load(Ordering::Relaxed) {
            self.local.health.ejected.store(false, Ordering::Relaxed);
        }
    }

    /// Counts a failure; answers true when this one ejected the instance
    /// and no probe is running for it yet (so the caller starts one).
    pub fn failed(&self) -> bool {
        let failures = self.local.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < EJECT_AFTER {
            return false;
        }
        // Readmitted instances start one failure short of ejection.
        self.local
            .health
            .failures
            .store(EJECT_AFTER - 1, Ordering::Relaxed);
        let newly = !self.local.health.ejected.swap(true, Ordering::Relaxed);
        newly && !self.local.health.probing.swap(true, Ordering::Relaxed)
    }
}

impl Balancer {
    /// `f` of the instance `id`'s state, if the instance is known.
    fn with<R>(&self, id: &str, f: impl FnOnce(&Health) -> R) -> Option<R> {
        let states = locks::lock(&self.states);
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
        let mut states = locks::lock(&self.states);
        states.remove(id);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// What this thread keeps of `instance`, made on first use.
    fn local(&self, kept: &mut Kept, instance: &Instance) -> Arc<Local> {
        if let Some(local) = kept.by_id.get(instance.id.as_str()) {
            return local.clone();
        }
        let health = {
            let mut states = locks::lock(&self.states);
            states.entry(instance.id.clone()).or_default().clone()
        };
        let local = Arc::new(Local {
            health,
            in_flight: AtomicUsize::new(0),
        });
        if kept.by_id.len() >= KEPT_PER_THREAD {
            kept.by_id.clear();
        }
        kept.by_id.insert(instance.id.clone(), local.clone());
        local
    }

    /// Picks among `instances` whose URLs are not in `tried`: two at random
    /// among the healthy ones (all of them when none is healthy), the less
    /// loaded wins.
    pub fn pick(&self, instances: &[Instance], tried: &[&str]) -> Option<Lease> {
        let generation = self.generation.load(Ordering::Acquire);
        let fresh = || Kept {
            generation,
            by_id: ById::default(),
        };
        let picked = KEPT.try_with(|kept| {
            let mut kept = kept.borrow_mut();
            if kept.len() >= BALANCERS_PER_THREAD && !kept.contains_key(&self.id) {
                kept.clear();
            }
            let mine = kept.entry(self.id).or_insert_with(fresh);
            if mine.generation != generation {
                *mine = fresh();
            }
            self.pick_with(mine, instances, tried)
        });
        // Only while the thread ends: nothing kept.
        picked.unwrap_or_else(|_| self.pick_with(&mut fresh(), instances, tried))
    }

    fn pick_with(&self, kept: &mut Kept, instances: &[Instance], tried: &[&str]) -> Option<Lease> {
        let mut state = |instance: &Instance| self.local(kept, instance);
        let (index, local) = match instances {
            // One instance, the usual case: it is the choice, healthy or not.
            [only] if !tried.contains(&only.url.as_str()) => (0, state(only)),
            [_] | [] => return None,
            _ => {
                let candidates: Vec<(usize, Arc<Local>)> = instances
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| !tried.contains(&i.url.as_str()))
                    .map(|(index, i)| (index, state(i)))
                    .collect();
                let healthy: Vec<&(usize, Arc<Local>)> = candidates
                    .iter()
                    .filter(|(_, l)| !l.health.ejected.load(Ordering::Relaxed))
                    .collect();
                let pool: Vec<&(usize, Arc<Local>)> = if healthy.is_empty() {
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
        local.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { index, local })
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

    #[test]
    fn health_is_shared_by_threads_and_load_is_each_threads_own() {
        let b = Balancer::default();
        let all = instances();
        // Failures seen on another thread eject the instance here too.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..EJECT_AFTER {
                    b.pick(&all[2..], &[]).unwrap().failed();
                }
            });
        });
        assert!(b.is_ejected(&all[2].id));
        for _ in 0..50 {
            assert_ne!(b.pick(&all, &[]).unwrap().index, 2);
        }
        // Attempts in flight on another thread do not weigh on this one's
        // choice: with instance 0 busy there, the two share this thread's
        // traffic.
        let (release, wait_for_release) = std::sync::mpsc::channel::<()>();
        let (held, wait_for_held) = std::sync::mpsc::channel::<()>();
        let (b, all) = (&b, &all);
        std::thread::scope(|s| {
            s.spawn(move || {
                let _leases: Vec<Lease> =
                    (0..20).map(|_| b.pick(&all[..1], &[]).unwrap()).collect();
                held.send(()).unwrap();
                wait_for_release.recv().unwrap();
            });
            wait_for_held.recv().unwrap();
            let zero = (0..1000)
                .filter(|_| b.pick(&all[..2], &[]).unwrap().index == 0)
                .count();
            release.send(()).unwrap();
            // Even odds; the bound is 6 standard deviations out.
            assert!((405..=595).contains(&zero), "{zero}");
        });
    }

    #[test]
    fn a_forgotten_instance_comes_back_with_a_clean_record() {
        let b = Balancer::default();
        let all = instances();
        for _ in 0..EJECT_AFTER {
            b.pick(&all[..1], &[]).unwrap().failed();
        }
        assert!(b.is_ejected(&all[0].id));
        b.forget(&all[0].id);
        assert!(!b.is_ejected(&all[0].id));
        // Back in the registry, it needs a full run of failures again.
        for _ in 0..EJECT_AFTER - 1 {
            assert!(!b.pick(&all[..1], &[]).unwrap().failed());
        }
        assert!(!b.is_ejected(&all[0].id));
        assert!(b.pick(&all[..1], &[]).unwrap().failed());
        assert!(b.is_ejected(&all[0].id));
    }
}
