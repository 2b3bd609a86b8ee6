//! Anti-entropy (SPEC §5.14) and `clustersync verify` (SPEC §4): two nodes compare the
//! summaries of a group's index (`store::summary`), walk down only the ranges that differ, and
//! settle each key that differs by the usual rules.
//!
//! **A comparison** (one group, one peer, over protocol 5): the asker sends its root with the
//! first `Compare`; equal roots end it (one message each way, about 100 bytes). Otherwise it
//! asks level by level for the peer's rows of the ranges that still differ and compares them
//! with its own ([`walk`]): between two boundary keys both sides have, the sums of the rows
//! of each side cover the same keys, so a range whose sums agree is left alone and one that
//! differs is asked for at the level below; at level 0 the rows are the items (key and
//! digest). Requests of one level are sent together (one round trip per level); every answer
//! is bounded ([`MAX_ROWS`], [`MAX_ROWS_BYTES`]) and continued when cut. Then `Differ` carries
//! the keys found (at most [`MAX_DIFFS`] per comparison) and, to settle, the asker's entries
//! for them; the peer answers `DifferItems` with its own entries as they were before it
//! settled. Each side hands the other's entries to its lane ([`LaneHandle::found`]), which
//! decides them like a peer's batch: version vectors first; the same vector with different
//! content is a conflict settled by the group's policy, the loser kept as a backup. Nothing of
//! a replica's is ever applied on a member.
//!
//! **When.** Only while nothing of the group is on its way between the two ([`quiet`]: our
//! pump has sent and had acknowledged everything, we applied everything the peer announced,
//! the lane has no work queued), and only if neither head moved during the walk; otherwise
//! the comparison is tried again later, so changes in flight are never reported as
//! differences. In the background, the node whose name sorts first starts one per shared group
//! on connect and every `verify_every`, and again [`RECHECK`] after settling differences;
//! [`run`] is `clustersync verify`.
//!
//! **Reported.** Every difference is audited as `diverged` (path, the two nodes, what each
//! holds) and counted in `clustersync_diverged_total`; the last comparison with each peer
//! (time, matched or not) is kept per group for `status --json` (`last_verified`). A peer of
//! an older release (protocol 3 or 4) cannot compare: that is noted instead.
//!
//! **`--deep`** ([`deep_check`]): every regular file and symlink the index knows is read from
//! disk (BLAKE3, on up to four threads) and compared with its entry; a file whose stat no
//! longer matches the index is a change the scanner will report, not a finding. `--repair`
//! hands the keys found to the lane, which reads them again without trusting the stored hash:
//! a new local version on a full member, drift (backed up, then reverted or kept per
//! `on_drift`) on a replica.
//!
//! Invariants: a peer's request never makes us read more than one bounded page of the index
//! or allocate by its numbers; answers that are not what was asked (unknown request, keys out
//! of order or range, items for keys not asked, items that fail validation) close the link as
//! violations; comparing changes nothing unless asked to settle.

