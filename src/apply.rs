//! Applying a peer's records: validate, decide against the local version, fetch missing
//! content, and change the disk through [`crate::safefs`].
//!
//! For each record the local disk is first reconciled with the index (a change not yet seen by
//! the watcher becomes a local version first, so a hand edit is never silently overwritten).
//! Then the version vectors decide: the remote descends from ours (take it), ours descends from
//! the remote (ignore), equal (nothing), or concurrent (a conflict unless the content is the
//! same; the group's policy picks the winner deterministically on every node and the merged
//! vector makes all nodes converge).
//!
//! Invariants: nothing from a peer is used before [`validate`] accepted it; content is checked
//! against its BLAKE3 before it is installed; non-deletions are applied parents first and
//! deletions deepest first after them, so a rename finds its content still in place; directory
//! mtimes are put back after their children changed; every touched path is re-read into the
//! index with its new inode and ctime, so the watcher does not take our own writes for local
//! changes.

use crate::chunk::MAX_CHUNK;
use crate::config::{ConflictPolicy, Owners};
use crate::index::{Change, ConflictInfo};
use crate::node::{GroupRt, Shared};
use crate::peer::PeerHandle;
use crate::protocol::{INLINE_MAX, MAX_CHUNKS_PER_REQUEST, WireRecord};
use crate::record::{Entry, Hash, Kind, Meta, Record};
use crate::safefs::{Place, SetMeta};
use crate::version::Causality;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Largest file a peer may announce (1 TiB).
pub const MAX_FILE: u64 = 1 << 40;
const REQUEST_BYTES: u64 = 4 * 1024 * 1024;
const WINDOW: usize = 4;

/// Errors applying one record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(transparent)]
    Fs(#[from] crate::safefs::FsError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error("{path}: content not available from any peer")]
    Unavailable { path: String },
    #[error("{path}: {msg}")]
    Other { path: String, msg: String },
}

/// A record the peer should not have sent.
#[derive(Debug, thiserror::Error)]
#[error("refused record {path:?}: {reason}")]
pub struct Refused {
    pub path: String,
    pub reason: String,
}

/// Check a peer's record before anything looks at it.
pub fn validate(
    g: &GroupRt,
    w: &WireRecord,
    known_nodes: &dyn Fn(&str) -> bool,
) -> Result<(), Refused> {
    let r = &w.rec;
    let refuse = |reason: String| Refused {
        path: r.path.chars().take(200).collect(),
        reason,
    };
    let gp = crate::paths::validate(&r.path, &g.cfg.paths).map_err(|e| refuse(e.to_string()))?;
    if !g.filter.accepts(gp, &r.path, r.kind() == Some(Kind::Dir)) {
        return Err(refuse("path is excluded in this group".into()));
    }
    if !known_nodes(&r.origin) {
        return Err(refuse(format!("unknown origin node {:?}", r.origin)));
    }
    if g.is_replica(&r.origin) {
        return Err(refuse(format!(
            "origin {:?} is a replica: it cannot make versions",
            r.origin
        )));
    }
    if r.version.0.len() > 1024 || r.version.0.keys().any(|k| k.len() > 255) {
        return Err(refuse("oversized version vector".into()));
    }
    if r.version.0.is_empty() {
        return Err(refuse("empty version vector".into()));
    }
    let Some(m) = &r.meta else {
        if w.inline.is_some() {
            return Err(refuse("content attached to a deletion".into()));
        }
        return Ok(());
    };
    if m.mode > 0o7777 {
        return Err(refuse("bad mode".into()));
    }
    if m.mtime_ns >= 1_000_000_000 {
        return Err(refuse("bad mtime".into()));
    }
    if m.owner.user.as_ref().is_some_and(|u| u.len() > 256)
        || m.owner.group.as_ref().is_some_and(|u| u.len() > 256)
    {
        return Err(refuse("bad owner name".into()));
    }
    match m.kind {
        Kind::File => {
            if m.target.is_some() || m.size > MAX_FILE {
                return Err(refuse("bad file metadata".into()));
            }
            let sum: u64 = m.chunks.iter().map(|c| c.len as u64).sum();
            if sum != m.size
                || m.chunks
                    .iter()
                    .any(|c| c.len == 0 || c.len as usize > MAX_CHUNK)
                || (m.size == 0) != m.chunks.is_empty()
            {
                return Err(refuse("chunk list does not match the size".into()));
            }
            if let Some(data) = &w.inline
                && (m.size > INLINE_MAX
                    || data.len() as u64 != m.size
                    || crate::chunk::hash(data) != m.hash)
            {
                return Err(refuse("inline content does not match its hash".into()));
            }
        }
        Kind::Symlink => {
            let ok = m
                .target
                .as_ref()
                .is_some_and(|t| !t.is_empty() && t.len() <= 4096 && !t.contains('\0'));
            if !ok || !m.chunks.is_empty() || w.inline.is_some() {
                return Err(refuse("bad symlink".into()));
            }
        }
        Kind::Dir => {
            if m.target.is_some() || !m.chunks.is_empty() || w.inline.is_some() {
                return Err(refuse("bad directory".into()));
            }
        }
    }
    Ok(())
}

