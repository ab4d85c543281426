//! The suite's allocator: the system's, plus a watch on freed memory for
//! one armed secret, which is how a test sees that a key was wiped before
//! its memory went back (ENC-3: keys are zeroized after use).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};

pub struct Watching;

static ARMED: AtomicBool = AtomicBool::new(false);
static SIZE: AtomicUsize = AtomicUsize::new(0);
static SECRET: [AtomicU8; 32] = [const { AtomicU8::new(0) }; 32];
static FREED: AtomicUsize = AtomicUsize::new(0);
static FOUND: AtomicUsize = AtomicUsize::new(0);
/// One watch at a time.
static WATCH: Mutex<()> = Mutex::new(());

// SAFETY: every call is passed on to the system allocator unchanged; the
// watch only reads a block, in place, before it is freed.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ARMED.load(SeqCst) && layout.size() == SIZE.load(SeqCst) {
            FREED.fetch_add(1, SeqCst);
            let secret: [u8; 32] = std::array::from_fn(|i| SECRET[i].load(SeqCst));
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until
            // the system frees it below; volatile reads keep them real.
            let at = |i: usize| unsafe { std::ptr::read_volatile(ptr.add(i)) };
            let found = (0..=layout.size().saturating_sub(32))
                .any(|start| (0..32).all(|i| at(start + i) == secret[i]));
            if found {
                FOUND.fetch_add(1, SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `work` while watching frees of blocks of `size` bytes for
/// `secret`; returns how many such blocks were freed, and in how many the
/// secret was still there.
pub fn watch(size: usize, secret: &[u8; 32], work: impl FnOnce()) -> (usize, usize) {
    let _one = WATCH.lock().unwrap_or_else(|e| e.into_inner());
    for (cell, byte) in SECRET.iter().zip(secret) {
        cell.store(*byte, SeqCst);
    }
    SIZE.store(size, SeqCst);
    FREED.store(0, SeqCst);
    FOUND.store(0, SeqCst);
    ARMED.store(true, SeqCst);
    work();
    ARMED.store(false, SeqCst);
    (FREED.load(SeqCst), FOUND.load(SeqCst))
}
