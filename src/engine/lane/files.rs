//! The files domain: a group's paths on this node's disk, as the lane's one pipeline sees them.
//!
//! - **check**: every item passes `apply::validate` (path inside the group, filter, origin,
//!   vector, mode, owner names, attributes, chunk list, inline content against its hash) on
//!   several threads for a large batch; one bad item refuses the batch.
//! - **observe**: one index read snapshot for the batch, the lstat of every key (on several
//!   threads), and a reconcile of every key whose disk state differs from its entry: the change
//!   is scanned and committed as a local version first (a hand edit is never overwritten
//!   without a decision). A local *deletion* is left to the watcher and the rescans, which see
//!   a whole burst and apply the mass-deletion guard.
//! - **apply**: non-deletions in chunks of [`INSTALL_BATCH`] (content fetched for up to
//!   [`FETCH_FILES`] files at once, small files written from their inline content, one `syncfs`
//!   before and after the renames), then deletions deepest first; one outcome per step, a
//!   panicked worker's step `Unknown`.
//! - **scan**: `local::scan_and_commit`, and on a replica, drift instead of new versions.

use super::LaneState;
use super::core::{Failure, Outcome, ScanReport, Source};
use super::domain::{Applied, Checked, Domain, ObserveError, ScanRequest};
use super::local::{self, Drift};
use super::plan::{Generic, Observed, Planner, Step};
use crate::config::OnDrift;
use crate::engine::apply::{ApplyError, Fs, needs_content, validate};
use crate::engine::group::GroupRt;
use crate::engine::node::Ctx;
use crate::engine::peer::lock;
use crate::fs::safefs::{Place, Temp};
use crate::item::{Entry, Item, Kind, name};
use crate::net::protocol::WireItem;
use crate::store::{Change, Snapshot, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::watch;

/// Files of one batch whose content is fetched at once.
pub const FETCH_FILES: usize = 8;
/// Files installed per durability flush at most (each holds an open descriptor until then).
const INSTALL_BATCH: usize = 256;
/// From this many independent items on, the work runs on several threads.
const PARALLEL_MIN: usize = 32;

/// Threads for `n` independent items.
fn threads_for(n: usize) -> usize {
    if n >= PARALLEL_MIN {
        crate::fs::par::threads()
    } else {
        1
    }
}

/// A group's files.
pub struct FilesDomain {
    pub(super) ctx: Arc<Ctx>,
    pub(super) g: Arc<GroupRt>,
    pub(super) state: Arc<LaneState>,
    /// The group's head: a long scan publishes each flush, so pumps stream it at once.
    pub(super) head: Arc<watch::Sender<u64>>,
}

/// The outcome of an apply error.
fn failure(e: ApplyError) -> Failure {
    let warning = e.unsupported_xattrs().then(|| {
        format!(
            "the filesystem under this group's paths cannot store extended attributes ({e}); files still sync, without them: mount with xattr/acl support or set xattrs = false"
        )
    });
    Failure {
        rescan: matches!(e, ApplyError::Changed { .. }),
        error: e.to_string(),
        warning,
        ..Default::default()
    }
}

fn outcome(r: Option<Result<Entry, ApplyError>>) -> Outcome {
    match r {
        Some(Ok(e)) => Outcome::Done(Box::new(e)),
        Some(Err(e)) => Outcome::Failed(failure(e)),
        None => Outcome::Unknown("the worker writing it panicked".into()),
    }
}

impl FilesDomain {
    fn fs(&self) -> Fs<'_> {
        Fs {
            ctx: &self.ctx,
            g: &self.g,
        }
    }

    /// Make the index describe what is on disk at `key` (a change the watcher has not
    /// reported yet becomes a local version first); returns the entry. `md` is the lstat of
    /// `key`; `snap` is taken again when this writes the index.
    fn reconcile<'s>(
        &'s self,
        snap: &mut Snapshot<'s>,
        key: &[u8],
        md: Option<std::fs::Metadata>,
    ) -> Result<Option<Entry>, StoreError> {
        let local = snap.get(self.g.name(), key)?;
        let fine = match (&local, &md) {
            (None, None) | (Some(_), None) => true,
            (Some(e), Some(md)) => crate::local::scan::quick_match(&e.quick(), md),
            (None, Some(_)) => false,
        };
        if fine {
            return Ok(local);
        }
        let targets = vec![(key.to_vec(), false)];
        let s = local::scan_and_commit(
            &self.ctx,
            &self.g,
            &targets,
            false,
            false,
            false,
            Some(&self.head),
        )?;
        if s.stopped.is_some() {
            return Ok(local);
        }
        *snap = self.ctx.store.snapshot()?;
        snap.get(self.g.name(), key)
    }

    /// The mass-deletion guard of every group path a batch touches, before anything is
    /// written: a path that went away (an unmounted disk, the directory renamed) stops the
    /// group instead of being created again by the apply.
    fn guard(&self, keys: &[Vec<u8>]) -> Result<(), ObserveError> {
        let s = local::scanner(&self.ctx, &self.g);
        let gps: BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| name::validate(k, &self.g.cfg.paths).ok())
            .collect();
        for gp in gps {
            match s.guard(gp) {
                Ok(None) => {}
                Ok(Some(why)) => return Err(ObserveError::Stopped(why)),
                Err(e) => return Err(ObserveError::Failed(e.to_string())),
            }
        }
        Ok(())
    }

    fn observe_all(&self, keys: &[Vec<u8>], dry: bool) -> Result<Vec<Observed>, StoreError> {
        let name = self.g.name();
        let drift_keep = self.g.replica && self.g.cfg.on_drift == OnDrift::Keep;
        let drift: BTreeSet<Vec<u8>> = if drift_keep {
            lock(&self.state.drift).keys().cloned().collect()
        } else {
            BTreeSet::new()
        };
        let mut snap = self.ctx.store.snapshot()?;
        let reals: Vec<_> = keys.iter().map(|k| name::real(&self.ctx.root, k)).collect();
        let mds = if dry {
            vec![None; keys.len()]
        } else {
            crate::fs::par::map(reals, threads_for(keys.len()), |real| {
                std::fs::symlink_metadata(real).ok()
            })
        };
        let mut out = Vec::with_capacity(keys.len());
        for (key, md) in keys.iter().zip(mds) {
            let keep_drift = drift.contains(key);
            let local = if dry || keep_drift {
                snap.get(name, key)?
            } else {
                self.reconcile(&mut snap, key, md.flatten())?
            };
            let conflict = snap.conflict(name, key)?.filter(|c| !c.resolved);
            out.push(Observed {
                local,
                conflict,
                keep_drift,
            });
        }
        Ok(out)
    }

    /// Carry out a chunk of non-deletion steps: content fetched for several files at once,
    /// then written and installed with one durability flush before and after the renames.
    async fn install_chunk(&self, chunk: Vec<Step>, prefer: Option<&String>) -> Applied {
        let sem = Arc::new(tokio::sync::Semaphore::new(FETCH_FILES));
        let mut jobs = Vec::with_capacity(chunk.len());
        let mut inline_at = Vec::new();
        for (i, s) in chunk.iter().enumerate() {
            let needs = needs_content(&s.item, s.local.as_ref());
            if needs && s.inline.is_some() {
                // content at hand: written in the install call below, no task of its own
                inline_at.push(i);
                jobs.push(None);
            } else if needs {
                let (ctx, g) = (self.ctx.clone(), self.g.clone());
                let (item, local) = (s.item.clone(), s.local.clone());
                let prefer = prefer.cloned().or_else(|| Some(s.from.0.clone()));
                let sem = sem.clone();
                jobs.push(Some(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    prepare(ctx, g, item, local, prefer).await
                })));
            } else {
                jobs.push(None);
            }
        }
        let mut prepared: Vec<Prepared> = Vec::with_capacity(jobs.len());
        for j in jobs {
            // Some(None): the task died (a panic): its outcome is unknown
            prepared.push(match j {
                None => None,
                Some(h) => Some(h.await.ok()),
            });
        }
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let n = chunk.len();
        tokio::task::spawn_blocking(move || {
            let outcomes = install_prepared(&Fs { ctx: &ctx, g: &g }, &chunk, prepared, inline_at);
            Applied {
                results: chunk.into_iter().zip(outcomes).collect(),
                lost: 0,
            }
        })
        .await
        .unwrap_or(Applied {
            results: Vec::new(),
            lost: n,
        })
    }

    /// Deletions, deepest first (blocking).
    async fn delete_all(&self, steps: Vec<Step>) -> Applied {
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let n = steps.len();
        tokio::task::spawn_blocking(move || {
            let fs = Fs { ctx: &ctx, g: &g };
            let results = steps
                .into_iter()
                .map(|s| {
                    let o = outcome(Some(fs.delete(&s.item, s.local.as_ref())));
                    (s, o)
                })
                .collect();
            Applied { results, lost: 0 }
        })
        .await
        .unwrap_or(Applied {
            results: Vec::new(),
            lost: n,
        })
    }

    /// The index forgets the inode of these files (index only, not announced), so a scan
    /// reads and hashes them again instead of reusing the stored hash (`verify --deep
    /// --repair`). What the scan then finds is a local change (a new version) on a full
    /// member, drift on a replica.
    fn forget_inodes(&self, keys: &[Vec<u8>]) -> Result<(), StoreError> {
        let mut changes = Vec::new();
        for k in keys {
            if let Some(mut e) = self.ctx.store.get(self.g.name(), k)?
                && e.item.kind() == Some(Kind::File)
            {
                e.ino = 0;
                changes.push(Change {
                    entry: e,
                    announce: false,
                });
            }
        }
        if !changes.is_empty() {
            self.ctx
                .store
                .commit(self.g.name(), changes, crate::store::Extras::default())?;
        }
        Ok(())
    }

    /// Local changes on a replica: reported, audited, kept as a backup, and (with `on_drift =
    /// "revert"`) put back on the next tick.
    fn record_drift(&self, drift: Drift) {
        let group = self.g.name();
        for (key, what, entry) in drift {
            let new = lock(&self.state.drift)
                .insert(key.clone(), what.clone())
                .as_deref()
                != Some(what.as_str());
            if !new {
                continue;
            }
            let action = match self.g.cfg.on_drift {
                OnDrift::Revert => "putting the group's version back",
                OnDrift::Keep => "left alone until resolved (on_drift = keep)",
            };
            tracing::warn!(group = %group, "drift on this replica: {} {what}; {action}", name::show(&key));
            self.ctx.audit.log(crate::ops::audit::Rec {
                group,
                path: &key,
                kind: "drift",
                origin: &self.ctx.name,
                detail: Some(&what),
                ..Default::default()
            });
            if let Some(e) = entry
                && e.item.kind() == Some(Kind::File)
                && self.g.cfg.backup_generations > 0
                && let Ok(place) = self.fs().place(&key, false)
            {
                self.fs().backup_copy(&place, &e);
            }
        }
    }
}

