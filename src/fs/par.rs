//! Independent filesystem work on several threads: hashing the files a scan must read,
//! writing and installing the files of a received batch. Each call runs on scoped threads (no
//! pool to size or shut down) and returns results in the order of its input.
//!
//! Invariants: the caller's thread takes the first share itself, so a call never waits idle;
//! at most `threads` run at once; a worker that panicked yields `None` for its share instead
//! of taking the process down (the caller reports those items as failed and retries them).

/// Map `f` over `items` on up to `threads` threads, keeping the input order. An item whose
/// worker panicked maps to `None`.
pub fn map<T: Send, R: Send>(
    items: Vec<T>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(|t| Some(f(t))).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut shares: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let share: Vec<T> = rest.by_ref().take(per).collect();
        if share.is_empty() {
            break;
        }
        shares.push(share);
    }
    let mut shares = shares.into_iter();
    let first = shares.next().unwrap_or_default();
    let f = &f;
    std::thread::scope(|sc| {
        let others: Vec<_> = shares
            .map(|share| {
                let n = share.len();
                (
                    n,
                    sc.spawn(move || share.into_iter().map(f).collect::<Vec<R>>()),
                )
            })
            .collect();
        let mut out: Vec<Option<R>> = first.into_iter().map(|t| Some(f(t))).collect();
        for (n, h) in others {
            match h.join() {
                Ok(r) => out.extend(r.into_iter().map(Some)),
                Err(_) => out.extend((0..n).map(|_| None)),
            }
        }
        out
    })
}

/// How many threads independent work of this node may use (the machine's cores, at most 4).
pub fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
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
    fn a_panicking_share_yields_none_and_the_rest_is_kept() {
        let items: Vec<usize> = (0..10).collect();
        let out = map(items, 2, |x| {
            if x == 7 {
                panic!("boom");
            }
            x
        });
        assert_eq!(out.len(), 10);
        assert!(out[..5].iter().all(|r| r.is_some()));
        assert!(out[5..].iter().all(|r| r.is_none()));
    }
}
