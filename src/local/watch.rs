//! Live change detection with inotify, in front of the groups' lanes.
//!
//! One watch per directory of every group with `watch = true` (the parent directory for a
//! group path that is a single file). Events go through the coalescing windows of
//! [`crate::local::window`] (finished writes and single deletions at once, files being written
//! when quiet or at the latest every few seconds, bursts of deletions together); due paths go
//! to their group's lane. The events are read on a thread of their own ([`read_events`]) and
//! handed over one batch per read: a single event at once, a burst after a 1 ms pause in which
//! the kernel queues them without waking anyone.
//!
//! Invariants: a directory that cannot be watched (the `fs.inotify.max_user_watches` limit) is
//! rescanned every [`UNWATCHED_RESCAN`] instead, with one clear warning naming the setting to
//! raise; a queue overflow makes every watched group rescan (a compare with the index, nothing
//! is reset); no event is ever a reason to exit; a rename from one of our temporary files
//! (`.clustersync.tmp.*`) into place is the apply's own install, already indexed: it causes
//! no scan.

use crate::fs::safefs::TEMP_PREFIX;
use crate::item::name;
use crate::local::filter::{Filter, Want};
use crate::local::window::{Event, Params, Windows};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where the watcher hands what it saw: the engine implements it (the watcher knows nothing of
/// lanes).
pub trait Sink: Send + Sync {
    /// Paths of `group` changed: (logical path, recursive); `deletes`: they went through the
    /// deletion window.
    fn changed(&self, group: &str, paths: Vec<(Vec<u8>, bool)>, deletes: bool);
    /// Scan all of `group` (the event queue overflowed).
    fn rescan(&self, group: &str);
    /// How many paths of `group` the windows hold now.
    fn waiting(&self, group: &str, n: usize);
}

/// A group the watcher watches.
pub struct Watched {
    pub name: String,
    pub paths: Vec<String>,
    pub filter: Arc<Filter>,
}

/// What to watch.
pub struct Spec {
    /// This node's root prefix.
    pub root: PathBuf,
    /// Groups with `watch = true`.
    pub groups: Vec<Watched>,
    /// Watch `<root>/etc` for the account files (reported as a change of group `@accounts`).
    pub accounts: bool,
}

impl Spec {
    fn group(&self, name: &str) -> Option<&Watched> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// The accounts pseudo-group's name (`engine::group::ACCOUNTS`).
const ACCOUNTS: &str = "@accounts";

/// Rescan period of directories that could not be watched.
pub const UNWATCHED_RESCAN: Duration = Duration::from_secs(5);
/// A read of at least this many events is a burst (an apply installing a batch, an unpacked
/// archive): the reader pauses [`BURST_PAUSE`] before its next read.
const BURST_EVENTS: usize = 32;
/// Events gather in the kernel's queue meanwhile and are then read and handed over together,
/// instead of one wake-up of the reader and of the watcher per event or two; at ~160 events a
/// millisecond (a receiver installing 20,000 small files a second) far below the queue's limit.
const BURST_PAUSE: Duration = Duration::from_millis(1);
/// Read `inotify`'s events on a thread of its own and hand them to the watcher in batches, one
/// batch per read. The reader waits in `poll`, so a single event is handed over at once; after
/// a burst it sleeps [`BURST_PAUSE`], during which nothing waits on the descriptor and the
/// kernel queues events without waking anyone. Ends when the watcher is gone: it drops the
/// write end of the `stop` pipe (no timer wakes an idle reader).
fn read_events(
    mut inotify: Inotify,
    stop: std::os::fd::OwnedFd,
    tx: tokio::sync::mpsc::Sender<Vec<inotify::EventOwned>>,
) {
    use rustix::event::{PollFd, PollFlags};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = [
            PollFd::new(&inotify, PollFlags::IN),
            PollFd::new(&stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) if !fds[1].revents().is_empty() => return,
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("inotify poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let batch: Vec<inotify::EventOwned> = match inotify.read_events(&mut buf) {
            Ok(events) => events.map(|e| e.to_owned()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("inotify read: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let n = batch.len();
        if tx.blocking_send(batch).is_err() {
            return;
        }
        if n >= BURST_EVENTS {
            std::thread::sleep(BURST_PAUSE);
        }
    }
}

#[derive(Clone)]
struct Target {
    group: String,
    gp: String,
    dir: Vec<u8>,
    /// For a single-file group path: the only name of interest in `dir`.
    only: Option<Vec<u8>>,
}

struct State {
    spec: Arc<Spec>,
    sink: Arc<dyn Sink>,
    watches: Watches,
    wds: HashMap<WatchDescriptor, Vec<Target>>,
    unwatched: Vec<(String, Vec<u8>)>,
    warned_limit: bool,
    limit: Option<usize>,
    windows: Windows,
    /// The watch on `<root>/etc` for account sync.
    accounts_wd: Option<WatchDescriptor>,
    /// Cookies of renames away from one of our temporary files: the `MOVED_TO` with the same
    /// cookie is one of our own installs (the lane already indexed it), not a local change.
    own_moves: std::collections::VecDeque<u32>,
    /// Names our installs just renamed into place, whose temporary file's descriptor is
    /// closed after the rename: that `CLOSE_WRITE` (with no write of anyone else before it)
    /// is ours too.
    own_closes: std::collections::VecDeque<(WatchDescriptor, Vec<u8>)>,
}

/// How many of our renames' cookies are remembered (the two halves of a rename are adjacent in
/// the queue, so a few suffice).
const OWN_MOVES: usize = 256;

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

/// Start the watcher task; it ends when `shutdown` is set.
pub fn spawn(
    spec: Spec,
    sink: Arc<dyn Sink>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(Arc::new(spec), sink, shutdown).await {
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
            let cur = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into());
            tracing::warn!(
                "inotify watch limit reached ({} directories watched; fs.inotify.max_user_watches = {cur}): raise it, e.g. `sysctl fs.inotify.max_user_watches=1048576` (and in /etc/sysctl.d/); meanwhile directories that cannot be watched, starting with {}, are rescanned every {}s",
                self.wds.len(),
                name::show(&t.dir),
                UNWATCHED_RESCAN.as_secs()
            );
            self.warned_limit = true;
        }
        self.unwatched.push((t.group.clone(), t.dir.clone()));
    }

    /// Watch directory `dir` (logical) and every directory below it that is synced.
    fn add_tree(&mut self, group: &str, gp: &str, dir: &[u8]) {
        let spec = self.spec.clone();
        let Some(g) = spec.group(group) else { return };
        let mut stack = vec![dir.to_vec()];
        let mut budget = 10_000_000usize;
        while let Some(d) = stack.pop() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                break;
            }
            let real = name::real(&spec.root, &d);
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
                let child = name::join(&d, de.file_name().as_bytes());
                if g.filter.want(gp, &child, true) != Want::Skip {
                    stack.push(child);
                }
            }
        }
    }

    fn root_watched(&self, group: &str, gp: &str) -> bool {
        self.wds
            .values()
            .flatten()
            .any(|t| t.group == group && t.dir == gp.as_bytes() && t.only.is_none())
    }

    /// Re-watch group paths that came back (a remount, a recreated directory).
    fn rewatch_roots(&mut self) {
        let spec = self.spec.clone();
        for g in &spec.groups {
            for gp in &g.paths {
                let real = name::real(&spec.root, gp.as_bytes());
                let single = self
                    .wds
                    .values()
                    .flatten()
                    .any(|t| t.group == g.name && t.gp == *gp && t.only.is_some());
                if !single && !self.root_watched(&g.name, gp) && real.is_dir() {
                    tracing::info!(group = %g.name, "watching {gp} again");
                    self.add_tree(&g.name, gp, gp.as_bytes());
                    self.windows.event(
                        &g.name,
                        gp.as_bytes().to_vec(),
                        Event::Done,
                        true,
                        Instant::now().into_std(),
                    );
                }
            }
        }
    }

    fn handle(&mut self, ev: inotify::EventOwned) {
        let now = Instant::now().into_std();
        if self.accounts_wd.as_ref() == Some(&ev.wd) {
            // passwd, group, shadow, gshadow written or renamed into place
            let ours = ev.name.as_ref().is_some_and(|n| {
                matches!(n.as_bytes(), b"passwd" | b"group" | b"shadow" | b"gshadow")
            });
            if ours
                && ev
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            {
                self.sink.changed(ACCOUNTS, Vec::new(), false);
            }
            return;
        }
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(
                "inotify queue overflowed; rescanning the watched groups (a compare with the index, nothing is reset)"
            );
            for g in &self.spec.groups {
                self.sink.rescan(&g.name);
            }
            return;
        }
        let Some(targets) = self.wds.get(&ev.wd).cloned() else {
            return;
        };
        if ev.mask.contains(EventMask::IGNORED) {
            self.wds.remove(&ev.wd);
            return;
        }
        // our own installs: a temporary file renamed into place by the apply, which indexed
        // the result itself; scanning it again would only find what the index holds
        if ev.cookie != 0 {
            if ev.mask.contains(EventMask::MOVED_FROM)
                && ev
                    .name
                    .as_ref()
                    .is_some_and(|n| n.as_bytes().starts_with(TEMP_PREFIX.as_bytes()))
            {
                if self.own_moves.len() >= OWN_MOVES {
                    self.own_moves.pop_front();
                }
                self.own_moves.push_back(ev.cookie);
                return;
            }
            if ev.mask.contains(EventMask::MOVED_TO)
                && let Some(i) = self.own_moves.iter().position(|c| *c == ev.cookie)
            {
                self.own_moves.remove(i);
                if let Some(n) = ev.name.as_ref() {
                    if self.own_closes.len() >= OWN_MOVES {
                        self.own_closes.pop_front();
                    }
                    self.own_closes
                        .push_back((ev.wd.clone(), n.as_bytes().to_vec()));
                }
                return;
            }
        }
        if !self.own_closes.is_empty()
            && let Some(n) = ev.name.as_ref()
            && let Some(i) = self
                .own_closes
                .iter()
                .position(|(wd, name)| *wd == ev.wd && name.as_slice() == n.as_bytes())
        {
            // anything but the close (a write, a chmod, a delete by someone else) means the
            // path is no longer just ours: it is handled as usual from here
            self.own_closes.remove(i);
            if ev.mask == EventMask::CLOSE_WRITE {
                return;
            }
        }
        for t in targets {
            let Some(n) = ev.name.as_ref() else {
                // the watched directory itself
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    self.windows
                        .event(&t.group, t.dir.clone(), Event::Deleted, true, now);
                } else if ev.mask.contains(EventMask::ATTRIB) {
                    self.windows
                        .event(&t.group, t.dir.clone(), Event::Done, false, now);
                }
                continue;
            };
            let n = n.as_bytes();
            if let Some(only) = &t.only
                && only.as_slice() != n
            {
                continue;
            }
            let path = name::join(&t.dir, n);
            let is_dir = ev.mask.contains(EventMask::ISDIR);
            let Some(g) = self.spec.group(&t.group) else {
                continue;
            };
            if !name::is_within(&path, t.gp.as_bytes())
                || g.filter.want(&t.gp, &path, is_dir) == Want::Skip
            {
                continue;
            }
            let parent_in_group = name::is_within(&t.dir, t.gp.as_bytes());
            let group = t.group.clone();
            if ev
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
            {
                self.windows.event(&group, path, Event::Deleted, true, now);
            } else if is_dir && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                self.add_tree(&group, &t.gp, &path);
                self.windows.event(&group, path, Event::Done, true, now);
            } else if ev.mask.contains(EventMask::CREATE) {
                let real = name::real(&self.spec.root, &path);
                let regular = std::fs::symlink_metadata(real)
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                let e = if regular { Event::Writing } else { Event::Done };
                self.windows.event(&group, path, e, false, now);
            } else if ev.mask.contains(EventMask::MODIFY) && !is_dir {
                self.windows.event(&group, path, Event::Writing, false, now);
            } else if ev.mask.contains(EventMask::MODIFY) {
                // a directory is never being written: its MODIFY is a change of its mtime
                // alone (utimensat with the access time omitted), an attribute change
                self.windows.event(&group, path, Event::Attrib, false, now);
            } else if ev
                .mask
                .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            {
                self.windows.event(&group, path, Event::Done, false, now);
            } else if ev.mask.contains(EventMask::ATTRIB) {
                self.windows.event(&group, path, Event::Attrib, false, now);
            }
            if parent_in_group {
                self.windows
                    .event(&group, t.dir.clone(), Event::Done, false, now);
            }
        }
    }

    /// Hand due paths to the lanes; returns when the next one is due.
    fn flush(&mut self) -> Option<Instant> {
        let now = Instant::now().into_std();
        let (ready, next) = self.windows.take_due(now);
        for r in ready {
            self.sink.changed(&r.group, r.paths, r.deletes);
        }
        for g in &self.spec.groups {
            self.sink.waiting(&g.name, self.windows.waiting(&g.name));
        }
        next.map(Instant::from_std)
    }
}

