//! The comparison of two summaries of a group (see the parent module): walk down level by
//! level, only into the ranges whose sums differ, to the keys that differ. The far side is a
//! [`Far`]: a peer over its link ([`LinkFar`]), or another index ([`IndexFar`], benchmarks and
//! tests).

use super::VerifyError;
use crate::engine::peer::Link;
use crate::net::protocol::{MAX_BOUND, MAX_ROWS, MAX_ROWS_BYTES, Msg, SumRow, WireItem};
use crate::store::summary::{Row, Sum, TOP};
use crate::store::{Store, StoreError, dec};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Ranges walked down per level at most.
const MAX_RANGES: usize = 10_000;
/// Requests of one level in flight at once.
const PIPELINE: usize = 64;
/// How long one answer may take.
pub(super) const ANSWER_WAIT: Duration = Duration::from_secs(120);

/// A peer's answer to `Compare`.
#[derive(Debug, Clone)]
pub struct RowsAnswer {
    pub head: u64,
    pub quiet: bool,
    pub rows: Vec<Row>,
    pub more: bool,
}

/// The far side of a comparison: a peer over its link, or (benchmarks, tests) another index.
pub trait Far {
    /// Its rows of `group` at `level` starting in [`lo`, `hi`); `root`: ours, on the first.
    fn rows(
        &self,
        group: &str,
        level: u8,
        lo: &[u8],
        hi: Option<&[u8]>,
        root: Option<Sum>,
    ) -> impl Future<Output = Result<RowsAnswer, VerifyError>> + Send;

