//! The lane core: what a group's lane does next, decided without any I/O.
//!
//! The core takes an [`Event`] (local paths changed, a peer's batch, time passing, or the
//! result of something the executor did) and returns [`Effect`]s (scan these paths, check
//! these items, read the index for these keys, apply these steps, commit this, acknowledge,
//! close a link so its peer sends again). The executor (`lane::exec`) owns the store, the
//! filesystem and the links, carries the effects out one after the other, and reports each
//! result back as an event. Time comes in as an argument, so the core is tested with an
//! injected clock and recorded events, without daemons or sleeps.
//!
//! A peer's batch goes through `Check` → `Observe` (the index, after the disk is reconciled
//! for its keys) → plan (pure, [`super::plan`]) → `Apply` → `Commit` → `Ack`.
//!
//! Invariants (SPEC §5.13):
//! - **An [`Effect::Ack`] is only ever emitted on [`Event::Committed`] `Ok` of a commit that
//!   carried that batch's peer position**, and a commit carries the position only when every
//!   item of the batch was applied or set aside (saved in the index to be retried).
//! - A stopped group, a dry run, a batch whose check refused it, whose index read, plan or
//!   commit failed, or one with an item whose outcome is unknown (its worker panicked) is never
//!   acknowledged: the batch is dropped, later batches from the same link too, and the link is
//!   closed (after a growing delay for failures, at once when a stopped group resumes) so the
//!   peer reconnects and sends everything from the last saved position again.
//! - One batch is in flight at a time; batches from one link are handled in the order they
//!   arrived, and a batch from a link older than the newest one of that peer is dropped.

use super::domain::Checked;
use super::plan::{AuditLine, Incoming, Observed, Plan, PlanCtx, Planner, Step};
use crate::item::{Entry, Item};
use crate::net::protocol::WireItem;
use crate::store::{Aside, Change, ConflictInfo, Extras};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A batch being processed is known by this number.
pub type BatchId = u64;

/// The time an event is handled at: the monotonic clock for timers, the wall clock for the
/// records the index keeps (conflicts, set-aside items). Injected, so tests set it.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    /// Seconds since the Unix epoch.
    pub unix: i64,
}

impl Now {
    /// The real clock.
    pub fn real() -> Now {
        Now {
            at: Instant::now(),
            unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        }
    }
}

/// A path that changed while being read is looked at again after this.
pub const UNSTABLE_RETRY: Duration = Duration::from_millis(300);
/// Entries found gone by a scan that was not about a deletion (a directory's change event, a
/// `mark`) are looked at again after this before they are recorded as deleted, so the
/// mass-deletion guard sees an `rm -rf` whole.
pub const DELETE_SETTLE: Duration = Duration::from_millis(150);
/// Attempts after which an item counts as set aside for good (it is still retried, slowly).
pub const ASIDE_AFTER: u32 = 10;
/// First delay before a link whose batch could not be saved is closed (so its peer sends
/// again); doubles per failure up to [`RESEND_MAX`].
pub const RESEND_FIRST: Duration = Duration::from_millis(500);
pub const RESEND_MAX: Duration = Duration::from_secs(60);
/// Batches queued from one link at most (the sender keeps at most `MAX_UNACKED` in flight).
pub const MAX_QUEUED_PER_LINK: usize = crate::net::protocol::MAX_UNACKED + 2;

/// Where a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub peer: String,
    /// The link it arrived on (`peer::Links::next_conn`: newer links have larger numbers).
    pub conn: u64,
    /// The peer's incarnation of the group.
    pub inc: u64,
    /// The protocol version of the link.
    pub version: u32,
}

/// The periods and switches of one lane.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Set-aside items are retried this often at most.
    pub aside_every: Duration,
    /// A stopped group is checked again this often.
    pub stopped_every: Duration,
    /// Drift on a replica with `on_drift = revert` is put back this often (`None`: never).
    pub revert_every: Option<Duration>,
    /// The periodic full rescan (`None`: off).
    pub rescan: Option<Duration>,
    /// Tombstones every member acknowledged are collected this often.
    pub collect_every: Duration,
    /// The domain is asked to look for changes on every tick of this period (accounts: the
    /// files' stat), `None`: never.
    pub poll_every: Option<Duration>,
}

/// The lane's configuration as the core needs it.
#[derive(Debug, Clone)]
pub struct Setup {
    pub group: String,
    /// This node's name.
    pub me: String,
    pub conflict: crate::config::ConflictPolicy,
    pub compare_owner: bool,
    pub roots: Vec<String>,
    /// Print what would change instead of changing it; acknowledge nothing.
    pub dry_run: bool,
    /// A replica's first scan adopts what is there without versions.
    pub adopt: bool,
    /// This node only receives in this group.
    pub replica: bool,
    /// Losing versions are kept as backups (files with `backup_generations > 0`), or where the
    /// domain keeps them (accounts: the `-` files): the text `conflicts` shows, `None`: not kept.
    pub kept_as: Option<String>,
    pub timing: Timing,
}

/// What the lane is told.
#[derive(Debug)]
pub enum Event {
    /// Paths changed locally (the watcher, `mark`): (logical path, recursive). `deletes`: they
    /// went through the watcher's deletion window, so what their scan finds gone is recorded at
    /// once; otherwise it is looked at again after [`DELETE_SETTLE`].
    Local {
        paths: Vec<(Vec<u8>, bool)>,
        deletes: bool,
    },
    /// Scan every path of the group now.
    Rescan,
    /// A peer's batch of items up to its seq `through`.
    Remote {
        source: Source,
        items: Vec<WireItem>,
        through: u64,
    },
    /// Items a comparison of index summaries with a peer found different (`engine::verify`,
    /// SPEC §5.14): that peer's entries (checked by the comparison), from (the peer, its
    /// incarnation of the group). They are decided, applied and committed like a batch of
    /// that peer, but with no position: nothing is acknowledged for them.
    Found {
        from: (String, u64),
        items: Vec<WireItem>,
    },
    /// Time passed: timers due at or before `now` fire.
    Tick,
    /// Results of effects:
    /// a scan finished.
    Scanned(ScanReport),
    /// The set-aside items due for a retry, loaded by [`Effect::LoadAside`].
    AsideLoaded(Vec<Incoming>),
    /// A batch's items were checked.
    Checked {
        id: BatchId,
        items: Vec<WireItem>,
        result: Checked,
    },
    /// The index was read for a batch's keys after the disk was reconciled (one per item).
    Observed {
        id: BatchId,
        result: Result<Vec<Observed>, super::domain::ObserveError>,
    },
    /// The domain carried out a batch's steps.
    Applied {
        id: BatchId,
        applied: super::domain::Applied,
    },
    /// A commit is saved (`Ok`) or failed.
    Committed {
        id: BatchId,
        result: Result<Saved, String>,
    },
}

/// What a saved commit left behind.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    pub head: u64,
    /// Items set aside in the group now.
    pub aside: u64,
}

/// What a scan reports.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// The group is stopped, and why (`None`: it runs).
    pub stopped: Option<String>,
    /// Paths that changed while being read.
    pub unstable: Vec<Vec<u8>>,
    /// Entries found gone by a scan that was not about a deletion: not recorded yet.
    pub deferred: Vec<Vec<u8>>,
    /// The scan could not run at all (an I/O or index error): nothing changes.
    pub failed: bool,
}

/// How carrying out one step went.
#[derive(Debug)]
pub enum Outcome {
    /// Applied; the entry as it is on disk now.
    Done(Box<Entry>),
    /// Not applied: this node keeps its own version, recorded and announced as this entry (a
    /// new version of ours; the domain audited why).
    Kept(Box<Entry>),
    /// Applied in part: recorded as this entry, and set aside to be applied again for the rest
    /// (an account group whose members are not all users here yet).
    Partial(Box<Entry>, Failure),
    /// Not applied: set aside and retried.
    Failed(Failure),
    /// Nobody knows (the worker panicked): the batch's position must not be saved.
    Unknown(String),
}