use crate::engine::apply;
use crate::engine::group::GroupRt;
use crate::engine::link::{Link, LinkError, lock};
use crate::engine::node::Ctx;
use crate::item::{Body, Item, Kind, name};
use crate::net::protocol::{
    MAX_BOUND, MAX_DIFFER_KEYS, MAX_ROWS, MAX_ROWS_BYTES, Msg, SumRow, WireItem,
};
use crate::store::summary::{Row, Sum, TOP};
use crate::store::{Store, StoreError, dec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// Keys reported (and settled) per group and peer in one comparison at most; more are found
/// by the next one.
pub const MAX_DIFFS: usize = 10_000;
/// Ranges walked down per level at most.
const MAX_RANGES: usize = 10_000;
/// Requests of one level in flight at once.
const PIPELINE: usize = 64;
/// How long one answer may take.
const ANSWER_WAIT: Duration = Duration::from_secs(120);
/// After differences were settled, the next comparison comes this soon.
pub const RECHECK: Duration = Duration::from_secs(5);
/// While changes are on their way, a comparison is tried again after this, doubling up to
/// [`BUSY_MAX`] (and never beyond `verify_every`).
const BUSY_RETRY: Duration = Duration::from_secs(1);
const BUSY_MAX: Duration = Duration::from_secs(30);
/// The first comparison of a link waits this long after it came up.
const FIRST: Duration = Duration::from_millis(500);

/// The last comparison of one group with one peer, for `status --json` (`last_verified`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastVerified {
    /// When it ended (RFC 3339, UTC); `None` when no comparison can happen with that peer.
    pub time: Option<String>,
    /// Whether both held the same; `None` when not compared.
    pub matched: Option<bool>,
    /// Keys found different then (settled by the usual rules in the background).
    pub differences: u64,
    /// Why summaries are not compared with that peer (a peer of an older release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The last comparison per (group, peer).
#[derive(Debug, Default)]
pub struct Verified(Mutex<BTreeMap<(String, String), LastVerified>>);

impl Verified {
    /// A comparison of `group` with `peer` just ended.
    pub fn record(&self, group: &str, peer: &str, matched: bool, differences: u64) {
        let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        lock(&self.0).insert(
            (group.to_string(), peer.to_string()),
            LastVerified {
                time: Some(time),
                matched: Some(matched),
                differences,
                note: None,
            },
        );
    }

    /// No comparison of `group` can happen with `peer`, and why.
    pub fn note(&self, group: &str, peer: &str, why: String) {
        lock(&self.0).insert(
            (group.to_string(), peer.to_string()),
            LastVerified {
                time: None,
                matched: None,
                differences: 0,
                note: Some(why),
            },
        );
    }

    /// Every peer's last comparison of `group`.
    pub fn of_group(&self, group: &str) -> BTreeMap<String, LastVerified> {
        lock(&self.0)
            .iter()
            .filter(|((g, _), _)| g == group)
            .map(|((_, p), v)| (p.clone(), v.clone()))
            .collect()
    }
}

/// Why a comparison did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("changes of the group were on their way between the nodes")]
    Busy,
    #[error("the link to {0} went away")]
    Gone(String),
    #[error("{peer} did not answer within {} s", ANSWER_WAIT.as_secs())]
    Timeout { peer: String },
    #[error("{peer} sent a bad answer: {msg}")]
    BadAnswer { peer: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

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
            *sum = sum.plus_row(&row);
        }
    }
    if level > 0 {
        close(&mut out, &from, hi.as_deref(), sa, sb);
    }
    Ok(out)
}

trait PlusRow {
    fn plus_row(self, r: &Row) -> Sum;
}

