//! A running node: its context ([`Ctx`]: the configuration, the index, the audit log, the
//! backup store, the lanes and the links), and the tasks around the lanes: the listener, one
//! dialer per peer, the watcher.
//!
//! Data flow: the watcher (or a rescan, or `mark`) reports paths to the group's lane → the lane
//! scans them and commits new versions → each link's pump for the group sees the new head and
//! streams the items → the peer's link hands the batch to its lane, which applies it and
//! acknowledges.
//!
//! Invariants: one link per pair of nodes (a daemon dials only the peers whose names sort after
//! its own, and a `sync` through it dials a missing one that sorts before once; an in-process
//! `sync` has no listener and dials everyone; a newer link to a peer replaces an older one,
//! which is closed); a dial that
//! fails is retried with a growing delay (up to a minute for a peer whose key is wrong), and
//! the reason is kept for `status`; refused connections are logged and audited at a bounded
//! rate.

use crate::config::{Config, NodeConfig};
use crate::engine::group::GroupRt;
use crate::engine::lane::{self, LaneHandle};
use crate::engine::link::{self, Link, lock};
use crate::fs::backup::Backups;
use crate::identity::Identity;
use crate::item::{Hash, Item, name};
use crate::local::owners::OwnerMap;
use crate::ops::audit::{Audit, Rec};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Resolve once the flag is set, also when it was set before this was called.
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(
        "this node {0:?} has no [nodes.{0}] section in the config (use --node NAME or set the hostname)"
    )]
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
    Store(#[from] StoreError),
    #[error("state directory {path}: {source}")]
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
    #[error(transparent)]
    Backup(#[from] crate::fs::backup::BackupError),
}

/// How to run a node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// Accept connections (daemon) or not (in-process `sync`).
    pub listen: bool,
    /// Watch for changes live.
    pub watch: bool,
    /// Dial every peer (in-process `sync`) or only those after us (daemon).
    pub dial_all: bool,
    /// Print what would change instead of changing it.
    pub dry_run: bool,
}

/// Transfer counters of this process, for `status --json`, metrics and benchmarks.
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
    /// Items received from and sent to peers.
    pub items_in: AtomicU64,
    pub items_out: AtomicU64,
}

/// Snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TransferStats {
    pub chunk_bytes_in: u64,
    pub chunk_bytes_out: u64,
    pub inline_bytes_in: u64,
    pub reused_bytes: u64,
    /// Items received from peers (`records_in` in the previous release).
    #[serde(alias = "records_in")]
    pub items_in: u64,
    pub items_out: u64,
}

impl Counters {
    pub fn snapshot(&self) -> TransferStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransferStats {
            chunk_bytes_in: g(&self.chunk_bytes_in),
            chunk_bytes_out: g(&self.chunk_bytes_out),
            inline_bytes_in: g(&self.inline_bytes_in),
            reused_bytes: g(&self.reused_bytes),
            items_in: g(&self.items_in),
            items_out: g(&self.items_out),
        }
    }
}

/// What this node knows of one peer besides its link.
#[derive(Debug, Default, Clone)]
pub struct PeerState {
    /// Why the last dial failed, or the link was refused (cleared when a link is up).
    pub error: Option<String>,
    /// Settings that differ between the configs (set at connect).
    pub config: Vec<String>,
    pub last_seen: Option<SystemTime>,
    /// When the config problems were last logged.
    config_logged: Option<Instant>,
    /// A dial is in progress.
    dialing: bool,
}

/// The connected peers and what is known of the others.
#[derive(Default)]
pub struct Links {
    map: Mutex<HashMap<String, Arc<Link>>>,
    peers: Mutex<HashMap<String, PeerState>>,
    next_conn: AtomicU64,
    /// Refused connections not yet logged, and when the last log line was written.
    refused: Mutex<(u64, Option<Instant>)>,
    changed: tokio::sync::Notify,
}

impl Links {
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The live link to `peer`.
    pub fn get(&self, peer: &str) -> Option<Arc<Link>> {
        lock(&self.map)
            .get(peer)
            .cloned()
            .filter(|l| !l.is_closed())
    }