/// A step's prepared temporary file: `None` when it needs none, `Some(None)` when the task
/// preparing it died.
type Prepared = Option<Option<Result<(Place, Temp), ApplyError>>>;

/// Write the inline files of a chunk, then install everything prepared (blocking).
fn install_prepared(
    fs: &Fs,
    chunk: &[Step],
    mut prepared: Vec<Prepared>,
    inline_at: Vec<usize>,
) -> Vec<Outcome> {
    // independent files: written, then installed, by several threads when there are many
    let dirs = crate::fs::safefs::DirCache::default();
    let written = crate::fs::par::map(inline_at.clone(), threads_for(inline_at.len()), |i| {
        let s = &chunk[i];
        prepare_inline(fs, &dirs, &s.item, s.inline.as_deref(), s.local.as_ref())
    });
    for (i, r) in inline_at.into_iter().zip(written) {
        prepared[i] = Some(r);
    }
    // the temp files' data and metadata reach the disk before any rename
    let any = prepared
        .iter()
        .flatten()
        .flatten()
        .find_map(|p| p.as_ref().ok());
    if let Some((_, t)) = any
        && let Err(e) = crate::fs::safefs::sync_filesystem(&t.file)
    {
        tracing::warn!(group = %fs.g.name(), "sync before installing: {e}");
    }
    // directories, symlinks and metadata-only changes first, in key order (parents before
    // children); then the files, which are leaves, in parallel
    let mut results: Vec<Option<Option<Result<Entry, ApplyError>>>> =
        (0..chunk.len()).map(|_| None).collect();
    let mut installs = Vec::new();
    let mut sync_on = None;
    for (i, (s, p)) in chunk.iter().zip(prepared).enumerate() {
        match p {
            Some(Some(Ok((place, tmp)))) => {
                if sync_on.is_none() {
                    sync_on = place.dir_fd().try_clone().ok();
                }
                installs.push((i, place, tmp));
            }
            Some(Some(Err(e))) => results[i] = Some(Some(Err(e))),
            Some(None) => results[i] = Some(None),
            None => results[i] = Some(Some(fs.make(&s.item, s.local.as_ref()))),
        }
    }
    let at: Vec<usize> = installs.iter().map(|(i, _, _)| *i).collect();
    let installed = crate::fs::par::map(installs, threads_for(at.len()), |(i, place, tmp)| {
        let s = &chunk[i];
        fs.install_file(&place, &s.item, s.local.as_ref(), tmp)
    });
    for (i, r) in at.into_iter().zip(installed) {
        results[i] = Some(r);
    }
    if let Some(fd) = sync_on {
        let _ = crate::fs::safefs::sync_filesystem(&fd);
    }
    results.into_iter().map(|r| outcome(r.flatten())).collect()
}

