//! A peer's batch in a lane: validate it, reconcile the disk for its keys, decide each item
//! (`decide`), fetch missing content for several files at once, install in order (parents
//! first, deletions last and deepest first), commit everything with the peer's new position
//! in one transaction, acknowledge. An item that cannot be applied yet is set aside in the
//! index (the position moves on, so one bad item never blocks its peer) and tried again with
//! a growing delay until it applies or a newer version replaces it; `status` and the audit
//! log show it.

use super::{Lane, local};
use crate::engine::apply::{ApplyError, Fs, needs_content, validate};
use crate::engine::decide::{Conflict, Decision, Policy, decide};
use crate::engine::group::GroupRt;
use crate::engine::link::{Link, lock};
use crate::engine::node::{Ctx, unix_now};
use crate::fs::safefs::{Place, Temp};
use crate::item::{Entry, Item, Kind, name};
use crate::net::protocol::{Msg, WireItem};
use crate::ops::audit::Rec;
use crate::store::{Aside, Change, ConflictInfo, Extras, Snapshot, StoreError, enc};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Files of one batch whose content is fetched at once.
pub const FETCH_FILES: usize = 8;
/// Files installed per durability flush at most (each holds an open descriptor until then).
const INSTALL_BATCH: usize = 256;
/// From this many files in an install batch on, they are written (and then installed) on
/// several threads.
const PARALLEL_PREPARE_MIN: usize = 32;

/// Threads for `n` independent files of an install batch.
fn threads_for(n: usize) -> usize {
    if n >= PARALLEL_PREPARE_MIN {
        crate::fs::par::threads()
    } else {
        1
    }
}
/// Attempts after which an item counts as set aside for good (it is still retried, slowly).
pub const ASIDE_AFTER: u32 = 10;

/// An item to put on disk.
struct Step {
    item: Item,
    inline: Option<Vec<u8>>,
    local: Option<Entry>,
    /// The peer (and its incarnation) it came from.
    from: (String, u64),
    /// The item is exactly what that peer sent (not a merge): it is not echoed back there.
    as_sent: bool,
    attempts: u32,
}

/// What planning a batch produced.
#[derive(Default)]
struct Plan {
    steps: Vec<Step>,
    /// Index-only changes (merged vectors, our version winning a conflict).
    keeps: Vec<Change>,
    extras: Extras,
}

/// Make the index describe what is on disk at `key` right now (a change the watcher has not
/// reported yet becomes a local version first); returns the entry. `md` is the lstat of `key`
/// taken for this batch's planning; `snap` is the batch's read snapshot, taken again when this
/// writes the index.
fn reconcile<'s>(
    ctx: &'s Ctx,
    g: &GroupRt,
    snap: &mut Snapshot<'s>,
    key: &[u8],
    md: Option<std::fs::Metadata>,
) -> Result<Option<Entry>, StoreError> {
    let local = snap.get(g.name(), key)?;
    let fine = match (&local, &md) {
        (None, None) => true,
        // a local deletion is left to the watcher and the rescans, which see a whole burst
        // and apply the mass-deletion guard
        (Some(_), None) => true,
        (Some(e), Some(md)) => crate::local::scan::quick_match(&e.quick(), md),
        (None, Some(_)) => false,
    };
    if fine {
        return Ok(local);
    }
    let targets = vec![(key.to_vec(), false)];
    let s = local::scan_and_commit(ctx, g, &targets, false, false, false, None)?;
    if s.stopped.is_some() {
        return Ok(local);
    }
    *snap = ctx.store.snapshot()?;
    snap.get(g.name(), key)
}

fn conflict_info(c: &Conflict, ctx: &Ctx, g: &GroupRt, key: &[u8]) -> ConflictInfo {
    let kept = c.we_lost && g.cfg.backup_generations > 0;
    ConflictInfo {
        nodes: c.nodes.clone(),
        resolved: c.winner.is_some(),
        winner: c.winner.clone().unwrap_or_default(),
        kept_as: kept.then(|| {
            format!(
                "backup on {} (clustersync backups {})",
                ctx.name,
                name::show(key)
            )
        }),
        time: unix_now(),
        versions: vec![],
    }
}

