//! `clustersync sync`: reconcile with every reachable peer now, and return when this node is in
//! sync with them (or say why not).
//!
//! For each peer, over its one link: send `Ping`; the peer answers `Pong` once its pumps have
//! sent everything it had; the batches sent before the `Pong` are then queued in our lanes, so
//! a marker through each lane resolves once they are applied. Our side is done when our pumps
//! to that peer have read our whole index and the peer acknowledged every batch. No step waits
//! on a timer: a sync with nothing to do takes a round trip per peer.

use crate::engine::node::Engine;
use crate::engine::peer::Link;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Result of a `sync` run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SyncReport {
    /// Peers that could not be reached, with why.
    pub unreachable: Vec<(String, String)>,
    pub conflicts: usize,
    pub stopped: Vec<String>,
    /// Items not applied yet (set aside), and what.
    pub pending: usize,
    #[serde(default)]
    pub pending_what: Vec<String>,
    /// Unresolved conflicts that remain (escaped paths).
    #[serde(default)]
    pub unresolved: Vec<String>,
}

impl SyncReport {
    /// Exit status (SPEC §4): 4 a peer unreachable, 3 conflicts, 1 stopped or pending, 0.
    pub fn exit_code(&self) -> u8 {
        if !self.unreachable.is_empty() {
            4
        } else if self.conflicts > 0 {
            3
        } else if !self.stopped.is_empty() || self.pending > 0 {
            1
        } else {
            0
        }
    }
}

/// The longest a path waits in the watcher's windows (`local::window::Params`: a file written
/// without pause, a burst of deletions), plus a margin.
const WINDOW_MAX: Duration = Duration::from_millis(3500);

/// Is this dial error a refusal (no point waiting for it to go away by itself)?
fn refusal(e: &str) -> bool {
    e.contains("key mismatch")
        || e.contains("refused")
        || e.contains("closed the connection")
        || e.contains("has no id")
        || e.contains("config differs")
}

/// What `sync` would report now without exchanging anything (`sync --dry-run` with a daemon):
/// peers not connected, with why, items set aside, stopped groups, unresolved conflicts.
pub fn dry_report(e: &Engine, groups: &[String]) -> SyncReport {
    let ctx = &e.ctx;
    let selected: Vec<_> = ctx
        .groups
        .values()
        .filter(|g| groups.is_empty() || groups.iter().any(|n| n == g.name()))
        .collect();
    let mut report = SyncReport::default();
    let peers: BTreeSet<&String> = selected.iter().flat_map(|g| g.peers.iter()).collect();
    for p in peers {
        if ctx.links.get(p).is_none() {
            let why = ctx
                .links
                .state(p)
                .error
                .unwrap_or_else(|| "not connected".into());
            report.unreachable.push((p.clone(), why));
        }
    }
    let names: Vec<String> = selected.iter().map(|g| g.name().to_string()).collect();
    for g in &selected {
        if let Ok(aside) = ctx.store.aside(g.name()) {
            report.pending += aside.len();
        }
        if let Some(l) = e.lane(g.name())
            && let Some(r) = crate::engine::peer::lock(&l.state.stopped).clone()
        {
            report.stopped.push(format!("{}: {r}", g.name()));
        }
    }
    report.unresolved = ctx
        .store
        .conflicts()
        .map(|l| {
            l.into_iter()
                .filter(|(g, _, c)| !c.resolved && names.contains(g))
                .map(|(_, p, _)| crate::item::name::show(&p).into_owned())
                .collect()
        })
        .unwrap_or_default();
    report.conflicts = report.unresolved.len();
    report
}

