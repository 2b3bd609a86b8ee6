//! A running node: the shared state of one daemon (or of an in-process `sync`), the engine that
//! serialises every change to the disk and the index, and the tasks around it (listener,
//! dialers, watcher, periodic rescans, retries).
//!
//! Data flow: the watcher (or a rescan, or `mark`) reports paths → the engine scans them and
//! commits new versions to the index → each peer link's pump sees the new sequence number and
//! streams the records → the peer's engine applies them (see `apply`) and acknowledges.
//!
//! Invariants: only the engine task writes file entries to the index and changes synced paths,
//! so a local scan and a remote apply never interleave on one path; a group whose path is
//! missing or emptied is stopped on this node (no scan results, no applies) until it is back;
//! the daemon dials only peers whose names sort after its own (both sides accept), so two
//! daemons keep one link; an in-process `sync` dials everyone.

use crate::apply;
use crate::config::{Config, GroupConfig, NodeConfig};
use crate::filter::Filter;
use crate::identity::Identity;
use crate::index::{Index, IndexError};
use crate::owners::OwnerMap;
use crate::peer::PeerHandle;
use crate::protocol::WireRecord;
use crate::record::{Entry, Hash, Record};
use crate::scan::ScanCtx;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("node {0:?} is not defined in the config (use --node NAME or set the hostname)")]
    UnknownNode(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(
        "this node's key has id {actual}, but the config says [nodes.{node}] id = {configured}"
    )]
    IdMismatch {
        node: String,
        actual: String,
        configured: String,
    },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("group {group}: {msg}")]
    Group { group: String, msg: String },
}

/// One group as this node runs it.
pub struct GroupRt {
    pub cfg: GroupConfig,
    pub filter: Filter,
    /// The other members.
    pub peers: Vec<String>,
    /// This node is a receive-only member (replica) of the group.
    pub replica: bool,
    /// A replica's first scan: what is already there is adopted (with an empty version, so
    /// the group's versions replace it), not reported as drift.
    pub adopt: std::sync::atomic::AtomicBool,
}

impl GroupRt {
    /// A group as node `this_node` runs it.
    pub fn new(cfg: &GroupConfig, this_node: &str) -> Result<GroupRt, String> {
        Ok(GroupRt {
            filter: Filter::new(cfg)?,
            peers: cfg
                .members()
                .filter(|m| *m != this_node)
                .map(String::from)
                .collect(),
            replica: cfg.replicas.iter().any(|r| r == this_node),
            adopt: std::sync::atomic::AtomicBool::new(false),
            cfg: cfg.clone(),
        })
    }

    /// Does `node` only receive in this group?
    pub fn is_replica(&self, node: &str) -> bool {
        self.cfg.replicas.iter().any(|r| r == node)
    }
}

/// Live state of a group on this node.
#[derive(Debug, Default, Clone)]
pub struct GroupState {
    pub stopped: Option<String>,
    /// Paths reported by the watcher and not scanned yet.
    pub pending_local: usize,
    /// Remote records that could not be applied yet.
    pub retry: usize,
    /// Local changes on a replica (drift) not resolved yet: path -> what happened.
    pub drift: std::collections::BTreeMap<String, String>,
}

/// Work for the engine.
pub enum Work {
    /// Paths to scan: (logical path, recursive). Unless `settled`, deletions found are
    /// looked at again after [`crate::watch::DELETE_SETTLE`] before they are recorded, so the
    /// start of an `rm -rf` of a group path is never sent before the guard can see it whole.
    Dirty {
        group: String,
        paths: Vec<(String, bool)>,
        settled: bool,
    },
    Rescan {
        groups: Option<Vec<String>>,
        reply: Option<oneshot::Sender<()>>,
    },
    Remote {
        peer: Arc<PeerHandle>,
        group: String,
        records: Vec<WireRecord>,
        through: u64,
    },
    Retry,
    Marker {
        reply: oneshot::Sender<()>,
    },
    Resolve {
        path: String,
        keep: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Put the group's version back over drift on a replica.
    Revert {
        group: String,
        paths: Vec<String>,
    },
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Dirty { .. } => "dirty",
            Work::Rescan { .. } => "rescan",
            Work::Remote { .. } => "remote",
            Work::Retry => "retry",
            Work::Marker { .. } => "marker",
            Work::Resolve { .. } => "resolve",
            Work::Revert { .. } => "revert",
        }
    }
}

/// How to run a node.
pub struct NodeOptions {
    pub config: Config,
    pub name: String,
    pub state_dir: PathBuf,
    /// Accept connections (daemon) or not (in-process sync).
    pub listen: bool,
    /// Watch for changes live.
    pub watch: bool,
    /// Dial every peer (in-process sync) or only those after us (daemon).
    pub dial_all: bool,
    /// Print what would change instead of changing it.
    pub dry_run: bool,
}

/// State shared by all tasks of a node.
pub struct Shared {
    pub name: String,
    pub cfg: Config,
    pub me: NodeConfig,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub ident: Identity,
    pub index: Index,
    pub owners: OwnerMap,
    pub groups: Vec<GroupRt>,
    pub gstate: Mutex<HashMap<String, GroupState>>,
    pub(crate) last_seen: Mutex<HashMap<String, SystemTime>>,
    peers: Mutex<HashMap<String, Arc<PeerHandle>>>,
    seq_tx: watch::Sender<u64>,
    engine_tx: mpsc::UnboundedSender<Work>,
    shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
    audit: crate::audit::Audit,
    pub backups: crate::backup::Backups,
    pub started: Instant,
    pub dry_run: bool,
    pub counters: Counters,
    /// This node's key in version vectors (see [`ScanCtx::vv_key`]).
    pub vv_key: String,
}