/// What to do with one remote record.
#[derive(Debug)]
enum Decision {
    Ignore,
    /// Install this record (content from the peer) with this version.
    Take(Record),
    /// Keep our content but adopt the merged version.
    Keep(Entry),
}

/// Which of two concurrent live-or-deleted versions wins under `policy`.
/// Returns true when `remote` wins. Deterministic: every node decides the same.
pub fn remote_wins(policy: &ConflictPolicy, local: &Record, remote: &Record) -> bool {
    use std::cmp::Ordering as O;
    // a deletion loses against a modification
    match (&local.meta, &remote.meta) {
        (None, Some(_)) => return true,
        (Some(_), None) => return false,
        (None, None) => return remote.origin < local.origin,
        _ => {}
    }
    let (Some(l), Some(r)) = (&local.meta, &remote.meta) else {
        return false;
    };
    let by = match policy {
        ConflictPolicy::Newest | ConflictPolicy::Manual => {
            (r.mtime_s, r.mtime_ns).cmp(&(l.mtime_s, l.mtime_ns))
        }
        ConflictPolicy::Oldest => (l.mtime_s, l.mtime_ns).cmp(&(r.mtime_s, r.mtime_ns)),
        ConflictPolicy::Largest => r.size.cmp(&l.size),
        ConflictPolicy::Smallest => l.size.cmp(&r.size),
        ConflictPolicy::Prefer(n) => (remote.origin == *n).cmp(&(local.origin == *n)),
    };
    match by {
        O::Greater => true,
        O::Less => false,
        // tie: the origin whose name sorts first wins; then the content hash
        O::Equal => match remote.origin.cmp(&local.origin) {
            O::Less => true,
            O::Greater => false,
            O::Equal => r.hash < l.hash,
        },
    }
}

/// Result of applying one batch.
#[derive(Default)]
pub struct Outcome {
    pub applied: usize,
    pub failed: Vec<WireRecord>,
    pub conflicts: usize,
    pub refused: Option<Refused>,
}

fn set_meta(m: &Meta, owners: Owners, shared: &Shared) -> SetMeta {
    SetMeta {
        mode: m.mode,
        mtime_s: m.mtime_s,
        mtime_ns: m.mtime_ns,
        owner: shared.owners.local_ids(&m.owner, owners),
    }
}

