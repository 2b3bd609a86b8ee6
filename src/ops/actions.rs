//! Actions (SPEC §5.8): commands run after synced changes were applied, such as
//! `systemctl reload nginx` once its config arrived.
//!
//! The engine calls [`ActionRunner::notify`] after each applied batch with the batch's logical
//! paths (as in the config, without the node's root prefix; deletions included). `notify` does
//! the pattern matching at once (cheap: one compiled glob set per action) and adds the matching
//! paths to that action's pending set; a task owned by the runner decides when to run and runs.
//!
//! Invariants:
//! - `notify` never blocks on a running action or on I/O: it matches, takes a short lock and
//!   wakes the task.
//! - At most one instance of an action runs at a time. Paths that arrive while it runs wait in
//!   the pending set; the next run takes all of them.
//! - A run starts once no matching path arrived for the quiet window (`RunnerOptions::quiet`,
//!   200 ms by default), but never later than `max_delay` (2 s) after the first pending path, so a
//!   steady stream of changes cannot postpone it forever. 20,000 files arriving in many batches
//!   run an action a handful of times.
//! - Memory is bounded: pending paths are de-duplicated per action and capped at
//!   `max_paths` (100,000); beyond that the run is marked truncated and the environment says so.
//! - Every run is bounded by the action's `timeout` (60 s by default). Then the whole process
//!   group gets SIGTERM and, after `kill_grace` (5 s), SIGKILL.
//!
//! Pattern semantics (gitignore syntax, as config validation already checks), matched against
//! absolute logical paths with `/` as the root:
//! - `/etc/nginx/**`: everything below `/etc/nginx` (a leading `/` anchors at the root);
//! - `*.conf`: a pattern without a `/` (other than a trailing one) matches the name at any depth;
//! - `etc/nginx/*.conf`: a `/` inside the pattern anchors it at the root as well;
//! - a pattern that matches a directory also matches everything below it (`/etc/nginx`
//!   matches `/etc/nginx/nginx.conf`); `dir/` matches only what lies below `dir`, because a
//!   changed path's own kind is not known here (it may have been deleted);
//! - `!pattern` re-includes, the last matching pattern wins (as in gitignore).
//!
//! The command runs as `/bin/sh -c RUN` in its own process group, working directory `/`,
//! stdin from /dev/null, with `CLUSTERSYNC_PATHS` (the matched paths as in the config, sorted,
//! de-duplicated, newline-separated), `CLUSTERSYNC_ROOT` (this node's `root` prefix, `/` by
//! default), `CLUSTERSYNC_REAL_PATHS` (the same paths where they are on this machine: with the
//! root prefix; equal to `CLUSTERSYNC_PATHS` when the root is `/`), `CLUSTERSYNC_NODE`,
//! `CLUSTERSYNC_GROUP` and `CLUSTERSYNC_PATHS_COUNT` (how many paths matched in all). A
//! command that touches the files (`chown`, `chmod`) takes `CLUSTERSYNC_REAL_PATHS`, so that on
//! a node with a root it acts on that node's files, not on the host's. Linux refuses a single variable over 128 KiB, so a list
//! longer than [`ENV_PATHS_MAX_BYTES`] is cut there (at a whole path), and then
//! `CLUSTERSYNC_PATHS_TRUNCATED=1` is set and `CLUSTERSYNC_PATHS_FILE` names a private temporary
//! file with the whole list, one path per line, removed after the run. Over `max_paths` the
//! paths beyond it are not kept at all: the result says `truncated` and the count tells how many
//! there were.
//! systemd's `NOTIFY_SOCKET`, `WATCHDOG_*` and `LISTEN_*` are removed from its environment.
//! Its stdout lines are logged at INFO and stderr lines at WARN (at most
//! `max_log_lines` per run), and all of them are appended to `logfile` when one is set.

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Default time an action may run before it is stopped.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes put in `CLUSTERSYNC_PATHS`. Linux refuses to exec with a single environment
/// string over 128 KiB (`MAX_ARG_STRLEN`); this stays below it.
pub const ENV_PATHS_MAX_BYTES: usize = 120 * 1024;
/// Longest output line logged as one line; longer ones are split.
const MAX_LINE: usize = 4096;
/// Variables of the service manager that an action must not inherit.
const SERVICE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// One action, as the engine maps it from `[[groups.NAME.actions]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    /// The group it belongs to.
    pub group: String,
    /// Its position in the group's list (`groups.NAME.actions[index]`), used in logs and metrics.
    pub index: usize,
    /// Gitignore-style patterns, matched against absolute logical paths (see the module doc).
    pub patterns: Vec<String>,
    /// The command, run through `/bin/sh -c`.
    pub run: String,
    /// Also run for changes made on this node.
    pub local: bool,
    /// How long it may run before its process group is stopped.
    pub timeout: Duration,
    /// Append its output here as well (csync2's `logfile`).
    pub logfile: Option<PathBuf>,
}

impl ActionSpec {
    /// An action with the default timeout and no log file.
    pub fn new(group: &str, index: usize, patterns: Vec<String>, run: &str) -> ActionSpec {
        ActionSpec {
            group: group.to_owned(),
            index,
            patterns,
            run: run.to_owned(),
            local: false,
            timeout: DEFAULT_TIMEOUT,
            logfile: None,
        }
    }

    /// The action as configured.
    pub fn from_config(group: &str, index: usize, c: &crate::config::ActionConfig) -> ActionSpec {
        ActionSpec {
            local: c.local,
            timeout: c.timeout,
            logfile: c.logfile.clone(),
            ..ActionSpec::new(group, index, c.pattern.clone(), &c.run)
        }
    }

    /// `www[0]`: how logs and errors name it.
    pub fn label(&self) -> String {
        format!("{}[{}]", self.group, self.index)
    }
}