/// Decide every item of a batch (blocking).
fn plan(
    ctx: &Ctx,
    g: &GroupRt,
    items: Vec<(WireItem, (String, u64), u32)>,
    drift_keep: &BTreeSet<Vec<u8>>,
) -> Result<Plan, StoreError> {
    let name = g.name();
    let mut plan = Plan::default();
    let policy = Policy {
        conflict: &g.cfg.conflict,
        compare_owner: g.compare_owner(),
        me: &ctx.name,
    };
    // one read snapshot for the batch (`reconcile` takes it again when it writes the index)
    let mut snap = ctx.store.snapshot()?;
    // what is on disk now, for every item at once: the lstats are independent, and planning
    // is the serial part of a batch
    let reals: Vec<_> = items
        .iter()
        .map(|(w, _, _)| name::real(&ctx.root, &w.item.key))
        .collect();
    let mds = crate::fs::par::map(reals, threads_for(items.len()), |real| {
        std::fs::symlink_metadata(real).ok()
    });
    for ((w, from, attempts), md) in items.into_iter().zip(mds) {
        let key = w.item.key.clone();
        if drift_keep.contains(&key) {
            // on_drift = keep: the local file stays until the drift is resolved, but the
            // index learns the group's version, which `resolve` then puts back
            let newer = snap.get(name, &key)?.is_none_or(|l| {
                w.item.version.compare(&l.item.version) == crate::item::Causality::Newer
            });
            if newer {
                plan.keeps.push(Change {
                    entry: Entry::new(w.item),
                    announce: true,
                });
            }
            continue;
        }
        let local = reconcile(ctx, g, &mut snap, &key, md.flatten())?;
        let mut d = decide(local.as_ref().map(|e| &e.item), &w.item, &policy);
        // two group path directories that nobody versioned yet and that differ: the policy
        // picked one, the same on every node; it gets a version here so that a node joining
        // later with its own fresh directory gives way to it (not on a replica, which never
        // makes a version: its counter would stay in its vector, which no member has)
        if !g.replica
            && w.item.version.is_empty()
            && local.as_ref().is_some_and(|l| l.item.version.is_empty())
            && let Decision::Take { item, .. } | Decision::Keep { item, .. } = &mut d
        {
            item.version
                .bump(&ctx.name, crate::item::version::clock_ms());
            item.origin = ctx.name.clone();
        }
        // a version that descends from every competing one ends an unresolved conflict
        if let Some(mut c) = snap.conflict(name, &key)?
            && !c.resolved
            && matches!(d, Decision::Take { .. })
            && c.versions
                .iter()
                .all(|v| w.item.version.compare(&v.version) == crate::item::Causality::Newer)
        {
            c.resolved = true;
            c.winner = w.item.origin.clone();
            c.versions.clear();
            plan.extras.conflicts.push((key.clone(), Some(c)));
        }
        match d {
            Decision::Ignore => {
                plan.extras.aside_remove.push(key);
            }
            Decision::Take { item, conflict } => {
                if let Some(c) = &conflict {
                    note_conflict(ctx, g, &key, c, &item);
                    plan.extras
                        .conflicts
                        .push((key.clone(), Some(conflict_info(c, ctx, g, &key))));
                }
                let as_sent = item.version == w.item.version;
                plan.steps.push(Step {
                    item,
                    inline: w.inline,
                    local,
                    from,
                    as_sent,
                    attempts,
                });
            }
            Decision::Keep { item, conflict } => {
                if let Some(c) = &conflict {
                    note_conflict(ctx, g, &key, c, &item);
                    plan.extras
                        .conflicts
                        .push((key.clone(), Some(conflict_info(c, ctx, g, &key))));
                }
                if let Some(mut e) = local {
                    e.item = item;
                    e.from = None;
                    plan.keeps.push(Change {
                        entry: e,
                        announce: true,
                    });
                }
                plan.extras.aside_remove.push(key);
            }
            Decision::Unresolved { conflict } => {
                let existing = snap.conflict(name, &key)?.filter(|c| !c.resolved);
                let first = existing.is_none();
                let mut info = existing.unwrap_or_else(|| ConflictInfo {
                    nodes: vec![],
                    resolved: false,
                    winner: String::new(),
                    kept_as: None,
                    time: unix_now(),
                    versions: vec![],
                });
                for n in &conflict.nodes {
                    if !info.nodes.contains(n) {
                        info.nodes.push(n.clone());
                    }
                }
                info.nodes.sort();
                info.add_version(&w.item);
                if first {
                    tracing::warn!(
                        group = %name,
                        "conflict on {}: versions from {}; left unresolved (policy manual): run `clustersync resolve {} --keep NODE`",
                        name::show(&key),
                        conflict.nodes.join(" and "),
                        name::show(&key)
                    );
                    ctx.audit_item(name, "conflict", &w.item, None);
                }
                plan.extras.conflicts.push((key.clone(), Some(info)));
                plan.extras.aside_remove.push(key);
            }
        }
    }
    Ok(plan)
}