/// Apply a batch of records received from `peer` for group `g`.
pub async fn apply_batch(
    shared: &Arc<Shared>,
    peer: Option<&Arc<PeerHandle>>,
    g: &GroupRt,
    records: Vec<WireRecord>,
    dry_run: bool,
) -> Outcome {
    let mut out = Outcome::default();
    let known = |n: &str| shared.cfg.nodes.contains_key(n);
    shared
        .counters
        .records_in
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    for w in &records {
        if let Err(e) = validate(g, w, &known) {
            out.refused = Some(e);
            return out;
        }
    }
    let group = g.cfg.name.as_str();
    // 1. reconcile the disk for these paths, then decide
    let mut plan: Vec<(Decision, WireRecord, Option<Entry>)> = Vec::new();
    let drifted = if g.replica && g.cfg.on_drift == crate::config::OnDrift::Keep {
        shared.drifted(group)
    } else {
        Vec::new()
    };
    let mut index_only: Vec<Change> = Vec::new();
    let sent: HashMap<String, crate::version::VersionVector> = records
        .iter()
        .map(|w| (w.rec.path.clone(), w.rec.version.clone()))
        .collect();
    for w in records {
        if drifted.contains(&w.rec.path) {
            // on_drift = keep: the local file stays until the drift is resolved, but the
            // index learns the group's version, which `resolve` then puts back
            let newer = shared
                .index
                .get(group, &w.rec.path)
                .ok()
                .flatten()
                .is_none_or(|l| w.rec.version.compare(&l.rec.version) == Causality::Newer);
            if newer {
                index_only.push(Change {
                    entry: entry_from(w.rec, None),
                    announce: true,
                });
            }
            continue;
        }
        let local = match shared.reconcile_path(g, &w.rec.path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(group, "{e}");
                out.failed.push(w);
                continue;
            }
        };
        let d = decide(shared, g, local.as_ref(), &w.rec);
        if let Decision::Take(r) = &d
            && let Some(l) = &local
            && !l.rec.is_deleted()
            && !r.is_deleted()
            && l.rec.version.compare(&w.rec.version) == Causality::Concurrent
        {
            let same = l
                .rec
                .meta
                .as_ref()
                .zip(r.meta.as_ref())
                .is_some_and(|(a, b)| a.same_content(b, g.cfg.owners != Owners::Ignore));
            if !same {
                out.conflicts += 1;
            }
        }
        plan.push((d, w, local));
    }
    if dry_run {
        for (d, w, _) in &plan {
            match d {
                Decision::Take(r) if r.is_deleted() => println!("delete   {}", w.rec.path),
                Decision::Take(_) => println!("update   {}", w.rec.path),
                _ => {}
            }
        }
        return out;
    }
    // 2. execute: non-deletions parents first, then deletions deepest first
    let mut takes: Vec<(Record, Option<Vec<u8>>, Option<Entry>)> = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    for (d, w, local) in plan {
        match d {
            Decision::Ignore => {}
            Decision::Keep(e) => changes.push(Change {
                entry: e,
                announce: true,
            }),
            Decision::Take(r) => takes.push((r, w.inline, local)),
        }
    }
    takes.sort_by(|a, b| {
        let ad = a.0.is_deleted();
        let bd = b.0.is_deleted();
        ad.cmp(&bd).then_with(|| {
            if ad {
                b.0.path.cmp(&a.0.path)
            } else {
                a.0.path.cmp(&b.0.path)
            }
        })
    });
    changes.extend(index_only);
    let mut touched_dirs: BTreeSet<String> = BTreeSet::new();
    let mut batch_deletes: Vec<String> = takes
        .iter()
        .filter(|t| t.0.is_deleted())
        .map(|t| t.0.path.clone())
        .collect();
    let mut pending: Vec<PendingInstall> = Vec::new();
    let mut inlines: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    type Applied = (Record, Option<Vec<u8>>, Result<Entry, ApplyError>);
    let mut results: Vec<Applied> = Vec::new();
    for (rec, inline, local) in takes {
        // deletions come last: files waiting to be installed go first, so a rename's
        // receiver still finds the old copy, and installs never pile up unbounded
        if (rec.is_deleted() && !pending.is_empty()) || pending.len() >= INSTALL_BATCH {
            for (r, res) in flush_installs(shared, &mut pending) {
                let inl = inlines.remove(&r.path).flatten();
                results.push((r, inl, res));
            }
        }
        let res = execute(
            shared,
            peer,
            g,
            &rec,
            inline.as_deref(),
            local.as_ref(),
            &mut batch_deletes,
            Some(&mut pending),
        )
        .await;
        match res {
            Ok(None) => {
                inlines.insert(rec.path.clone(), inline);
            }
            Ok(Some(e)) => results.push((rec, inline, Ok(e))),
            Err(e) => results.push((rec, inline, Err(e))),
        }
    }
    for (r, res) in flush_installs(shared, &mut pending) {
        let inl = inlines.remove(&r.path).flatten();
        results.push((r, inl, res));
    }
    for (rec, inline, res) in results {
        let path = rec.path.clone();
        match res {
            Ok(mut entry) => {
                // the exact version the peer sent is not sent back to it
                if let Some(p) = peer
                    && sent.get(&path) == Some(&entry.rec.version)
                {
                    entry.from = Some(p.name.clone());
                }
                touched_dirs.insert(crate::paths::parent(&path).to_string());
                if rec.kind() == Some(Kind::Dir) {
                    touched_dirs.insert(path.clone());
                }
                shared.audit(
                    group,
                    &path,
                    if rec.is_deleted() { "delete" } else { "apply" },
                    &rec,
                );
                changes.push(Change {
                    entry,
                    announce: true,
                });
                out.applied += 1;
            }
            Err(e) => {
                tracing::warn!(group, "could not apply {path}: {e}");
                out.failed.push(WireRecord { rec, inline });
            }
        }
    }
    // 3. put directory mtimes back, deepest first
    restore_dir_mtimes(shared, g, &touched_dirs, &mut changes);
    if !changes.is_empty() {
        match shared.index.commit(group, changes) {
            Ok(seq) => shared.publish_seq(seq),
            Err(e) => {
                tracing::error!(group, "index commit failed: {e}");
            }
        }
    }
    out
}