    /// Tell it which keys differ (with our entries, to settle when `settle`); its entries for
    /// them, as they were before it settled.
    fn differ(
        &self,
        group: &str,
        keys: Vec<Vec<u8>>,
        items: Vec<WireItem>,
        settle: bool,
    ) -> impl Future<Output = Result<Vec<WireItem>, VerifyError>> + Send;
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Walked {
    Matched,
    /// The keys (paths, not encoded) whose digests differ or that one side lacks; `truncated`
    /// when more were left for the next comparison.
    Differ {
        keys: Vec<Vec<u8>>,
        truncated: bool,
    },
}

/// What the far side's rows answers must look like: inside the range, in strictly ascending
/// key order, bounded.
fn check_rows(
    peer: &str,
    level: u8,
    lo: &[u8],
    hi: Option<&[u8]>,
    rows: &[Row],
) -> Result<(), VerifyError> {
    let bad = |msg: &str| VerifyError::BadAnswer {
        peer: peer.to_string(),
        msg: msg.to_string(),
    };
    if rows.len() > MAX_ROWS {
        return Err(bad("too many rows"));
    }
    let mut last: Option<&[u8]> = None;
    for r in rows {
        if r.key.len() > MAX_BOUND
            || r.key.as_slice() < lo
            || hi.is_some_and(|h| r.key.as_slice() >= h)
        {
            return Err(bad("a row outside the range asked for"));
        }
        if last.is_some_and(|l| l >= r.key.as_slice()) {
            return Err(bad("rows out of order"));
        }
        if level == 0 && r.sum.count != 1 {
            return Err(bad("an item row that is not one item"));
        }
        last = Some(&r.key);
    }
    Ok(())
}

/// One side's rows of a range, read a page at a time.
struct Cursor {
    level: u8,
    next: Vec<u8>,
    hi: Option<Vec<u8>>,
    buf: VecDeque<Row>,
    done: bool,
}

/// The smallest key after `k`.
fn after(k: &[u8]) -> Vec<u8> {
    let mut v = k.to_vec();
    v.push(0);
    v
}

impl Cursor {
    fn new(level: u8, lo: &[u8], hi: Option<&[u8]>) -> Cursor {
        Cursor {
            level,
            next: lo.to_vec(),
            hi: hi.map(<[u8]>::to_vec),
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn take(&mut self, rows: Vec<Row>, more: bool) {
        match rows.last() {
            Some(r) if more => self.next = after(&r.key),
            _ => self.done = true,
        }
        self.buf.extend(rows);
    }

    fn peek_local(&mut self, store: &Store, group: &str) -> Result<Option<&Row>, VerifyError> {
        while self.buf.is_empty() && !self.done {
            let (rows, more) =
                store.summary_rows(group, self.level, &self.next, self.hi.as_deref(), MAX_ROWS)?;
            self.take(rows, more);
        }
        Ok(self.buf.front())
    }

    async fn peek_far<F: Far>(
        &mut self,
        far: &F,
        group: &str,
        head: u64,
        peer: &str,
    ) -> Result<Option<&Row>, VerifyError> {
        while self.buf.is_empty() && !self.done {
            let a = far
                .rows(group, self.level, &self.next, self.hi.as_deref(), None)
                .await?;
            if a.head != head || !a.quiet {
                return Err(VerifyError::Busy);
            }
            check_rows(peer, self.level, &self.next, self.hi.as_deref(), &a.rows)?;
            if a.more && a.rows.is_empty() {
                return Err(VerifyError::BadAnswer {
                    peer: peer.to_string(),
                    msg: "an empty page with more to come".into(),
                });
            }
            self.take(a.rows, a.more);
        }
        Ok(self.buf.front())
    }
}

/// What one range of one level gave: ranges to walk at the level below, or keys.
#[derive(Default)]
struct RangeDiff {
    ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    keys: Vec<Vec<u8>>,
    cut: bool,
}

/// Compare our rows and the far side's in [`lo`, `hi`) at `level`.
#[allow(
    clippy::too_many_arguments,
    reason = "one step of the walk, called from one place"
)]
async fn diff_range<F: Far>(
    store: &Store,
    far: &F,
    peer: &str,
    group: &str,
    level: u8,
    lo: Vec<u8>,
    hi: Option<Vec<u8>>,
    head: u64,
    limit: usize,
) -> Result<RangeDiff, VerifyError> {
    let mut a = Cursor::new(level, &lo, hi.as_deref());
    let mut b = Cursor::new(level, &lo, hi.as_deref());
    let mut out = RangeDiff::default();
    // the segment since the last boundary both sides have
    let (mut from, mut sa, mut sb) = (lo.clone(), Sum::default(), Sum::default());
    let close = |out: &mut RangeDiff, from: &[u8], to: Option<&[u8]>, sa: Sum, sb: Sum| {
        if sa != sb && to.is_none_or(|t| t > from) {
            out.ranges.push((from.to_vec(), to.map(<[u8]>::to_vec)));
        }
    };
    loop {
        if out.keys.len() >= limit || out.ranges.len() >= MAX_RANGES {
            out.cut = true;
            return Ok(out);
        }
        let ka = a.peek_local(store, group)?.map(|r| r.key.clone());
        let kb = b
            .peek_far(far, group, head, peer)
            .await?
            .map(|r| r.key.clone());
        let (x, y) = match (ka, kb) {
            (None, None) => break,
            (Some(x), Some(y)) if x == y => {
                let (Some(ra), Some(rb)) = (a.buf.pop_front(), b.buf.pop_front()) else {
                    break;
                };
                if level == 0 {
                    if ra.sum != rb.sum {
                        out.keys.push(x);
                    }
                } else {
                    close(&mut out, &from, Some(&x), sa, sb);
                    (from, sa, sb) = (x, ra.sum, rb.sum);
                }
                continue;
            }
            (x, y) => (x, y),
        };
        let ours_first = match (&x, &y) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            _ => false,
        };
        let (row, sum) = if ours_first {
            (a.buf.pop_front(), &mut sa)
        } else {
            (b.buf.pop_front(), &mut sb)
        };
        let Some(row) = row else { break };
        if level == 0 {
            out.keys.push(row.key);
        } else {
            *sum = sum.plus(row.sum);
        }
    }
    if level > 0 {
        close(&mut out, &from, hi.as_deref(), sa, sb);
    }
    Ok(out)
}

