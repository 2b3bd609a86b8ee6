//! What `status` reports (SPEC §4): per group its counters (kept by the index, O(1)), pending
//! work, conflicts, whether it is in sync, and why not; per peer whether it is connected, how
//! much it has not confirmed, when it was last seen, and why its link is down. Built from the
//! index and, with a daemon, from what its lanes and links publish ([`View`], read once), or
//! from the index alone when no daemon runs.
//!
//! Invariant (SPEC §4): a group is `in_sync` exactly when nothing is known that may make this
//! node's tree differ from a peer's: no change of ours a member has not acknowledged, no
//! change of a peer's not applied here, nothing waiting in the watcher or the lane, nothing
//! set aside, no drift, the group not stopped, and nothing withheld from a peer (an older
//! release that cannot take an item, settings that differ). Peers that only receive (replicas)
//! never count as having something for us.

use crate::config::Config;
use crate::engine::lane::Lanes;
use crate::engine::node::{Ctx, TransferStats};
use crate::engine::peer::{RemoteProgress, lock};
use crate::item::name;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// `status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub groups: Vec<GroupStatus>,
    pub peers: Vec<PeerStatus>,
    /// Whether a daemon answered (false: read from the index, as of `as_of`).
    #[serde(default)]
    pub daemon: bool,
    /// When the state was read (without a daemon: the index file's last change).
    #[serde(default)]
    pub as_of: Option<String>,
    /// Counters of the running daemon (absent without one).
    pub transfer: Option<TransferStats>,
    /// The actions of this node's groups and how their last run went.
    #[serde(default)]
    pub actions: Vec<ActionView>,
    /// Account sync (`[accounts]`), when this node is a member.
    #[serde(default)]
    pub accounts: Option<AccountsStatus>,
}

/// `status` of account sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountsStatus {
    /// Managed users and groups in the index.
    pub users: u64,
    pub groups: u64,
    /// Accounts received but not applied here, with why (collisions name both accounts).
    pub not_applied: Vec<String>,
    pub pending: u64,
    pub in_sync: bool,
    /// Accounts here that cannot be read (malformed line, a name that cannot be synced) or
    /// that left the managed set on this node: not synced from here.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Unresolved account conflicts (`conflict = "manual"`): `status` exits 3.
    #[serde(default)]
    pub conflicts: u64,
    /// Peers of an older release, with which accounts are not exchanged.
    #[serde(default)]
    pub older_peers: Vec<String>,
}

/// One action as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionView {
    pub group: String,
    pub index: usize,
    pub run: String,
    pub runs: u64,
    pub failures: u64,
    pub running: bool,
    /// Paths waiting for the next run.
    pub pending: usize,
    /// How the last run ended (`exit status 0`, `timed out ...`), when it ran.
    pub last: Option<String>,
    pub last_ok: Option<bool>,
    pub last_duration_ms: Option<u64>,
    pub last_paths: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    pub files: u64,
    pub bytes: u64,
    pub pending: u64,
    pub conflicts: u64,
    pub in_sync: bool,
    pub directories: u64,
    pub symlinks: u64,
    /// Deletions remembered until every member confirmed them.
    #[serde(default)]
    pub tombstones: u64,
    /// Why the group is stopped on this node, and what to do.
    pub error: Option<String>,
    /// This node only receives in this group.
    pub replica: bool,
    /// Paths with unresolved drift (replicas), escaped.
    pub drift: Vec<String>,
    /// Peers' items that could not be applied yet, with why (escaped path: reason).
    #[serde(default)]
    pub set_aside: Vec<String>,
    /// Bytes used by this group's kept backups.
    #[serde(default)]
    pub backup_bytes: u64,
    /// A problem that does not stop the group.
    #[serde(default)]
    pub warning: Option<String>,
    /// Items received from peers and applied since the daemon started, and their bytes.
    #[serde(default)]
    pub applied: u64,
    #[serde(default)]
    pub applied_bytes: u64,
    /// Why a peer does not get everything of this group (settings that differ, items its
    /// release cannot take): each a reason the trees may differ.
    #[serde(default)]
    pub withheld: Vec<String>,
    /// Per peer: the last comparison of index summaries (time, whether it matched), or why
    /// none happens (SPEC §4, §5.14). Peers not compared yet are absent.
    #[serde(default)]
    pub last_verified: BTreeMap<String, crate::engine::verify::LastVerified>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub connected: bool,
    pub behind: u64,
    pub last_seen: Option<String>,
    /// Why the link is down or a group is not exchanged with this peer; `null` when fine.
    pub error: Option<String>,
    pub address: String,
    /// The protocol version of the link (3: the peer runs the previous release).
    #[serde(default)]
    pub protocol: Option<u32>,
    /// Items the peer's release cannot take (not sent to it).
    #[serde(default)]
    pub not_sendable: u64,
    /// Bytes of content sent to and received from this peer on the current link.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
    /// What is being received from this peer, per group (while it has more to send).
    #[serde(default)]
    pub receiving: Vec<Progress>,
}