async fn run(
    spec: Arc<Spec>,
    sink: Arc<dyn Sink>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    let watches = inotify.watches();
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    // the reader ends when this function does and drops `_stop`
    let (stop, _stop) = rustix::pipe::pipe()?;
    std::thread::Builder::new()
        .name("inotify".into())
        .spawn(move || read_events(inotify, stop, tx))?;
    let limit = std::env::var("CLUSTERSYNC_TEST_MAX_WATCHES")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut st = State {
        spec: spec.clone(),
        sink: sink.clone(),
        watches,
        wds: HashMap::new(),
        unwatched: Vec::new(),
        warned_limit: false,
        limit,
        windows: Windows::new(Params::default()),
        accounts_wd: None,
        own_moves: std::collections::VecDeque::new(),
        own_closes: std::collections::VecDeque::new(),
    };
    if spec.accounts {
        let etc = spec.root.join("etc");
        match st.watches.add(
            &etc,
            WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::DONT_FOLLOW,
        ) {
            Ok(wd) => st.accounts_wd = Some(wd),
            Err(e) => tracing::warn!(
                "cannot watch {} for account changes ({e}); they are noticed within a second by stat",
                etc.display()
            ),
        }
    }
    for g in &spec.groups {
        for gp in &g.paths {
            let real = name::real(&spec.root, gp.as_bytes());
            if real.is_dir() {
                st.add_tree(&g.name, gp, gp.as_bytes());
            } else {
                let parent = name::parent(gp.as_bytes()).to_vec();
                let t = Target {
                    group: g.name.clone(),
                    gp: gp.clone(),
                    dir: parent.clone(),
                    only: Some(name::file_name(gp.as_bytes()).to_vec()),
                };
                st.add_watch(&name::real(&spec.root, &parent), t);
            }
        }
    }
    tracing::debug!("watching {} directories", st.wds.len());
    let mut unwatched_tick = tokio::time::interval(UNWATCHED_RESCAN);
    let mut next: Option<Instant> = None;
    loop {
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            batch = events.recv() => match batch {
                Some(batch) => {
                    // this batch and any the reader queued already, then hand over what is due
                    let queued = std::iter::from_fn(|| events.try_recv().ok()).take(63);
                    for ev in std::iter::once(batch).chain(queued).flatten() {
                        st.handle(ev);
                    }
                }
                None => return Ok(()),
            },
            _ = tokio::time::sleep_until(sleep_until) => {},
            _ = unwatched_tick.tick() => {
                st.rewatch_roots();
                let mut by_group: HashMap<String, Vec<(Vec<u8>, bool)>> = HashMap::new();
                for (g, d) in &st.unwatched {
                    by_group.entry(g.clone()).or_default().push((d.clone(), true));
                }
                for (group, paths) in by_group {
                    sink.changed(&group, paths, false);
                }
            }
            _ = shutdown.wait_for(|v| *v) => return Ok(()),
        }
        next = st.flush();
    }
}