/// Fetch and write the content of one file into a temporary file next to its target.
pub(super) async fn prepare(
    ctx: Arc<Ctx>,
    g: Arc<GroupRt>,
    item: Item,
    local: Option<Entry>,
    prefer: Option<String>,
) -> Result<(Place, Temp), ApplyError> {
    let err = |path: &Item, e: tokio::task::JoinError| ApplyError::Other {
        path: path.show().into_owned(),
        msg: e.to_string(),
    };
    let (c2, g2, i2, l2) = (ctx.clone(), g.clone(), item.clone(), local.clone());
    let (place, sources, remote) = tokio::task::spawn_blocking(move || {
        let fs = Fs { ctx: &c2, g: &g2 };
        let place = fs.place(&i2.key, true)?;
        let m = i2.meta().ok_or_else(|| not_a_file(&i2))?;
        let (sources, remote) = fs.plan(m, l2.as_ref());
        Ok::<_, ApplyError>((place, sources, remote))
    })
    .await
    .map_err(|e| err(&item, e))??;
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
    let i3 = item.clone();
    tokio::task::spawn_blocking(move || {
        let fs = Fs { ctx: &ctx, g: &g };
        let m = item.meta().ok_or_else(|| not_a_file(&item))?;
        let tmp = fs.assemble(&place, m, None, local.as_ref(), &sources, rx)?;
        fs.prepare_meta(&tmp, &item)?;
        Ok((place, tmp))
    })
    .await
    .map_err(|e| err(&i3, e))?
}