impl PlusRow for Sum {
    fn plus_row(self, r: &Row) -> Sum {
        Sum {
            hash: self.hash.wrapping_add(r.sum.hash),
            count: self.count.wrapping_add(r.sum.count),
        }
    }
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

/// Nothing of `group` is on its way between this node and the link's peer, as far as this node
/// knows: our pump sent everything and had it acknowledged, we applied everything the peer
/// announced, and the lane has no work waiting.
pub fn quiet(ctx: &Ctx, link: &Link, group: &str) -> bool {
    let (Some(g), Some(lane)) = (ctx.group(group), ctx.lane(group)) else {
        return false;
    };
    if !link.active(group) || lane.state.is_stopped() {
        return false;
    }
    let s = &lane.state;
    if s.queued.load(Ordering::Relaxed) > 0 || s.waiting_local.load(Ordering::Relaxed) > 0 {
        return false;
    }
    if !g.replica {
        let head = ctx.store.group_head(group).unwrap_or(u64::MAX);
        let p = link.pump(group);
        if p.scanned < head || !p.unacked.is_empty() {
            return false;
        }
    }
    if !g.is_replica(&link.peer) {
        let r = link.remote_of(group);
        if r.head > r.applied {
            return false;
        }
    }
    true
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

/// One key that differs between this node and a peer.
#[derive(Debug, Clone)]
pub struct Found {
    pub key: Vec<u8>,
    pub here: Option<Item>,
    pub there: Option<Item>,
}

/// What a comparison with one peer gave.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub matched: bool,
    pub found: Vec<Found>,
    pub truncated: bool,
}

/// Our entries of `keys`, tombstones included.
fn entries(ctx: &Ctx, group: &str, keys: &[Vec<u8>]) -> Result<Vec<Item>, StoreError> {
    let snap = ctx.store.snapshot()?;
    let mut out = Vec::new();
    for k in keys {
        if let Some(e) = snap.get(group, k)? {
            out.push(e.item);
        }
    }
    Ok(out)
}

/// Check a peer's entries before they go to the lane, as its batches are checked.
fn validate(ctx: &Ctx, g: &GroupRt, items: &[WireItem]) -> Result<(), String> {
    let known = |n: &str| ctx.cfg.nodes.contains_key(n);
    for w in items {
        if w.inline.is_some() {
            return Err(format!(
                "{}: content attached to a compared item",
                w.item.show()
            ));
        }
        if g.is_accounts() {
            crate::engine::lane::accounts::validate_item(g, w, &known)
                .map_err(|e| format!("{}: {e}", w.item.show()))?;
        } else {
            apply::validate(g, w, &known).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Keys known to differ for a reason already reported (set aside, an unresolved conflict):
/// the background does not report them again.
fn known_differences(ctx: &Ctx, group: &str) -> BTreeSet<Vec<u8>> {
    let mut out: BTreeSet<Vec<u8>> = ctx
        .store
        .aside(group)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.item.key)
        .collect();
    if let Ok(c) = ctx.store.conflicts() {
        out.extend(
            c.into_iter()
                .filter(|(g, _, c)| g == group && !c.resolved)
                .map(|(_, k, _)| k),
        );
    }
    out
}

/// What one side holds of a key, in a few words without commas (`verify` prints
/// `PATH: here <state>, PEER <state>`).
pub fn state(item: Option<&Item>) -> String {
    let Some(i) = item else {
        return "absent".into();
    };
    let version = i
        .version
        .0
        .iter()
        .filter(|(_, c)| **c > 0)
        .map(|(n, c)| format!("{n}:{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let what = match &i.body {
        None => "deleted".to_string(),
        Some(Body::Fs(m)) => {
            let mtime = humantime::format_rfc3339_nanos(
                std::time::UNIX_EPOCH
                    + Duration::new(m.mtime_s.max(0) as u64, m.mtime_ns.min(999_999_999)),
            );
            match m.kind {
                Kind::File => format!(
                    "file {} bytes #{} mode {:o} mtime {mtime}",
                    m.size,
                    crate::item::hex(&m.hash[..6]),
                    m.mode & 0o7777
                ),
                Kind::Dir => format!("directory mode {:o} mtime {mtime}", m.mode & 0o7777),
                Kind::Symlink => format!(
                    "symlink to {}",
                    name::show(m.target.as_deref().unwrap_or_default())
                ),
            }
        }
        Some(Body::User(u)) => format!("user {} uid {}", u.name, u.uid),
        Some(Body::Group(g)) => format!("group {} gid {}", g.name, g.gid),
    };
    format!("{what} version [{version}]")
}

/// Audit and count the differences found with `peer`.
fn report(ctx: &Ctx, group: &str, peer: &str, found: &[Found], by: &str) {
    if found.is_empty() {
        return;
    }
    let lines: Vec<(Vec<u8>, String, String, String)> = found
        .iter()
        .map(|f| {
            let detail = format!(
                "{by}: here {}, {peer} {}",
                state(f.here.as_ref()),
                state(f.there.as_ref())
            );
            let (origin, version) = f
                .here
                .as_ref()
                .or(f.there.as_ref())
                .map(|i| (i.origin.clone(), i.version.display()))
                .unwrap_or_default();
            (f.key.clone(), detail, origin, version)
        })
        .collect();
    ctx.audit
        .log_all(lines.iter().map(|(k, d, o, v)| crate::ops::audit::Rec {
            group,
            path: k,
            kind: "diverged",
            origin: o,
            version: v,
            peer: Some(peer),
            detail: Some(d),
        }));
    ctx.metrics.diverged(group, found.len() as u64);
    tracing::warn!(
        group,
        "{} {} differ between this node and {peer} ({by}); first: {}",
        found.len(),
        if found.len() == 1 { "path" } else { "paths" },
        name::show(&found[0].key)
    );
}

/// Compare `group` with the link's peer; with `settle`, hand every difference to both lanes.
/// `background`: differences already reported otherwise (set aside, unresolved conflicts)
/// are left out.
pub async fn compare(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    group: &str,
    settle: bool,
    background: bool,
) -> Result<Outcome, VerifyError> {
    let peer = link.peer.clone();
    let g = ctx
        .group(group)
        .cloned()
        .ok_or_else(|| VerifyError::Gone(peer.clone()))?;
    if !quiet(ctx, link, group) {
        return Err(VerifyError::Busy);
    }
    let head0 = ctx.store.group_head(group)?;
    let far = LinkFar { link };
    let walked = walk(&ctx.store, &far, &peer, group, MAX_DIFFS).await?;
    let (mut keys, truncated) = match walked {
        Walked::Matched => {
            tracing::debug!(group, "index summary compared with {peer}: the same");
            ctx.verified.record(group, &peer, true, 0);
            return Ok(Outcome {
                matched: true,
                ..Default::default()
            });
        }
        Walked::Differ { keys, truncated } => (keys, truncated),
    };
    if ctx.store.group_head(group)? != head0 || !quiet(ctx, link, group) {
        return Err(VerifyError::Busy);
    }
    if background {
        let known = known_differences(ctx, group);
        keys.retain(|k| !known.contains(k));
    }
    let mut found = Vec::new();
    let send_ours = settle && !g.replica;
    let take_theirs = settle && !g.is_replica(&peer);
    let mut take = Vec::new();
    for chunk in keys.chunks(MAX_DIFFER_KEYS) {
        let ours = entries(ctx, group, chunk)?;
        let items: Vec<WireItem> = if send_ours {
            ours.iter()
                .filter(|i| !i.version.is_empty())
                .map(|i| WireItem {
                    item: i.clone(),
                    inline: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        let theirs = far.differ(group, chunk.to_vec(), items, settle).await?;
        let asked: HashSet<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        if theirs.len() > chunk.len() || theirs.iter().any(|w| !asked.contains(&*w.item.key)) {
            return Err(VerifyError::BadAnswer {
                peer,
                msg: "entries of keys not asked for".into(),
            });
        }
        if take_theirs {
            validate(ctx, &g, &theirs).map_err(|msg| VerifyError::BadAnswer {
                peer: peer.clone(),
                msg,
            })?;
        }
        let mut ours: BTreeMap<Vec<u8>, Item> =
            ours.into_iter().map(|i| (i.key.clone(), i)).collect();
        let mut theirs_by: BTreeMap<Vec<u8>, Item> = theirs
            .iter()
            .map(|w| (w.item.key.clone(), w.item.clone()))
            .collect();
        for k in chunk {
            found.push(Found {
                key: k.clone(),
                here: ours.remove(k),
                there: theirs_by.remove(k),
            });
        }
        if take_theirs {
            take.extend(theirs.into_iter().filter(|w| !w.item.version.is_empty()));
        }
    }
    let by = if background {
        "found by comparing index summaries"
    } else if settle {
        "found by verify --repair"
    } else {
        "found by verify"
    };
    report(ctx, group, &peer, &found, by);
    if !take.is_empty()
        && let Some(lane) = ctx.lane(group)
    {
        lane.found((peer.clone(), link.peer_inc(group)), take, Vec::new())
            .await;
    }
    ctx.verified
        .record(group, &peer, found.is_empty(), found.len() as u64);
    Ok(Outcome {
        matched: found.is_empty(),
        found,
        truncated,
    })
}

/// The comparisons a link runs in the background (spawned by `link::run`): on connect, then
/// every `verify_every` of each shared group, started by the node whose name sorts first.
pub async fn background(ctx: Arc<Ctx>, link: Arc<Link>) {
    let groups: Vec<(String, Duration)> = link
        .groups
        .iter()
        .filter(|(_, lg)| lg.paused.is_none())
        .filter_map(|(g, _)| {
            let every = ctx.group(g)?.cfg.verify_every?;
            Some((g.clone(), every))
        })
        .collect();
    if link.version < 5 {
        for (g, _) in &groups {
            ctx.verified.note(
                g,
                &link.peer,
                format!(
                    "{} runs an older release (protocol {}): index summaries are not compared",
                    link.peer, link.version
                ),
            );
        }
        return;
    }
    if ctx.name.as_str() > link.peer.as_str() || groups.is_empty() || !ctx.opts.listen {
        // the peer starts the comparisons and we answer them; a node run in-process for one
        // command (`sync`) starts none
        return;
    }
    let mut closed = link.closed_rx();
    let start = Instant::now() + FIRST;
    let mut due: BTreeMap<String, (Instant, Duration)> = groups
        .iter()
        .map(|(g, _)| (g.clone(), (start, BUSY_RETRY)))
        .collect();
    let every: BTreeMap<String, Duration> = groups.into_iter().collect();
    loop {
        let Some(next) = due.values().map(|(t, _)| *t).min() else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = crate::engine::node::until_set(&mut closed) => return,
        }
        let now = Instant::now();
        let ready: Vec<String> = due
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for g in ready {
            let period = every.get(&g).copied().unwrap_or(BUSY_MAX);
            let backoff = due.get(&g).map(|d| d.1).unwrap_or(BUSY_RETRY);
            let r = compare(&ctx, &link, &g, true, true).await;
            let next = match r {
                Ok(o) if o.matched && !o.truncated => (Instant::now() + period, BUSY_RETRY),
                Ok(_) => (Instant::now() + RECHECK.min(period), BUSY_RETRY),
                Err(VerifyError::Busy) => (
                    Instant::now() + backoff.min(period),
                    (backoff * 2).min(BUSY_MAX),
                ),
                Err(VerifyError::BadAnswer { msg, .. }) => {
                    let why = format!("comparing index summaries of group {g}: {msg}");
                    tracing::warn!(peer = %link.peer, "{why}; closing the link");
                    ctx.audit_refused(&link.peer, &why);
                    let _ = link.send(Msg::Bye { reason: why }).await;
                    link.close();
                    return;
                }
                Err(e) => {
                    tracing::debug!(peer = %link.peer, group = %g, "comparison: {e}");
                    (Instant::now() + period.min(BUSY_MAX), BUSY_RETRY)
                }
            };
            due.insert(g, next);
        }
    }
}

fn violation(peer: &str, msg: impl Into<String>) -> LinkError {
    LinkError::Violation {
        peer: peer.to_string(),
        msg: msg.into(),
    }
}

/// A peer's `Compare` or `Differ` (from `link::dispatch`).
pub async fn serve(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let peer = link.peer.as_str();
    match m {
        Msg::Compare {
            req,
            group,
            level,
            lo,
            hi,
            root,
        } => {
            let Some(lg) = link.groups.get(&group) else {
                return Err(violation(
                    peer,
                    format!("named group {group:?}, which it does not share with us"),
                ));
            };
            if level > TOP
                || lo.len() > MAX_BOUND
                || hi.as_ref().is_some_and(|h| h.len() > MAX_BOUND)
            {
                return Err(violation(peer, "a summary request out of bounds"));
            }
            if lg.paused.is_some() {
                let _ = link
                    .send(Msg::Rows {
                        req,
                        head: 0,
                        quiet: false,
                        rows: Vec::new(),
                        more: false,
                    })
                    .await;
                return Ok(());
            }
            let Ok(permit) = serving.clone().acquire_owned().await else {
                return Ok(());
            };
            let (ctx, link) = (ctx.clone(), link.clone());
            tokio::spawn(async move {
                let quiet = quiet(&ctx, &link, &group);
                let (c2, g2) = (ctx.clone(), group.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let head = c2.store.group_head(&g2)?;
                    let (rows, more) = rows_answer(&c2.store, &g2, level, &lo, hi.as_deref())?;
                    Ok::<_, StoreError>((head, rows, more))
                })
                .await;
                drop(permit);
                let (head, rows, more) = match r {
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        tracing::warn!(group = %group, "reading the summary for {}: {e}", link.peer);
                        (0, Vec::new(), false)
                    }
                    Err(_) => return,
                };
                if let Some(theirs) = root
                    && quiet
                    && level == TOP
                {
                    let ours = rows.first().filter(|r| r.key.is_empty());
                    let same = ours.map_or(theirs.hash == 0 && theirs.count == 0, |o| {
                        o.hash == theirs.hash && o.count == theirs.count
                    });
                    if same {
                        ctx.verified.record(&group, &link.peer, true, 0);
                    }
                }
                let _ = link
                    .send(Msg::Rows {
                        req,
                        head,
                        quiet,
                        rows,
                        more,
                    })
                    .await;
            });
        }
        Msg::Differ {
            req,
            group,
            keys,
            items,
            settle,
        } => {
            let Some(lg) = link.groups.get(&group) else {
                return Err(violation(
                    peer,
                    format!("named group {group:?}, which it does not share with us"),
                ));
            };
            if keys.len() > MAX_DIFFER_KEYS
                || items.len() > keys.len()
                || keys.iter().any(|k| k.len() > name::MAX_PATH)
            {
                return Err(violation(peer, "a list of differing keys out of bounds"));
            }
            let asked: HashSet<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            if items.iter().any(|w| !asked.contains(&*w.item.key)) {
                return Err(violation(peer, "entries of keys it did not name"));
            }
            let Some(g) = ctx.group(&group).cloned() else {
                return Err(violation(peer, "a group this node does not run"));
            };
            if lg.paused.is_some() {
                let _ = link
                    .send(Msg::DifferItems {
                        req,
                        head: 0,
                        items: Vec::new(),
                    })
                    .await;
                return Ok(());
            }
            let apply = settle && !g.is_replica(peer) && !items.is_empty();
            if apply && let Err(e) = validate(ctx, &g, &items) {
                ctx.audit_refused(peer, &e);
                return Err(violation(peer, format!("refused compared item {e}")));
            }
            let Ok(permit) = serving.clone().acquire_owned().await else {
                return Ok(());
            };
            let (ctx, link) = (ctx.clone(), link.clone());
            tokio::spawn(async move {
                answer_differ(ctx, link, g, req, keys, items, settle, apply, permit).await;
            });
        }
        _ => {}
    }
    Ok(())
}

/// Answer a `Differ`: our entries as they are, then (settling) the peer's decided here.
#[allow(clippy::too_many_arguments, reason = "the fields of one message")]
async fn answer_differ(
    ctx: Arc<Ctx>,
    link: Arc<Link>,
    g: Arc<GroupRt>,
    req: u64,
    keys: Vec<Vec<u8>>,
    items: Vec<WireItem>,
    settle: bool,
    apply: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let group = g.name().to_string();
    let (c2, g2, k2) = (ctx.clone(), group.clone(), keys.clone());
    let ours = tokio::task::spawn_blocking(move || {
        let head = c2.store.group_head(&g2)?;
        Ok::<_, StoreError>((head, entries(&c2, &g2, &k2)?, known_differences(&c2, &g2)))
    })
    .await;
    let (head, ours, known) = match ours {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!(group = %group, "reading entries for {}: {e}", link.peer);
            (0, Vec::new(), BTreeSet::new())
        }
        Err(_) => return,
    };
    // the bounded part (reading) is done; deciding may wait for the lane
    drop(permit);
    ctx.verified
        .record(&group, &link.peer, keys.is_empty(), keys.len() as u64);
    if settle {
        let mut by_key: BTreeMap<Vec<u8>, Item> =
            ours.iter().map(|i| (i.key.clone(), i.clone())).collect();
        let mut theirs: BTreeMap<Vec<u8>, Item> = items
            .iter()
            .map(|w| (w.item.key.clone(), w.item.clone()))
            .collect();
        let found: Vec<Found> = keys
            .iter()
            .filter(|k| !known.contains(*k))
            .map(|k| Found {
                key: k.clone(),
                here: by_key.remove(k),
                there: theirs.remove(k),
            })
            .collect();
        report(
            &ctx,
            &group,
            &link.peer,
            &found,
            &format!("found by {}'s comparison", link.peer),
        );
    }
    if apply {
        let take: Vec<WireItem> = items
            .into_iter()
            .filter(|w| !known.contains(&w.item.key) && !w.item.version.is_empty())
            .collect();
        if let Some(lane) = ctx.lane(&group)
            && !take.is_empty()
        {
            lane.found((link.peer.clone(), link.peer_inc(&group)), take, Vec::new())
                .await;
        }
    }
    let items = ours
        .into_iter()
        .map(|item| WireItem { item, inline: None })
        .collect();
    let _ = link.send(Msg::DifferItems { req, head, items }).await;
}

/// An answer to one of our requests (from `link::dispatch`).
pub fn answered(link: &Link, m: Msg) -> Result<(), LinkError> {
    let req = match &m {
        Msg::Rows { req, .. } | Msg::DifferItems { req, .. } => *req,
        _ => return Ok(()),
    };
    match lock(&link.verify_waiters).remove(&req) {
        Some(tx) => {
            let _ = tx.send(m);
            Ok(())
        }
        None => Err(violation(&link.peer, format!("unsolicited {}", m.kind()))),
    }
}

/// One path that differs, as `verify` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub group: String,
    /// Escaped path (`item::name::show`).
    pub path: String,
    /// The peer compared with; `None`: this node's disk against its index (`--deep`).
    pub peer: Option<String>,
    /// What this node holds (on disk, for `--deep`).
    pub here: String,
    /// What the peer holds (the index, for `--deep`).
    pub there: String,
}

impl Difference {
    /// `PATH: here <state>, PEER <state>` (`index` for `--deep`).
    pub fn line(&self) -> String {
        match &self.peer {
            Some(p) => format!("{}: here {}, {p} {}", self.path, self.here, self.there),
            None => format!(
                "{}: here on disk {}, index {}",
                self.path, self.here, self.there
            ),
        }
    }
}

/// A peer `verify` could not compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub group: String,
    pub peer: String,
    pub why: String,
}

/// A comparison `verify` made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compared {
    pub group: String,
    pub peer: String,
    pub matched: bool,
}