/// Walk down our summary of `group` and the far side's to the keys that differ (at most
/// `limit`). `Err(Busy)` when the far side is not quiet or its head moved meanwhile.
pub async fn walk<F: Far>(
    store: &Store,
    far: &F,
    peer: &str,
    group: &str,
    limit: usize,
) -> Result<Walked, VerifyError> {
    let mine = store.summary_root(group)?;
    let a = far.rows(group, TOP, &[], None, Some(mine)).await?;
    if !a.quiet {
        return Err(VerifyError::Busy);
    }
    check_rows(peer, TOP, &[], None, &a.rows)?;
    let theirs = a
        .rows
        .first()
        .filter(|r| r.key.is_empty())
        .map(|r| r.sum)
        .unwrap_or_default();
    if theirs == mine {
        return Ok(Walked::Matched);
    }
    let head = a.head;
    let mut ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![(Vec::new(), None)];
    let mut truncated = false;
    for level in (0..TOP).rev() {
        let mut next = Vec::new();
        let mut keys = Vec::new();
        for chunk in ranges.chunks(PIPELINE) {
            let left = limit.saturating_sub(keys.len());
            let results = futures_util::future::join_all(chunk.iter().map(|(lo, hi)| {
                diff_range(
                    store,
                    far,
                    peer,
                    group,
                    level,
                    lo.clone(),
                    hi.clone(),
                    head,
                    left,
                )
            }))
            .await;
            for r in results {
                let r = r?;
                truncated |= r.cut;
                next.extend(r.ranges);
                keys.extend(r.keys);
            }
            if next.len() >= MAX_RANGES || keys.len() >= limit {
                truncated = true;
                break;
            }
        }
        if level == 0 {
            keys.sort();
            keys.dedup();
            keys.truncate(limit);
            return Ok(Walked::Differ {
                keys: keys.iter().map(|k| dec(k)).collect(),
                truncated,
            });
        }
        next.truncate(MAX_RANGES);
        ranges = next;
    }
    Ok(Walked::Differ {
        keys: Vec::new(),
        truncated,
    })
}

/// Our answer to a `Compare`: the rows, bounded by count and bytes.
pub fn rows_answer(
    store: &Store,
    group: &str,
    level: u8,
    lo: &[u8],
    hi: Option<&[u8]>,
) -> Result<(Vec<SumRow>, bool), StoreError> {
    let (rows, mut more) = store.summary_rows(group, level, lo, hi, MAX_ROWS)?;
    let mut bytes = 0usize;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        bytes += r.key.len() + 40;
        if bytes > MAX_ROWS_BYTES && !out.is_empty() {
            more = true;
            break;
        }
        out.push(SumRow {
            key: r.key,
            hash: r.sum.hash,
            count: r.sum.count,
        });
    }
    Ok((out, more))
}

/// The rows of a `Rows` answer.
fn rows_of(rows: Vec<SumRow>) -> Vec<Row> {
    rows.into_iter()
        .map(|r| Row {
            key: r.key,
            sum: Sum {
                hash: r.hash,
                count: r.count,
            },
        })
        .collect()
}

/// Our `Compare` as sent.
fn compare_msg(
    req: u64,
    group: &str,
    level: u8,
    lo: &[u8],
    hi: Option<&[u8]>,
    root: Option<Sum>,
) -> Msg {
    Msg::Compare {
        req,
        group: group.to_string(),
        level,
        lo: lo.to_vec(),
        hi: hi.map(<[u8]>::to_vec),
        root: root.map(|s| SumRow {
            key: Vec::new(),
            hash: s.hash,
            count: s.count,
        }),
    }
}

/// The far side over a link.
pub struct LinkFar<'a> {
    pub link: &'a Arc<Link>,
}

impl LinkFar<'_> {
    async fn ask(&self, make: impl FnOnce(u64) -> Msg) -> Result<Msg, VerifyError> {
        let gone = || VerifyError::Gone(self.link.peer.clone());
        let rx = self.link.request(make).await.ok_or_else(gone)?;
        match tokio::time::timeout(ANSWER_WAIT, rx).await {
            Err(_) => Err(VerifyError::Timeout {
                peer: self.link.peer.clone(),
            }),
            Ok(Err(_)) => Err(gone()),
            Ok(Ok(m)) => Ok(m),
        }
    }

    fn bad(&self, msg: &str) -> VerifyError {
        VerifyError::BadAnswer {
            peer: self.link.peer.clone(),
            msg: msg.to_string(),
        }
    }
}

