//! Threads that serve connections, each with an event loop of its own.
//!
//! A work-stealing runtime moves tasks between threads and wakes idle
//! threads to look for work; for a proxy, where every request is a chain of
//! small reads and writes across two sockets, those wake-ups cost more than
//! the work itself. Here each accepted connection is handed to one thread
//! (round robin) and stays there: its socket is re-registered with that
//! thread's reactor, and whatever it spawns (an upstream connection, say)
//! runs on the same thread. That is the shape of nginx's workers.
//!
//! With one thread for each CPU the process may run on, each thread is
//! pinned to a CPU of its own (see [`Pinning`]), as nginx's
//! `worker_cpu_affinity auto` does. Threads left free are seldom moved by
//! the scheduler, so two of them can spend long spells on one CPU, and
//! while they share it the connections of both wait. Threads a pinned
//! thread starts (its runtime's blocking pool, for name lookups) share its
//! CPU.
//!
//! The threads stop when [`IoThreads::stop`] is called (after the server
//! has let in-flight requests finish); tasks still on them are dropped.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use core_affinity::CoreId;
use serde::{Deserialize, Serialize};
use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// Whether each I/O thread is bound to one CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pinning {
    /// Pinned when there are as many threads as CPUs the process may run
    /// on. Fewer threads than that (a CPU quota smaller than the CPU set,
    /// in a container, say) are left free, so they do not crowd onto CPUs
    /// that others may be using.
    #[default]
    Auto,
    /// Each thread pinned, in turn, to one of the CPUs the process may run on.
    Always,
    /// Left to the scheduler.
    Never,
}

/// How many I/O threads a server runs, and where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoPlan {
    /// 0 for one per CPU core.
    pub count: usize,
    /// Whether each thread is bound to a CPU.
    pub pinning: Pinning,
}

impl Pinning {
    /// The CPU of each of `count` threads, given the CPUs the process may
    /// run on; empty when the threads are left free.
    fn plan(self, count: usize, cpus: &[CoreId]) -> Vec<CoreId> {
        let pinned = match self {
            Pinning::Auto => cpus.len() == count,
            Pinning::Always => true,
            Pinning::Never => false,
        };
        if !pinned || cpus.is_empty() {
            return Vec::new();
        }
        cpus.iter().copied().cycle().take(count).collect()
    }
}

pub struct IoThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl IoThreads {
    /// Starts the threads of `plan`, named after `name`.
    pub fn start(name: &str, plan: IoPlan) -> std::io::Result<IoThreads> {
        let IoPlan { count, pinning } = plan;
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        };
        // The CPUs this thread may run on: the process's, unless whoever
        // starts the threads has been pinned itself.
        let cpus = pinning.plan(count, &core_affinity::get_core_ids().unwrap_or_default());
        if cpus.is_empty() && pinning == Pinning::Always {
            tracing::warn!(
                service = name,
                "the CPUs this process may run on are not known: I/O threads left free"
            );
        } else if cpus.is_empty() {
            tracing::info!(service = name, threads = count, "I/O threads left free");
        } else {
            let ids: Vec<usize> = cpus.iter().map(|c| c.id).collect();
            tracing::info!(service = name, threads = count, cpus = ?ids, "I/O threads pinned");
        }
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            let cpu = cpus.get(i).copied();
            let service = name.to_owned();
            std::thread::Builder::new()
                .name(format!("{name}-io-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu
                        && !core_affinity::set_for_current(cpu)
                    {
                        tracing::warn!(service, cpu = cpu.id, "an I/O thread could not be pinned");
                    }
                    runtime.block_on(async move {
                        tokio::select! {
                            () = stop.cancelled_owned() => {}
                            () = anchor() => {}
                        }
                    })
                })?;
        }
        Ok(IoThreads {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// Runs `task` on the next thread.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }

    /// Ends the threads' event loops.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// How often a thread's [`anchor`] timer fires: shorter than the timeouts
/// requests set (header reads, upstream answers).
const ANCHOR_PERIOD: Duration = Duration::from_secs(1);

/// Keeps a timer in the thread's timer wheel at all times, due sooner than
/// any request's timeout.
///
/// A thread that sets a timer due before the earliest one its event loop
/// last went to sleep with signals its own event loop (a write to its
/// eventfd), in case that loop is asleep and must wake sooner. With no timer
/// at all in the wheel, every first timer after a sleep counts as earlier:
/// under load, a proxy paid that write about once every four requests. With
/// this one always due within [`ANCHOR_PERIOD`], the timeouts of requests,
/// which lie further out, never count as earlier.
async fn anchor() {
    loop {
        tokio::time::sleep(ANCHOR_PERIOD).await;
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(ids: &[usize]) -> Vec<CoreId> {
        ids.iter().map(|&id| CoreId { id }).collect()
    }

    fn ids(cpus: &[CoreId]) -> Vec<usize> {
        cpus.iter().map(|c| c.id).collect()
    }

    #[test]
    fn auto_pins_only_a_thread_per_cpu_the_process_may_use() {
        assert_eq!(ids(&Pinning::Auto.plan(2, &cpus(&[0, 1]))), [0, 1]);
        // Two threads under a quota on a larger CPU set stay free.
        assert!(Pinning::Auto.plan(2, &cpus(&[0, 1, 2, 3])).is_empty());
        assert!(Pinning::Auto.plan(3, &cpus(&[0, 1])).is_empty());
        assert_eq!(ids(&Pinning::Always.plan(3, &cpus(&[4, 6]))), [4, 6, 4]);
        assert!(Pinning::Never.plan(2, &cpus(&[0, 1])).is_empty());
        assert!(Pinning::Always.plan(2, &[]).is_empty());
    }

    /// The CPUs each of `count` threads may run on, as seen from the threads.
    #[cfg(target_os = "linux")]
    fn placement(count: usize, pinning: Pinning) -> Vec<Vec<usize>> {
        let threads = IoThreads::start("test", IoPlan { count, pinning }).expect("threads");
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..count {
            let tx = tx.clone();
            threads.spawn(async move {
                let seen = core_affinity::get_core_ids().unwrap_or_default();
                let _ = tx.send((i, ids(&seen)));
            });
        }
        let mut seen: Vec<(usize, Vec<usize>)> = (0..count)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a thread answered")
            })
            .collect();
        threads.stop();
        seen.sort();
        seen.into_iter().map(|(_, cpus)| cpus).collect()
    }

    // Elsewhere than on Linux a thread's CPUs may be a hint, or the process's.
    #[cfg(target_os = "linux")]
    #[test]
    fn pinned_threads_each_run_on_one_cpu_in_turn() {
        let mine = ids(&core_affinity::get_core_ids().expect("this thread's CPUs"));
        let seen = placement(2, Pinning::Always);
        let expected: Vec<Vec<usize>> = mine.iter().cycle().take(2).map(|&c| vec![c]).collect();
        assert_eq!(seen, expected);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn free_threads_may_run_anywhere_the_process_may() {
        let mine = ids(&core_affinity::get_core_ids().expect("this thread's CPUs"));
        assert_eq!(placement(2, Pinning::Never), vec![mine.clone(), mine]);
    }
}