/// Timing and limits of a runner. Tests shorten the windows.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// This node's name (`CLUSTERSYNC_NODE`).
    pub node: String,
    /// This node's root prefix (`CLUSTERSYNC_ROOT`; `CLUSTERSYNC_REAL_PATHS` are below it).
    pub root: PathBuf,
    /// Run once no matching path arrived for this long.
    pub quiet: Duration,
    /// ... but at the latest this long after the first pending path.
    pub max_delay: Duration,
    /// Between SIGTERM and SIGKILL of a timed-out action's process group.
    pub kill_grace: Duration,
    /// Pending paths kept per action; more are counted, not kept.
    pub max_paths: usize,
    /// Output lines per run sent to the log (the log file gets all of them).
    pub max_log_lines: usize,
    /// How long to collect output after the shell exited (a background child may hold the pipe).
    pub output_drain: Duration,
    /// The shell; `/bin/sh`.
    pub shell: PathBuf,
    /// Where `CLUSTERSYNC_PATHS_FILE` lists are written (the system's temp dir).
    pub tmp_dir: PathBuf,
}

impl RunnerOptions {
    /// The production settings for node `node`.
    pub fn new(node: &str) -> RunnerOptions {
        RunnerOptions {
            node: node.to_owned(),
            root: PathBuf::from("/"),
            quiet: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            kill_grace: Duration::from_secs(5),
            max_paths: 100_000,
            max_log_lines: 200,
            output_drain: Duration::from_secs(1),
            shell: PathBuf::from("/bin/sh"),
            tmp_dir: std::env::temp_dir(),
        }
    }
}

/// A configured action that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActionError {
    /// A pattern does not compile.
    #[error("action {group}[{index}]: bad pattern {pattern:?}: {reason}")]
    Pattern {
        group: String,
        index: usize,
        pattern: String,
        reason: String,
    },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The shell exited with this status.
    Exited { code: i32 },
    /// The shell was killed by this signal (not by us).
    Signaled { signal: i32 },
    /// It ran past its timeout and its process group was stopped; `killed` when SIGTERM was
    /// not enough and SIGKILL was sent.
    TimedOut { killed: bool },
    /// The shell could not be started.
    SpawnFailed { error: String },
    /// Waiting for the shell failed (its end is unknown).
    WaitFailed { error: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited { code } => write!(f, "exit status {code}"),
            Outcome::Signaled { signal } => write!(f, "killed by signal {signal}"),
            Outcome::TimedOut { killed: false } => write!(f, "timed out (stopped with SIGTERM)"),
            Outcome::TimedOut { killed: true } => write!(f, "timed out (killed with SIGKILL)"),
            Outcome::SpawnFailed { error } => write!(f, "could not start: {error}"),
            Outcome::WaitFailed { error } => write!(f, "lost track of it: {error}"),
        }
    }
}

/// The result of one run: what `status` shows, what the audit log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionResult {
    pub group: String,
    pub index: usize,
    /// When it started.
    #[serde(serialize_with = "ser_time")]
    pub started: SystemTime,
    /// How long it ran.
    #[serde(rename = "duration_ms", serialize_with = "ser_millis")]
    pub duration: Duration,
    /// How many distinct paths matched (also those over the cap).
    pub paths: usize,
    /// Not every matched path was given to the command (over `max_paths`).
    pub truncated: bool,
    pub outcome: Outcome,
}

impl ActionResult {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.outcome == Outcome::Exited { code: 0 }
    }
}

fn ser_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `status` shows per action.
#[derive(Debug, Clone, Serialize)]
pub struct ActionStatus {
    pub group: String,
    pub index: usize,
    pub run: String,
    /// Runs finished since start.
    pub runs: u64,
    /// Runs that did not exit with status 0.
    pub failures: u64,
    pub running: bool,
    /// Paths waiting for the next run.
    pub pending: usize,
    pub last: Option<ActionResult>,
}

/// Called with every finished run (the engine audits it as kind `action` and counts it in
/// metrics). Runs on the runner's task: it must not block.
pub type ResultHook = Arc<dyn Fn(&ActionResult) + Send + Sync>;

struct Compiled {
    spec: ActionSpec,
    matcher: Gitignore,
}

/// Per-action state shared by the handle and the task.
#[derive(Default)]
struct Slot {
    pending: BTreeSet<String>,
    /// Paths not kept because `pending` was full.
    dropped: usize,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    running: bool,
    runs: u64,
    failures: u64,
    last: Option<ActionResult>,
}

impl Slot {
    fn due(&self, o: &RunnerOptions) -> Option<Instant> {
        match (self.first_at, self.last_at) {
            (Some(f), Some(l)) if !self.pending.is_empty() => {
                Some((l + o.quiet).min(f + o.max_delay))
            }
            _ => None,
        }
    }
}

struct Inner {
    opts: RunnerOptions,
    actions: Vec<Compiled>,
    by_group: HashMap<String, Vec<usize>>,
    slots: Mutex<Vec<Slot>>,
    wake: Notify,
    on_result: ResultHook,
}

impl Inner {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        // a panic while holding the lock leaves consistent data (plain inserts and counters)
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the actions of this node; cheap to clone.
#[derive(Clone)]
pub struct ActionRunner {
    inner: Arc<Inner>,
}

/// Compile one action's patterns with `/` as the root.
fn compile(spec: &ActionSpec) -> Result<Gitignore, ActionError> {
    let err = |pattern: &str, reason: String| ActionError::Pattern {
        group: spec.group.clone(),
        index: spec.index,
        pattern: pattern.to_owned(),
        reason,
    };
    let mut b = GitignoreBuilder::new("/");
    // as config validation: an unclosed '[' is a typo, not a literal
    b.allow_unclosed_class(false);
    for p in &spec.patterns {
        if p.trim().is_empty() || p.starts_with('#') {
            return Err(err(p, "empty, or a gitignore comment".to_owned()));
        }
        b.add_line(None, p).map_err(|e| err(p, e.to_string()))?;
    }
    b.build().map_err(|e| err("", e.to_string()))
}

/// Whether `path` (absolute, logical) is matched by `m`, directly or through a parent.
fn matches(m: &Gitignore, path: &str) -> bool {
    // Relative to the root "/": the matcher then never sees a rooted path (it asserts that).
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return false;
    }
    m.matched_path_or_any_parents(rel, false).is_ignore()
}