/// Put back the mtime of directories whose children we changed (deepest first) and refresh
/// their index entries, so our own writes are not taken for local changes.
fn restore_dir_mtimes(
    shared: &Shared,
    g: &GroupRt,
    touched_dirs: &BTreeSet<String>,
    changes: &mut Vec<Change>,
) {
    let group = g.cfg.name.as_str();
    let mut in_batch: HashMap<String, usize> = HashMap::new();
    for (i, c) in changes.iter().enumerate() {
        in_batch.insert(c.entry.rec.path.clone(), i);
    }
    for d in touched_dirs.iter().rev() {
        let Some(gp) = crate::paths::validate(d, &g.cfg.paths).ok() else {
            continue;
        };
        let entry = match in_batch.get(d) {
            Some(i) => Some(changes[*i].entry.clone()),
            None => shared.index.get(group, d).ok().flatten(),
        };
        let Some(mut entry) = entry else { continue };
        let Some(m) = entry.rec.meta.clone() else {
            continue;
        };
        if m.kind != Kind::Dir {
            continue;
        }
        let r = if d == gp {
            crate::safefs::open_group_dir(&shared.root, gp).and_then(|fd| {
                crate::safefs::set_meta_fd(&fd, &set_meta(&m, g.cfg.owners, shared)).map_err(|e| {
                    crate::safefs::FsError {
                        op: "set metadata of",
                        path: d.clone(),
                        source: e.into(),
                    }
                })
            })
        } else {
            crate::safefs::resolve(&shared.root, gp, d, false)
                .and_then(|p| p.set_dir_mtime(m.mtime_s, m.mtime_ns))
        };
        if let Err(e) = r {
            tracing::debug!("restoring mtime of {d}: {e}");
            continue;
        }
        if let Ok(md) = std::fs::symlink_metadata(crate::paths::real(&shared.root, d)) {
            entry.ino = md.ino();
            entry.ctime_s = md.ctime();
            entry.ctime_ns = md.ctime_nsec() as u32;
            match in_batch.get(d) {
                Some(i) => changes[*i].entry = entry,
                None => changes.push(Change {
                    entry,
                    announce: false,
                }),
            }
        }
    }
}

fn decide(shared: &Shared, g: &GroupRt, local: Option<&Entry>, remote: &Record) -> Decision {
    let Some(local) = local else {
        return Decision::Take(remote.clone());
    };
    match remote.version.compare(&local.rec.version) {
        Causality::Equal => {
            // Equal versions normally mean equal content. They can differ when concurrent
            // versions were merged pairwise in different orders on different nodes: settle it
            // with the group's policy, deterministically, so every node ends with one content.
            let same = match (&local.rec.meta, &remote.meta) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_all(b, g.cfg.owners != Owners::Ignore),
                _ => false,
            };
            if same || !remote_wins(&g.cfg.conflict, &local.rec, remote) {
                return Decision::Ignore;
            }
            tracing::warn!(
                group = %g.cfg.name,
                "{}: same version, different content ({} vs {}); taking {}'s by policy {}",
                remote.path, local.rec.origin, remote.origin, remote.origin, g.cfg.conflict
            );
            shared.audit(&g.cfg.name, &remote.path, "conflict", remote);
            Decision::Take(remote.clone())
        }
        Causality::Older => Decision::Ignore,
        Causality::Newer => {
            settle_conflict(shared, g, remote);
            let lost = remote.beat.contains(&local.rec.origin)
                && local.rec.origin != remote.origin
                && !match (&local.rec.meta, &remote.meta) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.same_content(b, g.cfg.owners != Owners::Ignore),
                    _ => false,
                };
            if lost {
                // our version lost a conflict decided on another node: list it here too
                let mut nodes = vec![local.rec.origin.clone(), remote.origin.clone()];
                nodes.sort();
                let info = ConflictInfo {
                    nodes,
                    resolved: true,
                    winner: remote.origin.clone(),
                    kept_as: (g.cfg.backup_generations > 0 && !local.rec.is_deleted()).then(|| {
                        format!(
                            "backup on {} (clustersync backups {})",
                            shared.name, remote.path
                        )
                    }),
                    time: crate::node::unix_now(),
                    versions: vec![],
                };
                let _ = shared.index.put_conflict(&g.cfg.name, &remote.path, &info);
                shared.audit(&g.cfg.name, &remote.path, "conflict", remote);
            }
            Decision::Take(remote.clone())
        }
        Causality::Concurrent => {
            let mut merged = local.rec.version.clone();
            merged.merge(&remote.version);
            let same = match (&local.rec.meta, &remote.meta) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_content(b, g.cfg.owners != Owners::Ignore),
                _ => false,
            };
            if !same && g.cfg.conflict == ConflictPolicy::Manual {
                // each node keeps its own version until `clustersync resolve`
                let existing = shared
                    .index
                    .conflict(&g.cfg.name, &remote.path)
                    .ok()
                    .flatten()
                    .filter(|c| !c.resolved);
                let new = existing.is_none();
                let mut info = existing.unwrap_or_else(|| ConflictInfo {
                    nodes: vec![local.rec.origin.clone()],
                    resolved: false,
                    winner: String::new(),
                    kept_as: None,
                    time: crate::node::unix_now(),
                    versions: vec![],
                });
                info.add_version(remote);
                let _ = shared.index.put_conflict(&g.cfg.name, &remote.path, &info);
                if new {
                    tracing::warn!(
                        group = %g.cfg.name,
                        "conflict on {}: versions from {} and {}; left unresolved (policy manual): run `clustersync resolve {} --keep NODE`",
                        remote.path, local.rec.origin, remote.origin, remote.path
                    );
                    shared.audit(&g.cfg.name, &remote.path, "conflict", remote);
                }
                return Decision::Ignore;
            }
            let wins = remote_wins(&g.cfg.conflict, &local.rec, remote);
            if !same {
                let loser = if wins {
                    &local.rec.origin
                } else {
                    &remote.origin
                };
                let winner = if wins {
                    &remote.origin
                } else {
                    &local.rec.origin
                };
                tracing::warn!(
                    group = %g.cfg.name,
                    "conflict on {}: versions from {} and {}; {} wins under policy {}",
                    remote.path, local.rec.origin, remote.origin, winner, g.cfg.conflict
                );
                let mut nodes = vec![local.rec.origin.clone(), remote.origin.clone()];
                nodes.sort();
                let kept = g.cfg.backup_generations > 0
                    && !(if wins { &local.rec } else { remote }).is_deleted();
                let info = ConflictInfo {
                    nodes,
                    resolved: true,
                    winner: winner.clone(),
                    kept_as: kept.then(|| {
                        format!("backup on {loser} (clustersync backups {})", remote.path)
                    }),
                    time: crate::node::unix_now(),
                    versions: vec![],
                };
                let _ = shared.index.put_conflict(&g.cfg.name, &remote.path, &info);
                shared.audit(&g.cfg.name, &remote.path, "conflict", remote);
            }
            let loser = if wins {
                &local.rec.origin
            } else {
                &remote.origin
            }
            .clone();
            if wins {
                let mut r = remote.clone();
                r.version = merged;
                if !same && !r.beat.contains(&loser) {
                    r.beat.push(loser);
                }
                Decision::Take(r)
            } else {
                let mut e = local.clone();
                e.rec.version = merged;
                if !same && !e.rec.beat.contains(&loser) {
                    e.rec.beat.push(loser);
                }
                Decision::Keep(e)
            }
        }
    }
}