/// What `clustersync verify` found (`--json` prints it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub node: String,
    pub differences: Vec<Difference>,
    pub compared: Vec<Compared>,
    pub unreachable: Vec<Unreachable>,
    /// Files and bytes read again from disk (`--deep`).
    pub deep_files: u64,
    pub deep_bytes: u64,
    /// Some comparison found more than [`MAX_DIFFS`] keys: the rest are found by the next.
    pub truncated: bool,
    /// `--repair`: every difference listed was handed to the usual rules.
    pub repaired: bool,
}

impl VerifyReport {
    /// SPEC §4: 4 a peer could not be compared with, 1 differences, 0 the same everywhere.
    pub fn exit_code(&self) -> u8 {
        if !self.unreachable.is_empty() {
            4
        } else if !self.differences.is_empty() {
            1
        } else {
            0
        }
    }
}

/// What `--deep` found in one group.
#[derive(Debug, Default)]
pub struct Deep {
    /// (key, what is on disk, what the index says).
    pub found: Vec<(Vec<u8>, String, String)>,
    pub files: u64,
    pub bytes: u64,
}

/// Read every regular file and symlink of `g` that the index knows from disk and compare it
/// with its entry (blocking; files on several threads).
pub fn deep_check(ctx: &Ctx, g: &GroupRt) -> Result<Deep, StoreError> {
    let mut todo = Vec::new();
    ctx.store.for_each(g.name(), |e| {
        if matches!(e.item.kind(), Some(Kind::File | Kind::Symlink)) {
            todo.push(e.clone());
        }
        true
    })?;
    let threads = crate::fs::par::threads();
    let root = ctx.root.clone();
    let results = crate::fs::par::map(todo, threads, |e| deep_one(&root, &e));
    let mut out = Deep::default();
    for r in results.into_iter().flatten() {
        let (bytes, finding) = r;
        out.files += 1;
        out.bytes += bytes;
        if let Some(f) = finding {
            out.found.push(f);
        }
    }
    out.found.sort();
    Ok(out)
}