impl Far for LinkFar<'_> {
    async fn rows(
        &self,
        group: &str,
        level: u8,
        lo: &[u8],
        hi: Option<&[u8]>,
        root: Option<Sum>,
    ) -> Result<RowsAnswer, VerifyError> {
        let m = self
            .ask(|req| compare_msg(req, group, level, lo, hi, root))
            .await?;
        match m {
            Msg::Rows {
                head,
                quiet,
                rows,
                more,
                ..
            } => Ok(RowsAnswer {
                head,
                quiet,
                rows: rows_of(rows),
                more,
            }),
            _ => Err(self.bad("not Rows")),
        }
    }

    async fn differ(
        &self,
        group: &str,
        keys: Vec<Vec<u8>>,
        items: Vec<WireItem>,
        settle: bool,
    ) -> Result<Vec<WireItem>, VerifyError> {
        let m = self
            .ask(|req| Msg::Differ {
                req,
                group: group.to_string(),
                keys,
                items,
                settle,
            })
            .await?;
        match m {
            Msg::DifferItems { items, .. } => Ok(items),
            _ => Err(self.bad("not DifferItems")),
        }
    }
}

/// The far side as another index on this machine (benchmarks and tests): every request and
/// answer is encoded as the link encodes it, and counted with the transport's framing (a
/// 4-byte length per frame, a 2-byte length and a 16-byte tag per packet of at most 65,519
/// bytes). Its head is 1 and it is always quiet.
pub struct IndexFar<'a> {
    pub store: &'a Store,
    /// Bytes on the wire, both ways.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Messages, both ways.
    pub messages: std::sync::atomic::AtomicU64,
}