/// Why a step was not applied.
#[derive(Debug, Default)]
pub struct Failure {
    pub error: String,
    /// Someone changed the path meanwhile: scan it as a local change first.
    pub rescan: bool,
    /// A problem for `status` that does not stop the group.
    pub warning: Option<String>,
    /// Audit this kind on the first failure (`None`: only after [`ASIDE_AFTER`] attempts).
    pub audit_first: Option<&'static str>,
    /// A conflict record to store with it (an account that collides with a local one).
    pub conflict: Option<ConflictInfo>,
}

/// What one commit of applied items carries.
#[derive(Debug, Default)]
pub struct Commit {
    pub changes: Vec<Change>,
    pub extras: Extras,
    /// Directories whose entries changed (their mtimes are put back before the commit).
    pub touched: BTreeSet<Vec<u8>>,
    /// Keys applied (for actions) and bytes of content written.
    pub applied: Vec<Vec<u8>>,
    pub bytes: u64,
    /// The peer the batch came from and its `through` (for the latency metric).
    pub from: Option<(String, u64)>,
}

/// What the executor does.
#[derive(Debug)]
pub enum Effect {
    /// Scan `targets` and commit what changed; the whole group when `whole`. `deletes_ok`:
    /// entries found gone are recorded at once; `was_stopped`: the group is stopped and this
    /// is the check whether it can run again. Answered by [`Event::Scanned`].
    Scan {
        targets: Vec<(Vec<u8>, bool)>,
        whole: bool,
        deletes_ok: bool,
        was_stopped: bool,
        adopt: bool,
    },
    /// Load set-aside items due for a retry (→ [`Event::AsideLoaded`]).
    LoadAside,
    /// Check a batch's items (→ [`Event::Checked`]).
    Check {
        id: BatchId,
        items: Vec<WireItem>,
        source: Source,
    },
    /// Refuse a peer's batch: audit why and close its link.
    Refuse {
        source: Source,
        key: Vec<u8>,
        reason: String,
    },
    /// Read the index for these keys, reconciling the disk first unless `dry`
    /// (→ [`Event::Observed`]).
    Observe {
        id: BatchId,
        keys: Vec<Vec<u8>>,
        dry: bool,
    },
    /// Carry out these steps (→ [`Event::Applied`]).
    Apply {
        id: BatchId,
        steps: Vec<Step>,
        /// The peer to fetch content from first.
        prefer: Option<String>,
    },
    /// Commit (→ [`Event::Committed`]).
    Commit { id: BatchId, commit: Box<Commit> },
    /// Tell the peer its items up to `through` are applied and saved.
    Ack { source: Source, through: u64 },
    /// Close the link so that its peer sends again from the last saved position.
    Resend { source: Source, why: String },
    /// A new head to announce.
    Publish(u64),
    /// Audit lines.
    Audit(Vec<Audited>),
    /// A dry run: what these items would do (`receive`/`delete`/`conflict`, key, peer).
    DryRun(Vec<(&'static str, Vec<u8>, String)>),
    /// Put the group's version back over drift (replicas, `on_drift = revert`).
    Revert,
    /// Collect tombstones every member acknowledged; enforce the backup bound.
    Collect,
    /// Ask the domain whether something changed that no event reported (accounts: the files'
    /// stat), scanning if so.
    Poll,
    /// The group's warning for `status` changed (`None`: cleared).
    Warn(Option<String>),
    /// The group stopped (`Some`) or runs again (`None`).
    Stopped(Option<String>),
}

/// One audit line: (kind, item, peer, detail).
pub type Audited = (&'static str, Item, Option<String>, Option<String>);

/// A batch waiting or in flight.
#[derive(Debug)]
struct Job {
    id: BatchId,
    /// `None`: set-aside items retried, or items a comparison found (no peer position).
    source: Option<Source>,
    through: u64,
    /// Items a comparison found ([`Event::Found`]), not set-aside retries.
    compared: bool,
}

#[derive(Debug)]
enum Stage {
    Checking,
    Observing(Vec<Incoming>),
    Applying(Box<Plan>),
    Committing { acks: bool },
}

#[derive(Debug)]
struct InFlight {
    job: Job,
    stage: Stage,
}

/// A queued batch.
#[derive(Debug)]
struct Queued {
    job: Job,
    items: Vec<Incoming>,
}

/// The lane's state: plain data (and the domain's pure planner).
#[derive(Debug)]
pub struct Core {
    setup: Setup,
    planner: std::sync::Arc<dyn Planner>,
    stopped: Option<String>,
    next_id: BatchId,
    queue: VecDeque<Queued>,
    inflight: Option<InFlight>,
    /// Per peer, the newest link seen.
    newest_conn: HashMap<String, u64>,
    /// Per peer, batches that could not be saved: (failures so far, when its link is closed,
    /// the link). Batches of that link are dropped meanwhile.
    failing: HashMap<String, (u32, Instant, Source)>,
    /// Paths to look at again, and when.
    unstable: Vec<(Instant, Vec<u8>)>,
    deferred: Vec<(Instant, Vec<u8>)>,
    aside: u64,
    aside_due: Instant,
    aside_loading: bool,
    stopped_check: Instant,
    revert_due: Instant,
    last_rescan: Instant,
    last_collect: Instant,
    next_poll: Instant,
    warning: Option<String>,
    /// Since when batches are known and not applied (for `/health`).
    behind_since: Option<Instant>,
}

impl Core {
    /// A lane that starts now with `aside` items set aside in its index.
    pub fn new(
        setup: Setup,
        planner: std::sync::Arc<dyn Planner>,
        aside: u64,
        now: Instant,
    ) -> Core {
        Core {
            setup,
            planner,
            stopped: None,
            next_id: 1,
            queue: VecDeque::new(),
            inflight: None,
            newest_conn: HashMap::new(),
            failing: HashMap::new(),
            unstable: Vec::new(),
            deferred: Vec::new(),
            aside,
            aside_due: now,
            aside_loading: false,
            stopped_check: now,
            revert_due: now,
            last_rescan: now,
            last_collect: now,
            next_poll: now,
            warning: None,
            behind_since: None,
        }
    }

    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Batches waiting or in flight.
    pub fn queued(&self) -> usize {
        self.queue.len() + usize::from(self.inflight.is_some())
    }

    pub fn behind_since(&self) -> Option<Instant> {
        self.behind_since
    }

    pub fn aside(&self) -> u64 {
        self.aside
    }

    /// The number the next batch will get (markers wait for those before it).
    pub fn next_batch_id(&self) -> BatchId {
        self.next_id
    }

    /// Is a batch numbered below `id` still queued or in flight?
    pub fn pending_before(&self, id: BatchId) -> bool {
        self.inflight.as_ref().is_some_and(|f| f.job.id < id)
            || self.queue.iter().any(|q| q.job.id < id)
    }

    /// Nothing in flight and nothing queued.
    pub fn idle(&self) -> bool {
        self.inflight.is_none() && self.queue.is_empty()
    }

    /// When the next timer is due (`on(Event::Tick)` then).
    pub fn next_wake(&self) -> Instant {
        let far = self.last_collect + self.setup.timing.collect_every;
        let mut t = far;
        for (d, _) in self.unstable.iter().chain(&self.deferred) {
            t = t.min(*d);
        }
        for (_, at, _) in self.failing.values() {
            t = t.min(*at);
        }
        let tm = &self.setup.timing;
        if self.stopped.is_some() {
            return t.min(self.stopped_check);
        }
        if self.aside > 0 {
            t = t.min(self.aside_due);
        }
        if tm.revert_every.is_some() {
            t = t.min(self.revert_due);
        }
        if let Some(r) = tm.rescan {
            t = t.min(self.last_rescan + r);
        }
        if tm.poll_every.is_some() {
            t = t.min(self.next_poll);
        }
        t
    }

    /// Take one event; return what to do.
    pub fn on(&mut self, ev: Event, clock: Now) -> Vec<Effect> {
        let now = clock.at;
        let mut out = Vec::new();
        match ev {
            Event::Local { paths, deletes } => self.local(paths, deletes, &mut out),
            Event::Rescan => out.push(self.whole_scan(now)),
            Event::Remote {
                source,
                items,
                through,
            } => self.remote(source, items, through, now, &mut out),
            Event::Found { from, items } => self.found(from, items, now),
            Event::Tick => self.tick(now, &mut out),
            Event::Scanned(r) => self.scanned(r, now, &mut out),
            Event::AsideLoaded(items) => self.aside_loaded(items, now),
            Event::Checked { id, items, result } => self.checked(id, items, result, &mut out),
            Event::Observed { id, result } => self.observed(id, result, clock, &mut out),
            Event::Applied { id, applied } => self.applied(id, applied, clock, &mut out),
            Event::Committed { id, result } => self.committed(id, result, now, &mut out),
        }
        if self.idle() {
            self.behind_since = None;
        }
        out
    }

    /// Start the next queued batch if none is in flight (the executor asks when it has
    /// nothing else to do, so local changes are not held behind a queue of batches).
    pub fn start_next(&mut self) -> Vec<Effect> {
        let mut out = Vec::new();
        self.next_batch(&mut out);
        out
    }

    fn local(&mut self, paths: Vec<(Vec<u8>, bool)>, deletes: bool, out: &mut Vec<Effect>) {
        if self.stopped.is_some() {
            // a stopped group is checked as a whole, on its timer
            return;
        }
        out.push(Effect::Scan {
            targets: paths,
            whole: false,
            deletes_ok: deletes,
            was_stopped: false,
            adopt: self.setup.adopt,
        });
    }

    fn whole_scan(&mut self, now: Instant) -> Effect {
        self.last_rescan = now;
        Effect::Scan {
            targets: self
                .setup
                .roots
                .iter()
                .map(|p| (p.as_bytes().to_vec(), true))
                .collect(),
            whole: true,
            deletes_ok: true,
            was_stopped: self.stopped.is_some(),
            adopt: self.setup.adopt,
        }
    }

    fn remote(
        &mut self,
        source: Source,
        items: Vec<WireItem>,
        through: u64,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let newest = self.newest_conn.entry(source.peer.clone()).or_insert(0);
        if source.conn < *newest {
            // a link that was replaced: its peer sends again on the new one
            return;
        }
        if source.conn > *newest {
            *newest = source.conn;
            self.queue.retain(|q| {
                q.job
                    .source
                    .as_ref()
                    .is_none_or(|s| s.peer != source.peer || s.conn == source.conn)
            });
        }
        if self.stopped.is_some() || self.setup.dry_run && items.is_empty() {
            // nothing is applied while stopped, and nothing is acknowledged: the link is
            // closed when the group runs again, and the peer sends it all again
            return;
        }
        if self
            .failing
            .get(&source.peer)
            .is_some_and(|(_, _, s)| s.conn == source.conn)
        {
            return;
        }
        let from_link = self
            .queue
            .iter()
            .filter(|q| q.job.source.as_ref() == Some(&source))
            .count();
        if from_link >= MAX_QUEUED_PER_LINK {
            out.push(Effect::Refuse {
                source,
                key: Vec::new(),
                reason: "ignored flow control".into(),
            });
            return;
        }
        self.behind_since.get_or_insert(now);
        let id = self.take_id();
        let from = (source.peer.clone(), source.inc);
        self.queue.push_back(Queued {
            job: Job {
                id,
                source: Some(source),
                through,
                compared: false,
            },
            items: items
                .into_iter()
                .map(|wire| Incoming {
                    wire,
                    from: from.clone(),
                    attempts: 0,
                })
                .collect(),
        });
    }

    /// Items a comparison found: queued like a batch without a source, so they are observed,
    /// planned, applied and committed by the one pipeline, and never acknowledged (no peer
    /// position goes with them). Not while stopped or in a dry run (nothing is settled then;
    /// the next comparison finds them again).
    fn found(&mut self, from: (String, u64), items: Vec<WireItem>, now: Instant) {
        if self.stopped.is_some() || self.setup.dry_run || items.is_empty() {
            return;
        }
        self.behind_since.get_or_insert(now);
        let id = self.take_id();
        self.queue.push_back(Queued {
            job: Job {
                id,
                source: None,
                through: 0,
                compared: true,
            },
            items: items
                .into_iter()
                .map(|wire| Incoming {
                    wire,
                    from: from.clone(),
                    attempts: 0,
                })
                .collect(),
        });
    }

    fn take_id(&mut self) -> BatchId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Start the next batch if none is in flight.
    fn next_batch(&mut self, out: &mut Vec<Effect>) {
        if self.inflight.is_some() || self.stopped.is_some() {
            return;
        }
        let Some(q) = self.queue.pop_front() else {
            return;
        };
        let Queued { job, items } = q;
        if job.source.is_none() {
            // set-aside items were checked when they first came
            let keys = items.iter().map(|i| i.wire.item.key.clone()).collect();
            out.push(Effect::Observe {
                id: job.id,
                keys,
                dry: self.setup.dry_run,
            });
            self.inflight = Some(InFlight {
                job,
                stage: Stage::Observing(items),
            });
            return;
        }
        // the items come back with the check's result; their origins stay here
        let wires = items.into_iter().map(|i| i.wire).collect();
        let source = job.source.clone().unwrap_or_else(|| Source {
            peer: String::new(),
            conn: 0,
            inc: 0,
            version: 0,
        });
        out.push(Effect::Check {
            id: job.id,
            items: wires,
            source,
        });
        self.inflight = Some(InFlight {
            job,
            stage: Stage::Checking,
        });
    }

    /// The batch in flight, if it is `id`.
    fn take_inflight(&mut self, id: BatchId) -> Option<InFlight> {
        if self.inflight.as_ref().is_some_and(|f| f.job.id == id) {
            self.inflight.take()
        } else {
            None
        }
    }

    fn checked(
        &mut self,
        id: BatchId,
        items: Vec<WireItem>,
        result: Checked,
        out: &mut Vec<Effect>,
    ) {
        let Some(f) = self.take_inflight(id) else {
            return;
        };
        let Some(source) = f.job.source.clone() else {
            return;
        };
        let keep = match result {
            Checked::All => None,
            Checked::Some(mask) => Some(mask),
            Checked::Refused(key, reason) => {
                // a peer that sends what it must not: this link ends, nothing of it is applied
                self.drop_link(&source);
                out.push(Effect::Refuse {
                    source,
                    key,
                    reason,
                });
                return;
            }
            Checked::Held(why) => {
                // not taken now, and not acknowledged: its peer keeps it until it can be
                self.drop_link(&source);
                self.set_warning(Some(why), out);
                return;
            }
        };
        let from = (source.peer.clone(), source.inc);
        let items: Vec<Incoming> = items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| {
                keep.as_ref()
                    .is_none_or(|m| m.get(*i).copied().unwrap_or(false))
            })
            .map(|(_, w)| w)
            .map(|wire| Incoming {
                wire,
                from: from.clone(),
                attempts: 0,
            })
            .collect();
        let keys = items.iter().map(|i| i.wire.item.key.clone()).collect();
        out.push(Effect::Observe {
            id,
            keys,
            dry: self.setup.dry_run,
        });
        self.inflight = Some(InFlight {
            job: f.job,
            stage: Stage::Observing(items),
        });
    }

    /// Forget every queued batch of `source`'s link.
    fn drop_link(&mut self, source: &Source) {
        self.queue.retain(|q| q.job.source.as_ref() != Some(source));
    }

    fn plan_ctx<'a>(
        &'a self,
        kept_as: &'a dyn Fn(&[u8]) -> Option<String>,
        now_unix: i64,
        compared: bool,
    ) -> PlanCtx<'a> {
        PlanCtx {
            policy: crate::engine::decide::Policy {
                conflict: &self.setup.conflict,
                compare_owner: self.setup.compare_owner,
                me: &self.setup.me,
            },
            roots: &self.setup.roots,
            kept_as,
            now: now_unix,
            replica: self.setup.replica,
            compared,
        }
    }