/// One entry against the disk: bytes read, and what differs.
type DeepOne = (u64, Option<(Vec<u8>, String, String)>);

fn deep_one(root: &std::path::Path, e: &crate::item::Entry) -> DeepOne {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Some(m) = e.item.meta() else {
        return (0, None);
    };
    let key = e.item.key.clone();
    let real = name::real(root, &key);
    let index = |m: &crate::item::Meta| match m.kind {
        Kind::File => format!("file {} bytes #{}", m.size, crate::item::hex(&m.hash[..6])),
        _ => format!(
            "symlink to {}",
            name::show(m.target.as_deref().unwrap_or_default())
        ),
    };
    let md = match std::fs::symlink_metadata(&real) {
        Ok(md) => md,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return (0, Some((key, "missing".into(), index(m))));
        }
        Err(_) => return (0, None),
    };
    // a file whose stat changed since the index saw it is a local change on its way
    if !crate::local::scan::quick_match(&e.quick(), &md) {
        return (0, None);
    }
    if m.kind == Kind::Symlink {
        let Ok(t) = std::fs::read_link(&real) else {
            return (0, None);
        };
        use std::os::unix::ffi::OsStrExt;
        let t = t.as_os_str().as_bytes();
        if Some(t) != m.target.as_deref() {
            return (
                0,
                Some((key, format!("symlink to {}", name::show(t)), index(m))),
            );
        }
        return (0, None);
    }
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
    else {
        return (0, None);
    };
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match std::io::Read::read(&mut f, &mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return (n, None),
        }
    }
    // changed while it was read: the scanner reports it
    match f.metadata() {
        Ok(after)
            if after.ino() == md.ino()
                && after.ctime() == md.ctime()
                && after.ctime_nsec() == md.ctime_nsec()
                && after.len() == md.len() => {}
        _ => return (n, None),
    }
    let hash = *h.finalize().as_bytes();
    if hash != m.hash || n != m.size {
        let disk = format!("file {n} bytes #{}", crate::item::hex(&hash[..6]));
        return (n, Some((key, disk, index(m))));
    }
    (n, None)
}