    pub(crate) fn register(&self, l: Arc<Link>) {
        if let Some(old) = lock(&self.map).insert(l.peer.clone(), l.clone()) {
            old.close();
        }
        let mut p = lock(&self.peers);
        let st = p.entry(l.peer.clone()).or_default();
        st.error = None;
        st.last_seen = Some(SystemTime::now());
        drop(p);
        self.changed.notify_waiters();
    }

    pub(crate) fn unregister(&self, peer: &str, conn: u64) {
        let mut m = lock(&self.map);
        if m.get(peer).is_some_and(|l| l.conn == conn) {
            m.remove(peer);
        }
        drop(m);
        self.changed.notify_waiters();
    }

    pub fn close_all(&self) {
        for l in lock(&self.map).values() {
            l.close();
        }
    }

    pub(crate) fn touch(&self, peer: &str) {
        lock(&self.peers)
            .entry(peer.to_string())
            .or_default()
            .last_seen = Some(SystemTime::now());
    }

    pub fn state(&self, peer: &str) -> PeerState {
        lock(&self.peers).get(peer).cloned().unwrap_or_default()
    }

    /// Remember why `peer` cannot be reached; logged when the reason changes.
    pub(crate) fn set_error(&self, peer: &str, err: String) {
        let mut p = lock(&self.peers);
        let st = p.entry(peer.to_string()).or_default();
        if st.error.as_deref() != Some(err.as_str()) {
            tracing::warn!(peer, "cannot reach peer: {err} (retrying)");
        } else {
            tracing::debug!(peer, "cannot reach peer: {err}");
        }
        st.error = Some(err);
        drop(p);
        self.changed.notify_waiters();
    }

    /// Config differences found at connect: logged at ERROR, at most once a minute.
    pub(crate) fn set_config_problems(&self, peer: &str, problems: Vec<String>) {
        let mut p = lock(&self.peers);
        let st = p.entry(peer.to_string()).or_default();
        let log = !problems.is_empty()
            && (st.config != problems
                || st
                    .config_logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60)));
        if log {
            for m in &problems {
                tracing::error!(
                    peer,
                    "{m}; nothing of that group is exchanged with {peer} until the configs agree"
                );
            }
            st.config_logged = Some(Instant::now());
        }
        st.config = problems;
    }

    /// A refused connection: logged and audited at most once a minute, with the count.
    pub(crate) fn refused(&self, audit: &Audit, from: &str, why: &str) {
        let mut r = lock(&self.refused);
        r.0 += 1;
        if r.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            let n = r.0;
            r.0 = 0;
            r.1 = Some(Instant::now());
            drop(r);
            let detail = if n > 1 {
                format!("{why} ({n} refused connections since the last report)")
            } else {
                why.to_string()
            };
            tracing::warn!("refused connection from {from}: {detail}");
            audit.log(Rec {
                kind: "refused",
                peer: Some(from),
                detail: Some(&detail),
                ..Default::default()
            });
        }
    }

    /// Wait until `peer` has a link or `deadline`; fails early with the dial error once one
    /// attempt has failed and `fail_fast` is set.
    pub async fn wait_for(
        &self,
        peer: &str,
        deadline: tokio::time::Instant,
        fail_fast: bool,
    ) -> Result<Arc<Link>, String> {
        loop {
            let changed = self.changed.notified();
            if let Some(l) = self.get(peer) {
                return Ok(l);
            }
            let st = self.state(peer);
            if fail_fast && let Some(e) = st.error.clone() {
                return Err(e);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(st.error.unwrap_or_else(|| "not connected".into()));
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                changed,
            )
            .await;
        }
    }
}

