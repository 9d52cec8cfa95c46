//! The allocs bench's counting allocator: a `#[global_allocator]` over `System` that counts
//! allocations, reallocations and bytes for the whole process and for each thread, and while
//! sampling is on captures a backtrace for about one call in N, with a re-entrancy guard that
//! keeps its own bookkeeping out of the figures. The only `unsafe` code of the bench.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation of the process; see the module docs.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// 0: sampling off; N: capture a backtrace for about one allocation or reallocation in N.
pub static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
/// Allocations seen while sampling is on: the input of the pseudo-random choice.
pub static SAMPLE_TICKET: AtomicU64 = AtomicU64::new(0);
/// The captured backtraces, each with whether it was a reallocation; resolved after the
/// window.
pub static SAMPLES: Mutex<Vec<(Backtrace, bool)>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread runs the allocator's own bookkeeping (a capture): allocations
    /// made then are neither counted nor sampled, so the hook cannot recurse.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
    /// Allocations and reallocations made by this thread: the client's proof of silence.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

impl Counting {
    #[inline]
    fn record(new_bytes: usize, realloc: bool) {
        // A thread being torn down may have lost its thread-locals: count it, never sample.
        let in_hook = IN_HOOK.try_with(Cell::get).unwrap_or(false);
        if in_hook {
            return;
        }
        if realloc {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
        } else {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        BYTES.fetch_add(new_bytes as u64, Ordering::Relaxed);
        let _ = THREAD_ALLOCS.try_with(|n| n.set(n.get() + 1));
        let every = SAMPLE_EVERY.load(Ordering::Relaxed);
        if every != 0 {
            let ticket = SAMPLE_TICKET.fetch_add(1, Ordering::Relaxed);
            if splitmix64(ticket).is_multiple_of(every) {
                Self::sample(realloc);
            }
        }
    }

    #[cold]
    fn sample(realloc: bool) {
        if IN_HOOK
            .try_with(|guard| guard.replace(true))
            .unwrap_or(true)
        {
            return;
        }
        let trace = Backtrace::force_capture();
        SAMPLES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((trace, realloc));
        let _ = IN_HOOK.try_with(|guard| guard.set(false));
    }
}

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's pointer and layout unchanged,
// so `System`'s guarantees are this allocator's; the bookkeeping around the calls touches only
// atomics, const-initialized thread-locals without destructors, and (while sampling, behind
// the re-entrancy guard) a mutex-protected vector, none of which can unwind into the caller.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which
        // is `System::alloc`'s.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Self::record(layout.size(), false);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's layout is valid for `System::alloc_zeroed`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Self::record(layout.size(), false);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`, as
        // the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`, and
        // `new_size` is valid for it, as the caller guarantees.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            Self::record(new_size.saturating_sub(layout.size()), true);
        }
        new
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A well-mixed hash of a counter (SplitMix64's finalizer), for the sampler's choice.
fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The process-wide counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub allocs: u64,
    pub reallocs: u64,
    pub bytes: u64,
}

impl Counts {
    pub fn now() -> Counts {
        Counts {
            allocs: ALLOCS.load(Ordering::SeqCst),
            reallocs: REALLOCS.load(Ordering::SeqCst),
            bytes: BYTES.load(Ordering::SeqCst),
        }
    }

    pub fn since(self, before: Counts) -> Counts {
        Counts {
            allocs: self.allocs - before.allocs,
            reallocs: self.reallocs - before.reallocs,
            bytes: self.bytes - before.bytes,
        }
    }
}

pub fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}
