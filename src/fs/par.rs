//! Independent filesystem work on several threads: hashing the files a scan must read,
//! writing and installing the files of a received batch. Each call runs on scoped threads (no
//! pool to size or shut down) and returns results in the order of its input.
//!
//! Invariants: the caller's thread works too, so a call never waits idle; at most `threads`
//! run at once; items are handed out one at a time, so a thread the scheduler leaves behind
//! (the other daemon, the link reader) does not hold back a share the others could have done;
//! an item whose work panicked yields `None` instead of taking the process down (the caller
//! reports it as failed and retries it), and every other item is still done.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Map `f` over `items` on up to `threads` threads, keeping the input order. An item whose
/// work panicked maps to `None`.
pub fn map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    let run = |t: T| catch_unwind(AssertUnwindSafe(|| f(t))).ok();
    if threads == 1 {
        return items.into_iter().map(run).collect();
    }
    // each slot: the item until a thread takes it, then its result; no lock is held while
    // `f` runs, so a panic never poisons one
    let slots: Vec<Mutex<(Option<T>, Option<R>)>> = items
        .into_iter()
        .map(|t| Mutex::new((Some(t), None)))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        while let Some(slot) = slots.get(next.fetch_add(1, Ordering::Relaxed)) {
            let item = slot.lock().unwrap_or_else(|e| e.into_inner()).0.take();
            if let Some(t) = item {
                let r = run(t);
                slot.lock().unwrap_or_else(|e| e.into_inner()).1 = r;
            }
        }
    };
    std::thread::scope(|sc| {
        for _ in 1..threads {
            sc.spawn(work);
        }
        work();
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()).1)
        .collect()
}

/// How many threads independent work of this node may use (the machine's cores, at most 4).
pub fn threads() -> usize {
    // asked once: the answer reads cgroup files, and every received batch asks
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_covers_every_item() {
        for threads in [1, 2, 3, 8] {
            for n in [0usize, 1, 2, 5, 100] {
                let items: Vec<usize> = (0..n).collect();
                let out = map(items, threads, |x| x * 2);
                let want: Vec<Option<usize>> = (0..n).map(|x| Some(x * 2)).collect();
                assert_eq!(out, want, "threads {threads}, n {n}");
            }
        }
    }

    #[test]
    fn a_panicking_item_yields_none_and_every_other_is_done() {
        for threads in [1, 2, 4] {
            let items: Vec<usize> = (0..10).collect();
            let out = map(items, threads, |x| {
                if x == 7 {
                    panic!("boom");
                }
                x
            });
            let want: Vec<Option<usize>> = (0..10).map(|x| (x != 7).then_some(x)).collect();
            assert_eq!(out, want, "threads {threads}");
        }
    }

    #[test]
    fn a_slow_item_does_not_hold_back_the_others() {
        // item 0 is slow: with shares cut in advance, the items after it in its share would
        // wait for it; handed out one at a time, the other thread does them all meanwhile
        let seen = Mutex::new(Vec::new());
        let out = map((0..8).collect::<Vec<usize>>(), 2, |x| {
            if x == 0 {
                let t0 = std::time::Instant::now();
                // bounded: until every other item is done, or 5 s
                while seen.lock().map(|s| s.len()).unwrap_or(0) < 7
                    && t0.elapsed() < std::time::Duration::from_secs(5)
                {
                    std::thread::yield_now();
                }
            }
            if let Ok(mut s) = seen.lock() {
                s.push(x);
            }
            x
        });
        assert_eq!(out, (0..8).map(Some).collect::<Vec<_>>());
        let order = seen.into_inner().unwrap_or_default();
        assert_eq!(
            order.last(),
            Some(&0),
            "the others finished first: {order:?}"
        );
    }
}