/// Progress of what a peer sends, for one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub group: String,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Since the link came up.
    pub files_per_s: f64,
    pub bytes_per_s: f64,
}

impl Status {
    /// The exit status of `status` (SPEC §4): 0 in sync and every peer connected, 3
    /// unresolved conflicts, 1 anything else behind, stopped or unreachable.
    pub fn exit_code(&self) -> u8 {
        if self.groups.iter().any(|g| g.conflicts > 0)
            || self.accounts.as_ref().is_some_and(|a| a.conflicts > 0)
        {
            return 3;
        }
        if !self.daemon
            || self.groups.iter().any(|g| !g.in_sync)
            || self.accounts.as_ref().is_some_and(|a| !a.in_sync)
            || self.peers.iter().any(|p| !p.connected)
        {
            return 1;
        }
        0
    }
}

/// `1.0 GiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", U[i])
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What a running node's lanes and links publish, read once for one `status`.
#[derive(Debug, Default)]
pub struct View {
    pub lanes: BTreeMap<String, LaneView>,
    pub peers: BTreeMap<String, PeerView>,
    pub transfer: Option<TransferStats>,
    pub actions: Vec<ActionView>,
}

/// A lane's published state.
#[derive(Debug, Default, Clone)]
pub struct LaneView {
    /// The accounts pseudo-group's problems (see [`AccountsStatus::problems`]).
    pub notes: Vec<String>,
    pub stopped: Option<String>,
    pub waiting_local: u64,
    pub queued: u64,
    pub drift: Vec<String>,
    pub warning: Option<String>,
    pub applied: u64,
    pub applied_bytes: u64,
    /// The last summary comparison with each peer (`engine::verify`).
    pub last_verified: BTreeMap<String, crate::engine::verify::LastVerified>,
}

/// A peer as its link and the peer registry show it.
#[derive(Debug, Default, Clone)]
pub struct PeerView {
    pub connected: bool,
    pub protocol: Option<u32>,
    pub last_seen: Option<SystemTime>,
    /// Why the last dial failed or the link was refused.
    pub error: Option<String>,
    /// Settings that differ (found at connect).
    pub config: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds the link has been up.
    pub up_secs: f64,
    pub groups: BTreeMap<String, LinkGroupView>,
}

/// One shared group on a live link.
#[derive(Debug, Default, Clone)]
pub struct LinkGroupView {
    /// Settings differ: nothing of the group is exchanged, and why.
    pub paused: Option<String>,
    /// The highest seq of ours the peer acknowledged on this link.
    pub acked: u64,
    /// What the peer has and we applied.
    pub remote: RemoteProgress,
    /// Items the peer's release cannot take (not sent), and why.
    pub not_sendable: u64,
    pub not_sendable_why: Option<String>,
}

impl View {
    /// Read what a running node publishes.
    pub fn of(ctx: &Ctx, lanes: &Lanes) -> View {
        let lanes = lanes
            .iter()
            .map(|l| {
                let s = &l.state;
                let v = LaneView {
                    notes: lock(&s.notes).clone(),
                    stopped: lock(&s.stopped).clone(),
                    waiting_local: s.waiting_local.load(Ordering::Relaxed) as u64,
                    queued: s.queued.load(Ordering::Relaxed) as u64,
                    drift: lock(&s.drift)
                        .keys()
                        .map(|k| name::show(k).into_owned())
                        .collect(),
                    warning: lock(&s.warning).clone(),
                    applied: s.applied.load(Ordering::Relaxed),
                    applied_bytes: s.applied_bytes.load(Ordering::Relaxed),
                    last_verified: ctx.verified.of_group(l.group.name()),
                };
                (l.group.name().to_string(), v)
            })
            .collect();
        let peers = ctx
            .all_peers()
            .into_iter()
            .map(|p| {
                let v = peer_view(ctx, &p);
                (p, v)
            })
            .collect();
        View {
            lanes,
            peers,
            transfer: Some(ctx.counters.snapshot()),
            actions: action_views(ctx),
        }
    }
}

