//! A running node: it makes the shared context ([`Ctx`]), then the lanes ([`Lanes`]), and
//! wires the tasks around them: the listener, one dialer per peer, the watcher (which reports
//! to the lanes through `local::watch::Sink`), the metrics server. [`Engine`] is what the
//! control socket, `sync` and `status` get: the context and the lanes.
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

use crate::config::Config;
pub use crate::engine::ctx::{
    Counters, Ctx, Opts, TransferStats, group_of_path, unix_now, until_set,
};
use crate::engine::group::GroupRt;
use crate::engine::lane::{self, LaneHandle, Lanes};
use crate::engine::link;
use crate::engine::peer::{Links, lock};
use crate::fs::backup::Backups;
use crate::identity::Identity;
use crate::item::name;
use crate::local::owners::OwnerMap;
use crate::ops::audit::{Audit, Rec};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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

/// This node's key, checked against the `id` its section configures.
fn identity(
    me: &crate::config::NodeConfig,
    state_dir: &std::path::Path,
) -> Result<Identity, NodeError> {
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
    Ok(ident)
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
    identity(me, state_dir)?;
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

/// A running node as its users see it: the shared context and the lanes.
#[derive(Clone)]
pub struct Engine {
    pub ctx: Arc<Ctx>,
    pub lanes: Lanes,
}

impl Engine {
    pub fn lane(&self, group: &str) -> Option<&LaneHandle> {
        self.lanes.get(group)
    }

    /// `/health` (SPEC §5.10): O(1) per request, from the lanes' and links' state.
    pub fn health(&self) -> crate::ops::metrics::Health {
        let stale = self
            .ctx
            .cfg
            .metrics
            .as_ref()
            .map(|m| m.stale_after)
            .unwrap_or(crate::ops::metrics::DEFAULT_STALE_AFTER);
        type Row = (String, Option<String>, Option<Instant>, usize, usize);
        let stopped: Vec<Row> = self
            .lanes
            .iter()
            .map(|l| {
                let g = &l.group;
                let connected = g
                    .peers
                    .iter()
                    .filter(|p| self.ctx.links.get(p).is_some_and(|k| k.active(g.name())))
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
        for l in self.lanes.iter() {
            let g = l.group.name();
            let st = self.ctx.store.stats(g).unwrap_or_default();
            let conflicts = self
                .ctx
                .store
                .conflicts()
                .map(|c| c.iter().filter(|(cg, _, c)| cg == g && !c.resolved).count())
                .unwrap_or(0);
            let pending = crate::engine::status::group_pending(&self.ctx, l);
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
            backups += self.ctx.backups.usage(g);
        }
        m.set_backups_bytes(backups);
        for p in self.ctx.all_peers() {
            let link = self.ctx.links.get(&p);
            let mut behind = 0;
            for g in self.ctx.shared_groups(&p) {
                if !g.replica {
                    behind += self
                        .ctx
                        .store
                        .count_since(g.name(), self.ctx.acked_by(&p, g.name()))
                        .unwrap_or(0);
                }
            }
            m.set_peer(&p, link.is_some(), behind);
        }
    }
}

/// A started node.
pub struct Node {
    pub ctx: Arc<Ctx>,
    pub lanes: Lanes,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The groups this node runs, by name (the accounts pseudo-group too when it is a member).
fn groups_of(cfg: &Config, name: &str) -> Result<BTreeMap<String, Arc<GroupRt>>, NodeError> {
    let mut groups = BTreeMap::new();
    for g in cfg.groups_of(name) {
        let rt = GroupRt::new(g, name).map_err(|msg| NodeError::Group {
            group: g.name.clone(),
            msg,
        })?;
        groups.insert(g.name.clone(), Arc::new(rt));
    }
    if let Some(ac) = &cfg.accounts
        && let Some(rt) = GroupRt::accounts(ac, cfg, name)
    {
        groups.insert(rt.name().to_string(), Arc::new(rt));
    }
    Ok(groups)
}

/// The actions runner of `groups` (none without actions or in a dry run), and its task.
fn actions_of(
    groups: &BTreeMap<String, Arc<GroupRt>>,
    name: &str,
    root: &std::path::Path,
    opts: Opts,
    audit: &Arc<Audit>,
    metrics: &Arc<crate::ops::metrics::Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<
    (
        Option<crate::ops::actions::ActionRunner>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    NodeError,
> {
    let mut specs = Vec::new();
    for g in groups.values() {
        for (i, a) in g.cfg.actions.iter().enumerate() {
            specs.push(crate::ops::actions::ActionSpec::from_config(g.name(), i, a));
        }
    }
    if specs.is_empty() || opts.dry_run {
        return Ok((None, None));
    }
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
        crate::ops::actions::RunnerOptions {
            root: root.to_path_buf(),
            ..crate::ops::actions::RunnerOptions::new(name)
        },
        hook,
        shutdown,
    )
    .map_err(|e| NodeError::Group {
        group: "*".into(),
        msg: e.to_string(),
    })?;
    Ok((Some(runner), Some(task)))
}

/// Open what the node's context holds and make it.
fn make_ctx(
    cfg: Config,
    name: &str,
    state_dir: PathBuf,
    opts: Opts,
    metrics: Option<Arc<crate::ops::metrics::Metrics>>,
) -> Result<(Ctx, Option<tokio::task::JoinHandle<()>>), NodeError> {
    let me = cfg
        .node(name)
        .cloned()
        .ok_or_else(|| NodeError::UnknownNode(name.to_string()))?;
    private_state_dir(&state_dir).map_err(|source| NodeError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let ident = identity(&me, &state_dir)?;
    let store = Store::open(&state_dir.join("index.redb"))?;
    let groups = groups_of(&cfg, name)?;
    let backups = Backups::open(&state_dir.join("backups"))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // a reload keeps the metrics: counters and uptime go on from where they were
    let metrics = metrics.unwrap_or_else(|| Arc::new(crate::ops::metrics::Metrics::new()));
    let audit = Arc::new(Audit::open(&state_dir.join("audit.log")));
    let (actions, action_task) =
        actions_of(&groups, name, &me.root, opts, &audit, &metrics, shutdown_rx)?;
    let ctx = Ctx {
        name: name.to_string(),
        root: me.root.clone(),
        me,
        cfg,
        state_dir,
        ident,
        store,
        owners: OwnerMap::default(),
        audit,
        backups,
        groups,
        links: Links::default(),
        counters: Counters::default(),
        sent_seq: AtomicU64::new(0),
        metrics,
        actions,
        shutdown,
        opts,
        started: Instant::now(),
        dry: Default::default(),
        verified: Default::default(),
    };
    Ok((ctx, action_task))
}

/// Make every lane; accounts applied tell the file lanes (file owners given by name may
/// resolve now) through a small task.
fn make_lanes(
    ctx: &Arc<Ctx>,
) -> (
    Lanes,
    Vec<lane::AnyLane>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let (owners_tx, mut owners_rx) = watch::channel(0u64);
    let owners_tx = Arc::new(owners_tx);
    let mut handles = BTreeMap::new();
    let mut lanes = Vec::new();
    for g in ctx.groups.values() {
        let tx = owners_tx.clone();
        let hook: Box<dyn Fn() + Send + Sync> = Box::new(move || {
            tx.send_modify(|n| *n += 1);
        });
        let (h, l) = lane::new(ctx, g.clone(), hook);
        handles.insert(g.name().to_string(), h);
        lanes.push(l);
    }
    let lanes_reg = Lanes::new(handles);
    let task = ctx.group(crate::engine::group::ACCOUNTS).map(|_| {
        let reg = lanes_reg.clone();
        let mut shutdown = ctx.shutdown_rx();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = owners_rx.changed() => if r.is_err() { return },
                    _ = until_set(&mut shutdown) => return,
                }
                for l in reg.iter().filter(|l| !l.group.is_accounts()) {
                    l.owners_changed();
                }
            }
        })
    });
    (lanes_reg, lanes, task)
}

impl Node {
    /// The context and the lanes, for the control socket, `sync` and `status`.
    pub fn engine(&self) -> Engine {
        Engine {
            ctx: self.ctx.clone(),
            lanes: self.lanes.clone(),
        }
    }

    /// Open the index, scan, and start every task.
    pub async fn start(
        cfg: Config,
        name: &str,
        state_dir: PathBuf,
        opts: Opts,
    ) -> Result<Node, NodeError> {
        Node::start_keeping(cfg, name, state_dir, opts, None).await
    }

    /// [`Node::start`] with the metrics of the node it replaces (a SIGHUP reload): counters
    /// and `uptime_seconds` go on from where they were instead of starting from zero.
    pub async fn start_keeping(
        cfg: Config,
        name: &str,
        state_dir: PathBuf,
        opts: Opts,
        metrics: Option<Arc<crate::ops::metrics::Metrics>>,
    ) -> Result<Node, NodeError> {
        let (ctx, action_task) = make_ctx(cfg, name, state_dir, opts, metrics)?;
        let ctx = Arc::new(ctx);
        let (lanes, mut runs, owners_task) = make_lanes(&ctx);
        let mut tasks: Vec<tokio::task::JoinHandle<()>> =
            action_task.into_iter().chain(owners_task).collect();
        // the watcher starts before the initial scan so nothing falls between them
        if opts.watch && ctx.groups.values().any(|g| g.cfg.watch || g.is_accounts()) {
            tasks.push(crate::local::watch::spawn(
                watch_spec(&ctx),
                Arc::new(lanes.clone()),
                ctx.shutdown_rx(),
            ));
        }
        let engine = Engine {
            ctx: ctx.clone(),
            lanes: lanes.clone(),
        };
        if opts.listen {
            tasks.extend(start_listening(&engine).await?);
        }
        for p in ctx.all_peers() {
            if opts.dial_all || p > ctx.name {
                tasks.push(tokio::spawn(dialer(engine.clone(), p)));
            }
        }
        // the initial scan: its flushes are streamed to peers as they are committed, and
        // what peers send waits in the lanes' queues until it is done
        for l in runs.iter_mut() {
            l.initial_scan().await;
        }
        for l in runs {
            tasks.push(tokio::spawn(l.run()));
        }
        Ok(Node { ctx, lanes, tasks })
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

/// What the watcher needs to know of this node's groups.
fn watch_spec(ctx: &Ctx) -> crate::local::watch::Spec {
    crate::local::watch::Spec {
        root: ctx.root.clone(),
        groups: ctx
            .groups
            .values()
            .filter(|g| g.cfg.watch && !g.is_accounts())
            .map(|g| crate::local::watch::Watched {
                name: g.name().to_string(),
                paths: g.cfg.paths.clone(),
                filter: g.filter.clone(),
            })
            .collect(),
        accounts: ctx.group(crate::engine::group::ACCOUNTS).is_some(),
    }
}

/// Listen for peers, and serve metrics and health when configured.
async fn start_listening(e: &Engine) -> Result<Vec<tokio::task::JoinHandle<()>>, NodeError> {
    let ctx = &e.ctx;
    let addr = ctx.me.listen_addr();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| NodeError::Listen {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!("node {} listening on {addr}", ctx.name);
    let mut tasks = vec![tokio::spawn(listen(e.clone(), listener))];
    let maddr = ctx
        .me
        .metrics
        .clone()
        .or_else(|| ctx.cfg.metrics.as_ref().and_then(|m| m.listen.clone()));
    let Some(maddr) = maddr else {
        return Ok(tasks);
    };
    // weak: a stopping node's context is not kept alive by its metrics server
    let (c, lanes) = (Arc::downgrade(ctx), e.lanes.clone());
    ctx.metrics.set_collector(Arc::new(move |m| {
        if let Some(ctx) = c.upgrade() {
            let e = Engine {
                ctx,
                lanes: lanes.clone(),
            };
            e.collect_metrics(m);
        }
    }));
    let (c, lanes) = (Arc::downgrade(ctx), e.lanes.clone());
    let health: crate::ops::metrics::HealthFn = Arc::new(move || match c.upgrade() {
        Some(ctx) => Engine {
            ctx,
            lanes: lanes.clone(),
        }
        .health(),
        None => crate::ops::metrics::Health::Unhealthy("stopping".into()),
    });
    let server = crate::ops::metrics::serve(&maddr, ctx.metrics.clone(), health, ctx.shutdown_rx())
        .await
        .map_err(|e| NodeError::Listen {
            addr: maddr.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    tasks.push(server.task);
    Ok(tasks)
}

/// Handshakes in progress at most; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 256;

async fn listen(e: Engine, listener: tokio::net::TcpListener) {
    let ctx = e.ctx.clone();
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
        let lanes = e.lanes.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            // every key completes the handshake; one that is not a configured peer's is then
            // refused with a `Bye` saying so (the dialler has authenticated us: it can report
            // why instead of dialling again at once), and nothing else is sent or accepted
            let link = crate::net::transport::accept(stream, &ctx.ident, |_| true).await;
            drop(permit);
            match link {
                Ok(wire) => {
                    let peer = ctx.node_by_id(&wire.remote_id).filter(|n| *n != ctx.name);
                    let refusal = match &peer {
                        None => Some((
                            format!("peer key {} is not a configured node id", wire.remote_id),
                            // what the dialler already knows: its own id (not this node's name)
                            format!(
                                "{}: the config here has no node with id {}",
                                crate::net::protocol::BYE_UNKNOWN_KEY,
                                wire.remote_id
                            ),
                        )),
                        Some(p) if ctx.shared_groups(p).is_empty() => {
                            let why = format!("{p} shares no group with {}", ctx.name);
                            Some((why.clone(), why))
                        }
                        Some(_) => None,
                    };
                    let (Some(peer), None) = (peer, refusal.as_ref()) else {
                        if let Some((log, bye)) = refusal {
                            ctx.links.refused(&ctx.audit, &addr.to_string(), &log);
                            link::refuse(wire, &bye).await;
                        }
                        return;
                    };
                    if let Err(e) = link::run(ctx.clone(), lanes, wire, peer.clone()).await {
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
    let remembered = lock(&ctx.links.peers).get(peer).and_then(|p| p.suite);
    let mut suite = remembered.unwrap_or_else(Suite::preferred);
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
            Ok(link) => {
                // a protocol-3 peer took the fallback: start with it next time; a newer
                // release answers every suite it knows, so an upgraded peer gets the
                // preferred one again from its next connect on
                let keep = (link.version < 4 && suite != Suite::preferred()).then_some(suite);
                lock(&ctx.links.peers)
                    .entry(peer.to_string())
                    .or_default()
                    .suite = keep;
                return Ok(link);
            }
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
/// 5 s, or 60 s for a key mismatch or a peer that refuses this node's key).
const FIRST_RETRY: Duration = Duration::from_millis(4);
/// The longest wait between attempts to reach a peer that refuses this node (its key, or the
/// link): a config has to change before it can work.
const REFUSED_RETRY_MAX: Duration = Duration::from_secs(60);
/// A link that ends sooner than this after it came up counts as a failed dial (the peer closes
/// it at once, again and again): the next dial waits as after a failure.
const SHORT_LINK: Duration = Duration::from_secs(1);

/// What a link that ended says for the next dial: `None` when the link was up (dial again at
/// once), else the longest wait before the next attempt. A link the peer refused before its
/// `Hello` is recorded as this peer's error for `status` and `sync`, logged once per change of
/// reason ([`Links::set_error`]).
pub(crate) fn link_ended(
    ctx: &Ctx,
    peer: &str,
    ended: Result<(), link::LinkError>,
    lasted: Duration,
) -> Option<Duration> {
    use link::LinkError;
    let e = match ended {
        Ok(()) => return None,
        Err(e) => e,
    };
    let me = &ctx.name;
    let id = ctx.ident.id();
    let fix = format!(
        "put this node's id into the config on {peer} ([nodes.{me}] id = \"{id}\", as `clustersync id` prints it here; the same file on every node), then reload {peer} (`systemctl reload clustersync`)"
    );
    let (why, max) = match &e {
        LinkError::Refused { reason, .. }
            if reason.starts_with(crate::net::protocol::BYE_UNKNOWN_KEY) =>
        {
            (
                format!("{peer} refused this node's key ({reason}): {fix}"),
                REFUSED_RETRY_MAX,
            )
        }
        LinkError::ClosedBeforeHello(_) => (
            format!(
                "{peer} closed the link right after the handshake, without a word: it probably refused this node's key (its release does not say why); {fix}"
            ),
            REFUSED_RETRY_MAX,
        ),
        LinkError::Refused { reason, .. } => (
            format!("{peer} refused the link: {reason}"),
            REFUSED_RETRY_MAX,
        ),
        LinkError::Bye { reason, .. } => {
            ctx.links
                .set_error(peer, format!("{peer} closed the link: {reason}"));
            return (lasted < SHORT_LINK).then_some(Duration::from_secs(5));
        }
        e if e.before_hello() => (e.to_string(), Duration::from_secs(5)),
        e => {
            tracing::debug!(peer, "link ended: {e}");
            return (lasted < SHORT_LINK).then_some(Duration::from_secs(5));
        }
    };
    ctx.links.set_error(peer, why);
    Some(max)
}

async fn dialer(e: Engine, peer: String) {
    let ctx = e.ctx.clone();
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
                    let t0 = Instant::now();
                    let ended = link::run(ctx.clone(), e.lanes.clone(), wire, peer.clone()).await;
                    match link_ended(&ctx, &peer, ended, t0.elapsed()) {
                        // the link was up: dial again at once
                        None => {
                            backoff = FIRST_RETRY;
                            continue;
                        }
                        // refused right after the handshake: a failed dial
                        Some(max) => backoff = (backoff * 2).min(max),
                    }
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
