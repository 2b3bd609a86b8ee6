//! Live change detection with inotify, and the short coalescing window in front of the engine.
//!
//! One watch per directory of every group with `watch = true` (the parent directory for a
//! group path that is a single file). Events become dirty paths; a path is handed to the engine
//! once it has been quiet for [`QUIET`] — or, for a file being written (modified and not yet
//! closed), once it is closed or has been quiet for [`WRITE_QUIET`], so a growing file is never
//! sent half-written. Deletions wait [`DELETE_SETTLE`] so that a `rm -rf` of a group path is
//! seen whole and stopped by the mass-deletion guard rather than sent file by file.
//!
//! Invariants: a directory that cannot be watched (the `fs.inotify.max_user_watches` limit) is
//! rescanned every [`UNWATCHED_RESCAN`] instead, with one clear warning; a queue overflow
//! triggers a rescan (compare with the index, not a reset) of the watched groups; no event is
//! ever a reason to exit.

use crate::filter::Want;
use crate::node::{Shared, Work};
use futures_util::StreamExt;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Quiet time before a changed path is scanned.
pub const QUIET: Duration = Duration::from_millis(20);
/// Quiet time for a file that was modified but not closed.
pub const WRITE_QUIET: Duration = Duration::from_millis(1500);
/// Extra wait for deletions.
pub const DELETE_SETTLE: Duration = Duration::from_millis(150);
/// Rescan period of directories that could not be watched.
pub const UNWATCHED_RESCAN: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Target {
    group: String,
    gp: String,
    dir: String,
    /// For a single-file group path: the only name of interest in `dir`.
    only: Option<String>,
}

struct Pending {
    recursive: bool,
    writing: bool,
    /// A deletion: held until no deletion has been seen for [`DELETE_SETTLE`].
    delete: bool,
    due: Instant,
}

struct State {
    shared: Arc<Shared>,
    watches: Watches,
    wds: HashMap<WatchDescriptor, Vec<Target>>,
    unwatched: Vec<(String, String)>,
    warned_limit: bool,
    limit: Option<usize>,
    pending: HashMap<(String, String), Pending>,
    last_delete: Option<Instant>,
}

impl State {
    /// Is the directory group path `gp` of `group` currently watched?
    fn root_watched(&self, group: &str, gp: &str) -> bool {
        self.wds
            .values()
            .flatten()
            .any(|t| t.group == group && t.dir == gp && t.only.is_none())
    }

    /// Re-watch group paths that came back (a remount, a recreated directory).
    fn rewatch_roots(&mut self) {
        let shared = self.shared.clone();
        for g in shared.groups.iter().filter(|g| g.cfg.watch) {
            for gp in &g.cfg.paths {
                let real = crate::paths::real(&shared.root, gp);
                if !self.root_watched(&g.cfg.name, gp) && real.is_dir() {
                    let was_single_file = self
                        .wds
                        .values()
                        .flatten()
                        .any(|t| t.group == g.cfg.name && t.gp == *gp && t.only.is_some());
                    if was_single_file {
                        continue;
                    }
                    tracing::info!(group = %g.cfg.name, "watching {gp} again");
                    self.add_tree(&g.cfg.name, gp, gp);
                    self.dirty(&g.cfg.name, gp.clone(), true, Some(false), QUIET);
                }
            }
        }
    }
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

/// Start the watcher task.
pub fn spawn(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(shared.clone()).await {
            tracing::error!(
                "inotify unavailable ({e}); relying on periodic rescans and `clustersync mark`"
            );
        }
    })
}

impl State {
    fn add_watch(&mut self, real: &Path, t: Target) -> bool {
        if self.limit.is_some_and(|l| self.wds.len() >= l) {
            self.limit_reached(&t);
            return false;
        }
        match self.watches.add(real, mask()) {
            Ok(wd) => {
                let v = self.wds.entry(wd).or_default();
                if !v.iter().any(|x| x.group == t.group && x.dir == t.dir) {
                    v.push(t);
                }
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                self.limit_reached(&t);
                false
            }
            Err(e) => {
                tracing::debug!("cannot watch {}: {e}", real.display());
                false
            }
        }
    }