impl<'a> IndexFar<'a> {
    pub fn new(store: &'a Store) -> IndexFar<'a> {
        IndexFar {
            store,
            bytes: 0.into(),
            messages: 0.into(),
        }
    }

    fn count(&self, m: &Msg) {
        let framed = m.encode().map(|b| b.len()).unwrap_or(0) + 4;
        let wire = framed + framed.div_ceil(65_519) * 18;
        self.bytes.fetch_add(wire as u64, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
    }
}

impl Far for IndexFar<'_> {
    async fn rows(
        &self,
        group: &str,
        level: u8,
        lo: &[u8],
        hi: Option<&[u8]>,
        root: Option<Sum>,
    ) -> Result<RowsAnswer, VerifyError> {
        self.count(&compare_msg(1, group, level, lo, hi, root));
        let (rows, more) = rows_answer(self.store, group, level, lo, hi)?;
        let answer = Msg::Rows {
            req: 1,
            head: 1,
            quiet: true,
            rows,
            more,
        };
        self.count(&answer);
        let Msg::Rows { rows, .. } = answer else {
            return Err(VerifyError::BadAnswer {
                peer: "index".into(),
                msg: "not Rows".into(),
            });
        };
        Ok(RowsAnswer {
            head: 1,
            quiet: true,
            rows: rows_of(rows),
            more,
        })
    }

    async fn differ(
        &self,
        group: &str,
        keys: Vec<Vec<u8>>,
        items: Vec<WireItem>,
        settle: bool,
    ) -> Result<Vec<WireItem>, VerifyError> {
        let theirs: Vec<WireItem> = keys
            .iter()
            .filter_map(|k| self.store.get(group, k).ok().flatten())
            .map(|e| WireItem {
                item: e.item,
                inline: None,
            })
            .collect();
        self.count(&Msg::Differ {
            req: 2,
            group: group.to_string(),
            keys,
            items,
            settle,
        });
        let answer = Msg::DifferItems {
            req: 2,
            head: 1,
            items: theirs,
        };
        self.count(&answer);
        let Msg::DifferItems { items, .. } = answer else {
            return Ok(Vec::new());
        };
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_DIFFS, state};
    use super::*;
    use crate::item::{Body, Entry, VersionVector};
    use crate::store::{Change, Extras, enc};

    fn file(path: &str, v: u64, c: u8) -> Entry {
        let mut version = VersionVector::default();
        version.bump("a", v);
        let mut item = crate::item::test_file(path.as_bytes(), version, c, 1);
        if let Some(Body::Fs(m)) = &mut item.body {
            m.mtime_ns = 0;
        }
        Entry::new(item)
    }

    fn fill(ix: &Store, n: u32, except: &[u32], changed: &[u32]) {
        let entries: Vec<Entry> = (0..n)
            .filter(|i| !except.contains(i))
            .map(|i| {
                let c = if changed.contains(&i) { 2 } else { 1 };
                file(&format!("/r/d{}/f{i}", i % 50), 1, c)
            })
            .collect();
        for chunk in entries.chunks(5000) {
            let changes = chunk
                .iter()
                .map(|e| Change {
                    entry: e.clone(),
                    announce: true,
                })
                .collect();
            ix.commit("g", changes, Extras::default()).unwrap();
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn equal_groups_match_in_one_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::open(&d.path().join("a")).unwrap();
        let b = Store::open(&d.path().join("b")).unwrap();
        fill(&a, 20_000, &[], &[]);
        fill(&b, 20_000, &[], &[]);
        let far = IndexFar::new(&b);
        let w = rt().block_on(walk(&a, &far, "b", "g", MAX_DIFFS)).unwrap();
        assert_eq!(w, Walked::Matched);
        assert_eq!(far.messages.load(Ordering::Relaxed), 2);
        assert!(far.bytes.load(Ordering::Relaxed) < 200);
    }

    #[test]
    fn finds_exactly_the_keys_that_differ() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::open(&d.path().join("a")).unwrap();
        let b = Store::open(&d.path().join("b")).unwrap();
        // a lacks 3 and 17_000, b has other content at 5 and 12_345, b lacks 9_999
        fill(&a, 20_000, &[3, 17_000], &[]);
        fill(&b, 20_000, &[9_999], &[5, 12_345]);
        let far = IndexFar::new(&b);
        let w = rt().block_on(walk(&a, &far, "b", "g", MAX_DIFFS)).unwrap();
        let mut want: Vec<Vec<u8>> = [3, 5, 9_999, 12_345, 17_000]
            .iter()
            .map(|i| format!("/r/d{}/f{i}", i % 50).into_bytes())
            .collect();
        want.sort_by_key(|k| enc(k));
        let Walked::Differ {
            mut keys,
            truncated,
        } = w
        else {
            panic!("no difference found")
        };
        keys.sort_by_key(|k| enc(k));
        assert_eq!(keys, want);
        assert!(!truncated);
        assert!(
            far.bytes.load(Ordering::Relaxed) < 200_000,
            "{} bytes",
            far.bytes.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn an_empty_side_lists_everything_up_to_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let a = Store::open(&d.path().join("a")).unwrap();
        let b = Store::open(&d.path().join("b")).unwrap();
        fill(&b, 3_000, &[], &[]);
        let far = IndexFar::new(&b);
        let w = rt().block_on(walk(&a, &far, "b", "g", 1_000)).unwrap();
        let Walked::Differ { keys, truncated } = w else {
            panic!()
        };
        assert_eq!(keys.len(), 1_000);
        assert!(truncated);
        let w = rt()
            .block_on(walk(&b, &IndexFar::new(&a), "a", "g", MAX_DIFFS))
            .unwrap();
        let Walked::Differ { keys, truncated } = w else {
            panic!()
        };
        assert_eq!((keys.len(), truncated), (3_000, false));
    }

    #[test]
    fn states_have_no_commas() {
        let e = file("/r/a", 3, 1);
        let s = state(Some(&e.item));
        assert!(!s.contains(','), "{s}");
        assert!(s.starts_with("file 1 bytes #010101010101 mode 644"), "{s}");
        assert_eq!(state(None), "absent");
    }
}