fn note_conflict(ctx: &Ctx, g: &GroupRt, key: &[u8], c: &Conflict, winner: &Item) {
    tracing::warn!(
        group = %g.name(),
        "conflict on {}: versions from {}; {} wins under policy {}{}",
        name::show(key),
        c.nodes.join(" and "),
        c.winner.as_deref().unwrap_or("?"),
        g.cfg.conflict,
        if c.we_lost && g.cfg.backup_generations > 0 {
            " (this node's version is kept as a backup)"
        } else {
            ""
        }
    );
    ctx.audit_item(g.name(), "conflict", winner, None);
}

/// Fetch and write the content of one file into a temporary file next to its target.
pub(super) async fn prepare(
    ctx: Arc<Ctx>,
    g: Arc<GroupRt>,
    item: Item,
    inline: Option<Vec<u8>>,
    local: Option<Entry>,
    prefer: Option<String>,
) -> Result<(Place, Temp), ApplyError> {
    let (c2, g2, i2, l2) = (ctx.clone(), g.clone(), item.clone(), local.clone());
    let has_inline = inline.is_some();
    let (place, sources, remote) = tokio::task::spawn_blocking(move || {
        let fs = Fs { ctx: &c2, g: &g2 };
        let place = fs.place(&i2.key, true)?;
        let m = i2.meta().ok_or_else(|| ApplyError::Other {
            path: i2.show().into_owned(),
            msg: "not a file".into(),
        })?;
        let (sources, remote) = if has_inline {
            (vec![], vec![])
        } else {
            fs.plan(m, l2.as_ref())
        };
        Ok::<_, ApplyError>((place, sources, remote))
    })
    .await
    .map_err(|e| ApplyError::Other {
        path: item.show().into_owned(),
        msg: e.to_string(),
    })??;
    let rx = if remote.is_empty() {
        None
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(crate::engine::fetch::fetch(
            ctx.clone(),
            g.name().to_string(),
            remote,
            prefer,
            tx,
        ));
        Some(rx)
    };
    let path = item.show().into_owned();
    tokio::task::spawn_blocking(move || {
        let fs = Fs { ctx: &ctx, g: &g };
        let m = item.meta().ok_or_else(|| ApplyError::Other {
            path: item.show().into_owned(),
            msg: "not a file".into(),
        })?;
        let tmp = fs.assemble(&place, m, inline.as_deref(), local.as_ref(), &sources, rx)?;
        fs.prepare_meta(&tmp, &item)?;
        Ok((place, tmp))
    })
    .await
    .map_err(|e| ApplyError::Other {
        path,
        msg: e.to_string(),
    })?
}