/// Put the group's version back over drift on a replica (`on_drift = "revert"`).
pub async fn revert(shared: &Arc<Shared>, g: &GroupRt, paths: Vec<String>) {
    let group = g.cfg.name.as_str();
    let mut items: Vec<(String, Option<Entry>)> = paths
        .into_iter()
        .map(|p| {
            let e = shared
                .index
                .get(group, &p)
                .ok()
                .flatten()
                .filter(|e| !e.rec.is_deleted());
            (p, e)
        })
        .collect();
    // restorations parents first, removals deepest first after them
    items.sort_by(|a, b| match (&a.1, &b.1) {
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), Some(_)) => a.0.cmp(&b.0),
        (None, None) => b.0.cmp(&a.0),
    });
    let mut changes = Vec::new();
    let mut touched = BTreeSet::new();
    for (path, entry) in items {
        let Ok(gp) = crate::paths::validate(&path, &g.cfg.paths) else {
            continue;
        };
        let r = match &entry {
            Some(e) => execute(shared, None, g, &e.rec, None, None, &mut [], None)
                .await
                .map(|fresh| {
                    if let Some(mut fresh) = fresh {
                        fresh.rec = e.rec.clone();
                        changes.push(Change {
                            entry: fresh,
                            announce: false,
                        });
                    }
                }),
            None => match crate::safefs::resolve(&shared.root, gp, &path, false) {
                Ok(place) => place.remove().map_err(ApplyError::from),
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            },
        };
        touched.insert(crate::paths::parent(&path).to_string());
        match r {
            Ok(()) => {
                shared.clear_drift(group, &path);
                shared.audit_line(group, &path, "revert");
                tracing::info!(group, "reverted drift on {path}");
            }
            Err(e) => tracing::warn!(group, "cannot revert drift on {path} yet: {e}"),
        }
    }
    restore_dir_mtimes(shared, g, &touched, &mut changes);
    if !changes.is_empty() {
        match shared.index.commit(group, changes) {
            Ok(seq) => shared.publish_seq(seq),
            Err(e) => tracing::error!(group, "index commit: {e}"),
        }
    }
}

/// A version that descends from every competing one ends an unresolved conflict.
fn settle_conflict(shared: &Shared, g: &GroupRt, newer: &Record) {
    let Ok(Some(mut c)) = shared.index.conflict(&g.cfg.name, &newer.path) else {
        return;
    };
    if c.resolved {
        return;
    }
    if c.versions
        .iter()
        .all(|v| newer.version.compare(&v.version) == Causality::Newer)
    {
        c.resolved = true;
        c.winner = newer.origin.clone();
        c.versions.clear();
        let _ = shared.index.put_conflict(&g.cfg.name, &newer.path, &c);
    }
}

