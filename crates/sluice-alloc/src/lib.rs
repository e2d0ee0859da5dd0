//! The process's global allocator: the system allocator, except that
//! allocations of [`HUGE`] bytes or more are anonymous mappings made with
//! `MAP_NORESERVE`, so that the kernel backs them page by page as they are
//! touched instead of refusing them up front.
//!
//! Why: the Kafka codec (kafka-protocol 0.18) sizes a decoded array with
//! `Vec::with_capacity(count)` from the count on the wire, before reading a
//! single element. A 60-byte request declaring four billion elements asks
//! for tens of GiB at once; the system allocator refuses, and Rust aborts
//! the process on a refused allocation ("memory allocation of … bytes
//! failed"): one request killed the broker (found by
//! fuzz/fuzz_targets/kafka_request.rs). Reserved lazily, such a vector costs
//! address space only; the decode fails at the end of the request's bytes
//! and the mapping is released. Real allocations this large do not occur
//! (requests are capped by `kafka.max_request_bytes`), and one that were
//! touched in full would meet the kernel's out-of-memory handling, as any
//! memory does.
//!
//! Use it with `#[global_allocator] static ALLOCATOR: sluice_alloc::Allocator
//! = sluice_alloc::Allocator;`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};

/// Allocations of this many bytes or more are reserved lazily.
pub const HUGE: usize = 1 << 30;
/// Mappings are page aligned; stricter alignments go to the system.
const PAGE: usize = 4096;

/// See the crate documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

fn lazy(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

fn map(size: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous private mapping at an address the kernel
    // chooses; it aliases nothing.
    let mapped = unsafe {
        mmap_anonymous(
            ptr::null_mut(),
            size,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    };
    mapped.map_or(ptr::null_mut(), |address| address.cast())
}

// SAFETY: every block comes from exactly one of two sources chosen by its
// layout alone (`lazy`), and is returned to the same source: the system
// allocator, or mmap/munmap of its exact size. Anonymous mappings are zeroed
// and page aligned, which satisfies `alloc_zeroed` and any alignment up to
// a page.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract for `alloc`, passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if lazy(&layout) {
            // SAFETY: `block` is a mapping of exactly this size made by
            // `map` (same layout, same choice); nothing uses it any more.
            let _ = unsafe { munmap(block.cast(), layout.size()) };
        } else {
            // SAFETY: the caller's contract for `dealloc`, passed on.
            unsafe { System.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        if !lazy(&layout) && !lazy(&new_layout) {
            // SAFETY: both sizes belong to the system allocator, which made
            // `block`; the caller's contract for `realloc`, passed on.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // Crossing between the two sources: allocate, copy, free.
        // SAFETY: `new_layout` has a non-zero size (it is at least HUGE or
        // the old block was).
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller size and are
            // distinct allocations; the old one is freed with its layout.
            unsafe {
                ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_succeeds_and_costs_nothing_until_touched() {
        // 64 GiB: more than this machine has, as a hostile request asks.
        let layout = Layout::from_size_align(64 << 30, 8).expect("layout");
        let allocator = Allocator;
        // SAFETY: a non-zero layout; the block is touched only within its
        // size and freed with the same layout.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null(), "a lazy reservation of 64 GiB");
            block.write(7);
            block.add((64 << 30) - 1).write(9);
            assert_eq!(block.read(), 7);
            allocator.dealloc(block, layout);
        }
    }

    #[test]
    fn small_blocks_grow_into_huge_ones_and_back_keeping_their_bytes() {
        let allocator = Allocator;
        let small = Layout::from_size_align(16, 8).expect("layout");
        // SAFETY: blocks are used within their sizes and freed with their
        // layouts.
        unsafe {
            let block = allocator.alloc(small);
            block.copy_from_nonoverlapping(b"0123456789abcdef".as_ptr(), 16);
            let grown = allocator.realloc(block, small, HUGE);
            assert!(!grown.is_null());
            assert_eq!(std::slice::from_raw_parts(grown, 16), b"0123456789abcdef");
            let huge = Layout::from_size_align(HUGE, 8).expect("layout");
            let shrunk = allocator.realloc(grown, huge, 8);
            assert_eq!(std::slice::from_raw_parts(shrunk, 8), b"01234567");
            allocator.dealloc(shrunk, Layout::from_size_align(8, 8).expect("layout"));
        }
    }
}
