//! The process's memory allocator.
//!
//! Small blocks go to mimalloc: a proxied request makes many small,
//! short-lived allocations across threads, where glibc's malloc spends a
//! noticeable share of the gateway's time. mimalloc is built as its v2 (see
//! Cargo.toml): every allocation comes with its alignment, and v3
//! over-allocates for such requests above 1 KiB. It is built without
//! transparent huge pages (`no_thp`), which it would otherwise ask for on
//! its arenas: each thread's first small allocation would then take a 2 MiB
//! page, 30 MiB of an idle process's memory.
//!
//! Blocks of [`LARGE`] bytes and more go to the system allocator. They are
//! rare (the scrypt buffer of a password hash is the one that matters: 128
//! MiB at the default cost), and glibc maps each one on its own and returns
//! it to the system when it is freed, where mimalloc keeps freed memory in
//! its arenas until later allocations purge it, so an idle process would go
//! on holding the buffers of its last few password hashes.

// The one place that implements `GlobalAlloc`, which is an unsafe trait.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this many bytes and more come from the system allocator.
pub const LARGE: usize = 1 << 20;

/// mimalloc below [`LARGE`] bytes, the system allocator from there on.
pub struct Allocator;

fn large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every block is freed (or resized) by the allocator that made it,
// because `GlobalAlloc` passes `dealloc` and `realloc` the same layout the
// block was allocated with, and the choice depends on its size alone. A
// resize across `LARGE` moves the block from one allocator to the other.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe {
            if large(layout.size()) {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe {
            if large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the allocator this size chooses (see above).
        unsafe {
            if large(layout.size()) {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (large(layout.size()), large(new_size)) {
            // SAFETY: same allocator before and after; the contract is passed on.
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { MiMalloc.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to
                // `layout.align()`, does not overflow `isize`.
                let moved = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: `moved` has a non-zero size (the caller's contract).
                let new = unsafe { self.alloc(moved) };
                if !new.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and
                    // distinct; the old one is freed with its own layout.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LARGE;

    /// Growing and shrinking across the boundary keeps the contents: the
    /// block moves between the two allocators.
    #[test]
    fn resizing_across_the_boundary_keeps_the_bytes() {
        let mut bytes: Vec<u8> = (0..LARGE - 8).map(|i| (i % 251) as u8).collect();
        bytes.reserve_exact(LARGE);
        assert!(bytes.capacity() >= LARGE);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        bytes.truncate(100);
        bytes.shrink_to_fit();
        assert_eq!(bytes.capacity(), 100);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }
}
