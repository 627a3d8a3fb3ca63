//! A place in a bounded line of waiters: taken only while fewer than a
//! bound hold one, given up when dropped (served, refused, or its request
//! gone). Work that waits for a turn counts its waiters with it, so that
//! past the bound it is refused at once rather than piling up.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A place among the waiters that `count` counts.
pub struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    /// A place, unless `max` waiters hold one already.
    pub fn join(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_and_given_back() {
        let count = AtomicUsize::new(0);
        let first = Place::join(&count, 2).unwrap();
        let second = Place::join(&count, 2).unwrap();
        assert!(Place::join(&count, 2).is_none());
        drop(first);
        let third = Place::join(&count, 2);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