    fn observed(
        &mut self,
        id: BatchId,
        result: Result<Vec<Observed>, super::domain::ObserveError>,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Some(f) = self.take_inflight(id) else {
            return;
        };
        let Stage::Observing(items) = f.stage else {
            return;
        };
        let observed = match result {
            Ok(o) if o.len() == items.len() => o,
            Ok(_) => {
                self.failed(&f.job, "the index read is incomplete", now.at, out);
                return;
            }
            Err(super::domain::ObserveError::Stopped(why)) => {
                // the disk went away under the batch: the group stops, nothing is written,
                // nothing acknowledged (the peers send again when it runs)
                let report = ScanReport {
                    stopped: Some(why),
                    ..Default::default()
                };
                self.scanned(report, now.at, out);
                return;
            }
            Err(super::domain::ObserveError::Failed(e)) => {
                self.failed(&f.job, &format!("reading the index: {e}"), now.at, out);
                return;
            }
        };
        let kept = self.setup.kept_as.clone();
        let kept_as = move |_: &[u8]| kept.clone();
        if self.setup.dry_run {
            let pc = self.plan_ctx(&kept_as, now.unix, f.job.compared);
            let lines = items
                .iter()
                .zip(&observed)
                .filter_map(|(i, o)| {
                    let local = o.local.as_ref().map(|e| &e.item);
                    super::plan::dry_word(&pc, local, &i.wire.item)
                        .map(|w| (w, i.wire.item.key.clone(), i.from.0.clone()))
                })
                .collect();
            out.push(Effect::DryRun(lines));
            return;
        }
        let planner = self.planner.clone();
        let pc = self.plan_ctx(&kept_as, now.unix, f.job.compared);
        let mut plan = planner.plan(&pc, items, observed);
        if !plan.audit.is_empty() {
            out.push(Effect::Audit(audit_lines(std::mem::take(&mut plan.audit))));
        }
        let steps = order_steps(std::mem::take(&mut plan.steps));
        out.push(Effect::Apply {
            id,
            steps,
            prefer: f.job.source.as_ref().map(|s| s.peer.clone()),
        });
        self.inflight = Some(InFlight {
            job: f.job,
            stage: Stage::Applying(Box::new(plan)),
        });
    }

