//! A bounded sample of the requests this process served lately, with the
//! same attributes an access-log line carries, so a change's traffic impact
//! can be replayed against what really came in. One request in
//! [`EVERY`] is kept, in a ring that overwrites the oldest; writers never
//! wait for each other or for a reader.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arc_swap::ArcSwapOption;

use crate::access_log::Entry;

/// Requests kept.
pub const CAPACITY: usize = 4096;
/// One request in this many is sampled (per worker thread).
pub const EVERY: u32 = 4;

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
    /// Whether this request is sampled: every [`EVERY`]th on this thread.
    #[inline]
    pub fn sample() -> bool {
        COUNT.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n % EVERY == 1
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