impl ActionRunner {
    /// Compile the actions and start the runner's task. The task ends when `shutdown` becomes
    /// true (or its sender is dropped): it starts no new run, waits for the running ones (each
    /// bounded by its timeout) and logs what was left pending.
    pub fn start(
        specs: Vec<ActionSpec>,
        opts: RunnerOptions,
        on_result: ResultHook,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(ActionRunner, JoinHandle<()>), ActionError> {
        let mut actions = Vec::with_capacity(specs.len());
        let mut by_group: HashMap<String, Vec<usize>> = HashMap::new();
        for spec in specs {
            let matcher = compile(&spec)?;
            by_group
                .entry(spec.group.clone())
                .or_default()
                .push(actions.len());
            actions.push(Compiled { spec, matcher });
        }
        let slots = Mutex::new(actions.iter().map(|_| Slot::default()).collect());
        let inner = Arc::new(Inner {
            opts,
            actions,
            by_group,
            slots,
            wake: Notify::new(),
            on_result,
        });
        let task = tokio::spawn(run_loop(inner.clone(), shutdown));
        Ok((ActionRunner { inner }, task))
    }

    /// A batch of changes of `group` was applied (or, with `origin_local`, made on this node).
    /// Matches `paths` against the group's actions and queues the matches; returns at once.
    /// Cost: one glob-set lookup per path and action of the group, plus a short lock.
    pub fn notify<I, S>(&self, group: &str, paths: I, origin_local: bool)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let Some(idx) = self.inner.by_group.get(group) else {
            return;
        };
        let idx: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| !origin_local || self.inner.actions[i].spec.local)
            .collect();
        if idx.is_empty() {
            return;
        }
        let mut hits: Vec<(usize, String)> = Vec::new();
        for p in paths {
            let p = p.as_ref();
            for &i in &idx {
                if matches(&self.inner.actions[i].matcher, p) {
                    hits.push((i, p.to_owned()));
                }
            }
        }
        if hits.is_empty() {
            return;
        }
        let now = Instant::now();
        let max = self.inner.opts.max_paths;
        {
            let mut slots = self.inner.slots();
            for (i, p) in hits {
                let s = &mut slots[i];
                if s.pending.len() < max || s.pending.contains(&p) {
                    s.pending.insert(p);
                } else {
                    s.dropped += 1;
                }
                s.first_at.get_or_insert(now);
                s.last_at = Some(now);
            }
        }
        self.inner.wake.notify_one();
    }

    /// Last result, counts and pending work of every action, in configuration order.
    pub fn status(&self) -> Vec<ActionStatus> {
        let slots = self.inner.slots();
        self.inner
            .actions
            .iter()
            .zip(slots.iter())
            .map(|(a, s)| ActionStatus {
                group: a.spec.group.clone(),
                index: a.spec.index,
                run: a.spec.run.clone(),
                runs: s.runs,
                failures: s.failures,
                running: s.running,
                pending: s.pending.len() + s.dropped,
                last: s.last.clone(),
            })
            .collect()
    }
}

/// The matched paths of one run.
struct Batch {
    paths: Vec<String>,
    dropped: usize,
}

async fn run_loop(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut running: JoinSet<ActionResult> = JoinSet::new();
    let mut ids: HashMap<tokio::task::Id, usize> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        {
            let mut slots = inner.slots();
            for (i, s) in slots.iter_mut().enumerate() {
                if s.running {
                    continue;
                }
                let Some(due) = s.due(&inner.opts) else {
                    continue;
                };
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    continue;
                }
                let batch = Batch {
                    paths: std::mem::take(&mut s.pending).into_iter().collect(),
                    dropped: std::mem::take(&mut s.dropped),
                };
                s.first_at = None;
                s.last_at = None;
                s.running = true;
                let inner2 = inner.clone();
                let h = running.spawn(async move { execute(&inner2, i, batch).await });
                ids.insert(h.id(), i);
            }
        }
        let sleep = tokio::time::sleep_until(next.unwrap_or(now + Duration::from_secs(3600)));
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = sleep => {}
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                finish(&inner, &mut ids, done);
            }
            r = shutdown.changed() => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    // Shutting down: no new runs; the running ones end within their timeout plus the grace.
    while let Some(done) = running.join_next_with_id().await {
        finish(&inner, &mut ids, done);
    }
    let slots = inner.slots();
    for (a, s) in inner.actions.iter().zip(slots.iter()) {
        if !s.pending.is_empty() {
            tracing::warn!(
                "action {}: not run at shutdown, {} changed paths were pending",
                a.spec.label(),
                s.pending.len() + s.dropped
            );
        }
    }
}

fn finish(
    inner: &Inner,
    ids: &mut HashMap<tokio::task::Id, usize>,
    done: Result<(tokio::task::Id, ActionResult), tokio::task::JoinError>,
) {
    let (id, res) = match done {
        Ok((id, res)) => (id, Some(res)),
        Err(e) => (e.id(), None),
    };
    let Some(i) = ids.remove(&id) else {
        return;
    };
    let spec = &inner.actions[i].spec;
    // audited before `status` shows it
    if let Some(r) = &res {
        (inner.on_result)(r);
    }
    {
        let mut slots = inner.slots();
        let s = &mut slots[i];
        s.running = false;
        s.runs += 1;
        if !res.as_ref().is_some_and(ActionResult::success) {
            s.failures += 1;
        }
        if let Some(r) = &res {
            s.last = Some(r.clone());
        }
    }
    match &res {
        Some(r) if r.success() => tracing::info!(
            "action {} `{}` ok in {:.1}s ({} paths)",
            spec.label(),
            spec.run,
            r.duration.as_secs_f64(),
            r.paths
        ),
        Some(r) => tracing::warn!(
            "action {} `{}` failed: {} after {:.1}s ({} paths)",
            spec.label(),
            spec.run,
            r.outcome,
            r.duration.as_secs_f64(),
            r.paths
        ),
        None => tracing::error!("action {}: its task failed", spec.label()),
    }
    // the next run of this action may be due already
    inner.wake.notify_one();
}