/// `clustersync resolve PATH --keep NODE`: end an unresolved conflict with one node's version.
///
/// The chosen version gets a version vector that descends from every competing one (their
/// merge, plus one change by this node), so every node takes it; the versions it replaces are
/// kept as backups where they are overwritten.
pub async fn resolve(
    shared: &Arc<Shared>,
    g: &GroupRt,
    path: &str,
    keep: &str,
) -> Result<String, String> {
    let group = g.cfg.name.as_str();
    if g.replica && shared.drifted(group).iter().any(|p| p == path) {
        if keep == shared.name {
            return Err(format!(
                "{} is a replica of group {group}: its version cannot become the group's (copy it to a full member instead)",
                shared.name
            ));
        }
        revert(shared, g, vec![path.to_string()]).await;
        return if shared.drifted(group).iter().any(|p| p == path) {
            Err(format!(
                "{path}: could not put the group's version back yet (see the log)"
            ))
        } else {
            Ok(format!(
                "{path}: drift resolved, the group's version is back"
            ))
        };
    }
    let mut info = shared
        .index
        .conflict(group, path)
        .map_err(|e| e.to_string())?
        .filter(|c| !c.resolved)
        .ok_or_else(|| format!("no unresolved conflict on {path} in group {group}"))?;
    let local = shared
        .reconcile_path(g, path)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{path} is not in the index"))?;
    let mut vv = local.rec.version.clone();
    for v in &info.versions {
        vv.merge(&v.version);
    }
    vv.bump(&shared.vv_key);
    let entry = if keep == shared.name || keep == local.rec.origin {
        let mut e = local.clone();
        e.rec.version = vv;
        e
    } else {
        let v = info
            .versions
            .iter()
            .find(|v| v.origin == keep)
            .ok_or_else(|| {
                let mut have: Vec<&str> = info.versions.iter().map(|v| v.origin.as_str()).collect();
                have.push(&local.rec.origin);
                format!(
                    "no version from {keep} in this conflict (versions from: {})",
                    have.join(", ")
                )
            })?;
        let mut rec = v.clone();
        rec.version = vv;
        let peer = shared.peer(keep);
        execute(
            shared,
            peer.as_ref(),
            g,
            &rec,
            None,
            Some(&local),
            &mut [],
            None,
        )
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{path}: not installed"))?
    };
    shared.audit(group, path, "resolve", &entry.rec);
    let mut changes = vec![Change {
        entry,
        announce: true,
    }];
    let touched = BTreeSet::from([crate::paths::parent(path).to_string()]);
    restore_dir_mtimes(shared, g, &touched, &mut changes);
    let seq = shared
        .index
        .commit(group, changes)
        .map_err(|e| e.to_string())?;
    shared.publish_seq(seq);
    info.resolved = true;
    info.winner = keep.to_string();
    info.versions.clear();
    shared
        .index
        .put_conflict(group, path, &info)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "{path}: kept the version of {keep}; it now travels to every node"
    ))
}

// one record's whole context; bundling it in a struct would only move the list
#[allow(clippy::too_many_arguments)]
async fn execute(
    shared: &Arc<Shared>,
    peer: Option<&Arc<PeerHandle>>,
    g: &GroupRt,
    rec: &Record,
    inline: Option<&[u8]>,
    local: Option<&Entry>,
    batch_deletes: &mut [String],
    defer: Option<&mut Vec<PendingInstall>>,
) -> Result<Option<Entry>, ApplyError> {
    let gp = crate::paths::validate(&rec.path, &g.cfg.paths).map_err(|e| ApplyError::Other {
        path: rec.path.clone(),
        msg: e.to_string(),
    })?;
    let root = &shared.root;
    let group = g.cfg.name.as_str();
    let Some(m) = &rec.meta else {
        // deletion
        if rec.path == gp {
            // never remove a configured group path itself
            return Ok(Some(entry_from(rec.clone(), None)));
        }
        match crate::safefs::resolve(root, gp, &rec.path, false) {
            Ok(place) => {
                if let Some(l) = local
                    && l.rec.kind() == Some(Kind::File)
                {
                    shared.backup_before_change(group, &place, l);
                }
                if let Err(e) = place.remove() {
                    // a directory that still has entries nobody deleted stays
                    tracing::info!(group, "kept {}: {e}", rec.path);
                }
            }
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Some(entry_from(rec.clone(), None)));
    };
    let sm = set_meta(m, g.cfg.owners, shared);
    if rec.path == gp && m.kind == Kind::Dir {
        let real = crate::paths::real(root, gp);
        std::fs::create_dir_all(&real).map_err(|e| ApplyError::Other {
            path: rec.path.clone(),
            msg: e.to_string(),
        })?;
        let fd = crate::safefs::open_group_dir(root, gp)?;
        crate::safefs::set_meta_fd(&fd, &sm).map_err(|e| ApplyError::Other {
            path: rec.path.clone(),
            msg: e.to_string(),
        })?;
        return finish(shared, rec).map(Some);
    }
    let place = crate::safefs::resolve(root, gp, &rec.path, true)?;
    // an existing directory that must become something else: its deleted children go first
    if m.kind != Kind::Dir
        && let Some(st) = place.stat()?
        && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    {
        let (lo, hi) = crate::paths::subtree_bounds(&rec.path);
        let mut below: Vec<String> = batch_deletes
            .iter()
            .filter(|p| p.as_str() >= lo.as_str() && p.as_str() < hi.as_str())
            .cloned()
            .collect();
        below.sort_by(|a, b| b.cmp(a));
        for p in below {
            if let Ok(pl) = crate::safefs::resolve(root, gp, &p, false) {
                let _ = pl.remove();
            }
        }
    }
    let same_kind = local.and_then(|l| l.rec.kind()) == Some(m.kind);
    let content_same = local
        .and_then(|l| l.rec.meta.as_ref())
        .is_some_and(|lm| lm.kind == m.kind && lm.hash == m.hash && lm.target == m.target);
    match m.kind {
        Kind::Dir => place.make_dir(&sm)?,
        Kind::Symlink => {
            if same_kind && content_same {
                place.set_meta(Kind::Symlink, &sm)?;
            } else {
                let t = m.target.as_deref().unwrap_or_default();
                place.make_symlink(t, &sm)?;
            }
        }
        Kind::File => {
            if same_kind && content_same {
                place.set_meta(Kind::File, &sm)?;
            } else {
                if let Some(l) = local
                    && l.rec.kind() == Some(Kind::File)
                {
                    shared.backup_before_change(group, &place, l);
                }
                let tmp = write_content(shared, peer, g, &place, m, inline, local).await?;
                match defer {
                    Some(pending) => {
                        pending.push(PendingInstall {
                            place,
                            tmp,
                            sm,
                            rec: rec.clone(),
                        });
                        return Ok(None);
                    }
                    None => place.install(tmp, &sm)?,
                }
            }
        }
    }
    finish(shared, rec).map(Some)
}