/// Everything a running node's tasks share. Immutable apart from the services' own state.
pub struct Ctx {
    pub name: String,
    pub cfg: Config,
    pub me: NodeConfig,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub ident: Identity,
    pub store: Store,
    pub owners: OwnerMap,
    pub audit: Arc<Audit>,
    pub backups: Backups,
    pub groups: BTreeMap<String, Arc<GroupRt>>,
    lanes: OnceLock<BTreeMap<String, LaneHandle>>,
    pub links: Links,
    pub counters: Counters,
    /// The highest sequence number sent to any peer during this run (rollback detection).
    pub sent_seq: AtomicU64,
    /// Prometheus metrics (served when `[metrics] listen` is set).
    pub metrics: Arc<crate::ops::metrics::Metrics>,
    /// Commands run after synced changes (groups with actions).
    pub actions: Option<crate::ops::actions::ActionRunner>,
    shutdown: watch::Sender<bool>,
    pub opts: Opts,
    pub started: Instant,
    /// The last summary comparison with each peer, per group (`engine::verify`).
    pub verified: crate::engine::verify::Verified,
}

impl Ctx {
    pub fn group(&self, name: &str) -> Option<&Arc<GroupRt>> {
        self.groups.get(name)
    }

    pub fn lane(&self, name: &str) -> Option<&LaneHandle> {
        self.lanes.get().and_then(|l| l.get(name))
    }

    pub fn lanes(&self) -> impl Iterator<Item = &LaneHandle> {
        self.lanes.get().into_iter().flat_map(|l| l.values())
    }

    /// Groups this node shares with `peer`.
    pub fn shared_groups(&self, peer: &str) -> Vec<&Arc<GroupRt>> {
        self.groups
            .values()
            .filter(|g| g.peers.iter().any(|p| p == peer))
            .collect()
    }

    /// Every peer of this node.
    pub fn all_peers(&self) -> BTreeSet<String> {
        self.groups
            .values()
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

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// One audit line about an item.
    pub fn audit_item(&self, group: &str, kind: &str, item: &Item, peer: Option<&str>) {
        self.audit_items(group, [(kind, item, peer)]);
    }

    /// Audit lines about items (kind, item, peer), written together.
    pub fn audit_items<'a>(
        &self,
        group: &str,
        items: impl IntoIterator<Item = (&'a str, &'a Item, Option<&'a str>)>,
    ) {
        let lines: Vec<_> = items
            .into_iter()
            .map(|(kind, item, peer)| (kind, item, peer, item.version.display()))
            .collect();
        self.audit
            .log_all(lines.iter().map(|(kind, item, peer, version)| Rec {
                group,
                path: &item.key,
                kind,
                origin: &item.origin,
                version,
                peer: *peer,
                detail: None,
            }));
    }

    pub fn audit_refused(&self, peer: &str, msg: &str) {
        self.audit.log(Rec {
            kind: "refused",
            peer: Some(peer),
            detail: Some(msg),
            ..Default::default()
        });
    }

    /// A peer's item refused: the group and path it was about, and why.
    pub fn audit_refused_item(&self, group: &str, key: &[u8], peer: &str, msg: &str) {
        self.audit.log(Rec {
            group,
            path: key,
            kind: "refused",
            peer: Some(peer),
            detail: Some(msg),
            ..Default::default()
        });
    }

    /// `sync --dry-run`: one line per path and action.
    pub fn dry_run_line(&self, what: &str, key: &[u8]) {
        println!("{what:<9} {}", name::show(key));
    }

    /// A small file's content for an `Index` batch, verified.
    pub fn read_inline(
        &self,
        group: &str,
        key: &[u8],
        size: u64,
        hash: &Hash,
        dirs: &crate::fs::safefs::DirCache,
    ) -> Option<Vec<u8>> {
        let g = self.group(group)?;
        let gp = name::validate(key, &g.cfg.paths).ok()?;
        let data =
            crate::fs::safefs::read_at(&self.root, gp, key, 0, size as usize, Some(dirs)).ok()?;
        (crate::fs::chunk::hash(&data) == *hash).then_some(data)
    }

    /// A chunk of `group` by hash, from wherever this node has it in that group, verified.
    pub fn read_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        let loc = self.store.chunk_location(hash).ok()??;
        if loc.group != group || loc.len > crate::fs::chunk::MAX_CHUNK as u64 {
            return None;
        }
        let g = self.group(group)?;
        let gp = name::validate(&loc.key, &g.cfg.paths).ok()?;
        let data = crate::fs::safefs::read_at(
            &self.root,
            gp,
            &loc.key,
            loc.offset,
            loc.len as usize,
            None,
        )
        .ok()?;
        (crate::fs::chunk::hash(&data) == *hash).then_some(data)
    }

