//! Local changes in a lane: scans of reported paths and of whole group paths, the
//! mass-deletion guard, commits of new versions (deletions numbered deepest first), and on a
//! replica, drift instead of new versions.

use crate::engine::group::GroupRt;
use crate::engine::node::Ctx;
use crate::item::{Entry, VersionVector, name};
use crate::local::scan::Scanner;
use crate::store::{Change, Extras, StoreError};
use std::time::Instant;
use tokio::sync::watch;

/// Drift found on a replica: key, what happened, and the entry the scan made of it.
pub(super) type Drift = Vec<(Vec<u8>, String, Option<Entry>)>;

/// What a scan of some paths did.
#[derive(Default)]
pub(super) struct Scanned {
    pub unstable: Vec<Vec<u8>>,
    pub stopped: Option<String>,
    pub head: u64,
    /// Drift found on a replica: key -> what happened.
    pub drift: Drift,
    /// Entries found gone by a scan that was not about a deletion: not recorded yet.
    pub deferred: Vec<Vec<u8>>,
}

pub(super) fn scanner<'a>(ctx: &'a Ctx, g: &'a GroupRt) -> Scanner<'a> {
    Scanner {
        node: &ctx.name,
        clock: crate::item::version::clock_ms(),
        root: &ctx.root,
        group: &g.cfg,
        filter: &g.filter,
        store: &ctx.store,
        owners: &ctx.owners,
        xattrs: g.xattrs.as_ref(),
    }
}

/// What a scan of `g` would record now, without recording anything (`sync --dry-run` with a
/// daemon): `("send" | "delete", key)` for each local change not in the index yet. A scan the
/// mass-deletion guard or a missing group path would stop reports nothing.
pub fn dry_scan(ctx: &Ctx, g: &GroupRt) -> Vec<(&'static str, Vec<u8>)> {
    let s = scanner(ctx, g);
    let mut out = Vec::new();
    for gp in &g.cfg.paths {
        let mut seen: Vec<Change> = Vec::new();
        let res = s.scan(gp, gp.as_bytes(), true, &mut |batch| {
            seen.extend(batch);
            Ok(())
        });
        let Ok(res) = res else { continue };
        if res.stopped.is_some() {
            continue;
        }
        seen.extend(res.changes);
        // a group path directory the index does not know yet is adopted without a version
        // (`commit_local`), not sent
        let fresh_root = |c: &Change| {
            c.entry.item.key == gp.as_bytes()
                && ctx
                    .store
                    .get_quick(g.name(), gp.as_bytes())
                    .ok()
                    .flatten()
                    .is_none()
        };
        for c in seen.into_iter().filter(|c| c.announce && !fresh_root(c)) {
            let what = if c.entry.item.is_deleted() {
                "delete"
            } else {
                "send"
            };
            out.push((what, c.entry.item.key));
        }
        out.extend(res.gone.into_iter().map(|k| ("delete", k)));
    }
    out
}

