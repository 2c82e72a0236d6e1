//! A bounded sample of the requests this process served lately, with the
//! same attributes an access-log line carries, so a change's traffic impact
//! can be replayed against what really came in. Every request is kept until
//! the ring is full, then one in [`EVERY`] (per worker thread), overwriting
//! the oldest: a quiet server keeps all it saw, a busy one pays for a
//! sixteenth. Writers never wait for each other or for a reader.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwapOption;

use crate::access_log::Entry;

/// Requests kept.
pub const CAPACITY: usize = 4096;
/// Once the ring is full, one request in this many is sampled (per worker
/// thread): enough to replace the whole ring within seconds at any load
/// worth measuring, at a sixteenth of the cost of an access-log entry per
/// request.
pub const EVERY: u32 = 16;

pub struct Recent {
    slots: Box<[ArcSwapOption<Entry>]>,
    next: AtomicUsize,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            slots: (0..CAPACITY).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

thread_local! {
    static COUNT: Cell<u32> = const { Cell::new(0) };
}

impl Recent {
    /// Whether this request is sampled: all while the ring fills, then
    /// every [`EVERY`]th on this thread.
    #[inline]
    pub fn sample(&self) -> bool {
        COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n % EVERY == 1 || self.next.load(Relaxed) < CAPACITY
        })
    }

    pub fn push(&self, entry: Entry) {
        let i = self.next.fetch_add(1, Relaxed) % CAPACITY;
        self.slots[i].store(Some(Arc::new(entry)));
    }

    /// What is kept, oldest first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let next = self.next.load(Relaxed);
        let start = next.saturating_sub(CAPACITY);
        (start..next)
            .filter_map(|i| self.slots[i % CAPACITY].load_full())
            .collect()
    }
}