/// [`prepare`] for a file whose whole content came with its item (blocking, no task).
fn prepare_inline(
    fs: &Fs,
    dirs: &crate::fs::safefs::DirCache,
    item: &Item,
    inline: Option<&[u8]>,
    local: Option<&Entry>,
) -> Result<(Place, Temp), ApplyError> {
    let place = fs.place_in(dirs, &item.key, true)?;
    let m = item.meta().ok_or_else(|| ApplyError::Other {
        path: item.show().into_owned(),
        msg: "not a file".into(),
    })?;
    let tmp = fs.assemble(&place, m, inline, local, &[], None)?;
    fs.prepare_meta(&tmp, item)?;
    Ok((place, tmp))
}

/// The error of an item whose worker thread panicked (it is retried like any failure).
fn panicked(item: &Item) -> ApplyError {
    ApplyError::Other {
        path: item.show().into_owned(),
        msg: "internal error: the worker writing it panicked".into(),
    }
}

/// What executing steps produced.
#[derive(Default)]
struct Done {
    changes: Vec<Change>,
    failed: Vec<(Step, ApplyError)>,
    touched: BTreeSet<Vec<u8>>,
    bytes: u64,
}

impl Done {
    fn ok(&mut self, step: &Step, mut e: Entry) {
        if step.as_sent {
            e.from = Some(step.from.clone());
        }
        let key = e.item.key.clone();
        self.touched.insert(name::parent(&key).to_vec());
        if e.item.kind() == Some(Kind::Dir) {
            self.touched.insert(key);
        }
        self.bytes += e.item.size();
        self.changes.push(Change {
            entry: e,
            announce: true,
        });
    }
}

impl Lane {
    /// A batch from `link`.
    pub(super) async fn remote(&mut self, link: Arc<Link>, items: Vec<WireItem>, through: u64) {
        let group = self.name().to_string();
        if self.state.is_stopped() {
            self.ack_only(&link, through).await;
            return;
        }
        let known = |n: &str| self.ctx.cfg.nodes.contains_key(n);
        self.ctx
            .counters
            .items_in
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        // the checks hash inline content: several threads for a large batch
        let g = &self.g;
        let checked = crate::fs::par::map(
            items.iter().collect(),
            threads_for(items.len()),
            |w: &WireItem| validate(g, w, &known).err(),
        );
        for (w, r) in items.iter().zip(checked) {
            if let Some(e) = r.unwrap_or_else(|| {
                Some(crate::engine::apply::Refused {
                    path: w.item.show().into_owned(),
                    reason: "checking it failed (internal error)".into(),
                })
            }) {
                tracing::error!(peer = %link.peer, group = %group, "{e}; closing the link");
                let key = &w.item.key[..w.item.key.len().min(4096)];
                self.ctx
                    .audit_refused_item(&group, key, &link.peer, &e.to_string());
                let _ = link
                    .send(Msg::Bye {
                        reason: e.to_string(),
                    })
                    .await;
                link.close();
                return;
            }
        }
        if self.ctx.opts.dry_run {
            self.dry_run(&items).await;
            self.ack_only(&link, through).await;
            return;
        }
        let inc = link.peer_inc(&group);
        let batch = items
            .into_iter()
            .map(|w| (w, (link.peer.clone(), inc), 0))
            .collect();
        let position = Some((link.peer.clone(), inc, through));
        self.apply_items(batch, Some(link.peer.clone()), position)
            .await;
        {
            let mut r = lock(&link.remote);
            let e = r.entry(group.clone()).or_default();
            e.applied = e.applied.max(through);
        }
        let _ = link.send(Msg::Ack { group, through }).await;
    }

