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
//! differences. That includes a version one side left out for the other because the other
//! gets it from its maker (`engine::relay`): the entries of the differing keys are exchanged
//! first without settling, and a key whose difference is such a version ([`in_flight`])
//! makes the comparison wait too. In the background, the node whose name sorts first starts one per shared group
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
//!
//! Files: `walk` (the comparison itself, over any [`Far`] side: a link, or another index for
//! benchmarks and tests), this module (comparisons over links: when, settling, reporting,
//! serving the peer's requests), `command` (`clustersync verify` and `--deep`).

mod command;
mod walk;

pub use command::{Compared, Deep, Difference, Unreachable, VerifyReport, deep_check, run};
pub use walk::{Far, IndexFar, LinkFar, RowsAnswer, Walked, rows_answer, walk};

use crate::engine::apply;
use crate::engine::group::GroupRt;
use crate::engine::link::{LinkError, check_group, violation};
use crate::engine::node::{Ctx, Engine};
use crate::engine::peer::{Link, lock};
use crate::item::{Body, Item, Kind, name};
use crate::net::protocol::{MAX_BOUND, MAX_DIFFER_KEYS, Msg, WireItem};
use crate::store::StoreError;
use crate::store::summary::TOP;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// Keys reported (and settled) per group and peer in one comparison at most; more are found
/// by the next one.
pub const MAX_DIFFS: usize = 10_000;
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
    #[error("{peer} did not answer within {} s", walk::ANSWER_WAIT.as_secs())]
    Timeout { peer: String },
    #[error("{peer} sent a bad answer: {msg}")]
    BadAnswer { peer: String, msg: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Nothing of `group` is on its way between this node and the link's peer, as far as this node
/// knows: our pump sent everything and had it acknowledged, we applied everything the peer
/// announced, and the lane has no work waiting.
pub fn quiet(e: &Engine, link: &Link, group: &str) -> bool {
    let ctx = &e.ctx;
    let (Some(g), Some(lane)) = (ctx.group(group), e.lane(group)) else {
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

/// Check a peer's entries before they go to the lane, as its batches are checked (the lane
/// takes found items without checking them again): a bad file item is a bad answer; a refused
/// account item is audited and left out, as in a batch (it never closes the link).
fn validate(
    ctx: &Ctx,
    g: &GroupRt,
    peer: &str,
    items: Vec<WireItem>,
) -> Result<Vec<WireItem>, String> {
    let known = |n: &str| ctx.cfg.nodes.contains_key(n);
    let mut out = Vec::with_capacity(items.len());
    for w in items {
        if w.inline.is_some() {
            return Err(format!(
                "{}: content attached to a compared item",
                w.item.show()
            ));
        }
        let Some(policy) = g.accounts.as_ref().filter(|_| g.is_accounts()) else {
            apply::validate(g, &w, &known).map_err(|e| e.to_string())?;
            out.push(w);
            continue;
        };
        let check = crate::accounts::sync::Check {
            policy,
            members: &g.cfg.nodes,
        };
        match crate::accounts::sync::validate_item(&w.item, &check) {
            Ok(()) => out.push(w),
            Err(e) => {
                let msg = format!("refused compared account item {}: {e}", w.item.show());
                tracing::warn!(peer, group = %g.name(), "{msg} (not applied)");
                ctx.audit_refused_item(g.name(), &w.item.key, peer, &msg);
            }
        }
    }
    Ok(out)
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
        Some(Body::Account(a)) => match a {
            crate::accounts::Account::User { user, .. } => {
                format!("user {} uid {}", user.name, user.uid)
            }
            crate::accounts::Account::Group { group, .. } => {
                format!("group {} gid {}", group.name, group.gid)
            }
            crate::accounts::Account::Members(m) => {
                format!("members of {}: {}", m.group, m.members.len())
            }
        },
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

/// Exchange the entries of the differing `keys` with the peer (`Differ`/`DifferItems`, in
/// chunks): what each side holds of each key, and (settling) the peer's items this node
/// takes, checked.
async fn exchange(
    ctx: &Ctx,
    far: &LinkFar<'_>,
    g: &GroupRt,
    peer: &str,
    keys: &[Vec<u8>],
    settle: bool,
) -> Result<(Vec<Found>, Vec<WireItem>), VerifyError> {
    let group = g.name();
    let bad = |msg: String| VerifyError::BadAnswer {
        peer: peer.to_string(),
        msg,
    };
    let mut found = Vec::new();
    let send_ours = settle && !g.replica;
    let take_theirs = settle && !g.is_replica(peer);
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
            return Err(bad("entries of keys not asked for".into()));
        }
        let usable = if take_theirs {
            validate(ctx, g, peer, theirs.clone()).map_err(bad)?
        } else {
            Vec::new()
        };
        let mut ours: BTreeMap<Vec<u8>, Item> =
            ours.into_iter().map(|i| (i.key.clone(), i)).collect();
        let mut theirs_by: BTreeMap<Vec<u8>, Item> = theirs
            .into_iter()
            .map(|w| (w.item.key.clone(), w.item))
            .collect();
        for k in chunk {
            found.push(Found {
                key: k.clone(),
                here: ours.remove(k),
                there: theirs_by.remove(k),
            });
        }
        take.extend(usable.into_iter().filter(|w| !w.item.version.is_empty()));
    }
    Ok((found, take))
}

/// The keys of `found` whose difference is a version on its way between this node and the
/// link's peer through a third node, its maker: one side holds a version (not a deletion) of a
/// member other than the two, the other side does not have it (nor anything newer), and the
/// side without it is linked with that member, which sends its own versions to every node it
/// is linked with (so the side holding it left it out, `engine::relay`). That member's own
/// comparison with the side without it still finds it if it never arrives.
fn in_flight(
    e: &Engine,
    link: &Link,
    group: &str,
    found: &[Found],
) -> Result<BTreeSet<Vec<u8>>, StoreError> {
    use crate::item::version::Causality;
    let ctx = &e.ctx;
    let me = ctx.name.as_str();
    let peer = link.peer.as_str();
    let lacks = |has: &Item, other: Option<&Item>| {
        has.body.is_some()
            && has.origin != me
            && has.origin != peer
            && other.is_none_or(|o| {
                matches!(
                    has.version.compare(&o.version),
                    Causality::Newer | Causality::Concurrent
                )
            })
    };
    let snap = ctx.store.snapshot()?;
    let mut out = BTreeSet::new();
    for f in found {
        // ours, left out for the peer because it gets it from its maker
        if let Some(h) = f.here.as_ref().filter(|h| lacks(h, f.there.as_ref()))
            && let Some(entry) = snap.get(group, &f.key)?
            && entry.item.version == h.version
            && crate::engine::link::from_its_maker(
                link,
                group,
                entry.from.as_ref(),
                &h.origin,
                false,
            )
        {
            out.insert(f.key.clone());
            continue;
        }
        // the peer's, left out for us because we are linked with its maker
        if let Some(t) = f.there.as_ref().filter(|t| lacks(t, f.here.as_ref()))
            && ctx
                .links
                .get(&t.origin)
                .is_some_and(|l| l.active(group) && l.version >= 5)
        {
            out.insert(f.key.clone());
        }
    }
    Ok(out)
}

/// Compare `group` with the link's peer; with `settle`, hand every difference to both lanes.
/// `background`: differences already reported otherwise (set aside, unresolved conflicts)
/// are left out.
pub async fn compare(
    e: &Engine,
    link: &Arc<Link>,
    group: &str,
    settle: bool,
    background: bool,
) -> Result<Outcome, VerifyError> {
    let ctx = &e.ctx;
    let peer = link.peer.clone();
    let g = ctx
        .group(group)
        .cloned()
        .ok_or_else(|| VerifyError::Gone(peer.clone()))?;
    if !quiet(e, link, group) {
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
    if ctx.store.group_head(group)? != head0 || !quiet(e, link, group) {
        return Err(VerifyError::Busy);
    }
    let known = known_differences(ctx, group);
    if background {
        keys.retain(|k| !known.contains(k));
    }
    // what each side holds first, without settling: a version on its way from its maker to
    // one of the two is not a difference (the other left it out, `engine::relay`); one that
    // arrived and was set aside, or is an unresolved conflict, is
    let (seen, _) = exchange(ctx, &far, &g, &peer, &keys, false).await?;
    let mut flying = in_flight(e, link, group, &seen)?;
    flying.retain(|k| !known.contains(k));
    if !flying.is_empty() {
        tracing::debug!(
            group,
            "{} of {} differing paths are on their way from their makers; comparing with {peer} later",
            flying.len(),
            keys.len()
        );
        return Err(VerifyError::Busy);
    }
    let (found, take) = if settle {
        exchange(ctx, &far, &g, &peer, &keys, true).await?
    } else {
        (seen, Vec::new())
    };
    let by = if background {
        "found by comparing index summaries"
    } else if settle {
        "found by verify --repair"
    } else {
        "found by verify"
    };
    report(ctx, group, &peer, &found, by);
    if !take.is_empty()
        && let Some(lane) = e.lane(group)
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
pub async fn background(e: Engine, link: Arc<Link>) {
    let ctx = e.ctx.clone();
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
            let r = compare(&e, &link, &g, true, true).await;
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

/// A peer's `Compare` or `Differ` (from `link::dispatch`).
pub async fn serve(
    e: &Engine,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    match m {
        m @ Msg::Compare { .. } => serve_compare(e, link, serving, m).await,
        m @ Msg::Differ { .. } => serve_differ(e, link, serving, m).await,
        _ => Ok(()),
    }
}

/// A peer's `Compare`: one bounded page of our summary's rows, read under the link's serving
/// permits.
async fn serve_compare(
    e: &Engine,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let peer = link.peer.as_str();
    let Msg::Compare {
        req,
        group,
        level,
        lo,
        hi,
        root,
    } = m
    else {
        return Ok(());
    };
    let exchanged = check_group(link, &group)?;
    if level > TOP || lo.len() > MAX_BOUND || hi.as_ref().is_some_and(|h| h.len() > MAX_BOUND) {
        return Err(violation(peer, "a summary request out of bounds"));
    }
    if !exchanged {
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
    let (e, link) = (e.clone(), link.clone());
    tokio::spawn(async move {
        let quiet = quiet(&e, &link, &group);
        let ctx = e.ctx.clone();
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
    Ok(())
}

/// A peer's `Differ`: checked, then answered (and settled) by [`answer_differ`].
async fn serve_differ(
    e: &Engine,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let (ctx, peer) = (&e.ctx, link.peer.as_str());
    let Msg::Differ {
        req,
        group,
        keys,
        items,
        settle,
    } = m
    else {
        return Ok(());
    };
    let exchanged = check_group(link, &group)?;
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
    if !exchanged {
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
    let items = if apply {
        match validate(ctx, &g, peer, items) {
            Ok(items) => items,
            Err(e) => {
                ctx.audit_refused(peer, &e);
                return Err(violation(peer, format!("refused compared item {e}")));
            }
        }
    } else {
        items
    };
    let Ok(permit) = serving.clone().acquire_owned().await else {
        return Ok(());
    };
    let (e, link) = (e.clone(), link.clone());
    tokio::spawn(async move {
        answer_differ(e, link, g, req, keys, items, settle, apply, permit).await;
    });
    Ok(())
}

/// Answer a `Differ`: our entries as they are, then (settling) the peer's decided here.
#[allow(clippy::too_many_arguments, reason = "the fields of one message")]
async fn answer_differ(
    e: Engine,
    link: Arc<Link>,
    g: Arc<GroupRt>,
    req: u64,
    keys: Vec<Vec<u8>>,
    items: Vec<WireItem>,
    settle: bool,
    apply: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let ctx = e.ctx.clone();
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
        if let Some(lane) = e.lane(&group)
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