/// Store what a local scan found; on a replica, new versions are drift instead (returned).
pub(super) fn commit_local(
    ctx: &Ctx,
    g: &GroupRt,
    changes: Vec<Change>,
    extras: Extras,
    adopt: bool,
) -> Result<(u64, Drift), StoreError> {
    let name = g.name();
    // a group path directory this node never had in its index (a new node, a reset group) is
    // adopted
    // without a version, so the cluster's version of it wins (a fresh directory's mode and
    // mtime are not imposed on everyone); it gets a version of ours when it changes here
    let mut changes = changes;
    for c in changes.iter_mut() {
        if c.announce
            && c.entry.item.kind() == Some(crate::item::Kind::Dir)
            && g.cfg.paths.iter().any(|p| p.as_bytes() == c.entry.item.key)
            && ctx
                .store
                .get_quick(name, &c.entry.item.key)
                .ok()
                .flatten()
                .is_none()
        {
            c.entry.item.version = VersionVector::default();
            c.announce = false;
        }
    }
    let (drift, mut store): (Vec<_>, Vec<_>) = if g.replica {
        changes.into_iter().partition(|c| {
            let root = g.cfg.paths.iter().any(|p| p.as_bytes() == c.entry.item.key);
            let unknown = ctx
                .store
                .get_quick(name, &c.entry.item.key)
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
            c.entry.item.version = VersionVector::default();
            c.announce = false;
        }
    }
    ctx.audit_items(
        name,
        store.iter().filter(|c| c.announce).map(|c| {
            let kind = if c.entry.item.is_deleted() {
                "local-delete"
            } else {
                "local-change"
            };
            (kind, &c.entry.item, None)
        }),
    );
    let announced: Vec<Vec<u8>> = store
        .iter()
        .filter(|c| c.announce)
        .map(|c| c.entry.item.key.clone())
        .collect();
    let mut head = 0;
    if !store.is_empty() || !extras.is_empty() {
        head = ctx.store.commit(name, store, extras)?;
    }
    ctx.changed(name, &announced, true);
    let mut out = Vec::new();
    for c in drift {
        let key = c.entry.item.key.clone();
        let known = ctx.store.get(name, &key).ok().flatten();
        let what = if c.entry.item.is_deleted() {
            "deleted locally"
        } else if known.as_ref().is_none_or(|e| e.item.is_deleted()) {
            "added locally"
        } else {
            "changed locally"
        };
        out.push((key, what.to_string(), Some(c.entry)));
    }
    Ok((head, out))
}

/// Scan `targets` and commit what changed (blocking). With `deletes_ok` false, entries found
/// gone are returned in [`Scanned::deferred`] instead of being recorded.
pub(super) fn scan_and_commit(
    ctx: &Ctx,
    g: &GroupRt,
    targets: &[(Vec<u8>, bool)],
    adopt: bool,
    was_stopped: bool,
    deletes_ok: bool,
    head: Option<&watch::Sender<u64>>,
) -> Result<Scanned, StoreError> {
    let s = scanner(ctx, g);
    let mut res = Scanned::default();
    let mut gone: Vec<Vec<u8>> = Vec::new();
    let mut forget: Vec<Vec<u8>> = Vec::new();
    for (p, recursive) in targets {
        let Ok(gp) = name::validate(p, &g.cfg.paths) else {
            continue;
        };
        if was_stopped
            && p.as_slice() == gp.as_bytes()
            && let Some(r) = s.resume_check(gp)?
        {
            res.stopped = Some(r);
            continue;
        }
        let t0 = Instant::now();
        let mut flushed_drift = Vec::new();
        let out = s.scan(gp, p, *recursive, &mut |batch| {
            let (h, d) = commit_local(ctx, g, batch, Extras::default(), adopt)?;
            res.head = res.head.max(h);
            // pumps stream what a long scan committed while it goes on
            if let Some(head) = head {
                super::publish_head(head, h);
            }
            flushed_drift.extend(d);
            Ok(())
        })?;
        res.drift.extend(flushed_drift);
        for e in &out.errors {
            tracing::warn!(group = %g.name(), "scan: {e}");
        }
        for k in &out.skipped {
            tracing::info!(group = %g.name(), "skipped {} (not a file, directory or symlink)", name::show(k));
        }
        if let Some(r) = out.stopped {
            res.stopped = Some(r);
            continue;
        }
        // a whole-path scan that would delete every live entry below the group path is the
        // emptied (or wiped and refilled) case; nothing of it is recorded
        let below_gp = out
            .gone
            .iter()
            .filter(|k| k.as_slice() != gp.as_bytes())
            .count();
        if p.as_slice() == gp.as_bytes()
            && *recursive
            && out.live_known > 1
            && below_gp >= out.live_known
        {
            res.stopped = Some(format!(
                "every entry of group path {gp} vanished; refusing to delete them everywhere (if that was meant, stop the daemon and run `clustersync reset {}`)",
                g.name()
            ));
            continue;
        }
        let (h, d) = commit_local(ctx, g, out.changes, Extras::default(), adopt)?;
        res.head = res.head.max(h);
        res.drift.extend(d);
        gone.extend(out.gone);
        forget.extend(out.forget);
        res.unstable.extend(out.unstable);
        tracing::debug!(group = %g.name(), "scanned {} in {:?}", name::show(p), t0.elapsed());
    }
    if res.stopped.is_some() {
        return Ok(res);
    }
    if !deletes_ok {
        res.deferred = std::mem::take(&mut gone);
    }
    if !gone.is_empty() || !forget.is_empty() {
        let tombs = s.tombstones(&gone)?;
        let extras = Extras {
            forget,
            ..Default::default()
        };
        let (h, d) = commit_local(ctx, g, tombs, extras, adopt)?;
        res.head = res.head.max(h);
        res.drift.extend(d);
    }
    Ok(res)
}

/// File owners given by name that did not resolve when their files arrived may resolve now
/// (account sync created the users): set them again (blocking).
pub(super) fn owners_changed(ctx: &Ctx, g: &GroupRt) {
    if g.cfg.owners != crate::config::Owners::ByName {
        return;
    }
    if let Err(e) = fix_owners(ctx, g) {
        tracing::warn!(group = %g.name(), "fixing owners: {e}");
    }
}

fn fix_owners(ctx: &Ctx, g: &GroupRt) -> Result<u64, StoreError> {
    ctx.owners.invalidate();
    let mut fix: Vec<Entry> = Vec::new();
    ctx.store.for_each(g.name(), |e| {
        if let Some(m) = e.item.meta()
            && let Some((u, gi)) = ctx.owners.local_ids(&m.owner, g.cfg.owners)
            && (u != m.owner.uid || gi != m.owner.gid)
        {
            fix.push(e.clone());
        }
        true
    })?;
    let fs = crate::engine::apply::Fs { ctx, g };
    let mut changes = Vec::new();
    for e in fix {
        if let Ok(mut fresh) = fs.make(&e.item, Some(&e)) {
            fresh.seq = e.seq;
            fresh.from = e.from.clone();
            fresh.item.version = e.item.version.clone();
            changes.push(Change {
                entry: fresh,
                announce: false,
            });
        }
    }
    if changes.is_empty() {
        return Ok(0);
    }
    ctx.store.commit(g.name(), changes, Extras::default())
}