fn peer_view(ctx: &Ctx, peer: &str) -> PeerView {
    let st = ctx.links.state(peer);
    let mut v = PeerView {
        last_seen: st.last_seen,
        error: st.error,
        config: st.config,
        ..Default::default()
    };
    if let Some(l) = ctx.links.get(peer) {
        v.connected = true;
        v.error = None;
        v.protocol = Some(l.version);
        v.bytes_sent = l.bytes_out.load(Ordering::Relaxed);
        v.bytes_received = l.bytes_in.load(Ordering::Relaxed);
        v.up_secs = l.since.elapsed().as_secs_f64();
        for (g, lg) in &l.groups {
            let p = l.pump(g);
            v.groups.insert(
                g.clone(),
                LinkGroupView {
                    paused: lg.paused.clone(),
                    acked: p.acked,
                    remote: l.remote_of(g),
                    not_sendable: p.not_sendable,
                    not_sendable_why: p.not_sendable_why,
                },
            );
        }
    }
    v
}

fn action_views(ctx: &Ctx) -> Vec<ActionView> {
    let Some(a) = ctx.actions.as_ref() else {
        return Vec::new();
    };
    a.status()
        .into_iter()
        .map(|s| ActionView {
            group: s.group,
            index: s.index,
            run: s.run,
            runs: s.runs,
            failures: s.failures,
            running: s.running,
            pending: s.pending,
            last: s.last.as_ref().map(|r| r.outcome.to_string()),
            last_ok: s.last.as_ref().map(|r| r.success()),
            last_duration_ms: s.last.as_ref().map(|r| r.duration.as_millis() as u64),
            last_paths: s.last.as_ref().map(|r| r.paths),
        })
        .collect()
}

/// Status from the index alone (no daemon).
pub fn offline(name: &str, cfg: &Config, store: &Store) -> Result<Status, StoreError> {
    build(name, cfg, store, None)
}

/// Status of a running node.
pub fn live(ctx: &Ctx, lanes: &Lanes) -> Result<Status, StoreError> {
    build(&ctx.name, &ctx.cfg, &ctx.store, Some(&View::of(ctx, lanes)))
}

/// The pending work of a running group (for the metrics gauge), as `status` counts it.
pub fn group_pending(ctx: &Ctx, l: &crate::engine::lane::LaneHandle) -> u64 {
    let g = &l.group;
    let Some(gc) = ctx.cfg.groups.get(g.name()) else {
        return 0;
    };
    let view = View {
        peers: g
            .peers
            .iter()
            .map(|p| (p.clone(), peer_view(ctx, p)))
            .collect(),
        ..Default::default()
    };
    let lane = LaneView {
        waiting_local: l.state.waiting_local.load(Ordering::Relaxed) as u64,
        queued: l.state.queued.load(Ordering::Relaxed) as u64,
        ..Default::default()
    };
    let me = &ctx.name;
    let mut n = lane.waiting_local + lane.queued;
    n += ctx
        .store
        .aside(g.name())
        .map(|a| a.len() as u64)
        .unwrap_or(0);
    n += unconfirmed(&ctx.store, me, gc, Some(&view)).unwrap_or(0);
    n += still_coming(me, gc, &view);
    n
}

/// What a peer acknowledged of `group`: the saved acknowledgement, or what its live link
/// acknowledged (a peer of an older release acknowledges without saving it for collection).
fn acked(store: &Store, view: Option<&View>, peer: &str, group: &str) -> Result<u64, StoreError> {
    let saved = store.acked(peer, group)?;
    let live = view
        .and_then(|v| v.peers.get(peer))
        .and_then(|p| p.groups.get(group))
        .map_or(0, |g| g.acked);
    Ok(saved.max(live))
}

/// Our changes of `g` some member has not acknowledged (a replica sends nothing: none).
fn unconfirmed(
    store: &Store,
    me: &str,
    g: &crate::config::GroupConfig,
    view: Option<&View>,
) -> Result<u64, StoreError> {
    if g.replicas.iter().any(|r| r == me) {
        return Ok(0);
    }
    let mut n = 0;
    for p in g.members().filter(|m| *m != me) {
        n += store.count_since(&g.name, acked(store, view, p, &g.name)?)?;
    }
    Ok(n)
}

/// What connected peers have of `g` and we have not applied. Replicas never send: their head
/// says nothing about what we are missing.
fn still_coming(me: &str, g: &crate::config::GroupConfig, view: &View) -> u64 {
    let _ = me;
    let mut n = 0;
    for p in g.nodes.iter() {
        let Some(lg) = view.peers.get(p).and_then(|v| v.groups.get(&g.name)) else {
            continue;
        };
        let r = &lg.remote;
        if lg.paused.is_none() && r.head > r.applied {
            n += r.expected.saturating_sub(r.received).max(1);
        }
    }
    n
}