    fn applied(
        &mut self,
        id: BatchId,
        applied: super::domain::Applied,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Some(f) = self.take_inflight(id) else {
            return;
        };
        let Stage::Applying(plan) = f.stage else {
            return;
        };
        let (commit, known) = self.build_commit(&f.job, *plan, applied, now, out);
        out.push(Effect::Commit {
            id,
            commit: Box::new(commit),
        });
        self.inflight = Some(InFlight {
            job: f.job,
            stage: Stage::Committing { acks: known },
        });
    }

    /// The commit of an applied batch; false when some item's outcome is unknown (then the
    /// batch's position is not part of it).
    fn build_commit(
        &mut self,
        job: &Job,
        plan: Plan,
        applied: super::domain::Applied,
        now: Now,
        out: &mut Vec<Effect>,
    ) -> (Commit, bool) {
        let mut c = Commit {
            extras: Extras {
                conflicts: plan.conflicts,
                aside_remove: plan.aside_remove,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut audit = Vec::new();
        let mut known = applied.lost == 0;
        if !known {
            tracing::error!(group = %self.setup.group, "{} items of a batch were lost to a panicked task; the batch's position is not saved (it is received again)", applied.lost);
        }
        let mut rescan_due = false;
        let mut warning = None;
        for (s, o) in applied.results {
            match o {
                Outcome::Done(e) => done(&mut c, &mut audit, s, *e, true),
                Outcome::Kept(e) => done(&mut c, &mut audit, s, *e, false),
                Outcome::Partial(e, fail) => {
                    let s2 = s.clone();
                    done(&mut c, &mut audit, s, *e, true);
                    set_aside(&mut c, &mut audit, s2, fail, &self.setup.group, now.unix);
                }
                Outcome::Failed(fail) => {
                    rescan_due |= fail.rescan;
                    if fail.rescan {
                        self.unstable.push((now.at, s.item.key.clone()));
                    }
                    if fail.warning.is_some() {
                        warning = fail.warning.clone();
                    }
                    set_aside(&mut c, &mut audit, s, fail, &self.setup.group, now.unix);
                }
                Outcome::Unknown(why) => {
                    tracing::error!(group = %self.setup.group, "{}: {why}; the batch's position is not saved (it is received again)", s.item.show());
                    known = false;
                }
            }
        }
        if rescan_due {
            self.aside_due = now.at + Duration::from_millis(500);
        }
        if let Some(w) = warning {
            self.set_warning(Some(w), out);
        }
        c.changes.extend(plan.keeps);
        if known && let Some(s) = &job.source {
            c.extras.position = Some((s.peer.clone(), s.inc, job.through));
            c.from = Some((s.peer.clone(), job.through));
        }
        if !audit.is_empty() {
            out.push(Effect::Audit(audit));
        }
        (c, known)
    }

    fn committed(
        &mut self,
        id: BatchId,
        result: Result<Saved, String>,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(f) = self.take_inflight(id) else {
            return;
        };
        let Stage::Committing { acks } = f.stage else {
            return;
        };
        let saved = match result {
            Ok(s) => s,
            Err(e) => {
                self.failed(&f.job, &format!("saving it: {e}"), now, out);
                return;
            }
        };
        out.push(Effect::Publish(saved.head));
        self.aside = saved.aside;
        if f.job.source.is_none() && !f.job.compared {
            self.aside_loading = false;
        }
        let Some(source) = f.job.source else {
            return;
        };
        if acks {
            self.failing.remove(&source.peer);
            if self
                .warning
                .as_deref()
                .is_some_and(|w| w.starts_with(FAIL_PREFIX))
            {
                self.set_warning(None, out);
            }
            out.push(Effect::Ack {
                source,
                through: f.job.through,
            });
        } else {
            self.failed(
                &Job {
                    id,
                    source: Some(source),
                    through: f.job.through,
                    compared: false,
                },
                "an item's outcome is unknown",
                now,
                out,
            );
        }
    }

    /// A batch could not be saved: nothing of it is acknowledged; its link is closed after a
    /// growing delay so that its peer sends it again.
    fn failed(&mut self, job: &Job, why: &str, now: Instant, out: &mut Vec<Effect>) {
        if job.compared {
            // nothing to acknowledge and no link to close: the next comparison finds them
            tracing::warn!(group = %self.setup.group, "settling differences a comparison found: {why}");
            return;
        }
        let Some(source) = &job.source else {
            // set-aside retries: tried again on the timer
            self.aside_loading = false;
            self.aside_due = now + self.setup.timing.aside_every;
            tracing::warn!(group = %self.setup.group, "retrying set-aside items: {why}");
            return;
        };
        self.drop_link(source);
        let e = self
            .failing
            .entry(source.peer.clone())
            .or_insert((0, now, source.clone()));
        e.0 += 1;
        let delay = RESEND_FIRST
            .saturating_mul(1 << (e.0 - 1).min(16))
            .min(RESEND_MAX);
        e.1 = now + delay;
        e.2 = source.clone();
        let msg = format!(
            "{FAIL_PREFIX} from {} ({why}); nothing of it is acknowledged and {} sends it again in {:.1} s",
            source.peer,
            source.peer,
            delay.as_secs_f64()
        );
        tracing::error!(group = %self.setup.group, "{msg}");
        self.set_warning(Some(msg), out);
    }

    fn set_warning(&mut self, w: Option<String>, out: &mut Vec<Effect>) {
        if self.warning != w {
            self.warning = w.clone();
            out.push(Effect::Warn(w));
        }
    }

    fn aside_loaded(&mut self, items: Vec<Incoming>, now: Instant) {
        if items.is_empty() {
            self.aside_loading = false;
            return;
        }
        self.behind_since.get_or_insert(now);
        let id = self.take_id();
        self.queue.push_back(Queued {
            job: Job {
                id,
                source: None,
                through: 0,
                compared: false,
            },
            items,
        });
    }

    fn scanned(&mut self, r: ScanReport, now: Instant, out: &mut Vec<Effect>) {
        if r.failed {
            return;
        }
        let was = self.stopped.take();
        self.stopped = r.stopped;
        self.setup.adopt = false;
        if was != self.stopped {
            out.push(Effect::Stopped(self.stopped.clone()));
        }
        if was.is_some() && self.stopped.is_none() {
            // peers send again what they sent while the group was stopped (never
            // acknowledged): close every link of the group once
            let mut peers: Vec<&String> = self.newest_conn.keys().collect();
            peers.sort();
            for p in peers {
                out.push(Effect::Resend {
                    source: Source {
                        peer: p.clone(),
                        conn: self.newest_conn[p],
                        inc: 0,
                        version: 0,
                    },
                    why: "the group runs again here".into(),
                });
            }
        }
        if self.stopped.is_some() {
            self.queue.retain(|q| q.job.source.is_none());
            return;
        }
        let due = now + UNSTABLE_RETRY;
        for u in r.unstable {
            if !self.unstable.iter().any(|(_, p)| *p == u) {
                self.unstable.push((due, u));
            }
        }
        let due = now + DELETE_SETTLE;
        for d in r.deferred {
            if !self.deferred.iter().any(|(_, p)| *p == d) {
                self.deferred.push((due, d));
            }
        }
    }

    fn tick(&mut self, now: Instant, out: &mut Vec<Effect>) {
        self.resends_due(now, out);
        let tm = self.setup.timing.clone();
        if now >= self.last_collect + tm.collect_every {
            self.last_collect = now;
            out.push(Effect::Collect);
        }
        if self.stopped.is_some() {
            if now >= self.stopped_check {
                self.stopped_check = now + tm.stopped_every;
                out.push(self.whole_scan(now));
            }
            return;
        }
        let take = |v: &mut Vec<(Instant, Vec<u8>)>| -> Vec<Vec<u8>> {
            let (due, keep): (Vec<_>, Vec<_>) = v.drain(..).partition(|(t, _)| *t <= now);
            *v = keep;
            due.into_iter().map(|(_, p)| p).collect()
        };
        let unstable = take(&mut self.unstable);
        let deferred = take(&mut self.deferred);
        if !unstable.is_empty() {
            self.local(
                unstable.into_iter().map(|p| (p, false)).collect(),
                false,
                out,
            );
        }
        if !deferred.is_empty() {
            self.local(deferred.into_iter().map(|p| (p, true)).collect(), true, out);
        }
        if let Some(every) = tm.poll_every
            && now >= self.next_poll
        {
            self.next_poll = now + every;
            out.push(Effect::Poll);
        }
        if self.aside > 0 && now >= self.aside_due && !self.aside_loading {
            self.aside_due = now + tm.aside_every;
            self.aside_loading = true;
            out.push(Effect::LoadAside);
        }
        if let Some(every) = tm.revert_every
            && now >= self.revert_due
        {
            self.revert_due = now + every;
            out.push(Effect::Revert);
        }
        if let Some(every) = tm.rescan
            && now >= self.last_rescan + every
        {
            out.push(self.whole_scan(now));
        }
    }

    /// Links whose batch could not be saved are closed once their delay passed.
    fn resends_due(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let mut due: Vec<(String, Source)> = self
            .failing
            .iter()
            .filter(|(_, (_, at, s))| *at <= now && s.conn != 0)
            .map(|(p, (_, _, s))| (p.clone(), s.clone()))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, s) in due {
            // keep the count (the next failure waits longer), but not the link
            if let Some(e) = self.failing.get_mut(&p) {
                e.2.conn = 0;
                e.1 = now + RESEND_MAX;
            }
            out.push(Effect::Resend {
                source: s,
                why: "a batch from it could not be saved".into(),
            });
        }
    }
}

/// The start of the warning of a batch that could not be saved.
const FAIL_PREFIX: &str = "could not apply and save a batch";

/// The order steps run in: non-deletions parents first (encoded keys sort depth first), then
/// deletions deepest first.
fn order_steps(steps: Vec<Step>) -> Vec<Step> {
    use crate::store::enc;
    let (mut live, mut dels): (Vec<Step>, Vec<Step>) =
        steps.into_iter().partition(|s| !s.item.is_deleted());
    live.sort_by_key(|s| enc(&s.item.key));
    dels.sort_by_key(|s| std::cmp::Reverse(enc(&s.item.key)));
    live.extend(dels);
    live
}

fn audit_lines(v: Vec<AuditLine>) -> Vec<Audited> {
    v.into_iter().map(|(k, i, d)| (k, i, None, d)).collect()
}

/// An applied step joins the commit (`audited`: with an `apply`/`delete` line; a step applied
/// again only drops its set-aside copy).
fn done(c: &mut Commit, audit: &mut Vec<Audited>, s: Step, mut e: Entry, audited: bool) {
    let key = e.item.key.clone();
    if s.again {
        c.extras.aside_remove.push(key);
        return;
    }
    if s.as_sent && e.item.version == s.item.version {
        e.from = Some(s.from.clone());
    }
    c.touched.insert(crate::item::name::parent(&key).to_vec());
    if e.item.kind() == Some(crate::item::Kind::Dir) {
        c.touched.insert(key.clone());
    }
    if s.had_conflict && e.item.meta().is_none() {
        // an account that collided and now applied: no longer a conflict
        c.extras.conflicts.push((key.clone(), None));
    }
    c.bytes += e.item.size();
    c.applied.push(key.clone());
    c.extras.aside_remove.push(key);
    if audited {
        let kind = if e.item.is_deleted() {
            "delete"
        } else {
            "apply"
        };
        audit.push((kind, e.item.clone(), Some(s.from.0.clone()), None));
    }
    c.changes.push(Change {
        entry: e,
        announce: true,
    });
}

/// A failed step is set aside in the same commit (audited when it keeps failing).
fn set_aside(
    c: &mut Commit,
    audit: &mut Vec<Audited>,
    s: Step,
    fail: Failure,
    group: &str,
    since: i64,
) {
    let attempts = s.attempts + 1;
    if attempts == ASIDE_AFTER {
        tracing::error!(
            group,
            "set aside after {attempts} attempts: {} (clustersync status lists it; it is still retried)",
            fail.error
        );
        audit.push((
            "set-aside",
            s.item.clone(),
            Some(s.from.0.clone()),
            Some(fail.error.clone()),
        ));
    } else {
        tracing::warn!(group, "could not apply yet: {}", fail.error);
        if s.attempts == 0
            && let Some(kind) = fail.audit_first
        {
            audit.push((
                kind,
                s.item.clone(),
                Some(s.from.0.clone()),
                Some(fail.error.clone()),
            ));
        }
    }
    if let Some(info) = fail.conflict {
        c.extras.conflicts.push((s.item.key.clone(), Some(info)));
    }
    c.extras.aside_remove.retain(|k| *k != s.item.key);
    c.extras.aside_put.push(Aside {
        item: s.item,
        peer: s.from.0,
        peer_inc: s.from.1,
        error: fail.error,
        attempts,
        since,
    });
}

#[cfg(test)]
mod tests {
    //! The core without daemons or sleeps: an injected clock, recorded events, and a small
    //! simulated executor that answers each effect as the real one would, succeeding or
    //! failing as the test says.
    use super::*;
    use crate::item::{Body, Kind, Meta, Owner, VersionVector};
    use proptest::prelude::*;