/// Transfer counters of this process, for `status --json` and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chunk bytes received from peers.
    pub chunk_bytes_in: AtomicU64,
    /// Chunk bytes sent to peers.
    pub chunk_bytes_out: AtomicU64,
    /// Small-file content received inside index batches.
    pub inline_bytes_in: AtomicU64,
    /// Chunk bytes copied from files this node already had.
    pub reused_bytes: AtomicU64,
    /// Records received from peers.
    pub records_in: AtomicU64,
}

/// Snapshot of [`Counters`].
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct TransferStats {
    pub chunk_bytes_in: u64,
    pub chunk_bytes_out: u64,
    pub inline_bytes_in: u64,
    pub reused_bytes: u64,
    pub records_in: u64,
}

impl Counters {
    pub fn snapshot(&self) -> TransferStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransferStats {
            chunk_bytes_in: g(&self.chunk_bytes_in),
            chunk_bytes_out: g(&self.chunk_bytes_out),
            inline_bytes_in: g(&self.inline_bytes_in),
            reused_bytes: g(&self.reused_bytes),
            records_in: g(&self.records_in),
        }
    }
}

impl Shared {
    pub fn group(&self, name: &str) -> Option<&GroupRt> {
        self.groups.iter().find(|g| g.cfg.name == name)
    }

    /// Groups this node shares with `peer`.
    pub fn shared_groups(&self, peer: &str) -> Vec<&GroupRt> {
        self.groups
            .iter()
            .filter(|g| g.peers.iter().any(|p| p == peer))
            .collect()
    }

    /// Every peer of this node.
    pub fn all_peers(&self) -> BTreeSet<String> {
        self.groups
            .iter()
            .flat_map(|g| g.peers.iter().cloned())
            .collect()
    }

    /// The node name whose configured id is `id`.
    pub fn node_by_id(&self, id: &str) -> Option<String> {
        self.cfg
            .nodes
            .values()
            .find(|n| n.id.as_deref().is_some_and(|i| i.eq_ignore_ascii_case(id)))
            .map(|n| n.name.clone())
    }

    pub(crate) fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn register_peer(&self, h: Arc<PeerHandle>) -> Option<Arc<PeerHandle>> {
        lock(&self.peers).insert(h.name.clone(), h)
    }

    pub(crate) fn unregister_peer(&self, name: &str, conn: u64) {
        let mut p = lock(&self.peers);
        if p.get(name).is_some_and(|h| h.conn == conn) {
            p.remove(name);
        }
    }