/// Reconcile `groups` (all of this node's when empty) with every peer, within `timeout`.
/// `rescan`: scan the groups first (groups not watched live always are).
pub async fn sync(e: &Engine, groups: &[String], timeout: Duration, rescan: bool) -> SyncReport {
    let ctx = &e.ctx;
    let deadline = tokio::time::Instant::now() + timeout;
    let selected: Vec<_> = ctx
        .groups
        .values()
        .filter(|g| groups.is_empty() || groups.iter().any(|n| n == g.name()))
        .cloned()
        .collect();
    let names: Vec<String> = selected.iter().map(|g| g.name().to_string()).collect();
    let mut scans = Vec::new();
    for g in &selected {
        if (rescan || !g.cfg.watch)
            && let Some(l) = e.lane(g.name())
        {
            let l = l.clone();
            scans.push(tokio::spawn(async move { l.rescan().await }));
        }
    }
    for s in scans {
        let _ = tokio::time::timeout_at(deadline, s).await;
    }
    // watched groups are not scanned (the watcher knows what changed), but what it still holds
    // in its windows (a burst of deletions settling, a file being written) is part of "now":
    // wait until it was handed to the lane and committed there, at most the windows' longest
    // wait (a file written without pause is taken as its snapshot then)
    let held = tokio::time::Instant::now() + WINDOW_MAX;
    for g in selected.iter().filter(|g| !rescan && g.cfg.watch) {
        let Some(l) = e.lane(g.name()) else {
            continue;
        };
        while l
            .state
            .waiting_local
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < held.min(deadline)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tokio::time::timeout_at(deadline, l.marker()).await;
    }
    // the peers that matter: members we send to, and the full members we receive from
    let peers: BTreeSet<String> = selected
        .iter()
        .flat_map(|g| {
            g.peers
                .iter()
                .filter(|p| !g.replica || !g.is_replica(p))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    let mut report = SyncReport::default();
    let mut waits = Vec::new();
    for p in peers {
        let e = e.clone();
        let names = names.clone();
        waits.push(tokio::spawn(async move {
            let r = tokio::time::timeout_at(deadline, with_peer(&e, &p, &names, deadline)).await;
            (p, r.unwrap_or_else(|_| Err("timed out".into())))
        }));
    }
    for w in waits {
        if let Ok((p, Err(why))) = w.await {
            report.unreachable.push((p, why));
        }
    }
    for g in &selected {
        if let Ok(aside) = ctx.store.aside(g.name()) {
            report.pending += aside.len();
            report.pending_what.extend(
                aside
                    .iter()
                    .take(20)
                    .map(|a| format!("{}: {}", crate::item::name::show(&a.item.key), a.error)),
            );
        }
        if let Some(l) = e.lane(g.name())
            && let Some(r) = crate::engine::peer::lock(&l.state.stopped).clone()
        {
            report.stopped.push(format!("{}: {r}", g.name()));
        }
    }
    report.unresolved = ctx
        .store
        .conflicts()
        .map(|l| {
            l.into_iter()
                .filter(|(g, _, c)| !c.resolved && names.contains(g))
                .map(|(_, p, _)| crate::item::name::show(&p).into_owned())
                .collect()
        })
        .unwrap_or_default();
    report.conflicts = report.unresolved.len();
    report
}

async fn with_peer(
    e: &Engine,
    peer: &str,
    groups: &[String],
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let ctx = &e.ctx;
    // a link may be replaced while we use it (the peer restarted): try again on the new one
    for _ in 0..5 {
        let link = wait_link(e, peer, deadline).await?;
        let shared: Vec<String> = groups.iter().filter(|g| link.active(g)).cloned().collect();
        if let Some(why) = groups
            .iter()
            .filter(|g| {
                ctx.shared_groups(peer)
                    .iter()
                    .any(|s| s.name() == g.as_str())
            })
            .find_map(|g| link.groups.get(g).and_then(|lg| lg.paused.clone()))
        {
            return Err(why);
        }
        if over(e, &link, &shared).await {
            return Ok(());
        }
        if !link.is_closed() {
            return Err("the link stalled".into());
        }
    }
    Err("the link kept being replaced".into())
}

async fn wait_link(
    e: &Engine,
    peer: &str,
    deadline: tokio::time::Instant,
) -> Result<Arc<Link>, String> {
    let ctx = &e.ctx;
    if let Some(l) = ctx.links.get(peer) {
        return Ok(l);
    }
    if !ctx.opts.dial_all && peer < ctx.name.as_str() {
        // the daemon does not dial peers that sort before it: try once now
        match crate::engine::node::connect_once(ctx, peer).await {
            Ok(wire) => {
                let (c, l, p) = (ctx.clone(), e.lanes.clone(), peer.to_string());
                tokio::spawn(async move {
                    let t0 = std::time::Instant::now();
                    let ended = crate::engine::link::run(c.clone(), l, wire, p.clone()).await;
                    // a refusal right after the handshake becomes the peer's error, which
                    // the loop below returns at once
                    crate::engine::node::link_ended(&c, &p, ended, t0.elapsed());
                });
            }
            Err(e) if refusal(&e) => return Err(e),
            Err(_) => {}
        }
    }
    loop {
        if let Some(l) = ctx.links.get(peer) {
            return Ok(l);
        }
        let st = ctx.links.state(peer);
        if let Some(e) = st.error.clone()
            && (refusal(&e) || ctx.opts.dial_all)
        {
            // a refusal will not go away by waiting; an in-process sync does not wait out a
            // down peer either: one failed attempt says it
            return Err(e);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(st.error.unwrap_or_else(|| "not connected".into()));
        }
        let next = deadline.min(tokio::time::Instant::now() + Duration::from_millis(200));
        let _ = ctx.links.wait_for(peer, next, false).await;
    }
}

/// Exchange everything with the peer over one link: false if the link went away.
async fn over(e: &Engine, link: &Arc<Link>, groups: &[String]) -> bool {
    let ctx = &e.ctx;
    // their side: everything they had is received and applied
    let Some(pong) = link.ping().await else {
        return false;
    };
    if pong.await.is_err() {
        return false;
    }
    for g in groups {
        if let Some(l) = e.lane(g) {
            l.marker().await;
        }
    }
    if ctx.opts.dry_run {
        // a dry run sends nothing: only what they have was looked at
        return true;
    }
    // our side: they applied everything we had
    let ours: Vec<(&String, u64)> = groups
        .iter()
        .filter(|g| ctx.group(g).is_some_and(|gr| !gr.replica))
        .map(|g| (g, ctx.store.group_head(g).unwrap_or(0)))
        .collect();
    loop {
        let notified = link.pump_notify.notified();
        let done = ours.iter().all(|(g, target)| {
            let p = link.pump(g);
            p.scanned >= *target && p.unacked.is_empty()
        });
        if done {
            return true;
        }
        if link.is_closed() {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
}