/// A file whose content is written to its temp file, waiting to be renamed into place.
pub struct PendingInstall {
    place: Place,
    tmp: crate::safefs::Temp,
    sm: SetMeta,
    rec: Record,
}

/// Files installed per flush at most (each holds an open descriptor until then).
const INSTALL_BATCH: usize = 256;

/// Install deferred files: metadata on every temp file, one sync of the filesystem, the
/// renames, and one more sync so the renames are durable before the index says so.
fn flush_installs(
    shared: &Shared,
    pending: &mut Vec<PendingInstall>,
) -> Vec<(Record, Result<Entry, ApplyError>)> {
    let items: Vec<PendingInstall> = std::mem::take(pending);
    let mut ready = Vec::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for p in items {
        match crate::safefs::set_meta_fd(&p.tmp.file, &p.sm) {
            Ok(()) => ready.push(p),
            Err(e) => {
                let err = ApplyError::Other {
                    path: p.rec.path.clone(),
                    msg: format!("set metadata: {e}"),
                };
                out.push((p.rec, Err(err)));
            }
        }
    }
    if let Some(first) = ready.first()
        && let Err(e) = crate::safefs::sync_filesystem(&first.tmp.file)
    {
        for p in ready {
            let err = ApplyError::Other {
                path: p.rec.path.clone(),
                msg: format!("sync: {e}"),
            };
            out.push((p.rec, Err(err)));
        }
        return out;
    }
    let mut sync_on = None;
    for p in ready {
        let r = p.place.install_synced(p.tmp);
        if sync_on.is_none() {
            sync_on = p.place.dir_fd().try_clone().ok();
        }
        let r = r
            .map_err(ApplyError::from)
            .and_then(|()| finish(shared, &p.rec));
        out.push((p.rec, r));
    }
    if let Some(fd) = sync_on {
        let _ = crate::safefs::sync_filesystem(&fd);
    }
    out
}

fn entry_from(rec: Record, md: Option<&std::fs::Metadata>) -> Entry {
    Entry {
        rec,
        seq: 0,
        ino: md.map(|m| m.ino()).unwrap_or(0),
        ctime_s: md.map(|m| m.ctime()).unwrap_or(0),
        ctime_ns: md.map(|m| m.ctime_nsec() as u32).unwrap_or(0),
        from: None,
    }
}

/// Re-read the applied entry so the index matches the disk exactly (inode, ctime, local ids).
fn finish(shared: &Shared, rec: &Record) -> Result<Entry, ApplyError> {
    let real = crate::paths::real(&shared.root, &rec.path);
    let md = match std::fs::symlink_metadata(&real) {
        Ok(md) => md,
        // removed locally the instant after we installed it: record what we installed; the
        // watcher's scan of the deletion then makes a tombstone (never a resurrection)
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(entry_from(rec.clone(), None));
        }
        Err(e) => {
            return Err(ApplyError::Other {
                path: rec.path.clone(),
                msg: e.to_string(),
            });
        }
    };
    let mut rec = rec.clone();
    if let Some(m) = rec.meta.as_mut() {
        // local ids may differ from the sender's (by-name mapping); names stay the sender's
        m.owner.uid = md.uid();
        m.owner.gid = md.gid();
        if m.owner.user.is_none() || m.owner.group.is_none() {
            let local = shared.owners.describe(md.uid(), md.gid());
            m.owner.user = m.owner.user.take().or(local.user);
            m.owner.group = m.owner.group.take().or(local.group);
        }
    }
    Ok(entry_from(rec, Some(&md)))
}

enum Source {
    Old(u64),
    Elsewhere,
    Remote(usize, usize),
}