    /// A chunk from any of this node's own files (any group), verified.
    pub fn read_local_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        self.read_chunk(group, hash).or_else(|| {
            let loc = self.store.chunk_location(hash).ok()??;
            self.read_chunk(&loc.group, hash)
        })
    }

    /// Which group a path (logical, or real with this node's root prefix) belongs to.
    pub fn group_of_path(&self, p: &[u8]) -> Option<(String, Vec<u8>)> {
        group_of_path(&self.cfg, &self.name, &self.root, p)
    }

    /// Tell the actions runner that these keys of `group` changed (applied from a peer, or
    /// with `local`, made here).
    pub fn changed(&self, group: &str, keys: &[Vec<u8>], local: bool) {
        if keys.is_empty() {
            return;
        }
        if let Some(a) = &self.actions {
            a.notify(
                group,
                keys.iter().map(|k| name::show(k).into_owned()),
                local,
            );
        }
    }

    /// `/health` (SPEC §5.10): O(1) per request, from the lanes' and links' state.
    pub fn health(&self) -> crate::ops::metrics::Health {
        let stale = self
            .cfg
            .metrics
            .as_ref()
            .map(|m| m.stale_after)
            .unwrap_or(crate::ops::metrics::DEFAULT_STALE_AFTER);
        type Row = (String, Option<String>, Option<Instant>, usize, usize);
        let stopped: Vec<Row> = self
            .lanes()
            .map(|l| {
                let g = &l.group;
                let connected = g
                    .peers
                    .iter()
                    .filter(|p| self.links.get(p).is_some_and(|k| k.active(g.name())))
                    .count();
                (
                    g.name().to_string(),
                    lock(&l.state.stopped).clone(),
                    *lock(&l.state.behind_since),
                    g.peers.len(),
                    connected,
                )
            })
            .collect();
        crate::ops::metrics::judge(
            stopped
                .iter()
                .map(|(n, s, b, p, c)| crate::ops::metrics::GroupHealth {
                    name: n,
                    stopped: s.as_deref(),
                    unapplied_since: *b,
                    peers: *p,
                    peers_connected: *c,
                }),
            Instant::now(),
            stale,
        )
    }

    /// Refresh the gauges from live state (at scrape time; per group and per peer only).
    pub fn collect_metrics(&self, m: &crate::ops::metrics::Metrics) {
        let mut backups = 0;
        for l in self.lanes() {
            let g = l.group.name();
            let st = self.store.stats(g).unwrap_or_default();
            let conflicts = self
                .store
                .conflicts()
                .map(|c| c.iter().filter(|(cg, _, c)| cg == g && !c.resolved).count())
                .unwrap_or(0);
            let pending = crate::engine::status::group_pending(self, l);
            m.set_group(
                g,
                crate::ops::metrics::GroupGauges {
                    files: st.files,
                    bytes: st.bytes,
                    pending,
                    conflicts: conflicts as u64,
                    stopped: l.state.is_stopped(),
                },
            );
            backups += self.backups.usage(g);
        }
        m.set_backups_bytes(backups);
        for p in self.all_peers() {
            let link = self.links.get(&p);
            let mut behind = 0;
            for g in self.shared_groups(&p) {
                if !g.replica {
                    behind += self
                        .store
                        .count_since(g.name(), self.store.acked(&p, g.name()).unwrap_or(0))
                        .unwrap_or(0);
                }
            }
            m.set_peer(&p, link.is_some(), behind);
        }
    }
}