    pub fn peer(&self, name: &str) -> Option<Arc<PeerHandle>> {
        lock(&self.peers)
            .get(name)
            .cloned()
            .filter(|h| !h.is_closed())
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn seq_rx(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    pub fn publish_seq(&self, seq: u64) {
        self.seq_tx.send_replace(seq);
    }

    pub fn submit(&self, w: Work) {
        let _ = self.engine_tx.send(w);
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn audit(&self, group: &str, path: &str, kind: &str, rec: &Record) {
        self.audit
            .write(group, path, kind, &rec.origin, &rec.version.display());
    }

    pub(crate) fn audit_line(&self, group: &str, path: &str, kind: &str) {
        self.audit.write(group, path, kind, &self.name, "");
    }

    pub(crate) fn audit_refused(&self, peer: &str, msg: &str) {
        self.audit.write_to("", msg, "refused", "", "", Some(peer));
    }

    pub(crate) fn audit_sent(&self, group: &str, rec: &Record, peer: &str) {
        self.audit.write_to(
            group,
            &rec.path,
            "sent",
            &rec.origin,
            &rec.version.display(),
            Some(peer),
        );
    }

    fn set_stopped(&self, group: &str, reason: Option<String>) -> bool {
        let mut gs = lock(&self.gstate);
        let st = gs.entry(group.to_string()).or_default();
        let changed = st.stopped != reason;
        if changed {
            match &reason {
                Some(r) => tracing::error!(group, "group stopped on this node: {r}"),
                None => tracing::warn!(group, "group path is back; group resumed"),
            }
        }
        st.stopped = reason;
        changed
    }

    pub fn is_stopped(&self, group: &str) -> bool {
        lock(&self.gstate)
            .get(group)
            .is_some_and(|s| s.stopped.is_some())
    }

    fn scan_ctx<'a>(&'a self, g: &'a GroupRt) -> ScanCtx<'a> {
        ScanCtx {
            node: &self.name,
            vv_key: &self.vv_key,
            root: &self.root,
            group: &g.cfg,
            filter: &g.filter,
            index: &self.index,
            owners: &self.owners,
        }
    }

    /// Make the index describe what is on disk at `path` right now; returns the entry.
    pub fn reconcile_path(&self, g: &GroupRt, path: &str) -> Result<Option<Entry>, IndexError> {
        let local = self.index.get(&g.cfg.name, path)?;
        let real = crate::paths::real(&self.root, path);
        let md = std::fs::symlink_metadata(&real).ok();
        let fine = match (&local, &md) {
            (None, None) => true,
            // a local deletion is left to the watcher and the rescans, which see a whole
            // burst and apply the mass-deletion guard; a remote update of the path simply wins
            (Some(_), None) => true,
            (Some(e), Some(md)) => crate::scan::quick_match(e, md),
            (None, Some(_)) => false,
        };
        if fine {
            return Ok(local);
        }
        let Ok(gp) = crate::paths::validate(path, &g.cfg.paths) else {
            return Ok(local);
        };
        let res = self.scan_ctx(g).scan(gp, path, false)?;
        if res.stopped.is_some() {
            return Ok(local);
        }
        self.commit_local(g, res.changes)?;
        self.index.get(&g.cfg.name, path)
    }

    /// Read a chunk from this node's own files (any location the index knows), verified.
    pub fn read_local_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        self.read_chunk(group, hash).or_else(|| {
            let loc = self.index.chunk_location(hash).ok()??;
            self.read_chunk(&loc.group, hash)
        })
    }

    /// Ask every connected peer of `group` (other than `skip`) for one chunk.
    pub async fn fetch_chunk_anywhere(
        &self,
        group: &str,
        hash: &Hash,
        len: u32,
        skip: Option<&str>,
    ) -> Option<Vec<u8>> {
        let g = self.group(group)?;
        for p in &g.peers {
            if Some(p.as_str()) == skip {
                continue;
            }
            let Some(h) = self.peer(p) else { continue };
            let Some(rx) = h.get_chunks(group, vec![*hash]).await else {
                continue;
            };
            if let Ok(Ok(mut v)) = tokio::time::timeout(Duration::from_secs(30), rx).await
                && let Some(Some(d)) = v.pop()
                && d.len() == len as usize
                && crate::chunk::hash(&d) == *hash
            {
                return Some(d);
            }
        }
        None
    }

    /// Keep the current content of a file about to be overwritten or deleted.
    pub fn backup_before_change(&self, group: &str, place: &crate::safefs::Place, local: &Entry) {
        let Some(g) = self.group(group) else { return };
        if g.cfg.backup_generations == 0 {
            return;
        }
        if let Err(e) = self
            .backups
            .keep(group, place, local, g.cfg.backup_generations)
        {
            tracing::warn!(group, "backup of {} failed: {e}", local.rec.path);
        } else {
            self.audit.write(
                group,
                &local.rec.path,
                "backup",
                &local.rec.origin,
                &local.rec.version.display(),
            );
        }
    }
}

/// A started node.
pub struct Node {
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Open the index, scan, and start every task.
    pub async fn start(opts: NodeOptions) -> Result<Node, NodeError> {
        let cfg = opts.config;
        let me = cfg
            .node(&opts.name)
            .cloned()
            .ok_or_else(|| NodeError::UnknownNode(opts.name.clone()))?;
        std::fs::create_dir_all(&opts.state_dir).map_err(|source| NodeError::StateDir {
            path: opts.state_dir.clone(),
            source,
        })?;
        let key_path = me
            .key
            .clone()
            .unwrap_or_else(|| opts.state_dir.join("node.key"));
        let ident = Identity::load(&key_path)?;
        if let Some(id) = &me.id
            && !id.eq_ignore_ascii_case(&ident.id())
        {
            return Err(NodeError::IdMismatch {
                node: me.name.clone(),
                actual: ident.id(),
                configured: id.clone(),
            });
        }
        let index = Index::open(&opts.state_dir.join("index.redb"))?;
        let index_id = index.index_id();
        let mut groups = Vec::new();
        for g in cfg.groups_of(&opts.name) {
            groups.push(GroupRt::new(g, &opts.name).map_err(|msg| NodeError::Group {
                group: g.name.clone(),
                msg,
            })?);
        }
        for g in groups.iter().filter(|g| g.replica) {
            let mut fresh = true;
            for gp in &g.cfg.paths {
                if index.get(&g.cfg.name, gp)?.is_some() {
                    fresh = false;
                }
            }
            g.adopt.store(fresh, Ordering::Relaxed);
        }
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let (seq_tx, _) = watch::channel(index.max_seq()?);
        let (shutdown, _) = watch::channel(false);
        let audit = crate::audit::Audit::open(&opts.state_dir.join("audit.log"));
        let backups = crate::backup::Backups::new(&opts.state_dir.join("backups"));
        match backups.gc() {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} backup objects no generation refers to"),
            Err(e) => tracing::warn!("backup store: {e}"),
        }
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            root: me.root.clone(),
            me: me.clone(),
            cfg: cfg.clone(),
            state_dir: opts.state_dir.clone(),
            ident,
            index,
            owners: OwnerMap::default(),
            groups,
            gstate: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            seq_tx,
            engine_tx,
            shutdown,
            next_conn: AtomicU64::new(1),
            audit,
            backups,
            started: Instant::now(),
            dry_run: opts.dry_run,
            counters: Counters::default(),
            vv_key: format!("{}.{:08x}", opts.name, index_id as u32),
        });
        let mut tasks = Vec::new();
        // the watcher starts before the initial scan so nothing falls between them
        if opts.watch {
            let watched: Vec<&GroupRt> = shared.groups.iter().filter(|g| g.cfg.watch).collect();
            if !watched.is_empty() {
                tasks.push(crate::watch::spawn(shared.clone()));
            }
        }
        // initial scan, synchronously, before any peer sees our index
        {
            let s = shared.clone();
            tokio::task::spawn_blocking(move || s.full_scan(None))
                .await
                .map_err(|e| NodeError::Group {
                    group: "*".into(),
                    msg: e.to_string(),
                })??;
            for g in &shared.groups {
                g.adopt.store(false, Ordering::Relaxed);
            }
        }
        let engine_task = tokio::spawn(engine(shared.clone(), engine_rx));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = engine_task.await
                && e.is_panic()
            {
                // the engine owns every change to disk and index: without it the node would
                // silently stop syncing, so stop the process and let the service manager
                // restart it (the index is transactional, the disk is rescanned on start)
                tracing::error!("internal error: the engine crashed ({e}); exiting");
                std::process::exit(70);
            }
        }));
        if opts.listen {
            let addr = me.listen_addr();
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!("node {} listening on {addr}", shared.name);
            tasks.push(tokio::spawn(listen(shared.clone(), listener)));
        }
        for p in shared.all_peers() {
            if opts.dial_all || p > shared.name {
                tasks.push(tokio::spawn(dialer(shared.clone(), p)));
            }
        }
        tasks.push(tokio::spawn(timers(shared.clone())));
        Ok(Node { shared, tasks })
    }

    /// Stop every task.
    pub async fn stop(self) {
        self.shared.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        for (i, t) in self.tasks.into_iter().enumerate() {
            let t0 = Instant::now();
            let r = tokio::time::timeout_at(deadline, t).await;
            tracing::trace!(
                "task {i} stopped in {:?} ({})",
                t0.elapsed(),
                if r.is_ok() { "done" } else { "timed out" }
            );
        }
    }
}