fn not_a_file(item: &Item) -> ApplyError {
    ApplyError::Other {
        path: item.show().into_owned(),
        msg: "not a file".into(),
    }
}

/// A test hook: while the file named by `CLUSTERSYNC_TEST_PANIC_FLAG` exists, writing a file
/// named `boom` panics (tests/acks.rs: what a bug in a worker must not do to acknowledgements).
fn test_panic(item: &Item) {
    static FLAG: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let flag = FLAG.get_or_init(|| std::env::var_os("CLUSTERSYNC_TEST_PANIC_FLAG").map(Into::into));
    if let Some(f) = flag
        && name::file_name(&item.key) == b"boom"
        && f.exists()
    {
        panic!("test hook: panicking on {}", item.show());
    }
}

/// [`prepare`] for a file whose whole content came with its item (blocking, no task).
fn prepare_inline(
    fs: &Fs,
    dirs: &crate::fs::safefs::DirCache,
    item: &Item,
    inline: Option<&[u8]>,
    local: Option<&Entry>,
) -> Result<(Place, Temp), ApplyError> {
    test_panic(item);
    let place = fs.place_in(dirs, &item.key, true)?;
    let m = item.meta().ok_or_else(|| not_a_file(item))?;
    let tmp = fs.assemble(&place, m, inline, local, &[], None)?;
    fs.prepare_meta(&tmp, item)?;
    Ok((place, tmp))
}