/// Which of this node's groups `verify` looks at: the named ones, or all.
fn selected(ctx: &Ctx, groups: &[String]) -> Vec<Arc<GroupRt>> {
    ctx.groups
        .values()
        .filter(|g| groups.is_empty() || groups.iter().any(|n| n == g.name()))
        .cloned()
        .collect()
}

/// `clustersync verify` through the running daemon: `--deep` first (this node's disk against
/// its index), then each selected group with each of its peers, waiting up to `wait` for
/// changes on their way to settle.
pub async fn run(
    ctx: &Arc<Ctx>,
    groups: &[String],
    deep: bool,
    repair: bool,
    wait: Duration,
) -> VerifyReport {
    let mut report = VerifyReport {
        node: ctx.name.clone(),
        repaired: repair,
        ..Default::default()
    };
    let chosen = selected(ctx, groups);
    if deep {
        for g in chosen.iter().filter(|g| !g.is_accounts()) {
            let (c2, g2) = (ctx.clone(), g.clone());
            let d = match tokio::task::spawn_blocking(move || deep_check(&c2, &g2)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(group = %g.name(), "verify --deep: {e}");
                    continue;
                }
                Err(_) => continue,
            };
            report.deep_files += d.files;
            report.deep_bytes += d.bytes;
            let keys: Vec<Vec<u8>> = d.found.iter().map(|(k, _, _)| k.clone()).collect();
            for (k, disk, index) in d.found {
                ctx.audit.log(crate::ops::audit::Rec {
                    group: g.name(),
                    path: &k,
                    kind: "diverged",
                    origin: &ctx.name,
                    detail: Some(&format!(
                        "found by verify --deep: on disk {disk}, in the index {index}"
                    )),
                    ..Default::default()
                });
                report.differences.push(Difference {
                    group: g.name().to_string(),
                    path: name::show(&k).into_owned(),
                    peer: None,
                    here: disk,
                    there: index,
                });
            }
            if !keys.is_empty() {
                ctx.metrics.diverged(g.name(), keys.len() as u64);
            }
            if repair
                && !keys.is_empty()
                && let Some(lane) = ctx.lane(g.name())
            {
                lane.found((ctx.name.clone(), 0), Vec::new(), keys).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut tasks = Vec::new();
    for g in &chosen {
        for p in &g.peers {
            let (ctx, g, p) = (ctx.clone(), g.clone(), p.clone());
            tasks.push(tokio::spawn(async move {
                let r = with_peer(&ctx, &g, &p, repair, deadline).await;
                (g, p, r)
            }));
        }
    }
    for t in tasks {
        let Ok((g, p, r)) = t.await else { continue };
        match r {
            Ok(o) => {
                report.truncated |= o.truncated;
                report.compared.push(Compared {
                    group: g.name().to_string(),
                    peer: p.clone(),
                    matched: o.matched,
                });
                for f in o.found {
                    report.differences.push(Difference {
                        group: g.name().to_string(),
                        path: name::show(&f.key).into_owned(),
                        peer: Some(p.clone()),
                        here: state(f.here.as_ref()),
                        there: state(f.there.as_ref()),
                    });
                }
            }
            Err(why) => report.unreachable.push(Unreachable {
                group: g.name().to_string(),
                peer: p,
                why,
            }),
        }
    }
    report
        .differences
        .sort_by(|a, b| (&a.group, &a.path, &a.peer).cmp(&(&b.group, &b.path, &b.peer)));
    report
}

/// Compare `g` with `peer`, waiting (until `deadline`) for the link and for quiet.
async fn with_peer(
    ctx: &Arc<Ctx>,
    g: &GroupRt,
    peer: &str,
    repair: bool,
    deadline: tokio::time::Instant,
) -> Result<Outcome, String> {
    let mut busy_since: Option<tokio::time::Instant> = None;
    loop {
        let Some(link) = ctx.links.get(peer) else {
            let st = ctx.links.state(peer);
            return Err(st.error.unwrap_or_else(|| "not connected".into()));
        };
        if link.version < 5 {
            return Err(format!(
                "{peer} runs an older release (protocol {}), which cannot compare index summaries",
                link.version
            ));
        }
        if let Some(why) = link.groups.get(g.name()).and_then(|lg| lg.paused.clone()) {
            return Err(why);
        }
        if !link.groups.contains_key(g.name()) {
            return Err(format!("{peer} does not share group {}", g.name()));
        }
        match compare(ctx, &link, g.name(), repair, false).await {
            Ok(o) => return Ok(o),
            Err(VerifyError::Busy) => {
                let now = tokio::time::Instant::now();
                busy_since.get_or_insert(now);
                if now >= deadline {
                    return Err(format!(
                        "changes of group {} kept flowing between this node and {peer}; run verify again when they settle",
                        g.name()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(VerifyError::BadAnswer { msg, .. }) => {
                let why = format!("comparing index summaries of group {}: {msg}", g.name());
                ctx.audit_refused(peer, &why);
                let _ = link
                    .send(Msg::Bye {
                        reason: why.clone(),
                    })
                    .await;
                link.close();
                return Err(why);
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{ChunkRef, Entry, Meta, Owner, VersionVector};
    use crate::store::{Change, Extras, enc};

    fn file(path: &str, v: u64, c: u8) -> Entry {
        let mut version = VersionVector::default();
        version.bump("a", v);
        Entry::new(Item {
            key: path.as_bytes().to_vec(),
            version,
            origin: "a".into(),
            beat: vec![],
            body: Some(Body::Fs(Meta {
                kind: Kind::File,
                mode: 0o644,
                mtime_s: 1,
                mtime_ns: 0,
                size: 1,
                owner: Owner::default(),
                hash: [c; 32],
                target: None,
                chunks: vec![ChunkRef {
                    hash: [c; 32],
                    len: 1,
                }],
                xattrs: vec![],
            })),
        })
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