impl Shared {
    /// Scan every path of the given groups (all when `None`) and commit what changed.
    pub fn full_scan(&self, only: Option<&[String]>) -> Result<(), IndexError> {
        for g in &self.groups {
            if only.is_some_and(|o| !o.iter().any(|n| n == &g.cfg.name)) {
                continue;
            }
            let mut stopped = None;
            let was_stopped = self.is_stopped(&g.cfg.name);
            for gp in &g.cfg.paths {
                let t0 = Instant::now();
                if was_stopped && let Some(r) = self.scan_ctx(g).resume_check(gp)? {
                    stopped = Some(r);
                    continue;
                }
                let res = self.scan_ctx(g).scan(gp, gp, true)?;
                for e in &res.errors {
                    tracing::warn!(group = %g.cfg.name, "scan: {e}");
                }
                for s in &res.skipped {
                    tracing::info!(group = %g.cfg.name, "skipped (not a file, directory or symlink, or unsupported name): {s}");
                }
                if let Some(r) = res.stopped {
                    stopped = Some(r);
                    continue;
                }
                let n = res.announced();
                if self.dry_run {
                    for c in res.changes.iter().filter(|c| c.announce) {
                        let what = if c.entry.rec.is_deleted() {
                            "deleted "
                        } else {
                            "changed "
                        };
                        println!("local {what} {}", c.entry.rec.path);
                    }
                    continue;
                }
                self.commit_local(g, res.changes)?;
                for u in res.unstable {
                    self.submit(Work::Dirty {
                        group: g.cfg.name.clone(),
                        paths: vec![(u, false)],
                        settled: false,
                    });
                }
                tracing::debug!(group = %g.cfg.name, "scanned {gp} in {:?}: {n} changes", t0.elapsed());
            }
            if self.set_stopped(&g.cfg.name, stopped.clone()) && stopped.is_none() {
                // resumed: reconnect so peers resend what we could not apply meanwhile
                for p in &g.peers {
                    if let Some(h) = self.peer(p) {
                        h.close();
                    }
                }
            }
        }
        Ok(())
    }

    /// Scan paths the watcher reported; returns (unstable paths, deletions deferred).
    fn scan_dirty(
        &self,
        group: &str,
        paths: &[(String, bool)],
        settled: bool,
    ) -> (Vec<String>, Vec<String>) {
        let Some(g) = self.group(group) else {
            return (vec![], vec![]);
        };
        let mut unstable = Vec::new();
        let mut changes = Vec::new();
        let mut stopped = None;
        for (p, recursive) in paths {
            let Ok(gp) = crate::paths::validate(p, &g.cfg.paths) else {
                continue;
            };
            match self.scan_ctx(g).scan(gp, p, *recursive) {
                Ok(res) => {
                    if let Some(r) = res.stopped {
                        stopped = Some(r);
                        continue;
                    }
                    changes.extend(res.changes);
                    unstable.extend(res.unstable);
                    for e in res.errors {
                        tracing::warn!(group, "scan: {e}");
                    }
                }
                Err(e) => tracing::error!(group, "scan of {p}: {e}"),
            }
        }
        if stopped.is_some() {
            self.set_stopped(group, stopped);
            return (vec![], vec![]);
        }
        if self.is_stopped(group) {
            // a targeted scan found the group path usable again: confirm with a full scan
            let _ = self.full_scan(Some(&[group.to_string()]));
            return (unstable, vec![]);
        }
        let mut deferred = Vec::new();
        if !settled {
            changes.retain(|c| {
                if c.announce && c.entry.rec.is_deleted() {
                    deferred.push(c.entry.rec.path.clone());
                    false
                } else {
                    true
                }
            });
        }
        // tombstones and new versions of the same path may repeat: keep the last per path
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, c) in changes.iter().enumerate() {
            last.insert(c.entry.rec.path.clone(), i);
        }
        let changes: Vec<_> = changes
            .into_iter()
            .enumerate()
            .filter(|(i, c)| last.get(&c.entry.rec.path) == Some(i))
            .map(|(_, c)| c)
            .collect();
        if !changes.is_empty() {
            // new content first, deletions last: a rename's receiver still finds the old copy
            let (mut live, dead): (Vec<_>, Vec<_>) =
                changes.into_iter().partition(|c| !c.entry.rec.is_deleted());
            live.extend(dead);
            for c in live.iter().filter(|c| c.announce) {
                self.audit(
                    group,
                    &c.entry.rec.path,
                    if c.entry.rec.is_deleted() {
                        "local-delete"
                    } else {
                        "local-change"
                    },
                    &c.entry.rec,
                );
            }
            if let Err(e) = self.commit_local(g, live) {
                tracing::error!(group, "index commit: {e}");
            }
        }
        (unstable, deferred)
    }
}