/// Join whole paths with newlines, stopping before `max_bytes`. Returns the text and how many
/// paths were left out.
fn join_paths(paths: &[String], max_bytes: usize) -> (String, usize) {
    let mut s = String::new();
    for (n, p) in paths.iter().enumerate() {
        let extra = p.len() + usize::from(!s.is_empty());
        if s.len() + extra > max_bytes {
            return (s, paths.len() - n);
        }
        if !s.is_empty() {
            s.push('\n');
        }
        s.push_str(p);
    }
    (s, 0)
}

/// The whole list, one path per line, in a new private file in `dir`.
async fn write_list(dir: &Path, paths: &[String]) -> std::io::Result<tempfile::NamedTempFile> {
    let f = tempfile::Builder::new()
        .prefix("clustersync-action-")
        .suffix(".paths")
        .tempfile_in(dir)?;
    let mut w = tokio::io::BufWriter::new(tokio::fs::File::from_std(f.reopen()?));
    for p in paths {
        w.write_all(p.as_bytes()).await?;
        w.write_all(b"\n").await?;
    }
    w.flush().await?;
    Ok(f)
}

/// Where a run's output goes.
struct OutputSink {
    label: String,
    logged: usize,
    max_log_lines: usize,
    file: Option<(PathBuf, tokio::fs::File)>,
}

impl OutputSink {
    async fn open(spec: &ActionSpec, max_log_lines: usize) -> OutputSink {
        let file = match &spec.logfile {
            None => None,
            Some(p) => match open_logfile(p).await {
                Ok(f) => Some((p.clone(), f)),
                Err(e) => {
                    tracing::warn!(
                        "action {}: cannot open log file {}: {e}",
                        spec.label(),
                        p.display()
                    );
                    None
                }
            },
        };
        OutputSink {
            label: spec.label(),
            logged: 0,
            max_log_lines,
            file,
        }
    }

    async fn append(&mut self, text: &str) {
        if let Some((p, f)) = &mut self.file
            && let Err(e) = f.write_all(text.as_bytes()).await
        {
            tracing::warn!(
                "action {}: writing log file {}: {e}",
                self.label,
                p.display()
            );
            self.file = None;
        }
    }

    async fn line(&mut self, stderr: bool, line: &str) {
        if self.logged < self.max_log_lines {
            if stderr {
                tracing::warn!(target: "clustersync::action", "{}: {line}", self.label);
            } else {
                tracing::info!(target: "clustersync::action", "{}: {line}", self.label);
            }
        } else if self.logged == self.max_log_lines {
            tracing::warn!(
                "action {}: more output not logged here{}",
                self.label,
                if self.file.is_some() {
                    " (see its log file)"
                } else {
                    ""
                }
            );
        }
        self.logged += 1;
        self.append(&format!("{line}\n")).await;
    }

    async fn close(mut self) {
        if let Some((_, f)) = &mut self.file {
            let _ = f.flush().await;
        }
    }
}

async fn open_logfile(p: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(p)
        .await
}

/// Reads lines of at most [`MAX_LINE`] bytes; cancel-safe (partial lines stay in `buf`).
struct Lines<R> {
    r: R,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    fn new(r: R) -> Lines<R> {
        Lines {
            r,
            buf: Vec::new(),
            done: false,
        }
    }

    fn take(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.buf).into_owned();
        self.buf.clear();
        s
    }

    /// The next line, or `None` at the end (or on a read error).
    async fn next(&mut self) -> Option<String> {
        loop {
            let avail = match self.r.fill_buf().await {
                Ok(b) => b,
                Err(_) => &[],
            };
            if avail.is_empty() {
                self.done = true;
                return (!self.buf.is_empty()).then(|| self.take());
            }
            let room = MAX_LINE - self.buf.len();
            if let Some(pos) = avail.iter().take(room).position(|&b| b == b'\n') {
                self.buf.extend_from_slice(&avail[..pos]);
                self.r.consume(pos + 1);
                return Some(self.take());
            }
            let n = avail.len().min(room);
            self.buf.extend_from_slice(&avail[..n]);
            self.r.consume(n);
            if self.buf.len() >= MAX_LINE {
                return Some(self.take());
            }
        }
    }
}