/// Which of `node`'s groups a path (logical, or real with the root prefix) belongs to.
pub fn group_of_path(
    cfg: &Config,
    node: &str,
    root: &std::path::Path,
    p: &[u8],
) -> Option<(String, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let root = root.as_os_str().as_bytes();
    let root = if root.len() > 1 && root.ends_with(b"/") {
        &root[..root.len() - 1]
    } else {
        root
    };
    let mut cands = vec![p.to_vec()];
    if root != b"/"
        && let Some(r) = p.strip_prefix(root)
    {
        cands.push(r.to_vec());
    }
    for mut c in cands {
        while c.len() > 1 && c.ends_with(b"/") {
            c.pop();
        }
        for g in cfg.groups_of(node) {
            if name::validate(&c, &g.paths).is_ok() {
                return Some((g.name.clone(), c));
            }
        }
    }
    None
}

/// What `daemon` checks before it starts (and `check-config` reports): this node has a
/// section, its key matches its `id`, and every group path exists or its parent does.
/// Returns warnings (a group path that does not exist yet).
pub fn preflight(
    cfg: &Config,
    name: &str,
    state_dir: &std::path::Path,
) -> Result<Vec<String>, NodeError> {
    let me = cfg
        .node(name)
        .ok_or_else(|| NodeError::UnknownNode(name.to_string()))?;
    let key_path = me.key.clone().unwrap_or_else(|| state_dir.join("node.key"));
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
    let mut warnings = Vec::new();
    for g in cfg.groups_of(name) {
        for gp in &g.paths {
            let real = name::real(&me.root, gp.as_bytes());
            if real.exists() {
                continue;
            }
            if real.parent().is_some_and(|p| p.is_dir()) {
                warnings.push(format!(
                    "group {} path {gp} ({}) does not exist on this node yet (it is created when the first files arrive)",
                    g.name,
                    real.display()
                ));
            } else {
                return Err(NodeError::Group {
                    group: g.name.clone(),
                    msg: format!(
                        "path {gp}: neither {} nor its parent exists on this node",
                        real.display()
                    ),
                });
            }
        }
    }
    Ok(warnings)
}