    /// `sync --dry-run`: say what would change, change nothing.
    async fn dry_run(&self, items: &[WireItem]) {
        let ctx = self.ctx.clone();
        let g = self.g.clone();
        let items = items.to_vec();
        let _ = tokio::task::spawn_blocking(move || {
            let policy = Policy {
                conflict: &g.cfg.conflict,
                compare_owner: g.compare_owner(),
                me: &ctx.name,
            };
            for w in items {
                let local = ctx.store.get(g.name(), &w.item.key).ok().flatten();
                let d = decide(local.as_ref().map(|e| &e.item), &w.item, &policy);
                let what = match d {
                    Decision::Take { ref item, .. } if item.is_deleted() => "delete",
                    Decision::Take {
                        conflict: Some(_), ..
                    }
                    | Decision::Keep {
                        conflict: Some(_), ..
                    }
                    | Decision::Unresolved { .. } => "conflict",
                    Decision::Take { .. } => "receive",
                    _ => continue,
                };
                ctx.dry_run_line(what, &w.item.key);
            }
        })
        .await;
    }

    /// Items set aside earlier whose next try is due.
    pub(super) async fn retry_aside(&mut self) {
        let ctx = self.ctx.clone();
        let name = self.name().to_string();
        let all = match tokio::task::spawn_blocking(move || ctx.store.aside(&name)).await {
            Ok(Ok(a)) => a,
            _ => return,
        };
        let now = unix_now();
        let due: Vec<Aside> = all
            .into_iter()
            .filter(|a| {
                let wait = if a.attempts >= ASIDE_AFTER {
                    300
                } else {
                    1i64 << a.attempts.min(8)
                };
                a.since + wait <= now || a.attempts < 3
            })
            .take(crate::net::protocol::MAX_BATCH_ITEMS)
            .collect();
        if due.is_empty() {
            return;
        }
        let batch = due
            .into_iter()
            .map(|a| {
                (
                    WireItem {
                        item: a.item,
                        inline: None,
                    },
                    (a.peer, a.peer_inc),
                    a.attempts,
                )
            })
            .collect();
        self.apply_items(batch, None, None).await;
    }

    /// What a comparison with a peer found ([`super::LaneMsg::Found`]): its items are decided
    /// like a batch of it, without a position; the keys to rehash are looked at again.
    pub(super) async fn found(
        &mut self,
        from: (String, u64),
        items: Vec<WireItem>,
        rehash: Vec<Vec<u8>>,
    ) {
        if self.state.is_stopped() || self.ctx.opts.dry_run {
            return;
        }
        let items = if self.g.replica {
            self.adopt_vectors(items).await
        } else {
            items
        };
        if !items.is_empty() {
            let peer = from.0.clone();
            let batch = items.into_iter().map(|w| (w, from.clone(), 0)).collect();
            self.apply_items(batch, Some(peer), None).await;
        }
        if !rehash.is_empty() {
            self.rehash(rehash).await;
        }
    }