    fn setup(dry_run: bool) -> Setup {
        Setup {
            group: "www".into(),
            me: "b".into(),
            conflict: crate::config::ConflictPolicy::Newest,
            compare_owner: true,
            roots: vec!["/srv/www".into()],
            dry_run,
            adopt: false,
            replica: false,
            kept_as: None,
            timing: Timing {
                aside_every: Duration::from_secs(2),
                stopped_every: Duration::from_secs(4),
                revert_every: None,
                rescan: None,
                collect_every: Duration::from_secs(30),
                poll_every: None,
            },
        }
    }

    fn item(path: &str, origin: &str, n: u64) -> WireItem {
        let mut version = VersionVector::default();
        version.bump(origin, n);
        WireItem {
            item: Item {
                key: path.as_bytes().to_vec(),
                version,
                origin: origin.into(),
                body: Some(Body::Fs(Meta {
                    kind: Kind::File,
                    mode: 0o644,
                    mtime_s: 1,
                    mtime_ns: 0,
                    size: 0,
                    owner: Owner::default(),
                    hash: [0; 32],
                    target: None,
                    chunks: vec![],
                    xattrs: vec![],
                })),
                beat: vec![],
            },
            inline: None,
        }
    }

    fn src(peer: &str, conn: u64) -> Source {
        Source {
            peer: peer.into(),
            conn,
            inc: 7,
            version: 5,
        }
    }