impl Shared {
    /// Store what a local scan found. On a replica, new versions are drift instead: they are
    /// reported, their content kept, and (with `on_drift = "revert"`) the group's version is
    /// put back; nothing of them is ever announced.
    pub fn commit_local(
        &self,
        g: &GroupRt,
        changes: Vec<crate::index::Change>,
    ) -> Result<(), IndexError> {
        let (drift, mut store): (Vec<_>, Vec<_>) = if g.replica {
            let adopt = g.adopt.load(Ordering::Relaxed);
            changes.into_iter().partition(|c| {
                let root = g.cfg.paths.contains(&c.entry.rec.path);
                let unknown = self
                    .index
                    .get(&g.cfg.name, &c.entry.rec.path)
                    .ok()
                    .flatten()
                    .is_none();
                c.announce && !((adopt || root) && unknown)
            })
        } else {
            (Vec::new(), changes)
        };
        if g.replica {
            for c in store.iter_mut().filter(|c| c.announce) {
                // adopted: known to be here, but no version of ours
                c.entry.rec.version = crate::version::VersionVector::default();
                c.announce = false;
            }
        }
        if !store.is_empty() {
            let seq = self.index.commit(&g.cfg.name, store)?;
            self.publish_seq(seq);
        }
        if !drift.is_empty() {
            self.record_drift(g, drift);
        }
        Ok(())
    }

    fn record_drift(&self, g: &GroupRt, drift: Vec<crate::index::Change>) {
        use crate::config::OnDrift;
        let group = g.cfg.name.as_str();
        let mut revert = Vec::new();
        for c in drift {
            let path = c.entry.rec.path.clone();
            let known = self.index.get(group, &path).ok().flatten();
            let what = if c.entry.rec.is_deleted() {
                "deleted locally"
            } else if known.as_ref().is_none_or(|e| e.rec.is_deleted()) {
                "added locally"
            } else {
                "changed locally"
            };
            let new = {
                let mut gs = lock(&self.gstate);
                let st = gs.entry(group.to_string()).or_default();
                st.drift.insert(path.clone(), what.to_string()).as_deref() != Some(what)
            };
            if new {
                let action = match g.cfg.on_drift {
                    OnDrift::Revert => "putting the group's version back",
                    OnDrift::Keep => "left alone until resolved (on_drift = keep)",
                };
                tracing::warn!(group, "drift on this replica: {path} {what}; {action}");
                self.audit.write(group, &path, "drift", &self.name, what);
                if c.entry.rec.kind() == Some(crate::record::Kind::File)
                    && g.cfg.backup_generations > 0
                    && let Ok(gp) = crate::paths::validate(&path, &g.cfg.paths)
                    && let Ok(place) = crate::safefs::resolve(&self.root, gp, &path, false)
                    && let Err(e) =
                        self.backups
                            .keep(group, &place, &c.entry, g.cfg.backup_generations)
                {
                    tracing::warn!(group, "keeping the drifted content of {path}: {e}");
                }
            }
            if g.cfg.on_drift == OnDrift::Revert {
                revert.push(path);
            }
        }
        if !revert.is_empty() {
            self.submit(Work::Revert {
                group: group.to_string(),
                paths: revert,
            });
        }
    }