async fn write_content(
    shared: &Arc<Shared>,
    peer: Option<&Arc<PeerHandle>>,
    g: &GroupRt,
    place: &Place,
    m: &Meta,
    inline: Option<&[u8]>,
    local: Option<&Entry>,
) -> Result<crate::safefs::Temp, ApplyError> {
    let path = place.path.clone();
    let mut tmp = place.create_temp()?;
    let werr = |e: std::io::Error| ApplyError::Other {
        path: path.clone(),
        msg: format!("write: {e}"),
    };
    if let Some(data) = inline {
        tmp.file.write_all(data).map_err(werr)?;
        shared
            .counters
            .inline_bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        return Ok(tmp);
    }
    // where can each chunk come from?
    let mut old_offsets: HashMap<Hash, u64> = HashMap::new();
    let old_file = match local.and_then(|l| l.rec.meta.as_ref()) {
        Some(lm) if lm.kind == Kind::File => {
            let mut off = 0;
            for c in &lm.chunks {
                old_offsets.entry(c.hash).or_insert(off);
                off += c.len as u64;
            }
            place.open_read().ok()
        }
        _ => None,
    };
    let mut sources = Vec::with_capacity(m.chunks.len());
    let mut requests: Vec<Vec<Hash>> = Vec::new();
    let mut cur_bytes = 0u64;
    for c in &m.chunks {
        if let (Some(off), Some(_)) = (old_offsets.get(&c.hash), &old_file) {
            sources.push(Source::Old(*off));
            continue;
        }
        if shared
            .index
            .chunk_location(&c.hash)
            .ok()
            .flatten()
            .is_some()
        {
            sources.push(Source::Elsewhere);
            continue;
        }
        let start_new = requests.last().is_none_or(|r| {
            r.len() >= MAX_CHUNKS_PER_REQUEST || cur_bytes + c.len as u64 > REQUEST_BYTES
        });
        if start_new {
            requests.push(Vec::new());
            cur_bytes = 0;
        }
        let ri = requests.len() - 1;
        sources.push(Source::Remote(ri, requests[ri].len()));
        requests[ri].push(c.hash);
        cur_bytes += c.len as u64;
    }
    let group = g.cfg.name.as_str();
    type Pending = (
        usize,
        Option<tokio::sync::oneshot::Receiver<Vec<Option<Vec<u8>>>>>,
    );
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut next_req = 0usize;
    let mut replies: HashMap<usize, Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut buf = Vec::new();
    for (c, src) in m.chunks.iter().zip(sources) {
        let remote = matches!(src, Source::Remote(..));
        let mut data: Option<Vec<u8>> = match src {
            Source::Old(off) => old_file.as_ref().and_then(|f| {
                buf.resize(c.len as usize, 0);
                f.read_exact_at(&mut buf, off).ok()?;
                (crate::chunk::hash(&buf) == c.hash).then(|| buf.clone())
            }),
            Source::Elsewhere => {
                let s = shared.clone();
                let (gname, h) = (group.to_string(), c.hash);
                tokio::task::spawn_blocking(move || s.read_local_chunk(&gname, &h))
                    .await
                    .ok()
                    .flatten()
            }
            Source::Remote(ri, k) => {
                while !replies.contains_key(&ri) {
                    while inflight.len() < WINDOW && next_req < requests.len() {
                        let rx = match peer {
                            Some(p) => p.get_chunks(group, requests[next_req].clone()).await,
                            None => None,
                        };
                        inflight.push_back((next_req, rx));
                        next_req += 1;
                    }
                    let Some((idx, rx)) = inflight.pop_front() else {
                        break;
                    };
                    let reply = match rx {
                        Some(rx) => rx.await.unwrap_or_default(),
                        None => Vec::new(),
                    };
                    replies.insert(idx, reply);
                }
                let d = replies
                    .get_mut(&ri)
                    .and_then(|v| v.get_mut(k))
                    .and_then(|x| x.take());
                if k + 1 == requests.get(ri).map(|r| r.len()).unwrap_or(0) {
                    replies.remove(&ri);
                }
                d.filter(|d| d.len() == c.len as usize && crate::chunk::hash(d) == c.hash)
            }
        };
        let counter = if remote {
            &shared.counters.chunk_bytes_in
        } else {
            &shared.counters.reused_bytes
        };
        if data.is_some() {
            counter.fetch_add(c.len as u64, Ordering::Relaxed);
        } else {
            data = shared
                .fetch_chunk_anywhere(group, &c.hash, c.len, peer.map(|p| p.name.as_str()))
                .await;
            if data.is_some() {
                shared
                    .counters
                    .chunk_bytes_in
                    .fetch_add(c.len as u64, Ordering::Relaxed);
            }
        }
        let Some(d) = data else {
            return Err(ApplyError::Unavailable { path });
        };
        tmp.file.write_all(&d).map_err(werr)?;
    }
    Ok(tmp)
}
