//! What `status` reports (SPEC §4): per group its counters (kept by the index, O(1)), pending
//! work, conflicts, whether it is in sync, and why not; per peer whether it is connected, how
//! much it has not confirmed, when it was last seen, and why its link is down. Built from a
//! running node, or from the index alone when no daemon runs.

use crate::config::Config;
use crate::engine::link::lock;
use crate::engine::node::{Ctx, TransferStats};
use crate::item::name;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
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
    /// Per peer: the last comparison of index summaries (time, whether it matched), or why
    /// none happens (SPEC §4, §5.14). Peers not compared yet are absent.
    #[serde(default)]
    pub last_verified: std::collections::BTreeMap<String, crate::engine::verify::LastVerified>,
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
        if self.groups.iter().any(|g| g.conflicts > 0) {
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

/// Status from the index alone (no daemon).
pub fn offline(name: &str, cfg: &Config, store: &Store) -> Result<Status, StoreError> {
    build(name, cfg, store, None)
}

/// Status of a running node.
pub fn live(ctx: &Ctx) -> Result<Status, StoreError> {
    build(&ctx.name, &ctx.cfg, &ctx.store, Some(ctx))
}

/// The pending work of a running group, as `status` counts it: our changes some member has
/// not confirmed, paths the watcher holds, batches queued, items set aside, and what connected
/// peers still have for us.
pub fn group_pending(ctx: &Ctx, l: &crate::engine::lane::LaneHandle) -> u64 {
    let g = &l.group;
    let name = g.name();
    let mut pending = 0;
    if !g.replica {
        for p in &g.peers {
            let acked = ctx.store.acked(p, name).unwrap_or(0);
            pending += ctx.store.count_since(name, acked).unwrap_or(0);
        }
    }
    pending += l.state.waiting_local.load(Ordering::Relaxed) as u64;
    pending += l.state.queued.load(Ordering::Relaxed) as u64;
    pending += l.state.aside.load(Ordering::Relaxed);
    for p in &g.peers {
        if let Some(link) = ctx.links.get(p)
            && link.active(name)
        {
            let r = link.remote_of(name);
            if r.head > r.applied {
                pending += r.expected.saturating_sub(r.received).max(1);
            }
        }
    }
    pending
}

fn build(
    name: &str,
    cfg: &Config,
    store: &Store,
    live: Option<&Ctx>,
) -> Result<Status, StoreError> {
    let conflicts = store.conflicts()?;
    let mut groups = Vec::new();
    let my_groups: Vec<_> = cfg.groups_of(name).collect();
    for g in &my_groups {
        let st = store.stats(&g.name)?;
        let replica = g.replicas.iter().any(|r| r == name);
        let mut pending = 0u64;
        // a replica sends nothing: what it has not "sent" is not pending
        if !replica {
            for p in g.members().filter(|m| *m != name) {
                pending += store.count_since(&g.name, store.acked(p, &g.name)?)?;
            }
        }
        let aside = store.aside(&g.name)?;
        pending += aside.len() as u64;
        let set_aside: Vec<String> = aside
            .iter()
            .take(100)
            .map(|a| format!("{}: {}", name::show(&a.item.key), a.error))
            .collect();
        let (mut error, mut drift, mut warning, mut applied, mut applied_bytes) =
            (None, Vec::new(), None, 0, 0);
        let backup_bytes;
        if let Some(ctx) = live {
            if let Some(l) = ctx.lane(&g.name) {
                let s = &l.state;
                error = lock(&s.stopped).clone();
                pending += s.waiting_local.load(Ordering::Relaxed) as u64;
                pending += s.queued.load(Ordering::Relaxed) as u64;
                drift = lock(&s.drift)
                    .keys()
                    .map(|k| name::show(k).into_owned())
                    .collect();
                warning = lock(&s.warning).clone();
                applied = s.applied.load(Ordering::Relaxed);
                applied_bytes = s.applied_bytes.load(Ordering::Relaxed);
            }
            // what connected peers have and we have not applied yet
            for p in g.members().filter(|m| *m != name) {
                if let Some(l) = ctx.links.get(p)
                    && l.active(&g.name)
                {
                    let r = l.remote_of(&g.name);
                    if r.head > r.applied {
                        pending += r.expected.saturating_sub(r.received).max(1);
                    }
                }
            }
            backup_bytes = ctx.backups.usage(&g.name);
        } else {
            let b = crate::fs::backup::Backups::new(&store.path().with_file_name("backups"));
            backup_bytes = b.usage(&g.name);
        }
        let unresolved = conflicts
            .iter()
            .filter(|(cg, _, c)| cg == &g.name && !c.resolved)
            .count() as u64;
        groups.push(GroupStatus {
            name: g.name.clone(),
            files: st.files,
            bytes: st.bytes,
            pending,
            conflicts: unresolved,
            in_sync: pending == 0 && unresolved == 0 && error.is_none() && drift.is_empty(),
            directories: st.dirs,
            symlinks: st.symlinks,
            tombstones: st.tombstones,
            error,
            replica,
            drift,
            set_aside,
            backup_bytes,
            warning,
            applied,
            applied_bytes,
            last_verified: live
                .map(|c| c.verified.of_group(&g.name))
                .unwrap_or_default(),
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
            behind += store.count_since(&g.name, store.acked(p, &g.name)?)?;
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
        if let Some(ctx) = live {
            let st = ctx.links.state(p);
            ps.last_seen = st.last_seen.map(rfc3339);
            let mut errs: Vec<String> = st.config.clone();
            match ctx.links.get(p) {
                Some(l) => {
                    ps.connected = true;
                    ps.protocol = Some(l.version);
                    ps.bytes_sent = l.bytes_out.load(Ordering::Relaxed);
                    ps.bytes_received = l.bytes_in.load(Ordering::Relaxed);
                    let secs = l.since.elapsed().as_secs_f64().max(0.001);
                    for (g, _) in l.groups.iter() {
                        let r = l.remote_of(g);
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
                    }
                    for (g, _) in l.groups.iter() {
                        let pp = l.pump(g);
                        ps.not_sendable += pp.not_sendable;
                        if let Some(w) = pp.not_sendable_why
                            && !errs.contains(&w)
                        {
                            errs.push(w);
                        }
                    }
                }
                None => {
                    if let Some(e) = st.error {
                        errs.insert(0, e);
                    } else if errs.is_empty() {
                        errs.push("not connected yet".into());
                    }
                }
            }
            ps.error = (!errs.is_empty()).then(|| errs.join("; "));
        } else {
            ps.error = Some("no daemon running".into());
        }
        peers.push(ps);
    }
    let as_of = if live.is_some() {
        Some(rfc3339(SystemTime::now()))
    } else {
        std::fs::metadata(store.path())
            .and_then(|m| m.modified())
            .ok()
            .map(rfc3339)
    };
    let accounts =
        if cfg.accounts.is_some() && store.incarnation_known(crate::engine::group::ACCOUNTS) {
            let g = crate::engine::group::ACCOUNTS;
            let st = store.stats(g)?;
            let aside = store.aside(g)?;
            let mut pending = aside.len() as u64;
            let members: Vec<String> = match cfg.accounts.as_ref().and_then(|a| a.nodes.clone()) {
                Some(n) => n,
                None => cfg.nodes.keys().cloned().collect(),
            };
            for p in members.iter().filter(|m| *m != name) {
                pending += store.count_since(g, store.acked(p, g)?)?;
            }
            Some(AccountsStatus {
                users: st.files,
                groups: st.dirs,
                not_applied: aside.iter().map(|a| a.error.clone()).collect(),
                pending,
                in_sync: pending == 0,
            })
        } else {
            None
        };
    let actions = live
        .and_then(|c| c.actions.as_ref())
        .map(|a| {
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
        })
        .unwrap_or_default();
    Ok(Status {
        node: name.to_string(),
        groups,
        peers,
        daemon: live.is_some(),
        as_of,
        transfer: live.map(|c| c.counters.snapshot()),
        actions,
        accounts,
    })
}