impl Domain for FilesDomain {
    fn check(&self, items: &[WireItem], _source: &Source) -> Checked {
        let known = |n: &str| self.ctx.cfg.nodes.contains_key(n);
        // the checks hash inline content: several threads for a large batch
        let g = &self.g;
        let checked = crate::fs::par::map(items.iter().collect(), threads_for(items.len()), |w| {
            validate(g, w, &known).err().map(|e| e.to_string())
        });
        for (w, r) in items.iter().zip(checked) {
            let r = r.unwrap_or_else(|| Some("checking it failed (internal error)".into()));
            if let Some(why) = r {
                let key = w.item.key[..w.item.key.len().min(4096)].to_vec();
                return Checked::Refused(key, why);
            }
        }
        Checked::All
    }

    fn planner(&self) -> Arc<dyn Planner> {
        Arc::new(Generic)
    }

    fn observe(&self, keys: &[Vec<u8>], dry: bool) -> Result<Vec<Observed>, ObserveError> {
        if !dry {
            self.guard(keys)?;
        }
        self.observe_all(keys, dry)
            .map_err(|e| ObserveError::Failed(e.to_string()))
    }

    async fn apply(self: Arc<Self>, steps: Vec<Step>, prefer: Option<String>) -> Applied {
        let (mut live, dels): (Vec<Step>, Vec<Step>) =
            steps.into_iter().partition(|s| !s.item.is_deleted());
        let mut out = Applied::default();
        while !live.is_empty() {
            let rest = live.split_off(live.len().min(INSTALL_BATCH));
            let chunk = std::mem::replace(&mut live, rest);
            let a = self.install_chunk(chunk, prefer.as_ref()).await;
            out.results.extend(a.results);
            out.lost += a.lost;
        }
        if !dels.is_empty() {
            let a = self.delete_all(dels).await;
            out.results.extend(a.results);
            out.lost += a.lost;
        }
        out
    }

    async fn resolve(self: Arc<Self>, key: Vec<u8>, keep: String) -> Result<String, String> {
        self.resolve_key(key, keep).await
    }

    async fn revert(self: Arc<Self>) {
        let keys: Vec<Vec<u8>> = lock(&self.state.drift).keys().cloned().collect();
        if !keys.is_empty() {
            self.revert_keys(keys).await;
        }
    }

    fn owners_changed(&self) {
        local::owners_changed(&self.ctx, &self.g);
    }

    fn forget_content(&self, keys: &[Vec<u8>]) {
        if let Err(e) = self.forget_inodes(keys) {
            tracing::warn!(group = %self.g.name(), "forgetting inodes to read files again: {e}");
        }
    }

    fn scan(&self, req: &ScanRequest) -> ScanReport {
        if req.targets.is_empty() {
            return ScanReport::default();
        }
        let r = local::scan_and_commit(
            &self.ctx,
            &self.g,
            &req.targets,
            req.adopt,
            req.was_stopped,
            req.deletes_ok,
            Some(&self.head),
        );
        match r {
            Ok(s) => {
                super::publish_head(&self.head, s.head);
                if !s.drift.is_empty() {
                    self.record_drift(s.drift);
                }
                ScanReport {
                    stopped: s.stopped,
                    unstable: s.unstable,
                    deferred: s.deferred,
                    failed: false,
                }
            }
            Err(e) => {
                tracing::error!(group = %self.g.name(), "scan: {e}");
                ScanReport {
                    failed: true,
                    ..Default::default()
                }
            }
        }
    }

    fn dry_scan(&self) -> Vec<(&'static str, Vec<u8>)> {
        local::dry_scan(&self.ctx, &self.g)
    }

    fn before_commit(&self, touched: &BTreeSet<Vec<u8>>, changes: &mut Vec<Change>) {
        self.fs().restore_dir_mtimes(touched, changes);
    }
}
