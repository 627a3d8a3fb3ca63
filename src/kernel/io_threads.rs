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
//! The threads stop when [`IoThreads::stop`] is called (after the server
//! has let in-flight requests finish); tasks still on them are dropped.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

pub struct IoThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl IoThreads {
    /// Starts `count` threads (one per CPU core when `count` is 0), named
    /// after `name`.
    pub fn start(name: &str, count: usize) -> std::io::Result<IoThreads> {
        let count = if count == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            count
        };
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-io-{i}"))
                .spawn(move || {
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