    fn core(dry_run: bool, now: Instant) -> Core {
        Core::new(
            setup(dry_run),
            std::sync::Arc::new(super::super::plan::Generic),
            0,
            now,
        )
    }

    /// A clock the test moves.
    struct Clock(Instant);

    impl Clock {
        fn now(&self) -> Now {
            Now {
                at: self.0,
                unix: 1_800_000_000,
            }
        }
        fn advance(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    /// How the simulated executor answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Fine,
        RefuseCheck,
        ObserveFails,
        ItemFails,
        ItemUnknown,
        StepsLost,
        CommitFails,
    }

    /// Run the core like the executor: feed `ev`, carry out every effect with `fate`,
    /// feed the results back, start queued batches when idle. Returns every effect emitted.
    fn drive(core: &mut Core, ev: Event, clock: &Clock, fate: Fate) -> Vec<Effect> {
        let mut log = Vec::new();
        let mut work: VecDeque<Effect> = core.on(ev, clock.now()).into();
        loop {
            let Some(eff) = work.pop_front() else {
                let next = core.start_next();
                if next.is_empty() {
                    return log;
                }
                work.extend(next);
                continue;
            };
            let answer = answer(&eff, fate);
            log.push(eff);
            if let Some(a) = answer {
                work.extend(core.on(a, clock.now()));
            }
        }
    }

    fn answer(eff: &Effect, fate: Fate) -> Option<Event> {
        Some(match eff {
            Effect::Check { id, items, .. } => Event::Checked {
                id: *id,
                items: items.clone(),
                result: if fate == Fate::RefuseCheck {
                    Checked::Refused(b"/srv/www/x".to_vec(), "bad".into())
                } else {
                    Checked::All
                },
            },
            Effect::Observe { id, keys, .. } => Event::Observed {
                id: *id,
                result: if fate == Fate::ObserveFails {
                    Err(crate::engine::lane::domain::ObserveError::Failed(
                        "disk on fire".into(),
                    ))
                } else {
                    Ok(keys.iter().map(|_| Observed::default()).collect())
                },
            },
            Effect::Apply { id, steps, .. } => {
                let mut applied = crate::engine::lane::domain::Applied::default();
                for s in steps {
                    let o = match fate {
                        Fate::ItemFails => Outcome::Failed(Failure {
                            error: "read-only".into(),
                            ..Default::default()
                        }),
                        Fate::ItemUnknown => Outcome::Unknown("panicked".into()),
                        _ => Outcome::Done(Box::new(Entry::new(s.item.clone()))),
                    };
                    applied.results.push((s.clone(), o));
                }
                if fate == Fate::StepsLost {
                    applied.lost = applied.results.len();
                    applied.results.clear();
                }
                Event::Applied { id: *id, applied }
            }
            Effect::Commit { id, .. } => Event::Committed {
                id: *id,
                result: if fate == Fate::CommitFails {
                    Err("no space left on device".into())
                } else {
                    Ok(Saved {
                        head: 100,
                        aside: 0,
                    })
                },
            },
            _ => return None,
        })
    }

    /// The commit asked for in `log`, if any.
    fn commit_in(log: &[Effect]) -> Option<&Commit> {
        log.iter().find_map(|e| match e {
            Effect::Commit { commit, .. } => Some(&**commit),
            _ => None,
        })
    }

    fn acks(log: &[Effect]) -> Vec<(String, u64)> {
        log.iter()
            .filter_map(|e| match e {
                Effect::Ack { source, through } => Some((source.peer.clone(), *through)),
                _ => None,
            })
            .collect()
    }

    fn remote(peer: &str, conn: u64, through: u64, items: Vec<WireItem>) -> Event {
        Event::Remote {
            source: src(peer, conn),
            items,
            through,
        }
    }

    #[test]
    fn a_batch_is_acknowledged_only_after_its_commit_is_saved() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::Fine,
        );
        let commit_at = log
            .iter()
            .position(|e| matches!(e, Effect::Commit { .. }))
            .expect("a commit");
        let ack_at = log
            .iter()
            .position(|e| matches!(e, Effect::Ack { .. }))
            .expect("an ack");
        assert!(ack_at > commit_at);
        let Effect::Commit { commit, .. } = &log[commit_at] else {
            unreachable!()
        };
        assert_eq!(
            commit.extras.position,
            Some(("a".to_string(), 7, 42)),
            "the position travels with the applied items"
        );
        assert_eq!(acks(&log), vec![("a".to_string(), 42)]);
        assert!(core.idle());
    }

    fn found(items: Vec<WireItem>) -> Event {
        Event::Found {
            from: ("a".into(), 7),
            items,
        }
    }