/// Run one action with `batch`, to the end.
async fn execute(inner: &Inner, i: usize, batch: Batch) -> ActionResult {
    let spec = &inner.actions[i].spec;
    let opts = &inner.opts;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let total = batch.paths.len() + batch.dropped;
    let (env_paths, omitted) = join_paths(&batch.paths, ENV_PATHS_MAX_BYTES);
    let root = opts.root.to_string_lossy();
    let prefix = root.trim_end_matches('/');
    let real: Vec<String> = batch.paths.iter().map(|p| format!("{prefix}{p}")).collect();
    let (env_real, _) = join_paths(&real, ENV_PATHS_MAX_BYTES);
    // removed when dropped, at the end of the run
    let list_file = if omitted > 0 {
        match write_list(&opts.tmp_dir, &batch.paths).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    "action {}: cannot write the list of paths in {}: {e}",
                    spec.label(),
                    opts.tmp_dir.display()
                );
                None
            }
        }
    } else {
        None
    };
    let truncated = batch.dropped > 0 || (omitted > 0 && list_file.is_none());
    if truncated {
        tracing::warn!(
            "action {}: {total} changed paths, only {} of them given to it",
            spec.label(),
            if list_file.is_some() {
                batch.paths.len()
            } else {
                batch.paths.len() - omitted
            }
        );
    }
    let mut sink = OutputSink::open(spec, opts.max_log_lines).await;
    sink.append(&format!(
        "# {} clustersync action {} `{}`: {total} paths{}\n",
        humantime::format_rfc3339_seconds(started),
        spec.label(),
        spec.run,
        if truncated { " (list truncated)" } else { "" }
    ))
    .await;
    let result = |outcome: Outcome| ActionResult {
        group: spec.group.clone(),
        index: spec.index,
        started,
        duration: t0.elapsed(),
        paths: total,
        truncated,
        outcome,
    };

    let mut cmd = tokio::process::Command::new(&opts.shell);
    cmd.arg("-c")
        .arg(&spec.run)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("CLUSTERSYNC_PATHS", &env_paths)
        .env("CLUSTERSYNC_ROOT", &opts.root)
        .env("CLUSTERSYNC_REAL_PATHS", &env_real)
        .env("CLUSTERSYNC_PATHS_COUNT", total.to_string())
        .env("CLUSTERSYNC_NODE", &opts.node)
        .env("CLUSTERSYNC_GROUP", &spec.group)
        .kill_on_drop(true);
    if omitted > 0 || batch.dropped > 0 {
        cmd.env("CLUSTERSYNC_PATHS_TRUNCATED", "1");
    } else {
        cmd.env_remove("CLUSTERSYNC_PATHS_TRUNCATED");
    }
    match &list_file {
        Some(f) => cmd.env("CLUSTERSYNC_PATHS_FILE", f.path()),
        None => cmd.env_remove("CLUSTERSYNC_PATHS_FILE"),
    };
    for v in SERVICE_ENV {
        cmd.env_remove(v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let r = result(Outcome::SpawnFailed {
                error: format!("{}: {e}", opts.shell.display()),
            });
            sink.append(&format!("# {}\n", r.outcome)).await;
            sink.close().await;
            return r;
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut out = child.stdout.take().map(|o| Lines::new(BufReader::new(o)));
    let mut err = child.stderr.take().map(|e| Lines::new(BufReader::new(e)));
    let deadline = t0 + spec.timeout;

    let mut timed_out = None;
    let status = loop {
        tokio::select! {
            l = next_line(&mut out) => if let Some(l) = l { sink.line(false, &l).await },
            l = next_line(&mut err) => if let Some(l) = l { sink.line(true, &l).await },
            st = child.wait() => break st.map_err(|e| e.to_string()),
            _ = tokio::time::sleep_until(deadline) => {
                let (st, killed) = stop_group(&mut child, pgid, opts.kill_grace).await;
                timed_out = Some(killed);
                break st.ok_or_else(|| "the shell could not be reaped".to_owned());
            }
        }
    };
    // What the shell wrote before it ended; a background child holding the pipe open is not
    // waited for longer than `output_drain`.
    let drain_until = Instant::now() + opts.output_drain;
    while is_open(&out) || is_open(&err) {
        tokio::select! {
            l = next_line(&mut out) => if let Some(l) = l { sink.line(false, &l).await },
            l = next_line(&mut err) => if let Some(l) = l { sink.line(true, &l).await },
            _ = tokio::time::sleep_until(drain_until) => break,
        }
    }
    let outcome = match (timed_out, status) {
        (Some(killed), _) => Outcome::TimedOut { killed },
        (None, Ok(st)) => outcome_of(st),
        (None, Err(error)) => Outcome::WaitFailed { error },
    };
    let r = result(outcome);
    sink.append(&format!(
        "# {} after {:.1}s\n",
        r.outcome,
        r.duration.as_secs_f64()
    ))
    .await;
    sink.close().await;
    r
}

fn is_open<R>(l: &Option<Lines<R>>) -> bool {
    l.as_ref().is_some_and(|r| !r.done)
}

/// The next line of an optional stream; pending forever once it ended (so `select!` skips it).
async fn next_line<R: AsyncBufRead + Unpin>(l: &mut Option<Lines<R>>) -> Option<String> {
    match l {
        Some(r) if !r.done => r.next().await,
        _ => std::future::pending().await,
    }
}

fn outcome_of(st: ExitStatus) -> Outcome {
    match (st.code(), st.signal()) {
        (Some(code), _) => Outcome::Exited { code },
        (None, Some(signal)) => Outcome::Signaled { signal },
        (None, None) => Outcome::WaitFailed {
            error: format!("unknown status {st}"),
        },
    }
}

/// SIGTERM to the process group; SIGKILL to whatever of it is left after `grace`. Returns the
/// shell's status (when it could be reaped) and whether SIGKILL was needed. Bounded by `grace`
/// plus a few seconds.
async fn stop_group(
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    grace: Duration,
) -> (Option<ExitStatus>, bool) {
    let group = pgid.map(Pid::from_raw);
    if let Some(g) = group {
        let _ = killpg(g, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    let mut status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    // The shell is gone; wait for the rest of its group (a child that ignores SIGTERM).
    let mut gone = group.is_none();
    while !gone && Instant::now() < deadline {
        gone = status.is_some() && group.is_some_and(|g| killpg(g, None).is_err());
        if !gone {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut killed = false;
    if !gone
        && let Some(g) = group
        && killpg(g, Signal::SIGKILL).is_ok()
    {
        killed = true;
    }
    if status.is_none() {
        status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .ok()
            .and_then(Result::ok);
    }
    (status, killed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Poll `cond` every 10 ms; panic after `limit`.
    async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn opts() -> RunnerOptions {
        RunnerOptions {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            kill_grace: Duration::from_millis(300),
            output_drain: Duration::from_millis(200),
            ..RunnerOptions::new("web1")
        }
    }

    struct Fixture {
        runner: ActionRunner,
        task: JoinHandle<()>,
        stop: watch::Sender<bool>,
        results: Arc<Mutex<Vec<ActionResult>>>,
    }

    impl Fixture {
        fn new(specs: Vec<ActionSpec>, o: RunnerOptions) -> Fixture {
            let results = Arc::new(Mutex::new(Vec::new()));
            let r2 = results.clone();
            let hook: ResultHook = Arc::new(move |r| r2.lock().unwrap().push(r.clone()));
            let (stop, rx) = watch::channel(false);
            let (runner, task) = ActionRunner::start(specs, o, hook, rx).unwrap();
            Fixture {
                runner,
                task,
                stop,
                results,
            }
        }

        fn runs(&self, i: usize) -> u64 {
            self.runner.status()[i].runs
        }

        fn results(&self) -> Vec<ActionResult> {
            self.results.lock().unwrap().clone()
        }

        async fn wait_runs(&self, i: usize, n: u64) {
            wait_for(Duration::from_secs(10), "action runs", || {
                let s = &self.runner.status()[i];
                s.runs >= n && !s.running
            })
            .await;
        }

        async fn shutdown(self) {
            let _ = self.stop.send(true);
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("runner stops")
                .unwrap();
        }
    }

    fn spec(pats: &[&str], run: &str) -> ActionSpec {
        ActionSpec::new("www", 0, pats.iter().map(|s| s.to_string()).collect(), run)
    }

    fn q(p: &Path) -> String {
        format!("'{}'", p.display())
    }

    #[test]
    fn pattern_semantics() {
        let m = |pats: &[&str], p: &str| matches(&compile(&spec(pats, "true")).unwrap(), p);
        assert!(m(&["/etc/nginx/**"], "/etc/nginx/sites/a.conf"));
        assert!(m(&["/etc/nginx/**"], "/etc/nginx/nginx.conf"));
        assert!(!m(&["/etc/nginx/**"], "/etc/nginx2/x"));
        assert!(!m(&["/etc/nginx/**"], "/var/etc/nginx/x"));
        assert!(m(&["*.conf"], "/etc/a/b/c.conf"));
        assert!(!m(&["*.conf"], "/etc/a/b/c.confx"));
        assert!(m(&["/etc/hosts"], "/etc/hosts"));
        assert!(!m(&["/etc/hosts"], "/etc/hosts.allow"));
        assert!(m(&["/etc/nginx"], "/etc/nginx/conf.d/x.conf"));
        assert!(m(&["etc/nginx/*.conf"], "/etc/nginx/a.conf"));
        assert!(!m(&["etc/nginx/*.conf"], "/srv/etc/nginx/a.conf"));
        assert!(m(&["/srv/www/"], "/srv/www/index.html"));
        assert!(m(&["*.conf", "!/etc/skip.conf"], "/etc/a.conf"));
        assert!(!m(&["*.conf", "!/etc/skip.conf"], "/etc/skip.conf"));
        assert!(!m(&["*"], "/"));
        assert!(m(&["/etc/x"], "//etc/x"));
    }

    #[tokio::test]
    async fn bad_pattern_is_refused_with_its_action() {
        let e = compile(&spec(&["/etc/["], "true")).unwrap_err();
        assert!(e.to_string().contains("www[0]"), "{e}");
        assert!(e.to_string().contains("/etc/["), "{e}");
        assert!(compile(&spec(&["#x"], "true")).is_err());
        let (_stop, rx) = watch::channel(false);
        let hook: ResultHook = Arc::new(|_| {});
        let bad = vec![spec(&["/ok/**"], "true"), spec(&["/etc/["], "true")];
        assert!(ActionRunner::start(bad, opts(), hook, rx).is_err());
    }

    #[test]
    fn join_paths_stops_at_whole_paths() {
        let p: Vec<String> = ["/a", "/bb", "/ccc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(join_paths(&p, 100), ("/a\n/bb\n/ccc".into(), 0));
        assert_eq!(join_paths(&p, 7), ("/a\n/bb".into(), 1));
        assert_eq!(join_paths(&p, 1), (String::new(), 3));
    }

    #[tokio::test]
    async fn many_notifies_coalesce_into_one_run_with_all_paths() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("paths");
        let runs = dir.path().join("runs");
        let run = format!(
            "printf '%s\\n' \"$CLUSTERSYNC_PATHS\" >> {}; echo run >> {}",
            q(&out),
            q(&runs)
        );
        let o = RunnerOptions {
            quiet: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
            ..opts()
        };
        let f = Fixture::new(vec![spec(&["/srv/www/**"], &run)], o);
        // 100 batches of 10 paths, each path sent twice, plus unrelated paths
        for b in 0..100 {
            let batch: Vec<String> = (0..10).map(|i| format!("/srv/www/f{b}-{i}")).collect();
            f.runner.notify("www", &batch, false);
            f.runner.notify("www", &batch, false);
            f.runner.notify("www", ["/etc/other"], false);
        }
        f.wait_runs(0, 1).await;
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
        let got: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        let mut want: Vec<String> = (0..100)
            .flat_map(|b| (0..10).map(move |i| format!("/srv/www/f{b}-{i}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "sorted, de-duplicated, only matching paths");
        let r = f.results();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].paths, 1000);
        assert!(r[0].success() && !r[0].truncated);
        f.shutdown().await;
    }

    #[tokio::test]
    async fn twenty_thousand_files_run_once_with_the_list_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let run = format!(
            "{{ echo \"$CLUSTERSYNC_PATHS_COUNT $CLUSTERSYNC_PATHS_TRUNCATED\"; printf '%s\\n' \"$CLUSTERSYNC_PATHS\" | wc -l; cat \"$CLUSTERSYNC_PATHS_FILE\"; }} > {}",
            q(&out)
        );
        let o = RunnerOptions {
            quiet: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
            tmp_dir: tmp.clone(),
            ..opts()
        };
        let f = Fixture::new(vec![spec(&["/srv/www/**"], &run)], o);
        // an initial sync: 200 batches of 100 files
        for b in 0..200 {
            let batch: Vec<String> = (0..100)
                .map(|i| format!("/srv/www/site/d{b:03}/file{i:03}.html"))
                .collect();
            f.runner.notify("www", &batch, false);
        }
        f.wait_runs(0, 1).await;
        let text = std::fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("20000 1"));
        let in_env: usize = lines.next().unwrap().trim().parse().unwrap();
        assert!(
            (1000..20000).contains(&in_env),
            "{in_env} paths in the variable"
        );
        let listed: Vec<&str> = lines.collect();
        assert_eq!(listed.len(), 20000);
        assert!(
            listed.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        let r = f.results().remove(0);
        assert!(r.success() && !r.truncated && r.paths == 20000, "{r:?}");
        assert_eq!(f.runs(0), 1);
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "list file removed"
        );
        f.shutdown().await;
    }

    #[tokio::test]
    async fn a_steady_stream_still_runs_by_max_delay() {
        let f = Fixture::new(vec![spec(&["/x/**"], "true")], opts());
        // quiet 50 ms never elapses: a notify every 10 ms for 1.5 s; max_delay is 500 ms
        let end = Instant::now() + Duration::from_millis(1500);
        let mut n = 0;
        while Instant::now() < end {
            f.runner.notify("www", [format!("/x/{n}")], false);
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(f.runs(0) >= 1, "a run happened during the stream");
        wait_for(Duration::from_secs(10), "all paths run", || {
            let s = &f.runner.status()[0];
            s.pending == 0 && !s.running
        })
        .await;
        let total: usize = f.results().iter().map(|r| r.paths).sum();
        assert_eq!(total, n, "every path was passed to exactly one run");
        f.shutdown().await;
    }

    #[tokio::test]
    async fn one_run_at_a_time_and_the_next_takes_all_that_came_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let gate = dir.path().join("gate");
        // the first run waits (bounded) until the test opens the gate
        let run = format!(
            "echo \"start $CLUSTERSYNC_PATHS\" >> {log}; i=0; while [ ! -e {gate} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done; echo end >> {log}",
            log = q(&log),
            gate = q(&gate)
        );
        let f = Fixture::new(vec![spec(&["/x/**"], &run)], opts());
        f.runner.notify("www", ["/x/a"], false);
        wait_for(Duration::from_secs(10), "first run started", || {
            f.runner.status()[0].running
        })
        .await;
        f.runner.notify("www", ["/x/b"], false);
        f.runner.notify("www", ["/x/c"], false);
        // due, but waits for the running instance
        tokio::time::sleep(Duration::from_millis(150)).await;
        let st = &f.runner.status()[0];
        assert!(st.running && st.runs == 0 && st.pending == 2);
        std::fs::write(&gate, "").unwrap();
        f.wait_runs(0, 2).await;
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "start /x/a\nend\nstart /x/b\n/x/c\nend\n");
        f.shutdown().await;
    }

    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // a zombie is dead; its parent (maybe not reaping) keeps the entry
            Ok(s) => !s
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidf = dir.path().join("child");
        // the shell and its child both ignore SIGTERM
        let run = format!(
            "trap '' TERM; sleep 30 & echo $! > {}; wait; wait",
            q(&pidf)
        );
        let mut s = spec(&["/x/**"], &run);
        s.timeout = Duration::from_millis(300);
        let f = Fixture::new(vec![s], opts());
        let t0 = Instant::now();
        f.runner.notify("www", ["/x/a"], false);
        f.wait_runs(0, 1).await;
        let r = f.results().remove(0);
        assert_eq!(r.outcome, Outcome::TimedOut { killed: true });
        assert!(t0.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pidf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_for(Duration::from_secs(5), "child killed", || !alive(pid)).await;
        assert_eq!(f.runner.status()[0].failures, 1);
        f.shutdown().await;
    }

    #[tokio::test]
    async fn timeout_stops_a_well_behaved_command_with_sigterm() {
        let mut s = spec(&["/x/**"], "sleep 30");
        s.timeout = Duration::from_millis(200);
        let o = RunnerOptions {
            kill_grace: Duration::from_secs(5),
            ..opts()
        };
        let f = Fixture::new(vec![s], o);
        f.runner.notify("www", ["/x/a"], false);
        f.wait_runs(0, 1).await;
        let r = f.results().remove(0);
        assert_eq!(r.outcome, Outcome::TimedOut { killed: false });
        assert!(r.duration < Duration::from_secs(4), "{:?}", r.duration);
        f.shutdown().await;
    }

    #[tokio::test]
    async fn environment_is_set() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let run = format!(
            "printf '%s|%s|%s|%s|%s|%s' \"$CLUSTERSYNC_NODE\" \"$CLUSTERSYNC_GROUP\" \"$CLUSTERSYNC_PATHS\" \"$CLUSTERSYNC_PATHS_COUNT\" \"${{CLUSTERSYNC_PATHS_TRUNCATED-unset}}\" \"$(pwd)\" > {}",
            q(&out)
        );
        let f = Fixture::new(vec![spec(&["/x/**"], &run)], opts());
        f.runner
            .notify("www", ["/x/b", "/x/a", "/x/b", "/x/c d"], false);
        f.wait_runs(0, 1).await;
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "web1|www|/x/a\n/x/b\n/x/c d|3|unset|/"
        );
        f.shutdown().await;
    }

    /// Issue 22 item 10: on a node with a root prefix, the action learns the root and gets the
    /// paths where they are on this machine too.
    #[tokio::test]
    async fn a_node_with_a_root_gives_its_actions_the_root_and_the_real_paths() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let run = format!(
            "printf '%s|%s|%s' \"$CLUSTERSYNC_ROOT\" \"$CLUSTERSYNC_PATHS\" \"$CLUSTERSYNC_REAL_PATHS\" > {}",
            q(&out)
        );
        for (root, want) in [
            (
                "/srv/node1/",
                "/srv/node1/|/x/a\n/x/b|/srv/node1/x/a\n/srv/node1/x/b",
            ),
            ("/", "/|/x/a\n/x/b|/x/a\n/x/b"),
        ] {
            let o = RunnerOptions {
                root: PathBuf::from(root),
                ..opts()
            };
            let f = Fixture::new(vec![spec(&["/x/**"], &run)], o);
            f.runner.notify("www", ["/x/b", "/x/a"], false);
            f.wait_runs(0, 1).await;
            assert_eq!(std::fs::read_to_string(&out).unwrap(), want);
            f.shutdown().await;
        }
    }

    #[tokio::test]
    async fn over_the_cap_the_list_is_truncated_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let run = format!(
            "printf '%s\\n' \"$CLUSTERSYNC_PATHS\" | wc -l > {o}; echo \"$CLUSTERSYNC_PATHS_COUNT $CLUSTERSYNC_PATHS_TRUNCATED\" >> {o}",
            o = q(&out)
        );
        let o = RunnerOptions {
            max_paths: 10,
            ..opts()
        };
        let f = Fixture::new(vec![spec(&["/x/**"], &run)], o);
        let paths: Vec<String> = (0..25).map(|i| format!("/x/{i:02}")).collect();
        f.runner.notify("www", &paths, false);
        assert_eq!(f.runner.status()[0].pending, 25);
        f.wait_runs(0, 1).await;
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines, ["10", "25 1"]);
        let r = f.results().remove(0);
        assert!(r.truncated && r.paths == 25 && r.success());
        f.shutdown().await;
    }

    #[tokio::test]
    async fn output_goes_to_the_logfile_and_failures_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let logfile = dir.path().join("action.log");
        let mut s = spec(&["/x/**"], "echo hello; echo oops >&2; exit 3");
        s.logfile = Some(logfile.clone());
        let f = Fixture::new(vec![s], opts());
        f.runner.notify("www", ["/x/a"], false);
        f.wait_runs(0, 1).await;
        let r = f.results().remove(0);
        assert_eq!(r.outcome, Outcome::Exited { code: 3 });
        assert!(!r.success());
        let st = &f.runner.status()[0];
        assert_eq!((st.runs, st.failures), (1, 1));
        assert_eq!(st.last.as_ref(), Some(&r));
        let text = std::fs::read_to_string(&logfile).unwrap();
        assert!(text.contains("\nhello\n"), "{text}");
        assert!(text.contains("\noops\n"), "{text}");
        assert!(text.contains("exit status 3"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&logfile).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"]["kind"], "exited");
        assert_eq!(json["outcome"]["code"], 3);
        assert!(json["duration_ms"].is_u64());
        f.shutdown().await;
    }

    #[tokio::test]
    async fn non_matching_paths_and_other_groups_queue_nothing() {
        let f = Fixture::new(vec![spec(&["/etc/nginx/**"], "true")], opts());
        f.runner.notify("www", ["/etc/nginx2/a", "/srv/x"], false);
        f.runner.notify("other", ["/etc/nginx/a"], false);
        // matching happens inside notify: nothing is pending, so nothing can run
        assert_eq!(f.runner.status()[0].pending, 0);
        f.runner.notify("www", ["/etc/nginx/a"], false);
        assert_eq!(f.runner.status()[0].pending, 1);
        f.wait_runs(0, 1).await;
        assert_eq!(f.results()[0].paths, 1);
        f.shutdown().await;
    }

    #[tokio::test]
    async fn local_changes_run_only_local_actions() {
        let mut local = spec(&["/x/**"], "true");
        local.index = 1;
        local.local = true;
        let f = Fixture::new(vec![spec(&["/x/**"], "true"), local], opts());
        f.runner.notify("www", ["/x/a"], true);
        let st = f.runner.status();
        assert_eq!((st[0].pending, st[1].pending), (0, 1));
        f.wait_runs(1, 1).await;
        f.runner.notify("www", ["/x/b"], false);
        let st = f.runner.status();
        assert_eq!((st[0].pending, st[1].pending), (1, 1));
        f.wait_runs(0, 1).await;
        f.wait_runs(1, 2).await;
        f.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_shell_is_a_failed_run_not_a_crash() {
        let o = RunnerOptions {
            shell: PathBuf::from("/nonexistent/sh"),
            ..opts()
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let (stop, rx) = watch::channel(false);
        let hook: ResultHook = Arc::new(move |_| {
            c2.fetch_add(1, Ordering::SeqCst);
        });
        let (runner, task) =
            ActionRunner::start(vec![spec(&["/x/**"], "true")], o, hook, rx).unwrap();
        runner.notify("www", ["/x/a"], false);
        wait_for(Duration::from_secs(10), "failed run", || {
            runner.status()[0].failures == 1
        })
        .await;
        let last = runner.status()[0].last.clone().unwrap();
        assert!(matches!(last.outcome, Outcome::SpawnFailed { .. }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_running_action_and_skips_pending_ones() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        let run = format!("sleep 0.3; touch {}", q(&done));
        let f = Fixture::new(vec![spec(&["/x/**"], &run)], opts());
        f.runner.notify("www", ["/x/a"], false);
        wait_for(Duration::from_secs(10), "run started", || {
            f.runner.status()[0].running
        })
        .await;
        f.runner.notify("www", ["/x/b"], false);
        let runner = f.runner.clone();
        f.shutdown().await;
        assert!(done.exists(), "the running action finished");
        let st = &runner.status()[0];
        assert_eq!((st.runs, st.pending), (1, 1));
    }
}