/// Why peers do not get everything of `g`: settings that differ, items their release cannot
/// take; with the number of withheld items.
fn withheld(g: &crate::config::GroupConfig, view: &View) -> (Vec<String>, u64) {
    let mut why = Vec::new();
    let mut n = 0;
    for (p, pv) in &view.peers {
        if !g.has_node(p) {
            continue;
        }
        if let Some(lg) = pv.groups.get(&g.name) {
            if let Some(r) = &lg.paused {
                why.push(format!("nothing is exchanged with {p}: {r}"));
            }
            if lg.not_sendable > 0 {
                n += lg.not_sendable;
                why.push(format!(
                    "{} item(s) held back from {p}: {}",
                    lg.not_sendable,
                    lg.not_sendable_why
                        .as_deref()
                        .unwrap_or("its release cannot take them")
                ));
            }
        } else if let Some(c) = pv
            .config
            .iter()
            .find(|c| c.contains(&format!("group {}", g.name)))
        {
            why.push(format!("nothing is exchanged with {p}: {c}"));
        }
    }
    (why, n)
}

fn group_status(
    name: &str,
    g: &crate::config::GroupConfig,
    store: &Store,
    view: Option<&View>,
    unresolved: u64,
) -> Result<GroupStatus, StoreError> {
    let st = store.stats(&g.name)?;
    let replica = g.replicas.iter().any(|r| r == name);
    let aside = store.aside(&g.name)?;
    let mut pending = unconfirmed(store, name, g, view)? + aside.len() as u64;
    let set_aside = aside
        .iter()
        .take(100)
        .map(|a| format!("{}: {}", name::show(&a.item.key), a.error))
        .collect();
    let lane = view
        .and_then(|v| v.lanes.get(&g.name))
        .cloned()
        .unwrap_or_default();
    let (mut withheld_why, mut withheld_n) = (Vec::new(), 0);
    let backup_bytes = match view {
        Some(v) => {
            pending += lane.waiting_local + lane.queued + still_coming(name, g, v);
            (withheld_why, withheld_n) = withheld(g, v);
            crate::fs::backup::Backups::new(&store.path().with_file_name("backups")).usage(&g.name)
        }
        None => {
            crate::fs::backup::Backups::new(&store.path().with_file_name("backups")).usage(&g.name)
        }
    };
    pending += withheld_n;
    let in_sync = pending == 0
        && unresolved == 0
        && lane.stopped.is_none()
        && lane.drift.is_empty()
        && withheld_why.is_empty();
    Ok(GroupStatus {
        name: g.name.clone(),
        files: st.files,
        bytes: st.bytes,
        pending,
        conflicts: unresolved,
        in_sync,
        directories: st.dirs,
        symlinks: st.symlinks,
        tombstones: st.tombstones,
        error: lane.stopped,
        replica,
        drift: lane.drift,
        set_aside,
        backup_bytes,
        warning: lane.warning,
        applied: lane.applied,
        applied_bytes: lane.applied_bytes,
        withheld: withheld_why,
        last_verified: lane.last_verified,
    })
}

fn peer_status(
    name: &str,
    p: &str,
    cfg: &Config,
    my_groups: &[&crate::config::GroupConfig],
    store: &Store,
    view: Option<&View>,
) -> Result<PeerStatus, StoreError> {
    let mut behind = 0;
    for g in my_groups
        .iter()
        .filter(|g| g.has_node(p) && !g.replicas.iter().any(|r| r == name))
    {
        behind += store.count_since(&g.name, acked(store, view, p, &g.name)?)?;
    }
    let mut ps = PeerStatus {
        name: p.to_string(),
        connected: false,
        behind,
        last_seen: None,
        error: None,
        address: cfg.node(p).map(|n| n.address.clone()).unwrap_or_default(),
        protocol: None,
        not_sendable: 0,
        bytes_sent: 0,
        bytes_received: 0,
        receiving: Vec::new(),
    };
    let Some(v) = view else {
        ps.error = Some("no daemon running".into());
        return Ok(ps);
    };
    let pv = v.peers.get(p).cloned().unwrap_or_default();
    ps.connected = pv.connected;
    ps.last_seen = pv.last_seen.map(rfc3339);
    ps.protocol = pv.protocol;
    ps.bytes_sent = pv.bytes_sent;
    ps.bytes_received = pv.bytes_received;
    let mut errs: Vec<String> = pv.config.clone();
    let secs = pv.up_secs.max(0.001);
    for (g, lg) in &pv.groups {
        let r = &lg.remote;
        if r.expected > 0 && (r.received < r.expected || r.head > r.applied) {
            ps.receiving.push(Progress {
                group: g.clone(),
                files_done: r.received.min(r.expected),
                files_total: r.expected,
                bytes_done: r.received_bytes.min(r.expected_bytes),
                bytes_total: r.expected_bytes,
                files_per_s: r.received as f64 / secs,
                bytes_per_s: r.received_bytes as f64 / secs,
            });
        }
        ps.not_sendable += lg.not_sendable;
        if let Some(w) = &lg.not_sendable_why
            && !errs.contains(w)
        {
            errs.push(w.clone());
        }
    }
    if !pv.connected {
        match pv.error {
            Some(e) => errs.insert(0, e),
            None if errs.is_empty() => errs.push("not connected yet".into()),
            None => {}
        }
    }
    ps.error = (!errs.is_empty()).then(|| errs.join("; "));
    Ok(ps)
}