    fn limit_reached(&mut self, t: &Target) {
        if !self.warned_limit {
            tracing::warn!(
                "inotify watch limit reached (raise fs.inotify.max_user_watches); directories that cannot be watched, starting with {}, are rescanned every {}s instead",
                t.dir,
                UNWATCHED_RESCAN.as_secs()
            );
            self.warned_limit = true;
        }
        self.unwatched.push((t.group.clone(), t.dir.clone()));
    }

    /// Watch directory `dir` (logical) and every directory below it that is synced.
    fn add_tree(&mut self, group: &str, gp: &str, dir: &str) {
        let shared = self.shared.clone();
        let Some(g) = shared.group(group) else { return };
        let root = shared.root.clone();
        let mut stack = vec![dir.to_string()];
        let mut budget = 1_000_000usize;
        while let Some(d) = stack.pop() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                break;
            }
            let real = crate::paths::real(&root, &d);
            let t = Target {
                group: group.to_string(),
                gp: gp.to_string(),
                dir: d.clone(),
                only: None,
            };
            if !self.add_watch(&real, t) {
                // not watched: it and everything below are rescanned instead
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&real) else {
                continue;
            };
            for de in rd.flatten() {
                if !de.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let Some(name) = de.file_name().to_str().map(String::from) else {
                    continue;
                };
                let child = crate::paths::join(&d, &name);
                if g.filter.want(gp, &child, true) != Want::Skip {
                    stack.push(child);
                }
            }
        }
    }

    fn dirty(
        &mut self,
        group: &str,
        path: String,
        recursive: bool,
        writing: Option<bool>,
        wait: Duration,
    ) {
        let due = Instant::now() + wait;
        let p = self
            .pending
            .entry((group.to_string(), path))
            .or_insert(Pending {
                recursive,
                writing: false,
                delete: false,
                due,
            });
        p.recursive |= recursive;
        if let Some(w) = writing {
            p.writing = w;
        }
        p.due = due;
    }

    fn handle(&mut self, ev: inotify::EventOwned) {
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(
                "inotify queue overflowed; rescanning the watched groups (a compare with the index, nothing is reset)"
            );
            self.shared.submit(Work::Rescan {
                groups: None,
                reply: None,
            });
            return;
        }
        let Some(targets) = self.wds.get(&ev.wd).cloned() else {
            return;
        };
        if ev.mask.contains(EventMask::IGNORED) {
            self.wds.remove(&ev.wd);
            return;
        }
        for t in targets {
            let Some(name) = ev.name.as_ref() else {
                // the watched directory itself
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    self.last_delete = Some(Instant::now());
                    self.dirty(&t.group, t.dir.clone(), true, None, QUIET);
                    if let Some(p) = self.pending.get_mut(&(t.group.clone(), t.dir.clone())) {
                        p.delete = true;
                    }
                } else if ev.mask.contains(EventMask::ATTRIB) {
                    self.dirty(&t.group, t.dir.clone(), false, None, QUIET);
                }
                continue;
            };
            let Some(name) = name.to_str() else {
                tracing::info!("skipping a name that is not UTF-8 in {}", t.dir);
                continue;
            };
            if let Some(only) = &t.only
                && only != name
            {
                continue;
            }
            let path = crate::paths::join(&t.dir, name);
            let is_dir = ev.mask.contains(EventMask::ISDIR);
            let Some(g) = self.shared.group(&t.group) else {
                continue;
            };
            if !crate::paths::is_within(&path, &t.gp)
                || g.filter.want(&t.gp, &path, is_dir) == Want::Skip
            {
                continue;
            }
            let parent_in_group = crate::paths::is_within(&t.dir, &t.gp);
            if ev
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
            {
                self.last_delete = Some(Instant::now());
                self.dirty(&t.group, path.clone(), true, Some(false), QUIET);
                if let Some(p) = self.pending.get_mut(&(t.group.clone(), path)) {
                    p.delete = true;
                }
            } else if is_dir && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                self.add_tree(&t.group, &t.gp, &path);
                self.dirty(&t.group, path, true, Some(false), QUIET);
            } else if ev.mask.contains(EventMask::CREATE) {
                let real = crate::paths::real(&self.shared.root, &path);
                let regular = std::fs::symlink_metadata(real)
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                self.dirty(&t.group, path, false, Some(regular), QUIET);
            } else if ev.mask.contains(EventMask::MODIFY) {
                self.dirty(&t.group, path, false, Some(true), QUIET);
            } else if ev
                .mask
                .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            {
                self.dirty(&t.group, path, false, Some(false), QUIET);
            } else if ev.mask.contains(EventMask::ATTRIB) {
                self.dirty(&t.group, path, false, None, QUIET);
            }
            if parent_in_group {
                self.dirty(&t.group, t.dir.clone(), false, None, QUIET);
            }
        }
    }

    /// Hand ready paths to the engine; returns when the next one is due.
    fn flush(&mut self) -> Option<Instant> {
        let now = Instant::now();
        // (group, settled) -> paths; deletions have waited for the burst to end already
        let mut ready: HashMap<(String, bool), Vec<(String, bool)>> = HashMap::new();
        let mut next: Option<Instant> = None;
        let deletes_due = self.last_delete.map(|t| t + DELETE_SETTLE);
        self.pending.retain(|(g, p), st| {
            let mut due = if st.writing {
                st.due + WRITE_QUIET
            } else {
                st.due
            };
            if st.delete
                && let Some(d) = deletes_due
            {
                // a burst of deletions (rm -rf) goes to the engine as one batch
                due = due.max(d);
            }
            if due <= now {
                ready
                    .entry((g.clone(), st.delete))
                    .or_default()
                    .push((p.clone(), st.recursive));
                false
            } else {
                next = Some(next.map_or(due, |n: Instant| n.min(due)));
                true
            }
        });
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (g, _) in self.pending.keys() {
            *counts.entry(g.clone()).or_default() += 1;
        }
        if let Ok(mut gs) = self.shared.gstate.lock() {
            for g in &self.shared.groups {
                let n = counts.get(&g.cfg.name).copied().unwrap_or(0)
                    + ready
                        .iter()
                        .filter(|((gn, _), _)| *gn == g.cfg.name)
                        .map(|(_, v)| v.len())
                        .sum::<usize>();
                gs.entry(g.cfg.name.clone()).or_default().pending_local = n;
            }
        }
        for ((group, settled), paths) in ready {
            self.shared.submit(Work::Dirty {
                group,
                paths,
                settled,
            });
        }
        next
    }
}