    /// On a replica: a member's item with the same body as ours but another vector, where ours
    /// names this replica (an older release versioned a group path directory on replicas
    /// too), takes the member's vector in the index; the other items are returned.
    async fn adopt_vectors(&mut self, items: Vec<WireItem>) -> Vec<WireItem> {
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<Vec<WireItem>, StoreError> {
            let mut rest = Vec::new();
            let mut fix = Vec::new();
            for w in items {
                match ctx.store.get(g.name(), &w.item.key)? {
                    Some(mut e)
                        if e.item.version.get(&ctx.name) > 0
                            && e.item.version != w.item.version
                            && e.item.same_body(&w.item, g.compare_owner()) =>
                    {
                        e.item.version = w.item.version;
                        e.item.origin = w.item.origin;
                        e.item.beat = w.item.beat;
                        fix.push(Change {
                            entry: e,
                            announce: false,
                        });
                    }
                    _ => rest.push(w),
                }
            }
            if !fix.is_empty() {
                ctx.store.commit(g.name(), fix, Extras::default())?;
            }
            Ok(rest)
        })
        .await;
        match r {
            Ok(Ok(rest)) => rest,
            Ok(Err(e)) => {
                tracing::warn!(group = %self.name(), "taking members' vectors: {e}");
                Vec::new()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Decide, fetch, install, commit. `position`: the peer position to save with it.
    async fn apply_items(
        &mut self,
        items: Vec<(WireItem, (String, u64), u32)>,
        prefer: Option<String>,
        position: Option<(String, u64, u64)>,
    ) {
        let t0 = Instant::now();
        let group = self.name().to_string();
        let drift_keep: BTreeSet<Vec<u8>> =
            if self.g.replica && self.g.cfg.on_drift == crate::config::OnDrift::Keep {
                lock(&self.state.drift).keys().cloned().collect()
            } else {
                BTreeSet::new()
            };
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let planned = tokio::task::spawn_blocking(move || plan(&ctx, &g, items, &drift_keep)).await;
        let mut plan = match planned {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!(group = %group, "planning a batch: {e}");
                return;
            }
            Err(e) => {
                tracing::error!(group = %group, "planning task: {e}");
                return;
            }
        };
        // non-deletions parents first, then deletions deepest first
        let (mut live, mut dels): (Vec<Step>, Vec<Step>) = std::mem::take(&mut plan.steps)
            .into_iter()
            .partition(|s| !s.item.is_deleted());
        live.sort_by_key(|s| enc(&s.item.key));
        dels.sort_by_key(|s| std::cmp::Reverse(enc(&s.item.key)));
        let t_plan = t0.elapsed();
        let mut done = Done::default();
        while !live.is_empty() {
            let rest = live.split_off(live.len().min(INSTALL_BATCH));
            let chunk = std::mem::replace(&mut live, rest);
            self.install_chunk(chunk, prefer.clone(), &mut done).await;
        }
        if !dels.is_empty() {
            let (ctx, g) = (self.ctx.clone(), self.g.clone());
            let r = tokio::task::spawn_blocking(move || {
                let fs = Fs { ctx: &ctx, g: &g };
                let mut d = Done::default();
                for s in dels {
                    match fs.delete(&s.item, s.local.as_ref()) {
                        Ok(e) => d.ok(&s, e),
                        Err(e) => d.failed.push((s, e)),
                    }
                }
                d
            })
            .await;
            if let Ok(d) = r {
                done.changes.extend(d.changes);
                done.failed.extend(d.failed);
                done.touched.extend(d.touched);
            }
        }
        let from = position.as_ref().map(|p| p.0.clone());
        let (n, bytes) = (done.changes.len(), done.bytes);
        let t_write = t0.elapsed();
        self.finish_batch(plan, done, position).await;
        let took = t0.elapsed();
        tracing::debug!(
            group = %group,
            "batch of {n}: plan {:?}, write {:?}, commit {:?}",
            t_plan,
            t_write - t_plan,
            took - t_write
        );
        if n >= 100 || bytes >= 16 << 20 || took >= Duration::from_secs(1) {
            tracing::info!(
                group = %group,
                "received {n} changes ({}) from {} in {:.1} s",
                crate::engine::status::human_bytes(bytes),
                from.as_deref().unwrap_or("set-aside retries"),
                took.as_secs_f64()
            );
        }
    }

    /// Fetch the content of a chunk of steps at once, then install them in order with one
    /// durability flush before and after the renames.
    async fn install_chunk(&mut self, chunk: Vec<Step>, prefer: Option<String>, done: &mut Done) {
        let sem = Arc::new(tokio::sync::Semaphore::new(FETCH_FILES));
        let mut jobs = Vec::with_capacity(chunk.len());
        let mut inline_at = Vec::new();
        for (i, s) in chunk.iter().enumerate() {
            if needs_content(&s.item, s.local.as_ref()) && s.inline.is_some() {
                // content at hand: written in the install call below, no task of its own
                inline_at.push(i);
                jobs.push(None);
            } else if needs_content(&s.item, s.local.as_ref()) {
                let (ctx, g) = (self.ctx.clone(), self.g.clone());
                let (item, inline, local) = (s.item.clone(), s.inline.clone(), s.local.clone());
                let prefer = prefer.clone().or_else(|| Some(s.from.0.clone()));
                let sem = sem.clone();
                jobs.push(Some(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    prepare(ctx, g, item, inline, local, prefer).await
                })));
            } else {
                jobs.push(None);
            }
        }
        let mut prepared = Vec::with_capacity(jobs.len());
        for j in jobs {
            prepared.push(match j {
                None => None,
                Some(h) => Some(h.await.unwrap_or_else(|e| {
                    Err(ApplyError::Other {
                        path: String::new(),
                        msg: e.to_string(),
                    })
                })),
            });
        }
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let r = tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            let mut d = Done::default();
            let mut prepared = prepared;
            // independent files: written, then installed, by several threads when there are
            // many (the lane's serial part is what bounds an initial sync of small files)
            let threads = threads_for(inline_at.len());
            let dirs = crate::fs::safefs::DirCache::default();
            let written = crate::fs::par::map(inline_at.clone(), threads, |i| {
                let s = &chunk[i];
                prepare_inline(&fs, &dirs, &s.item, s.inline.as_deref(), s.local.as_ref())
            });
            for (i, r) in inline_at.into_iter().zip(written) {
                prepared[i] = Some(r.unwrap_or_else(|| Err(panicked(&chunk[i].item))));
            }
            // the temp files' data and metadata reach the disk before any rename
            let any = prepared.iter().flatten().find_map(|p| p.as_ref().ok());
            if let Some((_, t)) = any
                && let Err(e) = crate::fs::safefs::sync_filesystem(&t.file)
            {
                tracing::warn!(group = %g.name(), "sync before installing: {e}");
            }
            // directories, symlinks and metadata-only changes first, in key order (parents
            // before children); then the files, which are leaves, in parallel
            let mut results: Vec<Option<Result<Entry, ApplyError>>> =
                (0..chunk.len()).map(|_| None).collect();
            let mut installs = Vec::new();
            let mut sync_on = None;
            for (i, (s, p)) in chunk.iter().zip(prepared).enumerate() {
                match p {
                    Some(Ok((place, tmp))) => {
                        if sync_on.is_none() {
                            sync_on = place.dir_fd().try_clone().ok();
                        }
                        installs.push((i, place, tmp));
                    }
                    Some(Err(e)) => results[i] = Some(Err(e)),
                    None => results[i] = Some(fs.make(&s.item, s.local.as_ref())),
                }
            }
            let threads = threads_for(installs.len());
            let at: Vec<usize> = installs.iter().map(|(i, _, _)| *i).collect();
            let installed = crate::fs::par::map(installs, threads, |(i, place, tmp)| {
                let s = &chunk[i];
                fs.install_file(&place, &s.item, s.local.as_ref(), tmp)
            });
            for (i, r) in at.into_iter().zip(installed) {
                results[i] = Some(r.unwrap_or_else(|| Err(panicked(&chunk[i].item))));
            }
            for (s, r) in chunk.into_iter().zip(results) {
                match r.unwrap_or_else(|| Err(panicked(&s.item))) {
                    Ok(e) => d.ok(&s, e),
                    Err(e) => d.failed.push((s, e)),
                }
            }
            if let Some(fd) = sync_on {
                let _ = crate::fs::safefs::sync_filesystem(&fd);
            }
            d
        })
        .await;
        if let Ok(d) = r {
            done.changes.extend(d.changes);
            done.failed.extend(d.failed);
            done.touched.extend(d.touched);
            done.bytes += d.bytes;
        }
    }

    /// Directory mtimes, set-aside items, one commit, audit lines, the head.
    async fn finish_batch(
        &mut self,
        mut plan: Plan,
        done: Done,
        position: Option<(String, u64, u64)>,
    ) {
        let group = self.name().to_string();
        let Done {
            mut changes,
            failed,
            touched,
            bytes,
        } = done;
        self.ctx.audit_items(
            &group,
            changes.iter().map(|c| {
                let kind = if c.entry.item.is_deleted() {
                    "delete"
                } else {
                    "apply"
                };
                (
                    kind,
                    &c.entry.item,
                    c.entry.from.as_ref().map(|f| f.0.as_str()),
                )
            }),
        );
        for c in &changes {
            plan.extras.aside_remove.push(c.entry.item.key.clone());
        }
        let applied = changes.len() as u64;
        let applied_keys: Vec<Vec<u8>> = changes.iter().map(|c| c.entry.item.key.clone()).collect();
        // latency from the origin's commit (its sequence number is its clock in µs) to here
        if let Some((peer, _, through)) = &position {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            if *through > 1_000_000_000_000_000 && now > *through {
                let direct = changes
                    .iter()
                    .filter(|c| c.entry.item.origin == *peer)
                    .count();
                for _ in 0..direct.min(64) {
                    self.ctx
                        .metrics
                        .observe_apply_latency(&group, Duration::from_micros(now - through));
                }
            }
        }
        let mut rescan = Vec::new();
        for (s, e) in failed {
            if e.unsupported_xattrs() {
                let msg = format!(
                    "the filesystem under this group's paths cannot store extended attributes ({e}); files still sync, without them: mount with xattr/acl support or set xattrs = false"
                );
                let mut w = lock(&self.state.warning);
                if w.as_deref() != Some(msg.as_str()) {
                    tracing::error!(group = %group, "{msg}");
                }
                *w = Some(msg);
            }
            if matches!(e, ApplyError::Changed { .. }) {
                rescan.push(s.item.key.clone());
            }
            let attempts = s.attempts + 1;
            if attempts == ASIDE_AFTER {
                tracing::error!(group = %group, "set aside after {attempts} attempts: {e} (clustersync status lists it; it is still retried)");
                self.ctx.audit.log(Rec {
                    group: &group,
                    path: &s.item.key,
                    kind: "set-aside",
                    origin: &s.item.origin,
                    version: &s.item.version.display(),
                    peer: Some(&s.from.0),
                    detail: Some(&e.to_string()),
                });
            } else {
                tracing::warn!(group = %group, "could not apply yet: {e}");
            }
            plan.extras.aside_remove.retain(|k| *k != s.item.key);
            plan.extras.aside_put.push(Aside {
                item: s.item,
                peer: s.from.0,
                peer_inc: s.from.1,
                error: e.to_string(),
                attempts,
                since: unix_now(),
            });
        }
        plan.extras.position = position;
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let keeps = std::mem::take(&mut plan.keeps);
        let extras = std::mem::take(&mut plan.extras);
        let r = tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            changes.extend(keeps);
            fs.restore_dir_mtimes(&touched, &mut changes);
            let n = ctx.store.commit(g.name(), changes, extras)?;
            let aside = ctx.store.aside(g.name())?.len();
            Ok::<_, StoreError>((n, aside))
        })
        .await;
        match r {
            Ok(Ok((head, aside))) => {
                self.publish(head);
                self.state.aside.store(aside as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::error!(group = %group, "index commit: {e}"),
            Err(e) => tracing::error!(group = %group, "commit task: {e}"),
        }
        self.state.applied.fetch_add(applied, Ordering::Relaxed);
        self.ctx.metrics.changes_applied(&group, applied);
        self.ctx.changed(&group, &applied_keys, false);
        self.state.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
        if !rescan.is_empty() {
            let due = Instant::now();
            for k in rescan {
                self.unstable.push((due, k));
            }
            self.aside_due = Instant::now() + Duration::from_millis(500);
        }
    }
}
