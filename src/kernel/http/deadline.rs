//! A deadline kept on one long-lived timer.
//!
//! A timer made for every wait (a request's head, an upstream's response) is
//! put into the runtime's timer wheel and taken out again each time, which
//! costs more than the wait itself when the response is already on its way.
//! Here the owner of many waits in turn (a connection) keeps one timer:
//! a later deadline is only noted, and the timer is moved when it fires
//! before the deadline of the wait at hand, or when a deadline comes that
//! is earlier than the timer. Under steady traffic the timer moves once per
//! period of the deadline's length, not once per wait.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;

use tokio::time::{Instant, Sleep};

/// The time by which the current wait must end.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    /// Made the first time a wait outlasts its first poll.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub fn new(at: Instant) -> Deadline {
        Deadline { at, timer: None }
    }

    /// A new wait begins, to end by `at`.
    pub fn set(&mut self, at: Instant) {
        self.at = at;
        if let Some(timer) = &mut self.timer
            && timer.deadline() > at
        {
            timer.as_mut().reset(at);
        }
    }

    /// Whether the current wait has passed its deadline; when not, the
    /// task is woken by then.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Fired: for this wait, or for an earlier one.
            if Instant::now() >= at {
                return true;
            }
            timer.as_mut().reset(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Polls `deadline` once from a test task.
    fn passed(deadline: &mut Deadline) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        deadline.poll_passed(&mut cx)
    }

    #[tokio::test(start_paused = true)]
    async fn each_wait_ends_at_its_own_deadline_whether_later_or_earlier() {
        let start = Instant::now();
        let mut deadline = Deadline::new(start + Duration::from_secs(10));
        assert!(!passed(&mut deadline));
        // A later deadline: the timer, due sooner, fires for nothing and is moved on.
        deadline.set(start + Duration::from_secs(30));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!passed(&mut deadline), "passed 10 s early");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(passed(&mut deadline));
        // An earlier deadline than the timer's moves the timer back.
        let now = Instant::now();
        deadline.set(now + Duration::from_secs(60));
        assert!(!passed(&mut deadline));
        deadline.set(now + Duration::from_secs(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(passed(&mut deadline), "kept to the later deadline");
    }
}
