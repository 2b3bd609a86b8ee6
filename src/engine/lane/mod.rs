//! A group's lane: one task per group that owns everything that changes the group's paths and
//! its index entries. It is two parts:
//!
//! - the **core** ([`core::Core`]): plain data that turns events (local paths changed, a peer's
//!   batch, time passing, the results of effects) into effects, with no I/O;
//! - the **executor** (this module's [`run`]): owns the index, the filesystem (through the
//!   group's [`Domain`]: [`files::FilesDomain`] or [`accounts::AccountsDomain`]) and the links,
//!   carries the effects out one after the other and reports each result back to the core.
//!
//! Local scans, peers' batches, set-aside retries, conflict resolution and drift reverts of
//! one group run one after the other in its lane, so a scan and an apply never interleave on
//! a path; lanes of different groups run independently, so a large transfer in one group never
//! delays a small change in another. Between two batches the lane takes what else is queued
//! (the watcher's reports), so local changes are not held behind a stream of batches.
//!
//! Others talk to a lane through its [`LaneHandle`]; what the lane knows that others read
//! (stopped or not, drift, waiting work, how far behind) is published in its [`LaneState`].
//! Acknowledgements (SPEC §5.13) come only from the core, after a saved commit.

pub mod accounts;
pub mod core;
pub mod domain;
pub mod files;
mod local;
pub use local::dry_scan;
pub mod plan;
mod resolve;

use self::core::{Core, Effect, Event, Now, Saved, ScanReport, Setup, Source, Timing};
use self::domain::{Domain, ScanRequest};
use self::plan::Incoming;
use crate::engine::group::GroupRt;
use crate::engine::node::Ctx;
use crate::engine::peer::{Link, lock};
use crate::net::protocol::{Msg, WireItem};
use crate::store::StoreError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Most paths merged from consecutive local reports into one scan.
const MERGE_LOCAL_MAX: usize = 4096;

