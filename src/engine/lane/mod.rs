//! A group's lane: one task per group that owns everything that changes the group's paths and
//! its index entries. Local scans (`local`), peers' batches (`remote`), conflict resolution and
//! drift reverts (`resolve`) of one group run one after the other in its lane, so a scan and
//! an apply never interleave on a path; lanes of different groups run independently, so a
//! large transfer in one group never delays a small change in another.
//!
//! Others talk to a lane through its [`LaneHandle`]: the watcher and `mark` send paths, links
//! send batches, the control socket asks for rescans, markers and resolutions. What the lane
//! knows that others read (stopped or not, drift, waiting work, how far behind) is in its
//! [`LaneState`], which only the lane (and the watcher, for its own counter) writes.
//!
//! Blocking work (scans, disk writes, index commits) runs on tokio's blocking pool; content
//! from peers is fetched concurrently for up to [`remote::FETCH_FILES`] files of a batch.

pub mod accounts;
mod local;
pub use local::dry_scan;
mod remote;
mod resolve;

use crate::engine::group::GroupRt;
use crate::engine::link::{Link, lock};
use crate::engine::node::Ctx;
use crate::net::protocol::{Msg, WireItem};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Timer period of a lane (retries, drift reverts, periodic work).
pub const TICK: Duration = Duration::from_secs(1);
/// A path that changed while being read is looked at again after this.
pub const UNSTABLE_RETRY: Duration = Duration::from_millis(300);
/// Entries found gone by a scan that was not about a deletion (a directory's change event, a
/// `mark`) are looked at again after this before they are recorded as deleted, so the
/// mass-deletion guard sees an `rm -rf` whole.
pub const DELETE_SETTLE: Duration = Duration::from_millis(150);
/// Most paths merged from consecutive local reports into one scan.
const MERGE_LOCAL_MAX: usize = 4096;