    #[test]
    fn items_a_comparison_found_go_through_the_pipeline_and_are_never_acknowledged() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            found(vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::Fine,
        );
        // observed (no check: the comparison checked them), applied, committed
        assert!(!log.iter().any(|e| matches!(e, Effect::Check { .. })));
        assert!(log.iter().any(|e| matches!(e, Effect::Observe { .. })));
        let Some(Effect::Apply { steps, prefer, .. }) =
            log.iter().find(|e| matches!(e, Effect::Apply { .. }))
        else {
            panic!("no apply: {log:?}")
        };
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].from, ("a".to_string(), 7));
        assert_eq!(*prefer, None, "content comes from the step's peer");
        let commit = commit_in(&log).expect("a commit");
        assert_eq!(
            commit.extras.position, None,
            "no peer position goes with them"
        );
        assert_eq!(commit.applied, vec![b"/srv/www/x".to_vec()]);
        assert!(acks(&log).is_empty(), "{log:?}");
        assert!(log.iter().any(|e| matches!(e, Effect::Publish(_))));
        assert!(core.idle());
        // a failure is only logged: no link to close, nothing set aside as a retry batch
        let log = drive(
            &mut core,
            found(vec![item("/srv/www/y", "a", 6)]),
            &clock,
            Fate::CommitFails,
        );
        assert!(acks(&log).is_empty());
        assert!(
            !log.iter()
                .any(|e| matches!(e, Effect::Resend { .. } | Effect::Warn(_)))
        );
        assert!(core.idle());
        // between a peer's batches they keep their order and acknowledge nothing of their own
        let _ = core.on(
            remote("a", 1, 10, vec![item("/srv/www/p", "a", 7)]),
            clock.now(),
        );
        let _ = core.on(found(vec![item("/srv/www/q", "a", 8)]), clock.now());
        let _ = core.on(
            remote("a", 1, 20, vec![item("/srv/www/r", "a", 9)]),
            clock.now(),
        );
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert_eq!(
            acks(&log),
            vec![("a".to_string(), 10), ("a".to_string(), 20)]
        );
        let commits = log
            .iter()
            .filter(|e| matches!(e, Effect::Commit { .. }))
            .count();
        assert_eq!(commits, 3, "{log:?}");
    }

    #[test]
    fn nothing_a_comparison_found_is_settled_in_a_dry_run_or_while_stopped() {
        let clock = Clock(Instant::now());
        let mut dry = core(true, clock.0);
        let log = drive(
            &mut dry,
            found(vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::Fine,
        );
        assert!(log.is_empty(), "{log:?}");
        let mut core = core(false, clock.0);
        let stopped = ScanReport {
            stopped: Some("gone".into()),
            ..Default::default()
        };
        let _ = core.on(Event::Scanned(stopped), clock.now());
        let log = drive(
            &mut core,
            found(vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::Fine,
        );
        assert!(log.is_empty(), "{log:?}");
        assert!(core.idle());
    }

    #[test]
    fn a_failed_commit_acknowledges_nothing_and_its_link_is_closed_later() {
        let mut clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::CommitFails,
        );
        assert!(acks(&log).is_empty());
        assert!(log.iter().any(|e| matches!(e, Effect::Warn(Some(_)))));
        // more batches on the same link are dropped, not applied out of order
        let log = drive(
            &mut core,
            remote("a", 1, 50, vec![item("/srv/www/y", "a", 6)]),
            &clock,
            Fate::Fine,
        );
        assert!(log.is_empty(), "{log:?}");
        // once the delay passed, the link is closed so the peer sends everything again
        clock.advance(RESEND_FIRST);
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert!(
            log.iter()
                .any(|e| matches!(e, Effect::Resend { source, .. } if source.peer == "a" && source.conn == 1)),
            "{log:?}"
        );
        // the new link's batches are applied and acknowledged, and the warning goes
        let log = drive(
            &mut core,
            remote("a", 2, 50, vec![item("/srv/www/y", "a", 6)]),
            &clock,
            Fate::Fine,
        );
        assert_eq!(acks(&log), vec![("a".to_string(), 50)]);
        assert!(log.iter().any(|e| matches!(e, Effect::Warn(None))));
    }

    #[test]
    fn a_failed_index_read_acknowledges_nothing() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::ObserveFails,
        );
        assert!(acks(&log).is_empty());
        assert!(
            !log.iter()
                .any(|e| matches!(e, Effect::Apply { .. } | Effect::Commit { .. }))
        );
    }

    #[test]
    fn an_item_whose_outcome_is_unknown_keeps_the_position_unsaved() {
        for fate in [Fate::ItemUnknown, Fate::StepsLost] {
            let clock = Clock(Instant::now());
            let mut core = core(false, clock.0);
            let log = drive(
                &mut core,
                remote(
                    "a",
                    1,
                    42,
                    vec![item("/srv/www/x", "a", 5), item("/srv/www/y", "a", 6)],
                ),
                &clock,
                fate,
            );
            let commit = commit_in(&log);
            // what was applied is still recorded (the disk has it), but not the position
            assert_eq!(commit.expect("a commit").extras.position, None, "{fate:?}");
            assert!(acks(&log).is_empty(), "{fate:?}");
        }
    }

    #[test]
    fn an_item_that_fails_is_set_aside_in_the_same_commit_as_the_position() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::ItemFails,
        );
        let commit = commit_in(&log).expect("a commit");
        assert_eq!(commit.extras.aside_put.len(), 1, "saved to be retried");
        assert_eq!(commit.extras.aside_put[0].attempts, 1);
        assert!(commit.extras.position.is_some());
        assert_eq!(acks(&log).len(), 1);
    }

    #[test]
    fn a_stopped_group_acknowledges_nothing_and_asks_for_everything_again_when_it_runs() {
        let mut clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let stopped = ScanReport {
            stopped: Some("group path /srv/www is missing".into()),
            ..Default::default()
        };
        let log = drive(&mut core, Event::Scanned(stopped), &clock, Fate::Fine);
        assert!(log.iter().any(|e| matches!(e, Effect::Stopped(Some(_)))));
        for t in [10, 20, 30] {
            let log = drive(
                &mut core,
                remote("a", 1, t, vec![item("/srv/www/x", "a", t)]),
                &clock,
                Fate::Fine,
            );
            assert!(log.is_empty(), "nothing applied or acknowledged: {log:?}");
        }
        // local reports wait for the group to run; the timer checks the group path
        let log = drive(
            &mut core,
            Event::Local {
                paths: vec![(b"/srv/www/x".to_vec(), false)],
                deletes: false,
            },
            &clock,
            Fate::Fine,
        );
        assert!(log.is_empty());
        clock.advance(Duration::from_secs(4));
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert!(
            log.iter().any(|e| matches!(
                e,
                Effect::Scan {
                    whole: true,
                    was_stopped: true,
                    ..
                }
            )),
            "{log:?}"
        );
        // the disk is back: every link that sent something is closed so it sends again
        let log = drive(
            &mut core,
            Event::Scanned(ScanReport::default()),
            &clock,
            Fate::Fine,
        );
        assert!(log.iter().any(|e| matches!(e, Effect::Stopped(None))));
        assert!(
            log.iter()
                .any(|e| matches!(e, Effect::Resend { source, .. } if source.peer == "a")),
            "{log:?}"
        );
        assert!(acks(&log).is_empty());
    }

    #[test]
    fn a_group_path_gone_under_a_batch_stops_the_group_and_acknowledges_nothing() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        core.on(
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            clock.now(),
        );
        let mut log = Vec::new();
        let mut work: VecDeque<Effect> = core.start_next().into();
        while let Some(e) = work.pop_front() {
            let a = match &e {
                Effect::Observe { id, .. } => Some(Event::Observed {
                    id: *id,
                    result: Err(crate::engine::lane::domain::ObserveError::Stopped(
                        "group path /srv/www is missing".into(),
                    )),
                }),
                other => answer(other, Fate::Fine),
            };
            log.push(e);
            if let Some(a) = a {
                work.extend(core.on(a, clock.now()));
            }
        }
        assert!(
            log.iter().any(|e| matches!(e, Effect::Stopped(Some(_)))),
            "{log:?}"
        );
        assert!(
            !log.iter()
                .any(|e| matches!(e, Effect::Apply { .. } | Effect::Ack { .. }))
        );
        assert_eq!(core.stopped(), Some("group path /srv/www is missing"));
    }

    #[test]
    fn a_dry_run_says_what_would_change_and_acknowledges_nothing() {
        let clock = Clock(Instant::now());
        let mut core = core(true, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::Fine,
        );
        assert!(
            log.iter()
                .any(|e| matches!(e, Effect::Observe { dry: true, .. }))
        );
        let lines = log.iter().find_map(|e| match e {
            Effect::DryRun(l) => Some(l.clone()),
            _ => None,
        });
        assert_eq!(
            lines,
            Some(vec![("receive", b"/srv/www/x".to_vec(), "a".to_string())])
        );
        assert!(!log.iter().any(|e| matches!(
            e,
            Effect::Apply { .. } | Effect::Commit { .. } | Effect::Ack { .. }
        )));
    }

    #[test]
    fn a_refused_batch_closes_its_link_and_drops_what_came_after_it() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        // two batches queued before the first is checked
        core.on(
            remote("a", 1, 10, vec![item("/srv/www/x", "a", 1)]),
            clock.now(),
        );
        core.on(
            remote("a", 1, 20, vec![item("/srv/www/y", "a", 2)]),
            clock.now(),
        );
        let mut log = Vec::new();
        let mut work: VecDeque<Effect> = core.start_next().into();
        while let Some(e) = work.pop_front() {
            if let Some(a) = answer(&e, Fate::RefuseCheck) {
                work.extend(core.on(a, clock.now()));
            }
            log.push(e);
        }
        assert!(log.iter().any(|e| matches!(e, Effect::Refuse { .. })));
        assert!(core.start_next().is_empty(), "the second batch is dropped");
        assert!(acks(&log).is_empty());
    }

    #[test]
    fn batches_of_a_replaced_link_are_dropped_and_flow_control_is_enforced() {
        let clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        core.on(remote("a", 2, 10, vec![]), clock.now());
        assert!(core.on(remote("a", 1, 5, vec![]), clock.now()).is_empty());
        assert_eq!(core.queued(), 1, "the old link's batch is not queued");
        let mut refused = false;
        for t in 0..(MAX_QUEUED_PER_LINK as u64 + 1) {
            let eff = core.on(remote("a", 2, 20 + t, vec![]), clock.now());
            refused |= eff.iter().any(|e| matches!(e, Effect::Refuse { .. }));
        }
        assert!(refused, "a peer ignoring flow control is refused");
    }

    #[test]
    fn a_changed_path_is_rescanned_and_set_aside_items_are_retried_on_time() {
        let mut clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let log = drive(
            &mut core,
            remote("a", 1, 42, vec![item("/srv/www/x", "a", 5)]),
            &clock,
            Fate::ItemFails,
        );
        assert_eq!(acks(&log).len(), 1);
        // the commit said one item is aside now
        core.aside = 1;
        clock.advance(Duration::from_secs(2));
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert!(
            log.iter().any(|e| matches!(e, Effect::LoadAside)),
            "{log:?}"
        );
        // a retry has no peer position and acknowledges nothing
        let retry = vec![Incoming {
            wire: item("/srv/www/x", "a", 5),
            from: ("a".into(), 7),
            attempts: 1,
        }];
        let log = drive(&mut core, Event::AsideLoaded(retry), &clock, Fate::Fine);
        let commit = commit_in(&log);
        assert_eq!(commit.expect("a commit").extras.position, None);
        assert!(acks(&log).is_empty());
        assert!(
            !log.iter().any(|e| matches!(e, Effect::Check { .. })),
            "checked when it came"
        );
    }

    #[test]
    fn unstable_paths_are_looked_at_again_after_a_while_and_deletions_found_by_the_way_settle() {
        let mut clock = Clock(Instant::now());
        let mut core = core(false, clock.0);
        let report = ScanReport {
            unstable: vec![b"/srv/www/log".to_vec()],
            deferred: vec![b"/srv/www/gone".to_vec()],
            ..Default::default()
        };
        drive(&mut core, Event::Scanned(report), &clock, Fate::Fine);
        clock.advance(DELETE_SETTLE);
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert!(
            log.iter().any(|e| matches!(e, Effect::Scan { deletes_ok: true, targets, .. } if targets[0].0 == b"/srv/www/gone")),
            "{log:?}"
        );
        assert!(!log.iter().any(|e| matches!(
            e,
            Effect::Scan {
                deletes_ok: false,
                ..
            }
        )));
        clock.advance(UNSTABLE_RETRY);
        let log = drive(&mut core, Event::Tick, &clock, Fate::Fine);
        assert!(
            log.iter().any(|e| matches!(e, Effect::Scan { deletes_ok: false, targets, .. } if targets[0].0 == b"/srv/www/log")),
            "{log:?}"
        );
    }

    fn fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            4 => Just(Fate::Fine),
            1 => Just(Fate::RefuseCheck),
            1 => Just(Fate::ObserveFails),
            1 => Just(Fate::ItemFails),
            1 => Just(Fate::ItemUnknown),
            1 => Just(Fate::StepsLost),
            1 => Just(Fate::CommitFails),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step_ {
        Batch(u8, u8, Fate),
        Stop,
        Run,
        Tick(u16),
    }

    fn step() -> impl Strategy<Value = Step_> {
        prop_oneof![
            6 => (0u8..3, 1u8..3, fate()).prop_map(|(p, c, f)| Step_::Batch(p, c, f)),
            1 => Just(Step_::Stop),
            1 => Just(Step_::Run),
            2 => (0u16..5000).prop_map(Step_::Tick),
        ]
    }

    proptest! {
        /// Whatever happens (failures of every kind, stops, link changes, time), every
        /// acknowledgement follows a saved commit that carried exactly that batch's position,
        /// and nothing is acknowledged while the group is stopped or twice.
        #[test]
        fn no_acknowledgement_without_a_saved_commit_of_its_position(steps in proptest::collection::vec(step(), 1..60)) {
            let mut clock = Clock(Instant::now());
            let mut core = core(false, clock.0);
            let mut through = 0u64;
            let mut stopped = false;
            for s in steps {
                let (ev, fate) = match s {
                    Step_::Batch(p, c, f) => {
                        through += 1;
                        let peer = ["a", "c", "d"][p as usize];
                        (remote(peer, c as u64, through, vec![item("/srv/www/x", peer, through)]), f)
                    }
                    Step_::Stop => {
                        stopped = true;
                        (Event::Scanned(ScanReport { stopped: Some("gone".into()), ..Default::default() }), Fate::Fine)
                    }
                    Step_::Run => {
                        stopped = false;
                        (Event::Scanned(ScanReport::default()), Fate::Fine)
                    }
                    Step_::Tick(ms) => {
                        clock.advance(Duration::from_millis(ms as u64));
                        (Event::Tick, Fate::Fine)
                    }
                };
                let log = drive(&mut core, ev, &clock, fate);
                // every Ack is preceded, in this log, by a Commit with its position, whose
                // Committed was Ok (the simulated executor fails commits only under CommitFails)
                let mut saved_positions: Vec<(String, u64)> = Vec::new();
                for e in &log {
                    match e {
                        Effect::Commit { commit, .. } if fate != Fate::CommitFails => {
                            if let Some((p, _, t)) = &commit.extras.position {
                                saved_positions.push((p.clone(), *t));
                            }
                        }
                        Effect::Ack { source, through } => {
                            prop_assert!(!stopped, "acknowledged while stopped");
                            let at = saved_positions.iter().position(|(p, t)| *p == source.peer && t == through);
                            prop_assert!(at.is_some(), "ack of {}@{} without a saved commit of its position", source.peer, through);
                            saved_positions.remove(at.unwrap_or(0));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