fn accounts_status(
    name: &str,
    cfg: &Config,
    store: &Store,
    view: Option<&View>,
    conflicts: &[(String, Vec<u8>, crate::store::ConflictInfo)],
) -> Result<Option<AccountsStatus>, StoreError> {
    let g = crate::engine::group::ACCOUNTS;
    if cfg.accounts.is_none() || !store.incarnation_known(g) {
        return Ok(None);
    }
    let st = store.stats(g)?;
    let aside = store.aside(g)?;
    let mut pending = aside.len() as u64;
    let members: Vec<String> = match cfg.accounts.as_ref().and_then(|a| a.nodes.clone()) {
        Some(n) => n,
        None => cfg.nodes.keys().cloned().collect(),
    };
    for p in members.iter().filter(|m| *m != name) {
        pending += store.count_since(g, acked(store, view, p, g)?)?;
    }
    let unresolved = conflicts
        .iter()
        .filter(|(cg, _, c)| {
            cg == g && !c.resolved && !crate::engine::lane::accounts::is_collision(c)
        })
        .count() as u64;
    let mut problems = Vec::new();
    let mut older_peers = Vec::new();
    if let Some(v) = view {
        if let Some(l) = v.lanes.get(g) {
            pending += l.queued;
            problems = l.notes.clone();
        }
        for p in members.iter().filter(|m| *m != name) {
            if let Some(version) = v.peers.get(p).and_then(|pv| pv.protocol)
                && version < 5
            {
                older_peers.push(format!(
                    "{p} runs an older release (protocol {version}): accounts are not exchanged with it until it is upgraded"
                ));
            }
        }
    }
    Ok(Some(AccountsStatus {
        users: st.files,
        groups: st.dirs,
        not_applied: aside.iter().map(|a| a.error.clone()).collect(),
        in_sync: pending == 0 && unresolved == 0 && problems.is_empty() && older_peers.is_empty(),
        pending,
        problems,
        conflicts: unresolved,
        older_peers,
    }))
}

fn build(
    name: &str,
    cfg: &Config,
    store: &Store,
    view: Option<&View>,
) -> Result<Status, StoreError> {
    let conflicts = store.conflicts()?;
    let my_groups: Vec<_> = cfg.groups_of(name).collect();
    let mut groups = Vec::new();
    for g in &my_groups {
        let unresolved = conflicts
            .iter()
            .filter(|(cg, _, c)| cg == &g.name && !c.resolved)
            .count() as u64;
        groups.push(group_status(name, g, store, view, unresolved)?);
    }
    let peer_names: BTreeSet<&str> = my_groups
        .iter()
        .flat_map(|g| g.members())
        .filter(|m| *m != name)
        .collect();
    let mut peers = Vec::new();
    for p in peer_names {
        peers.push(peer_status(name, p, cfg, &my_groups, store, view)?);
    }
    let as_of = if view.is_some() {
        Some(rfc3339(SystemTime::now()))
    } else {
        std::fs::metadata(store.path())
            .and_then(|m| m.modified())
            .ok()
            .map(rfc3339)
    };
    Ok(Status {
        node: name.to_string(),
        groups,
        peers,
        daemon: view.is_some(),
        as_of,
        transfer: view.and_then(|v| v.transfer.clone()),
        actions: view.map(|v| v.actions.clone()).unwrap_or_default(),
        accounts: accounts_status(name, cfg, store, view, &conflicts)?,
    })
}