/// Work for a lane.
pub enum LaneMsg {
    /// Paths the watcher (or `mark`) reported: (logical path, recursive). `deletes`: they
    /// are deletions that went through the watcher's deletion window, so what their scan
    /// finds gone is recorded at once; otherwise it is looked at again after
    /// [`DELETE_SETTLE`] first.
    Local {
        paths: Vec<(Vec<u8>, bool)>,
        deletes: bool,
    },
    /// Scan every path of the group.
    Rescan { reply: Option<oneshot::Sender<()>> },
    /// A peer's batch.
    Remote {
        link: Arc<Link>,
        items: Vec<WireItem>,
        through: u64,
    },
    /// Resolves once everything queued before it was handled.
    Marker { reply: oneshot::Sender<()> },
    /// `clustersync resolve`.
    Resolve {
        key: Vec<u8>,
        keep: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// The account files changed: file owners that did not resolve may now.
    OwnersChanged,
    /// What a comparison with a peer found (`engine::verify`): `items`, that peer's entries
    /// for keys that differ (validated), decided like a batch of it but with no position and
    /// no `Ack`; `rehash`, keys whose content on disk differs from the index, looked at again
    /// without trusting the stored content hash. `reply` once handled.
    Found {
        from: (String, u64),
        items: Vec<WireItem>,
        rehash: Vec<Vec<u8>>,
        reply: oneshot::Sender<()>,
    },
}

/// What a lane tells the rest of the node.
#[derive(Debug, Default)]
pub struct LaneState {
    /// Why the group is stopped on this node, and what to do.
    pub stopped: Mutex<Option<String>>,
    /// Paths the watcher holds in its windows.
    pub waiting_local: AtomicUsize,
    /// Batches queued for the lane.
    pub queued: AtomicUsize,
    /// Local changes on a replica not resolved yet: key -> what happened.
    pub drift: Mutex<BTreeMap<Vec<u8>, String>>,
    /// Peers' items set aside (could not be applied yet).
    pub aside: AtomicU64,
    /// Since when remote changes are known and not applied (for `/health`).
    pub behind_since: Mutex<Option<Instant>>,
    /// Items applied from peers, and bytes of content written.
    pub applied: AtomicU64,
    pub applied_bytes: AtomicU64,
    /// A problem that does not stop the group (e.g. attributes not supported), for `status`.
    pub warning: Mutex<Option<String>>,
}

impl LaneState {
    pub fn is_stopped(&self) -> bool {
        lock(&self.stopped).is_some()
    }
}

/// How to reach a lane.
#[derive(Clone)]
pub struct LaneHandle {
    pub group: Arc<GroupRt>,
    tx: mpsc::UnboundedSender<LaneMsg>,
    pub state: Arc<LaneState>,
    head: watch::Receiver<u64>,
}

impl LaneHandle {
    /// Hand a peer's batch over (the link's flow control bounds how many are queued).
    pub async fn remote(&self, link: Arc<Link>, items: Vec<WireItem>, through: u64, _head: u64) {
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        {
            let mut b = lock(&self.state.behind_since);
            b.get_or_insert_with(Instant::now);
        }
        if self
            .tx
            .send(LaneMsg::Remote {
                link: link.clone(),
                items,
                through,
            })
            .is_err()
        {
            link.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Paths changed locally.
    pub fn local(&self, paths: Vec<(Vec<u8>, bool)>, deletes: bool) {
        let _ = self.tx.send(LaneMsg::Local { paths, deletes });
    }

    /// Scan the whole group now and wait for it.
    pub async fn rescan(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(LaneMsg::Rescan { reply: Some(tx) }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Ask for a rescan without waiting.
    pub fn rescan_later(&self) {
        let _ = self.tx.send(LaneMsg::Rescan { reply: None });
    }

    /// Wait until everything queued before now was handled.
    pub async fn marker(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(LaneMsg::Marker { reply: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn resolve(&self, key: Vec<u8>, keep: String) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(LaneMsg::Resolve {
                key,
                keep,
                reply: tx,
            })
            .map_err(|_| "the node is stopping".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the node is stopping".into()))
    }

    pub fn owners_changed(&self) {
        let _ = self.tx.send(LaneMsg::OwnersChanged);
    }

    /// Hand over what a comparison found ([`LaneMsg::Found`]) and wait until it was handled.
    pub async fn found(&self, from: (String, u64), items: Vec<WireItem>, rehash: Vec<Vec<u8>>) {
        let (reply, rx) = oneshot::channel();
        let m = LaneMsg::Found {
            from,
            items,
            rehash,
            reply,
        };
        if self.tx.send(m).is_ok() {
            let _ = rx.await;
        }
    }

    /// The group's head (our highest seq), to wake pumps.
    pub fn head_rx(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }
}

/// The lane's own state.
pub(crate) struct Lane {
    ctx: Arc<Ctx>,
    g: Arc<GroupRt>,
    state: Arc<LaneState>,
    /// The group's head; shared with the blocking scan, which publishes each flush.
    head: Arc<watch::Sender<u64>>,
    /// Paths to look at again, and when.
    unstable: Vec<(Instant, Vec<u8>)>,
    /// Entries found gone outside a deletion, to look at again (as deletions), and when.
    deferred: Vec<(Instant, Vec<u8>)>,
    /// A replica's first scan adopts what is there.
    adopt: bool,
    last_rescan: Instant,
    last_gc: Instant,
    /// Set-aside items are tried again no sooner than this.
    aside_due: Instant,
    /// Stopped groups are checked again no sooner than this.
    stopped_check: Instant,
    /// Drift reverts are tried again no sooner than this.
    drift_due: Instant,
    /// The accounts pseudo-group: the stat of the account files at the last scan.
    accounts_stamp: Vec<(u64, i64, i64, u64)>,
}

/// How often tombstones every member confirmed are collected (30 s; the test knob
/// `CLUSTERSYNC_TEST_GC_SECS` shortens it).
fn gc_interval() -> Duration {
    std::env::var("CLUSTERSYNC_TEST_GC_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

/// Create a lane's handle and the lane itself (started by [`run`]).
pub(crate) fn new(
    ctx: &Arc<Ctx>,
    g: Arc<GroupRt>,
) -> (LaneHandle, Lane, mpsc::UnboundedReceiver<LaneMsg>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let head0 = ctx.store.group_head(g.name()).unwrap_or(0);
    let (head_tx, head_rx) = watch::channel(head0);
    let state = Arc::new(LaneState::default());
    let aside = ctx.store.aside(g.name()).map(|a| a.len()).unwrap_or(0);
    state.aside.store(aside as u64, Ordering::Relaxed);
    let adopt = g.replica
        && g.cfg.paths.iter().all(|gp| {
            ctx.store
                .get_quick(g.name(), gp.as_bytes())
                .ok()
                .flatten()
                .is_none()
        });
    let now = Instant::now();
    let lane = Lane {
        ctx: ctx.clone(),
        g: g.clone(),
        state: state.clone(),
        head: Arc::new(head_tx),
        unstable: Vec::new(),
        deferred: Vec::new(),
        adopt,
        last_rescan: now,
        last_gc: now,
        aside_due: now,
        stopped_check: now,
        drift_due: now,
        accounts_stamp: Vec::new(),
    };
    (
        LaneHandle {
            group: g,
            tx,
            state,
            head: head_rx,
        },
        lane,
        rx,
    )
}

impl Lane {
    fn name(&self) -> &str {
        self.g.name()
    }

    fn publish(&self, seq: u64) {
        publish_head(&self.head, seq);
    }

    fn set_stopped(&self, reason: Option<String>) -> bool {
        let mut st = lock(&self.state.stopped);
        let changed = *st != reason;
        if changed {
            match &reason {
                Some(r) => tracing::error!(group = %self.name(), "group stopped on this node: {r}"),
                None => tracing::warn!(group = %self.name(), "group path is back; group resumed"),
            }
        }
        *st = reason;
        changed
    }
}

/// Raise a group's head to `seq` (never lowers it), waking the pumps.
pub(super) fn publish_head(head: &watch::Sender<u64>, seq: u64) {
    head.send_if_modified(|h| {
        let higher = seq > *h;
        if higher {
            *h = seq;
        }
        higher
    });
}

/// Run a lane until shutdown. The initial scan was done by the node first (peers may already
/// be connected: their batches waited in the queue).
pub(crate) async fn run(mut lane: Lane, mut rx: mpsc::UnboundedReceiver<LaneMsg>) {
    let mut shutdown = lane.ctx.shutdown_rx();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // a message taken from the queue while merging local reports, handled next
    let mut held: Option<LaneMsg> = None;
    loop {
        let next = lane.next_timer();
        let msg = if let Some(m) = held.take() {
            m
        } else {
            tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = tick.tick() => {
                lane.tick().await;
                continue;
            }
            _ = tokio::time::sleep_until(next.into()) => {
                lane.timers().await;
                continue;
            }
            _ = crate::engine::node::until_set(&mut shutdown) => return,
            }
        };
        // local reports queued back to back (the watcher's flushes while a batch was being
        // applied: mostly our own writes) are scanned together, in one blocking call and at
        // most one commit, instead of one each; order with other messages is kept
        let msg = match msg {
            LaneMsg::Local { mut paths, deletes } => {
                while paths.len() < MERGE_LOCAL_MAX {
                    match rx.try_recv() {
                        Ok(LaneMsg::Local {
                            paths: more,
                            deletes: d,
                        }) if d == deletes => paths.extend(more),
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if paths.len() > 1 {
                    paths.sort();
                    paths.dedup_by(|a, b| {
                        // same path: keep one, recursive if either was
                        if a.0 == b.0 {
                            b.1 |= a.1;
                            true
                        } else {
                            false
                        }
                    });
                }
                LaneMsg::Local { paths, deletes }
            }
            m => m,
        };
        if lane.g.is_accounts() {
            lane.accounts_msg(msg).await;
            continue;
        }
        match msg {
            LaneMsg::Local { paths, deletes } => lane.local(paths, deletes).await,
            LaneMsg::Rescan { reply } => {
                lane.full_scan().await;
                if let Some(tx) = reply {
                    let _ = tx.send(());
                }
            }
            LaneMsg::Remote {
                link,
                items,
                through,
            } => {
                lane.state.queued.fetch_sub(1, Ordering::Relaxed);
                link.queued.fetch_sub(1, Ordering::AcqRel);
                lane.remote(link, items, through).await;
                if lane.state.queued.load(Ordering::Relaxed) == 0 {
                    *lock(&lane.state.behind_since) = None;
                }
            }
            LaneMsg::Marker { reply } => {
                let _ = reply.send(());
            }
            LaneMsg::Resolve { key, keep, reply } => {
                let _ = reply.send(lane.resolve(key, keep).await);
            }
            LaneMsg::OwnersChanged => lane.owners_changed().await,
            LaneMsg::Found {
                from,
                items,
                rehash,
                reply,
            } => {
                lane.found(from, items, rehash).await;
                let _ = reply.send(());
            }
        }
    }
}

impl Lane {
    /// The accounts pseudo-group's messages.
    async fn accounts_msg(&mut self, msg: LaneMsg) {
        match msg {
            LaneMsg::Local { .. } | LaneMsg::OwnersChanged => self.accounts_scan().await,
            LaneMsg::Rescan { reply } => {
                self.accounts_scan().await;
                if let Some(tx) = reply {
                    let _ = tx.send(());
                }
            }
            LaneMsg::Remote {
                link,
                items,
                through,
            } => {
                self.state.queued.fetch_sub(1, Ordering::Relaxed);
                link.queued.fetch_sub(1, Ordering::AcqRel);
                self.accounts_remote(link, items, through).await;
                if self.state.queued.load(Ordering::Relaxed) == 0 {
                    *lock(&self.state.behind_since) = None;
                }
            }
            LaneMsg::Marker { reply } => {
                let _ = reply.send(());
            }
            LaneMsg::Resolve { reply, .. } => {
                let _ = reply.send(Err(
                    "account conflicts are settled automatically (the newest change wins; the previous files are kept as passwd-, shadow-, group-, gshadow-)".into(),
                ));
            }
            LaneMsg::Found {
                from, items, reply, ..
            } => {
                self.accounts_found(from, items).await;
                let _ = reply.send(());
            }
        }
    }

    /// When the next path to look at again is due (far away when none).
    fn next_timer(&self) -> Instant {
        self.unstable
            .iter()
            .chain(self.deferred.iter())
            .map(|(t, _)| *t)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Paths to look at again: unstable ones, and entries found gone outside a deletion.
    async fn timers(&mut self) {
        let now = Instant::now();
        let take = |v: &mut Vec<(Instant, Vec<u8>)>| -> Vec<Vec<u8>> {
            let (due, keep): (Vec<_>, Vec<_>) = v.drain(..).partition(|(t, _)| *t <= now);
            *v = keep;
            due.into_iter().map(|(_, p)| p).collect()
        };
        let unstable = take(&mut self.unstable);
        let deferred = take(&mut self.deferred);
        if !unstable.is_empty() {
            self.local(unstable.into_iter().map(|p| (p, false)).collect(), false)
                .await;
        }
        if !deferred.is_empty() {
            self.local(deferred.into_iter().map(|p| (p, true)).collect(), true)
                .await;
        }
    }

    /// Timers: set-aside items, drift, periodic rescans, tombstone collection, the backup
    /// bound.
    async fn tick(&mut self) {
        let now = Instant::now();
        if self.g.is_accounts() {
            if self.accounts_touched() {
                self.accounts_scan().await;
            }
            if now >= self.aside_due && self.state.aside.load(Ordering::Relaxed) > 0 {
                self.aside_due = now + Duration::from_secs(5);
                self.accounts_retry().await;
            }
            return;
        }
        if self.state.is_stopped() {
            if now >= self.stopped_check {
                self.stopped_check = now + Duration::from_secs(4);
                self.full_scan().await;
            }
            return;
        }
        if now >= self.aside_due && self.state.aside.load(Ordering::Relaxed) > 0 {
            self.aside_due = now + Duration::from_secs(2);
            self.retry_aside().await;
        }
        if self.g.replica
            && self.g.cfg.on_drift == crate::config::OnDrift::Revert
            && now >= self.drift_due
        {
            self.drift_due = now + Duration::from_secs(2);
            let keys: Vec<Vec<u8>> = lock(&self.state.drift).keys().cloned().collect();
            if !keys.is_empty() {
                self.revert(keys).await;
            }
        }
        if let Some(every) = self.g.cfg.rescan
            && self.last_rescan.elapsed() >= every
        {
            self.full_scan().await;
        }
        if self.last_gc.elapsed() >= gc_interval() {
            self.last_gc = now;
            self.collect().await;
        }
    }

    /// Tombstones every member confirmed, and the backup bound.
    async fn collect(&self) {
        let ctx = self.ctx.clone();
        let g = self.g.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let name = g.name();
            let mut upto = u64::MAX;
            for p in &g.peers {
                upto = upto.min(ctx.store.acked(p, name).unwrap_or(0));
            }
            if upto > 0 && upto != u64::MAX {
                match ctx.store.collect_tombstones(name, upto) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(group = name, "collected {n} tombstones every member has")
                    }
                    Err(e) => tracing::warn!(group = name, "collecting tombstones: {e}"),
                }
            }
            for (path, time) in ctx.backups.enforce_limit(name, g.cfg.backup_max_bytes) {
                tracing::info!(
                    group = name,
                    "backup_max_bytes: dropped the kept version of {path} from {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(time.max(0) as u64)
                    )
                );
            }
        })
        .await;
    }

    /// Acknowledge a batch without applying it (group stopped): the position is not saved,
    /// so the peer sends it again once the group runs.
    async fn ack_only(&self, link: &Link, through: u64) {
        let _ = link
            .send(Msg::Ack {
                group: self.name().to_string(),
                through,
            })
            .await;
    }
}