    /// Paths of `group` with unresolved drift.
    pub fn drifted(&self, group: &str) -> Vec<String> {
        lock(&self.gstate)
            .get(group)
            .map(|s| s.drift.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Drift on `path` is resolved (reverted or accepted).
    pub fn clear_drift(&self, group: &str, path: &str) {
        if let Some(st) = lock(&self.gstate).get_mut(group) {
            st.drift.remove(path);
        }
    }
}

struct RetryState {
    records: Vec<WireRecord>,
    peer: Arc<PeerHandle>,
    through: u64,
    attempts: u32,
}

async fn engine(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Work>) {
    let mut shutdown = shared.shutdown_rx();
    let mut retry: HashMap<(String, String), RetryState> = HashMap::new();
    loop {
        let w = tokio::select! {
            w = rx.recv() => match w { Some(w) => w, None => return },
            _ = crate::node::until_set(&mut shutdown) => return,
        };
        tracing::trace!("engine: {}", w.name());
        match w {
            Work::Dirty {
                group,
                paths,
                settled,
            } => {
                let s = shared.clone();
                let g2 = group.clone();
                let (unstable, deferred) =
                    tokio::task::spawn_blocking(move || s.scan_dirty(&g2, &paths, settled))
                        .await
                        .unwrap_or_default();
                if !deferred.is_empty() {
                    let s = shared.clone();
                    let g = group.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(crate::watch::DELETE_SETTLE).await;
                        s.submit(Work::Dirty {
                            group: g,
                            paths: deferred.into_iter().map(|p| (p, true)).collect(),
                            settled: true,
                        });
                    });
                }
                if let Some(st) = lock(&shared.gstate).get_mut(&group) {
                    st.pending_local = 0;
                }
                if !unstable.is_empty() {
                    let s = shared.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        s.submit(Work::Dirty {
                            group,
                            paths: unstable.into_iter().map(|p| (p, false)).collect(),
                            settled: false,
                        });
                    });
                }
            }
            Work::Rescan { groups, reply } => {
                let s = shared.clone();
                let r = tokio::task::spawn_blocking(move || s.full_scan(groups.as_deref())).await;
                if let Ok(Err(e)) = r {
                    tracing::error!("rescan: {e}");
                }
                if let Some(tx) = reply {
                    let _ = tx.send(());
                }
            }
            Work::Remote {
                peer,
                group,
                records,
                through,
            } => {
                peer.queued_batches
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                let key = (peer.name.clone(), group.clone());
                let Some(g) = shared.group(&group) else {
                    continue;
                };
                if shared.is_stopped(&group) {
                    // not applied: do not remember the position, the peer resends later
                    let _ = peer
                        .send(crate::protocol::Msg::Ack { group, through })
                        .await;
                    continue;
                }
                let out =
                    apply::apply_batch(&shared, Some(&peer), g, records, shared.dry_run).await;
                if shared.dry_run {
                    let _ = peer
                        .send(crate::protocol::Msg::Ack { group, through })
                        .await;
                    continue;
                }
                if let Some(r) = out.refused {
                    tracing::error!(peer = %peer.name, group = %group, "{r}; closing the link");
                    shared.audit_refused(&peer.name, &r.to_string());
                    peer.close();
                    continue;
                }
                let _ = peer
                    .send(crate::protocol::Msg::Ack {
                        group: group.clone(),
                        through,
                    })
                    .await;
                if out.failed.is_empty() {
                    let mut r = lock(&peer.remote);
                    let e = r.entry(group.clone()).or_default();
                    e.1 = e.1.max(through);
                }
                let entry = retry.entry(key.clone());
                use std::collections::hash_map::Entry as E;
                match entry {
                    E::Occupied(mut o) => {
                        let st = o.get_mut();
                        st.records.extend(out.failed);
                        st.through = through;
                        st.peer = peer.clone();
                    }
                    E::Vacant(v) => {
                        if out.failed.is_empty() {
                            let _ = shared.index.set_peer_position(
                                &peer.name,
                                &group,
                                peer.remote_index_id,
                                through,
                            );
                        } else {
                            v.insert(RetryState {
                                records: out.failed,
                                peer: peer.clone(),
                                through,
                                attempts: 0,
                            });
                        }
                    }
                }
                update_retry_counts(&shared, &retry);
            }
            Work::Retry => {
                let keys: Vec<_> = retry.keys().cloned().collect();
                for key in keys {
                    let Some(mut st) = retry.remove(&key) else {
                        continue;
                    };
                    let Some(g) = shared.group(&key.1) else {
                        continue;
                    };
                    if st.peer.is_closed() || shared.is_stopped(&key.1) {
                        // the peer resends from the remembered position when it reconnects
                        continue;
                    }
                    st.attempts += 1;
                    let recs = std::mem::take(&mut st.records);
                    let out = apply::apply_batch(&shared, Some(&st.peer), g, recs, false).await;
                    if out.failed.is_empty() {
                        let _ = shared.index.set_peer_position(
                            &key.0,
                            &key.1,
                            st.peer.remote_index_id,
                            st.through,
                        );
                    } else if st.attempts < 30 {
                        st.records = out.failed;
                        retry.insert(key, st);
                    } else {
                        tracing::error!(peer = %key.0, group = %key.1, "giving up on {} records for now; they come again on reconnect", out.failed.len());
                        st.peer.close();
                    }
                }
                update_retry_counts(&shared, &retry);
            }
            Work::Marker { reply } => {
                let _ = reply.send(());
            }
            Work::Revert { group, paths } => {
                if let Some(g) = shared.group(&group) {
                    apply::revert(&shared, g, paths).await;
                }
            }
            Work::Resolve { path, keep, reply } => {
                let r = match shared.group_of_path(&path) {
                    None => Err(format!("{path} is not in any group of this node")),
                    Some((gname, logical)) => match shared.group(&gname) {
                        Some(g) => apply::resolve(&shared, g, &logical, &keep).await,
                        None => Err(format!("unknown group {gname}")),
                    },
                };
                let _ = reply.send(r);
            }
        }
    }
}

fn update_retry_counts(shared: &Shared, retry: &HashMap<(String, String), RetryState>) {
    let mut gs = lock(&shared.gstate);
    for st in gs.values_mut() {
        st.retry = 0;
    }
    for ((_, g), st) in retry {
        gs.entry(g.clone()).or_default().retry += st.records.len();
    }
}

/// Handshakes in progress at most; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 256;

async fn listen(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let mut shutdown = shared.shutdown_rx();
    // bound the cost of unauthenticated connections
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::node::until_set(&mut shutdown) => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let s = shared.clone();
        tokio::spawn(async move {
            let allowed = |id: &str| s.node_by_id(id).is_some_and(|n| n != s.name);
            let link = crate::transport::accept(stream, &s.ident, allowed).await;
            drop(permit);
            match link {
                Ok(link) => {
                    let Some(peer) = s.node_by_id(&link.remote_id) else {
                        return;
                    };
                    if s.shared_groups(&peer).is_empty() {
                        tracing::warn!("refused {peer} from {addr}: no group in common");
                        return;
                    }
                    if let Err(e) = crate::peer::run_link(s.clone(), link, peer.clone()).await {
                        tracing::debug!(peer = %peer, "link ended: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!("refused connection from {addr}: {e}");
                    s.audit
                        .write("", &addr.to_string(), "refused", "", &e.to_string());
                }
            }
        });
    }
}

/// Connect to `peer` once; returns when the link ends.
pub async fn connect_once(
    shared: &Arc<Shared>,
    peer: &str,
) -> Result<crate::transport::Link, String> {
    let nc = shared.cfg.node(peer).ok_or("unknown peer")?;
    let id = nc
        .id
        .clone()
        .ok_or_else(|| format!("[nodes.{peer}] has no id"))?;
    let stream = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&nc.address),
    )
    .await
    .map_err(|_| format!("connect to {} timed out", nc.address))?
    .map_err(|e| format!("connect to {}: {e}", nc.address))?;
    crate::transport::connect(stream, &shared.ident, peer, &id)
        .await
        .map_err(|e| e.to_string())
}