/// Work for a lane.
pub enum LaneMsg {
    /// Paths the watcher (or `mark`) reported: (logical path, recursive). `deletes`: they
    /// went through the watcher's deletion window.
    Local {
        paths: Vec<(Vec<u8>, bool)>,
        deletes: bool,
    },
    /// Scan every path of the group.
    Rescan { reply: Option<oneshot::Sender<()>> },
    /// A peer's batch, from `link`.
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
    /// for keys that differ (checked), from (the peer, its incarnation), go to the core as
    /// [`Event::Found`]: decided, applied and committed like a batch of that peer, with no
    /// position and no `Ack`; `rehash`, keys whose content on disk differs from the index,
    /// are scanned again without trusting the stored content hash. `reply` once handled.
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
    /// Batches queued for the lane or in flight.
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
    /// A problem that does not stop the group (attributes not supported, a batch that could
    /// not be saved), for `status`.
    pub warning: Mutex<Option<String>>,
    /// The accounts pseudo-group: accounts that cannot be read or left the managed set here.
    pub notes: Mutex<Vec<String>>,
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
    pub async fn remote(&self, link: Arc<Link>, items: Vec<WireItem>, through: u64) {
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        lock(&self.state.behind_since).get_or_insert_with(Instant::now);
        let l2 = link.clone();
        if self
            .tx
            .send(LaneMsg::Remote {
                link,
                items,
                through,
            })
            .is_err()
        {
            l2.queued.fetch_sub(1, Ordering::AcqRel);
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

    /// Wait until everything queued before now was handled (batches applied, or dropped
    /// unacknowledged).
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

/// Every lane of a node, by group name. Made once, before anything that reaches a lane starts.
#[derive(Clone, Default)]
pub struct Lanes(Arc<BTreeMap<String, LaneHandle>>);

impl Lanes {
    pub fn new(map: BTreeMap<String, LaneHandle>) -> Lanes {
        Lanes(Arc::new(map))
    }

    pub fn get(&self, group: &str) -> Option<&LaneHandle> {
        self.0.get(group)
    }

    pub fn iter(&self) -> impl Iterator<Item = &LaneHandle> {
        self.0.values()
    }
}

impl crate::local::watch::Sink for Lanes {
    fn changed(&self, group: &str, paths: Vec<(Vec<u8>, bool)>, deletes: bool) {
        if let Some(l) = self.get(group) {
            l.local(paths, deletes);
        }
    }

    fn rescan(&self, group: &str) {
        if let Some(l) = self.get(group) {
            l.rescan_later();
        }
    }

    fn waiting(&self, group: &str, n: usize) {
        if let Some(l) = self.get(group) {
            l.state.waiting_local.store(n, Ordering::Relaxed);
        }
    }
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

/// A lane ready to run: its executor with its core and domain.
pub struct LaneTask<D: Domain> {
    ctx: Arc<Ctx>,
    g: Arc<GroupRt>,
    dom: Arc<D>,
    core: Core,
    state: Arc<LaneState>,
    head: Arc<watch::Sender<u64>>,
    rx: mpsc::UnboundedReceiver<LaneMsg>,
    /// Markers waiting for the batches queued before them: (first batch id after them).
    markers: Vec<(u64, oneshot::Sender<()>)>,
    /// Replies due once the effects now pending are done (a rescan's).
    after_drain: Vec<oneshot::Sender<()>>,
    /// The batch in flight and when it was started (for the INFO line of a large transfer).
    batch_t0: (u64, Instant),
}

/// A lane of either domain, before it runs.
pub enum AnyLane {
    Files(LaneTask<files::FilesDomain>),
    Accounts(LaneTask<accounts::AccountsDomain>),
}

impl AnyLane {
    /// The scan at start-up (peers may connect meanwhile; each flush is published to them).
    pub async fn initial_scan(&mut self) {
        match self {
            AnyLane::Files(l) => l.initial_scan().await,
            AnyLane::Accounts(l) => l.initial_scan().await,
        }
    }

    /// Run until the node stops.
    pub async fn run(self) {
        match self {
            AnyLane::Files(l) => run(l).await,
            AnyLane::Accounts(l) => run(l).await,
        }
    }
}

/// Create a lane's handle and the lane itself (started by [`AnyLane::run`]).
/// `on_accounts_applied` is called after accounts were applied (file owners by name).
pub fn new(
    ctx: &Arc<Ctx>,
    g: Arc<GroupRt>,
    on_accounts_applied: Box<dyn Fn() + Send + Sync>,
) -> (LaneHandle, AnyLane) {
    let (tx, rx) = mpsc::unbounded_channel();
    let head0 = ctx.store.group_head(g.name()).unwrap_or(0);
    let (head_tx, head_rx) = watch::channel(head0);
    let head = Arc::new(head_tx);
    let state = Arc::new(LaneState::default());
    let aside = ctx.store.aside(g.name()).map(|a| a.len()).unwrap_or(0) as u64;
    state.aside.store(aside, Ordering::Relaxed);
    let handle = LaneHandle {
        group: g.clone(),
        tx,
        state: state.clone(),
        head: head_rx,
    };
    let lane = if g.is_accounts() {
        let dom = accounts::AccountsDomain::new(
            ctx.clone(),
            g.clone(),
            head.clone(),
            state.clone(),
            on_accounts_applied,
        );
        let core = Core::new(setup(ctx, &g), dom.planner(), aside, Instant::now());
        AnyLane::Accounts(task(ctx, g, dom, core, state, head, rx))
    } else {
        let dom = files::FilesDomain {
            ctx: ctx.clone(),
            g: g.clone(),
            state: state.clone(),
            head: head.clone(),
        };
        let core = Core::new(setup(ctx, &g), dom.planner(), aside, Instant::now());
        AnyLane::Files(task(ctx, g, dom, core, state, head, rx))
    };
    (handle, lane)
}

fn task<D: Domain>(
    ctx: &Arc<Ctx>,
    g: Arc<GroupRt>,
    dom: D,
    core: Core,
    state: Arc<LaneState>,
    head: Arc<watch::Sender<u64>>,
    rx: mpsc::UnboundedReceiver<LaneMsg>,
) -> LaneTask<D> {
    LaneTask {
        ctx: ctx.clone(),
        g,
        dom: Arc::new(dom),
        core,
        state,
        head,
        rx,
        markers: Vec::new(),
        after_drain: Vec::new(),
        batch_t0: (0, Instant::now()),
    }
}

/// The core's view of a group on this node.
fn setup(ctx: &Ctx, g: &GroupRt) -> Setup {
    let adopt = g.replica
        && g.cfg.paths.iter().all(|gp| {
            ctx.store
                .get_quick(g.name(), gp.as_bytes())
                .ok()
                .flatten()
                .is_none()
        });
    let accounts = g.is_accounts();
    let kept_as = if accounts {
        Some(format!(
            "passwd-, shadow-, group-, gshadow- on {}",
            ctx.name
        ))
    } else {
        (g.cfg.backup_generations > 0)
            .then(|| format!("backup on {} (clustersync backups PATH)", ctx.name))
    };
    Setup {
        group: g.name().to_string(),
        me: ctx.name.clone(),
        conflict: g.cfg.conflict.clone(),
        compare_owner: accounts || g.compare_owner(),
        roots: g.cfg.paths.clone(),
        dry_run: ctx.opts.dry_run,
        adopt,
        replica: g.replica,
        kept_as,
        timing: Timing {
            aside_every: Duration::from_secs(if accounts { 5 } else { 2 }),
            stopped_every: Duration::from_secs(4),
            revert_every: (g.replica && g.cfg.on_drift == crate::config::OnDrift::Revert)
                .then_some(Duration::from_secs(2)),
            rescan: if accounts { None } else { g.cfg.rescan },
            collect_every: gc_interval(),
            poll_every: accounts.then_some(Duration::from_secs(1)),
        },
    }
}

/// Run a lane until shutdown. The initial scan was done by the node first (peers may already
/// be connected: their batches waited in the queue).
async fn run<D: Domain>(mut lane: LaneTask<D>) {
    let mut shutdown = lane.ctx.shutdown_rx();
    let mut work: VecDeque<Effect> = VecDeque::new();
    loop {
        if let Some(eff) = work.pop_front() {
            lane.exec(eff, &mut work).await;
            continue;
        }
        for tx in lane.after_drain.drain(..) {
            let _ = tx.send(());
        }
        lane.resolve_markers();
        // between batches: what else is queued (local reports, more batches)
        match lane.rx.try_recv() {
            Ok(msg) => {
                lane.take(msg, &mut work).await;
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let next = lane.core.start_next();
        lane.publish_state();
        if !next.is_empty() {
            work.extend(next);
            continue;
        }
        lane.resolve_markers();
        let wake = lane.core.next_wake();
        tokio::select! {
            m = lane.rx.recv() => match m {
                Some(m) => lane.take(m, &mut work).await,
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => lane.feed(Event::Tick, &mut work),
            _ = crate::engine::node::until_set(&mut shutdown) => return,
        }
    }
}

impl<D: Domain> LaneTask<D> {
    fn name(&self) -> &str {
        self.g.name()
    }

    /// The scan at start-up.
    pub async fn initial_scan(&mut self) {
        let mut work = VecDeque::new();
        self.feed(Event::Rescan, &mut work);
        while let Some(eff) = work.pop_front() {
            self.exec(eff, &mut work).await;
        }
        self.publish_state();
    }

    /// Give the core an event; queue what it asks for.
    fn feed(&mut self, ev: Event, work: &mut VecDeque<Effect>) {
        work.extend(self.core.on(ev, Now::real()));
    }

    /// A message from the lane's queue (merging local reports queued back to back: mostly
    /// the watcher's flushes of our own writes, scanned together in one blocking call).
    async fn take(&mut self, msg: LaneMsg, work: &mut VecDeque<Effect>) {
        match msg {
            LaneMsg::Local { paths, deletes } => {
                let paths = self.merge_local(paths, deletes, work).await;
                self.feed(Event::Local { paths, deletes }, work);
            }
            LaneMsg::Rescan { reply } => {
                self.feed(Event::Rescan, work);
                self.after_drain.extend(reply);
            }
            LaneMsg::Remote {
                link,
                items,
                through,
            } => {
                link.queued.fetch_sub(1, Ordering::AcqRel);
                let source = Source {
                    peer: link.peer.clone(),
                    conn: link.conn,
                    inc: link.peer_inc(self.name()),
                    version: link.version,
                };
                self.ctx
                    .counters
                    .items_in
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                self.feed(
                    Event::Remote {
                        source,
                        items,
                        through,
                    },
                    work,
                );
            }
            LaneMsg::Marker { reply } => {
                self.markers.push((self.core.next_batch_id(), reply));
            }
            LaneMsg::Resolve { key, keep, reply } => {
                let _ = reply.send(self.dom.clone().resolve(key, keep).await);
            }
            LaneMsg::OwnersChanged => {
                let dom = self.dom.clone();
                let _ = tokio::task::spawn_blocking(move || dom.owners_changed()).await;
            }
            LaneMsg::Found {
                from,
                items,
                rehash,
                reply,
            } => self.found(from, items, rehash, reply, work).await,
        }
    }

    /// What a comparison found: the peer's items go to the core as one batch without a
    /// source (so no `Ack`); the keys to look at again lose their trusted content identity
    /// and are scanned. `reply` resolves once the batch is handled (a marker).
    async fn found(
        &mut self,
        from: (String, u64),
        items: Vec<WireItem>,
        rehash: Vec<Vec<u8>>,
        reply: oneshot::Sender<()>,
        work: &mut VecDeque<Effect>,
    ) {
        self.feed(Event::Found { from, items }, work);
        if !rehash.is_empty() && !self.ctx.opts.dry_run && self.core.stopped().is_none() {
            let (dom, k2) = (self.dom.clone(), rehash.clone());
            let _ = tokio::task::spawn_blocking(move || dom.forget_content(&k2)).await;
            let paths = rehash.into_iter().map(|k| (k, false)).collect();
            self.feed(
                Event::Local {
                    paths,
                    deletes: false,
                },
                work,
            );
        }
        self.markers.push((self.core.next_batch_id(), reply));
    }

    /// Local reports queued right behind `paths` with the same kind, merged (order with
    /// other messages kept: the first other message is taken right after).
    async fn merge_local(
        &mut self,
        mut paths: Vec<(Vec<u8>, bool)>,
        deletes: bool,
        work: &mut VecDeque<Effect>,
    ) -> Vec<(Vec<u8>, bool)> {
        let mut held = None;
        while paths.len() < MERGE_LOCAL_MAX {
            match self.rx.try_recv() {
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
            // same path: keep one, recursive if either was
            paths.dedup_by(|a, b| {
                let same = a.0 == b.0;
                if same {
                    b.1 |= a.1;
                }
                same
            });
        }
        if let Some(m) = held {
            // a batch or a control message: after this scan, in order
            Box::pin(self.take(m, work)).await;
        }
        paths
    }

    /// Markers whose batches are all handled.
    fn resolve_markers(&mut self) {
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.markers)
            .into_iter()
            .partition(|(id, _)| !self.core.pending_before(*id));
        self.markers = wait;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    fn publish_state(&self) {
        let s = &self.state;
        s.queued.store(self.core.queued(), Ordering::Relaxed);
        s.aside.store(self.core.aside(), Ordering::Relaxed);
        *lock(&s.behind_since) = self.core.behind_since();
    }

    /// Carry out one effect; what it gives goes back to the core.
    async fn exec(&mut self, eff: Effect, work: &mut VecDeque<Effect>) {
        match eff {
            Effect::Scan {
                targets,
                whole,
                deletes_ok,
                was_stopped,
                adopt,
            } => {
                let req = ScanRequest {
                    targets,
                    whole,
                    deletes_ok,
                    was_stopped,
                    adopt,
                };
                let r = self.scan(req).await;
                self.feed(Event::Scanned(r), work);
            }
            Effect::LoadAside => {
                let items = self.load_aside().await;
                self.feed(Event::AsideLoaded(items), work);
            }
            Effect::Check { id, items, source } => {
                self.batch_t0 = (id, Instant::now());
                let dom = self.dom.clone();
                let (items, result) = tokio::task::spawn_blocking(move || {
                    let r = dom.check(&items, &source);
                    (items, r)
                })
                .await
                .unwrap_or_else(|_| {
                    let why = "checking it failed (internal error)".to_string();
                    (Vec::new(), domain::Checked::Refused(Vec::new(), why))
                });
                self.feed(Event::Checked { id, items, result }, work);
            }
            Effect::Observe { id, keys, dry } => {
                if self.batch_t0.0 != id {
                    self.batch_t0 = (id, Instant::now());
                }
                let dom = self.dom.clone();
                let result = tokio::task::spawn_blocking(move || dom.observe(&keys, dry))
                    .await
                    .unwrap_or_else(|_| {
                        Err(domain::ObserveError::Failed(
                            "reading the index failed (internal error)".into(),
                        ))
                    });
                self.feed(Event::Observed { id, result }, work);
            }
            Effect::Apply { id, steps, prefer } => {
                let applied = self.dom.clone().apply(steps, prefer).await;
                self.feed(Event::Applied { id, applied }, work);
            }
            Effect::Commit { id, commit } => {
                let result = self.commit(*commit).await;
                self.feed(Event::Committed { id, result }, work);
            }
            Effect::Poll => {
                let dom = self.dom.clone();
                let changed = tokio::task::spawn_blocking(move || dom.poll())
                    .await
                    .unwrap_or(false);
                if changed {
                    let local = Event::Local {
                        paths: Vec::new(),
                        deletes: false,
                    };
                    self.feed(local, work);
                }
            }
            other => self.exec_io(other).await,
        }
    }

    /// Effects that give nothing back to the core.
    async fn exec_io(&mut self, eff: Effect) {
        match eff {
            Effect::Ack { source, through } => self.ack(&source, through).await,
            Effect::Refuse {
                source,
                key,
                reason,
            } => self.refuse(&source, &key, &reason).await,
            Effect::Resend { source, why } => {
                if let Some(l) = self.ctx.links.get(&source.peer)
                    && (source.conn == l.conn || source.conn == 0)
                {
                    tracing::info!(group = %self.name(), peer = %source.peer, "closing the link so that {} sends again what was not acknowledged ({why})", source.peer);
                    l.close();
                }
            }
            Effect::Publish(head) => publish_head(&self.head, head),
            Effect::Audit(lines) => self.audit(lines),
            Effect::DryRun(lines) => {
                for (what, key, peer) in lines {
                    self.ctx.dry_run_line(what, &key, &peer);
                }
            }
            Effect::Revert => self.dom.clone().revert().await,
            Effect::Collect => self.collect().await,
            Effect::Warn(w) => *lock(&self.state.warning) = w,
            Effect::Stopped(r) => self.set_stopped(r),
            _ => {}
        }
    }

    /// Audit lines: those without a detail in one write.
    fn audit(&self, lines: Vec<self::core::Audited>) {
        let group = self.g.name();
        let (plain, detailed): (Vec<_>, Vec<_>) =
            lines.into_iter().partition(|(_, _, _, d)| d.is_none());
        self.ctx.audit_items(
            group,
            plain.iter().map(|(k, i, p, _)| (*k, i, p.as_deref())),
        );
        for (kind, item, peer, detail) in &detailed {
            self.ctx.audit.log(crate::ops::audit::Rec {
                group,
                path: &item.key,
                kind,
                origin: &item.origin,
                version: &item.version.display(),
                peer: peer.as_deref(),
                detail: detail.as_deref(),
            });
        }
    }

    fn set_stopped(&self, reason: Option<String>) {
        match &reason {
            Some(r) => tracing::error!(group = %self.name(), "group stopped on this node: {r}"),
            None => tracing::warn!(group = %self.name(), "group path is back; group resumed"),
        }
        *lock(&self.state.stopped) = reason;
    }

    async fn scan(&self, req: ScanRequest) -> ScanReport {
        let t0 = Instant::now();
        let whole = req.whole;
        let dom = self.dom.clone();
        let r = if self.ctx.opts.dry_run {
            // a dry run records nothing: say what a scan would send
            let lines = tokio::task::spawn_blocking(move || dom.dry_scan())
                .await
                .unwrap_or_default();
            let to: Vec<&String> = if self.g.replica {
                Vec::new()
            } else {
                self.g.peers.iter().collect()
            };
            for (what, key) in lines {
                for p in &to {
                    self.ctx.dry_run_line(what, &key, p);
                }
            }
            ScanReport::default()
        } else {
            tokio::task::spawn_blocking(move || dom.scan(&req))
                .await
                .unwrap_or(ScanReport {
                    failed: true,
                    ..Default::default()
                })
        };
        if whole {
            self.ctx.metrics.observe_scan(self.name(), t0.elapsed());
        }
        r
    }

    /// The set-aside items whose next try is due.
    async fn load_aside(&self) -> Vec<Incoming> {
        let ctx = self.ctx.clone();
        let name = self.name().to_string();
        let all = match tokio::task::spawn_blocking(move || ctx.store.aside(&name)).await {
            Ok(Ok(a)) => a,
            _ => return Vec::new(),
        };
        let now = Now::real().unix;
        all.into_iter()
            .filter(|a| {
                let wait = if a.attempts >= self::core::ASIDE_AFTER {
                    300
                } else {
                    1i64 << a.attempts.min(8)
                };
                a.since + wait <= now || a.attempts < 3
            })
            .take(crate::net::protocol::MAX_BATCH_ITEMS)
            .map(|a| Incoming {
                wire: WireItem {
                    item: a.item,
                    inline: None,
                },
                from: (a.peer, a.peer_inc),
                attempts: a.attempts,
            })
            .collect()
    }

    /// Save a batch's commit (blocking), then tell the node's services.
    async fn commit(&self, c: self::core::Commit) -> Result<Saved, String> {
        let (ctx, g, dom) = (self.ctx.clone(), self.g.clone(), self.dom.clone());
        let self::core::Commit {
            mut changes,
            extras,
            touched,
            applied,
            bytes,
            from,
        } = c;
        let r = tokio::task::spawn_blocking(move || {
            dom.before_commit(&touched, &mut changes);
            let head = ctx.store.commit(g.name(), changes, extras)?;
            let aside = ctx.store.aside(g.name())?.len() as u64;
            Ok::<_, StoreError>(Saved { head, aside })
        })
        .await;
        let saved = match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.dom.commit_failed();
                return Err(e.to_string());
            }
            Err(e) => {
                self.dom.commit_failed();
                return Err(format!("the commit task failed: {e}"));
            }
        };
        let group = self.name();
        let n = applied.len() as u64;
        self.state.applied.fetch_add(n, Ordering::Relaxed);
        self.state.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.ctx.metrics.changes_applied(group, n);
        if let Some((peer, through)) = &from {
            self.observe_latency(peer, *through, n);
        }
        self.ctx.changed(group, &applied, false);
        self.dom.after_commit(&applied);
        let took = self.batch_t0.1.elapsed();
        if n >= 100 || bytes >= 16 << 20 || took >= Duration::from_secs(1) {
            tracing::info!(
                group = %group,
                "received {n} changes ({}) from {} in {:.1} s",
                crate::engine::status::human_bytes(bytes),
                from.as_ref().map_or("set-aside retries", |f| f.0.as_str()),
                took.as_secs_f64()
            );
        }
        Ok(saved)
    }

    /// Latency from the origin's commit (its sequence number is its clock in µs) to here.
    fn observe_latency(&self, _peer: &str, through: u64, n: u64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        if through > 1_000_000_000_000_000 && now > through {
            for _ in 0..n.min(64) {
                self.ctx
                    .metrics
                    .observe_apply_latency(self.name(), Duration::from_micros(now - through));
            }
        }
    }

    /// The link a batch came on, if it is still the peer's current one.
    fn link_of(&self, source: &Source) -> Option<Arc<Link>> {
        self.ctx
            .links
            .get(&source.peer)
            .filter(|l| l.conn == source.conn)
    }

    async fn ack(&self, source: &Source, through: u64) {
        let Some(link) = self.link_of(source) else {
            // the link was replaced: the new one resumes from the position saved with it
            return;
        };
        {
            let mut r = lock(&link.remote);
            let e = r.entry(self.name().to_string()).or_default();
            e.applied = e.applied.max(through);
        }
        let _ = link
            .send(Msg::Ack {
                group: self.name().to_string(),
                through,
            })
            .await;
    }

    async fn refuse(&self, source: &Source, key: &[u8], reason: &str) {
        tracing::error!(peer = %source.peer, group = %self.name(), "{reason}; closing the link");
        self.ctx
            .audit_refused_item(self.name(), key, &source.peer, reason);
        if let Some(link) = self.link_of(source) {
            let _ = link
                .send(Msg::Bye {
                    reason: reason.to_string(),
                })
                .await;
            link.close();
        }
    }

    /// Tombstones every member confirmed, and the backup bound.
    async fn collect(&self) {
        let ctx = self.ctx.clone();
        let g = self.g.clone();
        let _ = tokio::task::spawn_blocking(move || collect(&ctx, &g)).await;
    }
}

/// Collect the tombstones every member acknowledged (blocking) and enforce the backup bound.
fn collect(ctx: &Ctx, g: &GroupRt) {
    let name = g.name();
    let mut upto = u64::MAX;
    for p in &g.peers {
        upto = upto.min(ctx.store.acked(p, name).unwrap_or(0));
    }
    if upto > 0 && upto != u64::MAX {
        match ctx.store.collect_tombstones(name, upto) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(group = name, "collected {n} tombstones every member has"),
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
}