/// Make the state dir private (0700, its files 0600), also one made by an older version.
fn private_state_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_file() && md.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// A started node.
pub struct Node {
    pub ctx: Arc<Ctx>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Open the index, scan, and start every task.
    pub async fn start(
        cfg: Config,
        name: &str,
        state_dir: PathBuf,
        opts: Opts,
    ) -> Result<Node, NodeError> {
        let me = cfg
            .node(name)
            .cloned()
            .ok_or_else(|| NodeError::UnknownNode(name.to_string()))?;
        private_state_dir(&state_dir).map_err(|source| NodeError::StateDir {
            path: state_dir.clone(),
            source,
        })?;
        let key_path = me.key.clone().unwrap_or_else(|| state_dir.join("node.key"));
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
        let store = Store::open(&state_dir.join("index.redb"))?;
        let mut groups = BTreeMap::new();
        for g in cfg.groups_of(name) {
            let rt = GroupRt::new(g, name).map_err(|msg| NodeError::Group {
                group: g.name.clone(),
                msg,
            })?;
            groups.insert(g.name.clone(), Arc::new(rt));
        }
        if let Some(ac) = &cfg.accounts
            && let Some(rt) = GroupRt::accounts(ac, &cfg, name)
        {
            groups.insert(rt.name().to_string(), Arc::new(rt));
        }
        let backups = Backups::open(&state_dir.join("backups"))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let metrics = Arc::new(crate::ops::metrics::Metrics::new());
        let mut specs = Vec::new();
        for g in groups.values() {
            for (i, a) in g.cfg.actions.iter().enumerate() {
                specs.push(crate::ops::actions::ActionSpec::from_config(g.name(), i, a));
            }
        }
        let audit = Arc::new(Audit::open(&state_dir.join("audit.log")));
        let mut action_task = None;
        let actions = if specs.is_empty() || opts.dry_run {
            None
        } else {
            let (a2, m2) = (audit.clone(), metrics.clone());
            let hook: crate::ops::actions::ResultHook = Arc::new(move |r| {
                let detail = format!(
                    "{} in {} ms, {} paths",
                    r.outcome,
                    r.duration.as_millis(),
                    r.paths
                );
                a2.log(Rec {
                    group: &r.group,
                    kind: "action",
                    detail: Some(&detail),
                    ..Default::default()
                });
                m2.observe_action(r);
            });
            let (runner, task) = crate::ops::actions::ActionRunner::start(
                specs,
                crate::ops::actions::RunnerOptions::new(name),
                hook,
                shutdown_rx.clone(),
            )
            .map_err(|e| NodeError::Group {
                group: "*".into(),
                msg: e.to_string(),
            })?;
            action_task = Some(task);
            Some(runner)
        };
        let ctx = Arc::new(Ctx {
            name: name.to_string(),
            root: me.root.clone(),
            me: me.clone(),
            cfg: cfg.clone(),
            state_dir: state_dir.clone(),
            ident,
            store,
            owners: OwnerMap::default(),
            audit,
            backups,
            groups,
            lanes: OnceLock::new(),
            links: Links::default(),
            counters: Counters::default(),
            sent_seq: AtomicU64::new(0),
            metrics,
            actions,
            shutdown,
            opts,
            started: Instant::now(),
            verified: Default::default(),
        });
        let mut handles = BTreeMap::new();
        let mut lanes = Vec::new();
        for g in ctx.groups.values() {
            let (h, l, rx) = lane::new(&ctx, g.clone());
            handles.insert(g.name().to_string(), h);
            lanes.push((l, rx));
        }
        let _ = ctx.lanes.set(handles);
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = action_task.into_iter().collect();
        // the watcher starts before the initial scan so nothing falls between them
        if opts.watch && ctx.groups.values().any(|g| g.cfg.watch || g.is_accounts()) {
            tasks.push(crate::local::watch::spawn(ctx.clone()));
        }
        if opts.listen {
            let addr = me.listen_addr();
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: addr.clone(),
                    source,
                })?;
            tracing::info!("node {} listening on {addr}", ctx.name);
            tasks.push(tokio::spawn(listen(ctx.clone(), listener)));
            let maddr = me
                .metrics
                .clone()
                .or_else(|| ctx.cfg.metrics.as_ref().map(|m| m.listen.clone()));
            if let Some(maddr) = maddr {
                let c = Arc::downgrade(&ctx);
                ctx.metrics.set_collector(Arc::new(move |m| {
                    if let Some(c) = c.upgrade() {
                        c.collect_metrics(m);
                    }
                }));
                let c = Arc::downgrade(&ctx);
                let health: crate::ops::metrics::HealthFn = Arc::new(move || match c.upgrade() {
                    Some(c) => c.health(),
                    None => crate::ops::metrics::Health::Unhealthy("stopping".into()),
                });
                let server = crate::ops::metrics::serve(
                    &maddr,
                    ctx.metrics.clone(),
                    health,
                    ctx.shutdown_rx(),
                )
                .await
                .map_err(|e| NodeError::Listen {
                    addr: maddr.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                tasks.push(server.task);
            }
        }
        for p in ctx.all_peers() {
            if opts.dial_all || p > ctx.name {
                tasks.push(tokio::spawn(dialer(ctx.clone(), p)));
            }
        }
        // the initial scan: its flushes are streamed to peers as they are committed, and
        // what peers send waits in the lanes' queues until it is done
        for (l, _) in lanes.iter_mut() {
            l.initial_scan().await;
        }
        for (l, rx) in lanes {
            tasks.push(tokio::spawn(lane::run(l, rx)));
        }
        Ok(Node { ctx, tasks })
    }

    /// Stop every task, and wait (a bounded time) until nothing holds the node's context
    /// any more, so its index is closed when this returns (a reload opens it again).
    pub async fn stop(self) {
        self.ctx.stop();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        for t in self.tasks {
            let _ = tokio::time::timeout_at(deadline, t).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.ctx) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Handshakes in progress at most; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 256;

async fn listen(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) {
    let mut shutdown = ctx.shutdown_rx();
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
            _ = until_set(&mut shutdown) => return,
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let allowed = |id: &str| ctx.node_by_id(id).is_some_and(|n| n != ctx.name);
            let link = crate::net::transport::accept(stream, &ctx.ident, allowed).await;
            drop(permit);
            match link {
                Ok(wire) => {
                    let Some(peer) = ctx.node_by_id(&wire.remote_id) else {
                        return;
                    };
                    if ctx.shared_groups(&peer).is_empty() {
                        ctx.links.refused(
                            &ctx.audit,
                            &addr.to_string(),
                            &format!("{peer} shares no group with this node"),
                        );
                        return;
                    }
                    if let Err(e) = link::run(ctx.clone(), wire, peer.clone()).await {
                        tracing::debug!(peer = %peer, "link ended: {e}");
                    }
                }
                Err(e) => ctx
                    .links
                    .refused(&ctx.audit, &addr.to_string(), &e.to_string()),
            }
        });
    }
}