async fn dialer(shared: Arc<Shared>, peer: String) {
    let mut shutdown = shared.shutdown_rx();
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if shared.peer(&peer).is_none() {
            match connect_once(&shared, &peer).await {
                Ok(link) => {
                    backoff = Duration::from_millis(100);
                    warned = false;
                    let s = shared.clone();
                    let p = peer.clone();
                    let r = crate::peer::run_link(s, link, p).await;
                    if let Err(e) = r {
                        tracing::info!(peer = %peer, "link ended: {e}");
                    }
                    continue;
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(peer = %peer, "cannot reach peer: {e} (retrying)");
                        warned = true;
                    } else {
                        tracing::debug!(peer = %peer, "cannot reach peer: {e}");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = crate::node::until_set(&mut shutdown) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn timers(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown_rx();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_rescan: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = crate::node::until_set(&mut shutdown) => return,
        }
        shared.submit(Work::Retry);
        for g in shared
            .groups
            .iter()
            .filter(|g| g.replica && g.cfg.on_drift == crate::config::OnDrift::Revert)
        {
            let paths = shared.drifted(&g.cfg.name);
            if !paths.is_empty() {
                shared.submit(Work::Revert {
                    group: g.cfg.name.clone(),
                    paths,
                });
            }
        }
        for g in &shared.groups {
            let due = if shared.is_stopped(&g.cfg.name) {
                // check every few seconds whether the group path is back
                Some(Duration::from_secs(4))
            } else {
                g.cfg.rescan
            };
            let Some(every) = due else { continue };
            let last = last_rescan
                .entry(g.cfg.name.clone())
                .or_insert_with(Instant::now);
            if last.elapsed() >= every {
                *last = Instant::now();
                shared.submit(Work::Rescan {
                    groups: Some(vec![g.cfg.name.clone()]),
                    reply: None,
                });
            }
        }
    }
}

/// Result of a `sync` run.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct SyncReport {
    pub unreachable: Vec<String>,
    pub conflicts: usize,
    pub stopped: Vec<String>,
    pub pending: usize,
    /// Unresolved conflicts that remain.
    #[serde(default)]
    pub unresolved: Vec<String>,
}

impl Shared {
    /// Rescan and reconcile with every reachable peer of `groups` (all when empty).
    pub async fn sync(self: &Arc<Self>, groups: &[String], timeout: Duration) -> SyncReport {
        self.sync_opts(groups, timeout, true).await
    }

    /// As [`Shared::sync`]; `rescan` false when the caller has just scanned (a node started
    /// in-process for one `sync` scans at start).
    pub async fn sync_opts(
        self: &Arc<Self>,
        groups: &[String],
        timeout: Duration,
        rescan: bool,
    ) -> SyncReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let selected: Vec<&GroupRt> = self
            .groups
            .iter()
            .filter(|g| groups.is_empty() || groups.contains(&g.cfg.name))
            .collect();
        let names: Vec<String> = selected.iter().map(|g| g.cfg.name.clone()).collect();
        if rescan {
            let (tx, rx) = oneshot::channel();
            self.submit(Work::Rescan {
                groups: Some(names.clone()),
                reply: Some(tx),
            });
            let _ = tokio::time::timeout_at(deadline, rx).await;
        }
        let peers: BTreeSet<String> = selected
            .iter()
            .flat_map(|g| g.peers.iter().cloned())
            .collect();
        let mut report = SyncReport::default();
        let mut waits = Vec::new();
        for p in peers {
            let s = self.clone();
            let names = names.clone();
            waits.push(tokio::spawn(async move {
                let ok = tokio::time::timeout_at(deadline, s.sync_with(&p, &names)).await;
                (p, matches!(ok, Ok(true)))
            }));
        }
        for w in waits {
            if let Ok((p, ok)) = w.await
                && !ok
            {
                report.unreachable.push(p);
            }
        }
        // wait for the retry queue to drain within the deadline
        loop {
            let pending: usize = {
                let gs = lock(&self.gstate);
                names
                    .iter()
                    .filter_map(|n| gs.get(n))
                    .map(|s| s.retry)
                    .sum()
            };
            report.pending = pending;
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        report.unresolved = self
            .index
            .conflicts()
            .map(|l| {
                l.into_iter()
                    .filter(|(g, _, c)| !c.resolved && names.contains(g))
                    .map(|(_, p, _)| p)
                    .collect()
            })
            .unwrap_or_default();
        report.conflicts = report.unresolved.len();
        let gs = lock(&self.gstate);
        for n in &names {
            if let Some(r) = gs.get(n).and_then(|s| s.stopped.clone()) {
                report.stopped.push(format!("{n}: {r}"));
            }
        }
        report
    }

    async fn sync_with(self: &Arc<Self>, peer: &str, groups: &[String]) -> bool {
        let shared_names: Vec<String> = self
            .shared_groups(peer)
            .iter()
            .filter(|g| !g.replica)
            .map(|g| g.cfg.name.clone())
            .filter(|n| groups.contains(n))
            .collect();
        // a link may be replaced while we use it (both sides dialing): try again on a new one
        for _ in 0..5 {
            let h = match self.peer(peer) {
                Some(h) => h,
                None => {
                    let Ok(link) = connect_once(self, peer).await else {
                        return false;
                    };
                    let s = self.clone();
                    let p = peer.to_string();
                    tokio::spawn(async move {
                        let _ = crate::peer::run_link(s, link, p).await;
                    });
                    let mut h = None;
                    for _ in 0..200 {
                        h = self.peer(peer);
                        if h.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    match h {
                        Some(h) => h,
                        None => return false,
                    }
                }
            };
            if self.sync_over(&h, &shared_names).await {
                return true;
            }
            if !h.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Exchange everything with the peer over one link: false if the link went away.
    async fn sync_over(&self, h: &Arc<PeerHandle>, groups: &[String]) -> bool {
        // their side: everything they had is received and applied
        let Some(pong) = h.ping().await else {
            return false;
        };
        if pong.await.is_err() {
            return false;
        }
        // our side: they applied everything we had
        let target = self.index.max_seq().unwrap_or(0);
        loop {
            let notified = h.progress_notify.notified();
            let done = groups.iter().all(|g| {
                let p = h.progress_of(g);
                p.scanned >= target && p.unacked.is_empty()
            });
            if done {
                return true;
            }
            if h.is_closed() {
                return false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

/// `status --json` output.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub node: String,
    pub groups: Vec<GroupStatus>,
    pub peers: Vec<PeerStatus>,
    /// Counters of the running daemon (absent without one).
    pub transfer: Option<TransferStats>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
    pub pending: u64,
    pub conflicts: u64,
    pub in_sync: bool,
    pub directories: u64,
    pub symlinks: u64,
    pub error: Option<String>,
    /// This node only receives in this group.
    pub replica: bool,
    /// Paths with unresolved drift (replicas).
    pub drift: Vec<String>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub connected: bool,
    pub behind: u64,
    pub last_seen: Option<String>,
    pub address: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Build the status from an index (daemon or not) and live state (daemon only).
pub fn status_of(
    name: &str,
    cfg: &Config,
    index: &Index,
    live: Option<&Shared>,
) -> Result<Status, IndexError> {
    let mut groups = Vec::new();
    let conflicts = index.conflicts()?;
    let my_groups: Vec<&GroupConfig> = cfg.groups_of(name).collect();
    for g in &my_groups {
        let (mut files, mut bytes, mut dirs, mut links) = (0u64, 0u64, 0u64, 0u64);
        index.for_each(&g.name, |e| match e.rec.meta.as_ref().map(|m| m.kind) {
            Some(crate::record::Kind::File) => {
                files += 1;
                bytes += e.rec.size();
            }
            Some(crate::record::Kind::Dir) => dirs += 1,
            Some(crate::record::Kind::Symlink) => links += 1,
            None => {}
        })?;
        let mut pending = 0u64;
        let replica = g.replicas.iter().any(|r| r == name);
        // a replica sends nothing: what it has not "sent" is not pending
        for p in g.members().filter(|m| *m != name && !replica) {
            pending += index.count_since(&g.name, index.acked(p, &g.name)?)?;
        }
        let (mut error, mut local, mut drift) = (None, 0u64, Vec::new());
        if let Some(s) = live {
            let gs = lock(&s.gstate);
            if let Some(st) = gs.get(&g.name) {
                error = st.stopped.clone();
                local = (st.pending_local + st.retry) as u64;
                drift = st.drift.keys().cloned().collect();
            }
        }
        pending += local;
        if let Some(s) = live {
            // what connected peers have and we have not applied yet (an upper bound)
            for p in g.members().filter(|m| *m != name) {
                if let Some(h) = s.peer(p)
                    && let Some((head, applied)) = lock(&h.remote).get(&g.name).copied()
                {
                    pending += head.saturating_sub(applied);
                }
            }
        }
        let unresolved = conflicts
            .iter()
            .filter(|(cg, _, c)| cg == &g.name && !c.resolved)
            .count() as u64;
        groups.push(GroupStatus {
            name: g.name.clone(),
            files,
            bytes,
            pending,
            conflicts: unresolved,
            in_sync: pending == 0 && unresolved == 0 && error.is_none() && drift.is_empty(),
            directories: dirs,
            symlinks: links,
            error,
            replica,
            drift,
        });
    }
    let mut peers = Vec::new();
    let peer_names: BTreeSet<&str> = my_groups
        .iter()
        .flat_map(|g| g.members())
        .filter(|m| *m != name)
        .collect();
    for p in peer_names {
        let mut behind = 0;
        for g in my_groups
            .iter()
            .filter(|g| g.has_node(p) && !g.replicas.iter().any(|r| r == name))
        {
            behind += index.count_since(&g.name, index.acked(p, &g.name)?)?;
        }
        let (connected, last_seen) = match live {
            Some(s) => (
                s.peer(p).is_some(),
                lock(&s.last_seen).get(p).map(|t| rfc3339(*t)),
            ),
            None => (false, None),
        };
        peers.push(PeerStatus {
            name: p.to_string(),
            connected,
            behind,
            last_seen,
            address: cfg.node(p).map(|n| n.address.clone()).unwrap_or_default(),
        });
    }
    Ok(Status {
        node: name.to_string(),
        groups,
        peers,
        transfer: live.map(|s| s.counters.snapshot()),
    })
}

/// Resolve once the flag is set, also when it was set before this was called (a receiver
/// made after `stop()` would otherwise wait for a change that already happened).
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