async fn run(shared: Arc<Shared>) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    let watches = inotify.watches();
    let mut stream = inotify.into_event_stream(vec![0u8; 64 * 1024])?;
    let limit = std::env::var("CLUSTERSYNC_TEST_MAX_WATCHES")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut st = State {
        shared: shared.clone(),
        watches,
        wds: HashMap::new(),
        unwatched: Vec::new(),
        warned_limit: false,
        limit,
        pending: HashMap::new(),
        last_delete: None,
    };
    for g in &shared.groups {
        if !g.cfg.watch {
            continue;
        }
        for gp in &g.cfg.paths {
            let real = crate::paths::real(&shared.root, gp);
            if real.is_dir() {
                st.add_tree(&g.cfg.name, gp, gp);
            } else {
                let parent = crate::paths::parent(gp).to_string();
                let name = gp.rsplit('/').next().unwrap_or_default().to_string();
                let t = Target {
                    group: g.cfg.name.clone(),
                    gp: gp.clone(),
                    dir: parent.clone(),
                    only: Some(name),
                };
                st.add_watch(&crate::paths::real(&shared.root, &parent), t);
            }
        }
    }
    tracing::debug!("watching {} directories", st.wds.len());
    let mut shutdown = shared.shutdown_rx();
    let mut unwatched_tick = tokio::time::interval(UNWATCHED_RESCAN);
    let mut next: Option<Instant> = None;
    loop {
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(ev)) => {
                    st.handle(ev);
                    // the earliest a path touched now can be due; the pending set is only
                    // walked when something is due (walking it per event is quadratic)
                    let soon = Instant::now() + QUIET;
                    next = Some(next.map_or(soon, |n| n.min(soon)));
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!("inotify read: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => return Ok(()),
            },
            _ = tokio::time::sleep_until(sleep_until) => {},
            _ = unwatched_tick.tick() => {
                st.rewatch_roots();
                let mut by_group: HashMap<String, Vec<(String, bool)>> = HashMap::new();
                for (g, d) in &st.unwatched {
                    by_group.entry(g.clone()).or_default().push((d.clone(), true));
                }
                for (group, paths) in by_group {
                    shared.submit(Work::Dirty { group, paths, settled: false });
                }
            }
            _ = crate::node::until_set(&mut shutdown) => return Ok(()),
        }
        next = st.flush();
    }
}