/// Connect to `peer` once: with the preferred cipher suite, and once more with the fallback
/// suite if the peer (an older release) refuses it.
pub async fn connect_once(ctx: &Ctx, peer: &str) -> Result<crate::net::transport::Link, String> {
    use crate::net::transport::{Suite, TransportError};
    let nc = ctx.cfg.node(peer).ok_or("unknown peer")?;
    let id = nc
        .id
        .clone()
        .ok_or_else(|| format!("[nodes.{peer}] has no id in the config"))?;
    let mut suite = Suite::preferred();
    loop {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&nc.address),
        )
        .await
        .map_err(|_| {
            format!(
                "connecting to {} timed out (firewalled or down?)",
                nc.address
            )
        })?
        .map_err(|e| format!("connecting to {}: {e}", nc.address))?;
        let e = match crate::net::transport::connect(stream, &ctx.ident, peer, &id, suite).await {
            Ok(link) => return Ok(link),
            Err(e) => e,
        };
        if let TransportError::SuiteRefused(s) = &e
            && let Some(next) = s.fallback()
        {
            tracing::debug!(peer, "{} refused {s}; trying {next}", nc.address);
            suite = next;
            continue;
        }
        return Err(match e {
            TransportError::WrongKey { got, .. } => format!(
                "key mismatch: {} answered with key {got}, not the id configured for {peer} (run `clustersync id` on {peer} and fix [nodes.{peer}] id)",
                nc.address
            ),
            TransportError::Closed => format!(
                "{} closed the connection during the handshake (does {peer}'s config list this node's id?)",
                nc.address
            ),
            other => format!("{}: {other}", nc.address),
        });
    }
}

/// Half the wait before the first new attempt to reach a peer (each failure doubles it, up to
/// 5 s, or 60 s for a key mismatch).
const FIRST_RETRY: Duration = Duration::from_millis(4);

async fn dialer(ctx: Arc<Ctx>, peer: String) {
    let mut shutdown = ctx.shutdown_rx();
    // the first retries come quickly: nodes started together (a reboot, a deploy) find each
    // other's listener a few milliseconds apart; the doubling keeps a dead peer cheap
    let mut backoff = FIRST_RETRY;
    loop {
        if ctx.stopping() {
            return;
        }
        if ctx.links.get(&peer).is_none() {
            lock(&ctx.links.peers)
                .entry(peer.clone())
                .or_default()
                .dialing = true;
            let r = connect_once(&ctx, &peer).await;
            lock(&ctx.links.peers)
                .entry(peer.clone())
                .or_default()
                .dialing = false;
            match r {
                Ok(wire) => {
                    backoff = FIRST_RETRY;
                    match link::run(ctx.clone(), wire, peer.clone()).await {
                        Err(link::LinkError::Bye { reason, .. }) => {
                            ctx.links
                                .set_error(&peer, format!("{peer} closed the link: {reason}"));
                        }
                        Err(e) => tracing::info!(peer = %peer, "link ended: {e}"),
                        Ok(()) => {}
                    }
                    continue;
                }
                Err(e) => {
                    let wrong_key = e.starts_with("key mismatch");
                    ctx.links.set_error(&peer, e);
                    let max = if wrong_key {
                        Duration::from_secs(60)
                    } else {
                        Duration::from_secs(5)
                    };
                    backoff = (backoff * 2).min(max);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {},
            _ = until_set(&mut shutdown) => return,
        }
    }
}
