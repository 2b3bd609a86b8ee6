//! The accounts pseudo-group as a domain of the lane's one pipeline (SPEC §5.7). All account
//! logic is in [`crate::accounts::sync`]; this file moves its inputs and outputs between the
//! index, the lane core, the audit log and the log.
//!
//! - **check**: each item of a peer's batch is validated ([`validate_item`]); a refused one is
//!   audited and dropped, never a reason to close the link. A peer of the previous release
//!   (protocol 4) sends account items this release does not apply: its batches are held
//!   (neither applied nor acknowledged) until it is upgraded, and status says so.
//! - **observe**: the account files are scanned first ([`Accounts::detect`], committed as
//!   local changes), so a tool's change is decided against, never overwritten unseen; then the
//!   index entries of the batch's keys.
//! - **plan** ([`AccountsPlanner`], pure): [`plan`] merges by the accounts' own rules (the time
//!   a change was made, member sets that merge without conflicts); conflicts are recorded with
//!   what the loser had.
//! - **apply**: [`Accounts::apply`] writes the four files once under the shadow-utils locks; per
//!   item: applied, set aside (a collision with a local account is also a conflict record),
//!   applied in part (members waiting for their users), or kept here (a group still some user's
//!   primary group) and announced as a new version of ours.
//! - Password hashes never reach a log line or the audit log: only names, ids and versions do.

use super::LaneState;
use super::core::{Failure, Outcome, ScanReport, Source};
use super::domain::{Applied, Checked, Domain, ObserveError, ScanRequest};
use super::plan::{Incoming, Observed, Plan, PlanCtx, Planner, Step};
use crate::accounts::sync::summary;
use crate::accounts::{
    Account, AccountDb, AccountId, Accounts, Check, Decision, IndexRead, Outcome as AccOutcome,
    keep_local, plan, validate_item,
};
use crate::engine::group::GroupRt;
use crate::engine::node::{Ctx, unix_now};
use crate::engine::peer::lock;
use crate::item::{Body, Entry, Item};
use crate::net::protocol::WireItem;
use crate::store::{Change as StoreChange, ConflictInfo, Extras};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The item key of an account.
pub fn key_of(id: &AccountId) -> Vec<u8> {
    id.key()
}

/// The account a key names.
pub fn id_of(key: &[u8]) -> Option<AccountId> {
    AccountId::from_key(key)
}

/// `user "niden"` / `group "devs"` / `members of group "devs"`.
pub fn describe(item: &Item) -> String {
    id_of(&item.key)
        .map(|i| i.to_string())
        .unwrap_or_else(|| item.show().into_owned())
}

/// The stat of the four files, to notice changes cheaply.
pub fn files_stamp(root: &std::path::Path) -> Vec<(u64, i64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    ["passwd", "group", "shadow", "gshadow"]
        .iter()
        .map(|f| {
            std::fs::metadata(root.join("etc").join(f))
                .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
                .unwrap_or((0, 0, 0, 0))
        })
        .collect()
}

/// Whether a conflict record is a collision (a different local account in the way), which
/// `status` counts as "not applied" (exit 1), not as an unresolved conflict (exit 3).
pub fn is_collision(c: &ConflictInfo) -> bool {
    !c.resolved
        && c.kept_as
            .as_deref()
            .is_some_and(|k| k.starts_with("collision: "))
}

/// The index entries of the accounts group, for detect.
struct StoreIndex<'a> {
    ctx: &'a Ctx,
    group: &'a str,
}

impl IndexRead for StoreIndex<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Item>, String> {
        self.ctx
            .store
            .get(self.group, key)
            .map(|e| e.map(|e| e.item))
            .map_err(|e| e.to_string())
    }

    fn keys(&mut self) -> Result<Vec<Vec<u8>>, String> {
        self.ctx.store.keys(self.group).map_err(|e| e.to_string())
    }

    /// The keys `members/…` are one range of the index: read only that.
    fn member_sets(&mut self) -> Result<Vec<Item>, String> {
        self.ctx
            .store
            .subtree(self.group, b"members")
            .map(|v| v.into_iter().map(|e| e.item).collect())
            .map_err(|e| e.to_string())
    }
}

/// Whether the index holds no account item yet (the node joins accounts as new).
fn index_empty(ctx: &Ctx, group: &str) -> bool {
    let mut any = false;
    let _ = ctx.store.for_each(group, |_| {
        any = true;
        false
    });
    !any
}

/// Read the files, commit what changed here, write the canonical layout (blocking). Returns
/// the head after the commit and the problems to show.
fn scan(ctx: &Ctx, g: &GroupRt, acc: &Mutex<Accounts>) -> Result<(u64, Vec<String>), String> {
    let name = g.name();
    let db = AccountDb::new(&ctx.root);
    let mut a = lock(acc);
    let read = a.read(&db).map_err(|e| e.to_string())?;
    if let Some(r) = &read.recovery {
        tracing::warn!(
            group = name,
            "an interrupted write of the account files was finished ({:?} completed, {:?} abandoned)",
            r.completed,
            r.abandoned
        );
    }
    let adopt = a.first_detect() && index_empty(ctx, name);
    let det = a
        .detect(
            &read,
            &mut StoreIndex { ctx, group: name },
            crate::item::version::clock_ms(),
            adopt,
        )
        .map_err(|e| e.to_string())?;
    let mut head = 0;
    if !det.changes.is_empty() {
        let n = det.changes.len();
        let kind = |i: &Item| {
            if det.adopted {
                "adopt"
            } else if i.is_deleted() {
                "local-delete"
            } else {
                "local-change"
            }
        };
        ctx.audit_items(name, det.changes.iter().map(|i| (kind(i), i, None)));
        if det.adopted {
            tracing::info!(
                group = name,
                "joined accounts as new: {n} accounts found here, kept unversioned (any change made elsewhere wins over them)"
            );
        } else if n <= 20 {
            for i in &det.changes {
                let what = if i.is_deleted() {
                    "deleted here"
                } else {
                    "changed here"
                };
                tracing::info!(group = name, "{} {what}", describe(i));
            }
        } else {
            tracing::info!(group = name, "{n} account items changed here");
        }
        let changes = det
            .changes
            .into_iter()
            .map(|i| StoreChange {
                entry: Entry::new(i),
                announce: true,
            })
            .collect();
        match ctx.store.commit(name, changes, Extras::default()) {
            Ok(h) => head = h,
            Err(e) => {
                a.forget();
                return Err(e.to_string());
            }
        }
    }
    if let Some(c) = det.canonical {
        match db.write(&read, &c) {
            Ok(crate::accounts::Written::Done { files, locked, set }) => {
                tracing::debug!(
                    group = name,
                    "account files put in canonical order ({files:?}, locks held {locked:?})"
                );
                a.written(set);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                group = name,
                "writing the account files in canonical order: {e}"
            ),
        }
    }
    Ok((head, det.problems))
}

/// `clustersync resolve user/NAME --keep NODE` (blocking): the chosen version becomes a new
/// version of this node, which descends from every competing one, so every node takes it.
fn resolve(
    ctx: &Ctx,
    g: &GroupRt,
    acc: &Mutex<Accounts>,
    key: Vec<u8>,
    keep: &str,
) -> Result<String, String> {
    let name = g.name();
    let id = id_of(&key).ok_or_else(|| {
        format!(
            "{} is not an account (user/NAME, group/NAME)",
            String::from_utf8_lossy(&key)
        )
    })?;
    let info = ctx
        .store
        .conflict(name, &key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no conflict on {id} on this node (see `clustersync conflicts`)"))?;
    if is_collision(&info) {
        return Err(format!(
            "{id} is a collision with a local account on this node, which no version choice settles: {}",
            info.kept_as.unwrap_or_default()
        ));
    }
    let local = ctx
        .store
        .get(name, &key)
        .map_err(|e| e.to_string())?
        .map(|e| e.item);
    let (item, chosen) = resolution(ctx, &id, &info, local, key, keep)?;
    let db = AccountDb::new(&ctx.root);
    for _ in 0..4 {
        scan(ctx, g, acc)?;
        let r = lock(acc)
            .apply(
                &db,
                std::slice::from_ref(&item),
                crate::accounts::store::today(),
            )
            .map_err(|e| e.to_string())?;
        if r.stale {
            continue;
        }
        if let Some(AccOutcome::Aside { reason, .. }) = r.outcomes.first() {
            return Err(format!(
                "{id}: {keep}'s version cannot be applied here: {reason}"
            ));
        }
        commit_resolution(ctx, name, item, info, keep)?;
        return Ok(format!(
            "{id}: {keep}'s version kept ({}); it is sent to every node",
            summary(&chosen)
        ));
    }
    Err("the account files kept changing; try again".into())
}

/// The item a resolution puts in place (a new version of this node over every competing one,
/// with `keep`'s body made now), and the version chosen.
fn resolution(
    ctx: &Ctx,
    id: &AccountId,
    info: &ConflictInfo,
    local: Option<Item>,
    key: Vec<u8>,
    keep: &str,
) -> Result<(Item, Item), String> {
    let chosen = if keep == ctx.name {
        local
            .clone()
            .filter(|l| l.origin == ctx.name)
            .or_else(|| info.versions.iter().find(|v| v.origin == keep).cloned())
    } else {
        info.versions.iter().find(|v| v.origin == keep).cloned()
    }
    .ok_or_else(|| {
        let have: BTreeSet<&str> = info.versions.iter().map(|v| v.origin.as_str()).collect();
        format!(
            "no version from {keep} in the conflict on {id} (versions from: {})",
            have.into_iter().collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut version = local.map(|l| l.version).unwrap_or_default();
    for v in &info.versions {
        version.merge(&v.version);
    }
    let now = crate::item::version::clock_ms();
    version.bump(&ctx.name, now);
    let made = i64::try_from(now).unwrap_or(i64::MAX);
    let body = chosen.body.clone().map(|b| match b {
        Body::Account(Account::User { user, .. }) => Body::Account(Account::User { user, made }),
        Body::Account(Account::Group { group, .. }) => {
            Body::Account(Account::Group { group, made })
        }
        other => other,
    });
    let item = Item {
        key,
        version,
        origin: ctx.name.clone(),
        body,
        beat: Vec::new(),
    };
    Ok((item, chosen))
}

/// Record a resolution applied: the new version, the conflict settled.
fn commit_resolution(
    ctx: &Ctx,
    group: &str,
    item: Item,
    info: ConflictInfo,
    keep: &str,
) -> Result<(), String> {
    let key = item.key.clone();
    let extras = Extras {
        conflicts: vec![(
            key.clone(),
            Some(ConflictInfo {
                resolved: true,
                winner: keep.to_string(),
                kept_as: Some(format!(
                    "resolved by hand on {}: {keep}'s version kept",
                    ctx.name
                )),
                time: unix_now(),
                ..info
            }),
        )],
        aside_remove: vec![key],
        ..Default::default()
    };
    ctx.audit_item(group, "resolve", &item, None);
    ctx.store
        .commit(
            group,
            vec![StoreChange {
                entry: Entry::new(item),
                announce: true,
            }],
            extras,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The accounts pseudo-group as a domain.
pub struct AccountsDomain {
    ctx: Arc<Ctx>,
    g: Arc<GroupRt>,
    head: Arc<watch::Sender<u64>>,
    state: Arc<LaneState>,
    /// Account sync's state between calls (what the files held, what was written).
    acc: Mutex<Accounts>,
    /// The stat of the account files at the last scan.
    stamp: Mutex<Vec<(u64, i64, i64, u64)>>,
    /// Called once accounts were applied: file owners given by name may resolve now.
    on_applied: Box<dyn Fn() + Send + Sync>,
    /// The periodic check of the files against the index.
    check: Arc<Mutex<DriftCheck>>,
}

/// The periodic check (every `verify_every`) that the account files hold what the index
/// says: an account found different at two checks in a row is named in `status` (not in
/// sync) until a check finds it the same again. Two in a row, because an apply whose commit
/// has not happened yet differs for a moment.
struct DriftCheck {
    next: std::time::Instant,
    /// Keys found different at the last check.
    suspects: BTreeSet<Vec<u8>>,
    /// What `status` shows: the accounts found different twice in a row.
    found: Vec<String>,
    /// The problems of the last scan (what cannot be read, what left the managed set).
    scanned: Vec<String>,
    /// A check is running (on a thread of its own, so the lane goes on meanwhile).
    running: bool,
}

/// `status`'s problems: the last scan's and the periodic check's; a new one is logged.
fn publish_notes(check: &Mutex<DriftCheck>, state: &LaneState, group: &str) {
    let all: Vec<String> = {
        let c = lock(check);
        c.scanned.iter().chain(&c.found).cloned().collect()
    };
    let mut p = lock(&state.notes);
    for n in all.iter().filter(|n| !p.contains(n)) {
        tracing::warn!(group, "accounts: {n}");
    }
    *p = all;
}

/// The check itself (see [`DriftCheck`]), on the files `read` that the index agreed with.
fn run_check(
    ctx: &Ctx,
    group: &str,
    checker: Accounts,
    read: &crate::accounts::FileSet,
    check: &Mutex<DriftCheck>,
) {
    let mut index = StoreIndex { ctx, group };
    let diff = checker.differences(read, &mut index, crate::item::version::clock_ms());
    let mut c = lock(check);
    c.running = false;
    match diff {
        Ok(ids) => {
            let keys: BTreeSet<Vec<u8>> = ids.iter().map(AccountId::key).collect();
            c.found = ids
                .iter()
                .filter(|i| c.suspects.contains(&i.key()))
                .map(drift_note)
                .collect();
            c.suspects = keys;
        }
        Err(e) => {
            tracing::warn!(group, "checking the account files against the index: {e}");
        }
    }
}

/// What `status` says of an account whose files and index differ.
fn drift_note(id: &AccountId) -> String {
    format!(
        "{id}: the account files here differ from this node's index, which the other nodes have (found by the periodic check): make the files hold what you want with the tools (e.g. `gpasswd -a`/`-d`), or restart the daemon to send this node's files as they are"
    )
}

impl AccountsDomain {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        g: Arc<GroupRt>,
        head: Arc<watch::Sender<u64>>,
        state: Arc<LaneState>,
        on_applied: Box<dyn Fn() + Send + Sync>,
    ) -> AccountsDomain {
        let policy = g.accounts.clone().unwrap_or(crate::accounts::Policy {
            set: crate::accounts::ManagedSet::default(),
            passwords: false,
            create_home: false,
        });
        let acc = Mutex::new(Accounts::new(policy, ctx.name.clone()));
        let first_check = std::time::Instant::now() + g.cfg.verify_every.unwrap_or_default();
        AccountsDomain {
            ctx,
            g,
            head,
            state,
            acc,
            stamp: Mutex::new(Vec::new()),
            on_applied,
            check: Arc::new(Mutex::new(DriftCheck {
                next: first_check,
                suspects: BTreeSet::new(),
                found: Vec::new(),
                scanned: Vec::new(),
                running: false,
            })),
        }
    }

    /// Scan the files and commit what changed here (blocking); problems go to `status`.
    fn scan_now(&self) -> Result<(), String> {
        *lock(&self.stamp) = files_stamp(&self.ctx.root);
        let (head, problems) = scan(&self.ctx, &self.g, &self.acc)?;
        super::publish_head(&self.head, head);
        lock(&self.check).scanned = problems;
        publish_notes(&self.check, &self.state, self.g.name());
        Ok(())
    }

    /// Start the periodic check of the files against the index when it is due, on a thread
    /// of its own (blocking only to read the files). Returns whether the files changed since
    /// the last scan (then they are scanned instead).
    fn check_if_due(&self) -> bool {
        let Some(every) = self.g.cfg.verify_every else {
            return false;
        };
        {
            let mut c = lock(&self.check);
            let now = std::time::Instant::now();
            if c.running || now < c.next {
                return false;
            }
            c.next = now + every;
        }
        let db = AccountDb::new(&self.ctx.root);
        let (checker, read) = {
            let mut a = lock(&self.acc);
            let read = match a.read(&db) {
                Ok(r) => r,
                // the scan this asks for reports why the files cannot be read
                Err(_) => return true,
            };
            if !a.agrees(&read) {
                return true;
            }
            (a.checker(), read)
        };
        lock(&self.check).running = true;
        // without the lock, and the lane goes on: an apply meanwhile may make one check see a
        // difference for a moment, which is why a difference counts only when the next check
        // finds it again
        let (ctx, g, state, check) = (
            self.ctx.clone(),
            self.g.clone(),
            self.state.clone(),
            self.check.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("accounts-check".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_check(&ctx, g.name(), checker, &read, &check);
                }));
                if ran.is_err() {
                    tracing::error!(group = %g.name(), "the check of the account files failed (internal error); it runs again next time");
                    lock(&check).running = false;
                }
                publish_notes(&check, &state, g.name());
            });
        if let Err(e) = spawned {
            tracing::warn!(group = %self.g.name(), "cannot start the check of the account files: {e}");
            lock(&self.check).running = false;
        }
        false
    }

    /// Is `key`'s entry in our index a deletion?
    fn deleted_here(&self, key: &[u8]) -> bool {
        self.ctx
            .store
            .get(self.g.name(), key)
            .ok()
            .flatten()
            .is_some_and(|e| e.item.is_deleted())
    }

    /// The member sets of the index that name a user these steps bring back on top of our
    /// deletion (a deletion that lost a conflict), and that the steps do not carry
    /// themselves. A member set that arrived while that user was deleted here was committed
    /// without waiting for it (see [`Self::outcome`]), so the files lack the membership: it
    /// is written again with the user.
    fn memberships_of_reborn(&self, steps: &[Step]) -> Vec<Item> {
        let reborn: BTreeSet<String> = steps
            .iter()
            .filter(|s| {
                !s.item.is_deleted() && s.local.as_ref().is_some_and(|l| l.item.is_deleted())
            })
            .filter_map(|s| match id_of(&s.item.key) {
                Some(AccountId::User(n)) => Some(n),
                _ => None,
            })
            .collect();
        if reborn.is_empty() {
            return Vec::new();
        }
        let carried: BTreeSet<&[u8]> = steps.iter().map(|s| s.item.key.as_slice()).collect();
        let mut index = StoreIndex {
            ctx: &self.ctx,
            group: self.g.name(),
        };
        let sets = match index.member_sets() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(group = %self.g.name(), "reading the member sets: {e}");
                return Vec::new();
            }
        };
        sets.into_iter()
            .filter(|i| !carried.contains(i.key.as_slice()))
            .filter(|i| match &i.body {
                Some(Body::Account(Account::Members(m))) => {
                    m.members.iter().any(|x| reborn.contains(&x.user))
                }
                _ => false,
            })
            .collect()
    }

    /// Write the taken accounts once, under the shadow-utils locks (blocking).
    fn apply_blocking(&self, steps: &[Step]) -> Vec<Outcome> {
        let db = AccountDb::new(&self.ctx.root);
        let again = self.memberships_of_reborn(steps);
        let items: Vec<&Item> = steps.iter().map(|s| &s.item).chain(again.iter()).collect();
        let r = lock(&self.acc).apply(&db, &items, crate::accounts::store::today());
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(group = %self.g.name(), "applying account items: {e}");
                return steps
                    .iter()
                    .map(|_| failed(&e.to_string(), false))
                    .collect();
            }
        };
        *lock(&self.stamp) = files_stamp(&self.ctx.root);
        if r.stale {
            // a tool wrote the files meanwhile: scanned, then tried again shortly
            return steps
                .iter()
                .map(|_| failed("the account files changed meanwhile", true))
                .collect();
        }
        if !r.files.is_empty() {
            tracing::debug!(
                group = %self.g.name(),
                "account files written ({:?}, {} items, locks held {:?})",
                r.files,
                steps.len(),
                r.locked
            );
        }
        for h in &r.homes {
            tracing::info!(group = %self.g.name(), "{h}");
        }
        let quiet = steps.len() > 20;
        let out: Vec<Outcome> = steps
            .iter()
            .zip(&r.outcomes)
            .map(|(s, o)| self.outcome(s, o, quiet))
            .collect();
        let n = out.iter().filter(|o| matches!(o, Outcome::Done(_))).count();
        if quiet && n > 0 {
            tracing::info!(group = %self.g.name(), "{n} account items applied");
        }
        for (i, o) in again.iter().zip(r.outcomes.iter().skip(steps.len())) {
            match o {
                AccOutcome::Applied => tracing::info!(
                    group = %self.g.name(),
                    "{} applied again: a member is back",
                    describe(i)
                ),
                o => tracing::warn!(
                    group = %self.g.name(),
                    "{} with a member that is back: {o:?}",
                    describe(i)
                ),
            }
        }
        out
    }

    fn outcome(&self, s: &Step, o: &AccOutcome, quiet: bool) -> Outcome {
        let group = self.g.name();
        match o {
            AccOutcome::Applied => {
                if !quiet && !s.again {
                    tracing::info!(
                        group,
                        "{} {} (from {})",
                        describe(&s.item),
                        if s.item.is_deleted() {
                            "deleted"
                        } else {
                            "applied"
                        },
                        s.from.0
                    );
                }
                Outcome::Done(Box::new(Entry::new(s.item.clone())))
            }
            AccOutcome::Partial { waiting } => {
                // a user the cluster deleted (its tombstone is in our index) is not waited
                // for: its deletion took it out of every group on every node
                let waiting: Vec<&String> = waiting
                    .iter()
                    .filter(|w| !self.deleted_here(&AccountId::User((*w).clone()).key()))
                    .collect();
                if waiting.is_empty() {
                    return Outcome::Done(Box::new(Entry::new(s.item.clone())));
                }
                let why = format!(
                    "{}: waiting for {} to exist here",
                    describe(&s.item),
                    waiting
                        .iter()
                        .map(|w| format!("user {w:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                Outcome::Partial(
                    Box::new(Entry::new(s.item.clone())),
                    Failure {
                        error: why,
                        ..Default::default()
                    },
                )
            }
            AccOutcome::Aside { reason, collision } => {
                if *collision && s.attempts == 0 {
                    tracing::error!(group, "{reason}");
                }
                let conflict = collision.then(|| {
                    let mut nodes = vec![s.item.origin.clone(), self.ctx.name.clone()];
                    nodes.retain(|n| !n.is_empty());
                    nodes.sort();
                    nodes.dedup();
                    ConflictInfo {
                        nodes,
                        resolved: false,
                        winner: String::new(),
                        kept_as: Some(format!("collision: {reason}")),
                        time: unix_now(),
                        versions: vec![],
                    }
                });
                Outcome::Failed(Failure {
                    error: reason.clone(),
                    audit_first: Some(if *collision {
                        "collision"
                    } else {
                        "not-applied"
                    }),
                    conflict,
                    ..Default::default()
                })
            }
            AccOutcome::KeepLocal { reason } => self.keep_here(s, reason),
        }
    }

    /// This node keeps its own copy and announces it as a new version (a group still some
    /// user's primary group here would otherwise leave that user without it).
    fn keep_here(&self, s: &Step, reason: &str) -> Outcome {
        let t = &s.item;
        let body = {
            let mut a = lock(&self.acc);
            match id_of(&t.key) {
                Some(AccountId::Group(n)) => a
                    .local_group(&n)
                    .map(|group| Account::Group { group, made: 0 }),
                Some(AccountId::User(n)) => {
                    a.local_user(&n).map(|user| Account::User { user, made: 0 })
                }
                _ => None,
            }
        };
        let local = s.local.as_ref().map(|e| &e.item);
        let (Some(body), Some(local)) = (body, local) else {
            return failed(reason, false);
        };
        let mine = keep_local(
            local,
            t,
            body,
            &self.ctx.name,
            crate::item::version::clock_ms(),
        );
        tracing::warn!(
            group = %self.g.name(),
            "{} kept on this node and announced again: {reason} (its deletion on {} would leave that user without it)",
            describe(t),
            t.origin
        );
        self.ctx.audit.log(crate::ops::audit::Rec {
            group: self.g.name(),
            path: &t.key,
            kind: "kept",
            origin: &self.ctx.name,
            version: &mine.version.display(),
            peer: Some(&s.from.0),
            detail: Some(reason),
        });
        Outcome::Kept(Box::new(Entry::new(mine)))
    }
}

/// A step not applied, set aside; `rescan`: the files changed meanwhile.
fn failed(why: &str, rescan: bool) -> Outcome {
    Outcome::Failed(Failure {
        error: why.to_string(),
        rescan,
        audit_first: (!rescan).then_some("not-applied"),
        ..Default::default()
    })
}

/// How account items are decided: [`plan`], by the accounts' own merge rules.
#[derive(Debug)]
pub struct AccountsPlanner;

impl Planner for AccountsPlanner {
    fn plan(&self, pc: &PlanCtx, items: Vec<Incoming>, observed: Vec<Observed>) -> Plan {
        let locals: Vec<Option<&Item>> = observed
            .iter()
            .map(|o| o.local.as_ref().map(|e| &e.item))
            .collect();
        let decisions = plan(
            items.iter().map(|i| &i.wire.item),
            &locals,
            pc.policy.conflict,
        );
        let mut out = Plan::default();
        for ((inc, obs), d) in items.into_iter().zip(observed).zip(decisions) {
            plan_one(pc, inc, obs, d, &mut out);
        }
        out
    }
}

fn plan_one(pc: &PlanCtx, inc: Incoming, obs: Observed, d: Decision, out: &mut Plan) {
    let key = inc.wire.item.key.clone();
    let collided = obs.conflict.as_ref().is_some_and(is_collision);
    let step = |item: Item, again: bool, local: Option<Entry>| Step {
        as_sent: item.version == inc.wire.item.version && item.body == inc.wire.item.body,
        item,
        inline: None,
        local,
        from: inc.from.clone(),
        attempts: inc.attempts,
        had_conflict: collided,
        again,
    };
    match d {
        Decision::Ignore => {
            // a member set committed but only partly applied (set aside, loaded with its
            // attempts): apply it again
            let same = obs.local.as_ref().is_some_and(|l| {
                l.item.version == inc.wire.item.version && l.item.body == inc.wire.item.body
            });
            if inc.attempts > 0 && same {
                out.steps.push(step(inc.wire.item.clone(), true, obs.local));
            } else if inc.attempts > 0 {
                // the set-aside copy is older than what the index has: no longer needed
                out.aside_remove.push(key);
            }
            // a copy from a link (another peer relaying it, a resend) leaves what is set aside
            // as it is: the set-aside record may be this very version, committed but only
            // partly applied, which must still be applied in full
        }
        Decision::Take { item, conflict } => {
            if let Some(c) = conflict {
                record_conflict(pc, &item, &c, out);
            }
            out.steps.push(step(item, false, obs.local));
        }
        Decision::Keep { item, conflict } => {
            if let Some(c) = conflict {
                record_conflict(pc, &item, &c, out);
            }
            out.aside_remove.push(key);
            out.keeps.push(StoreChange {
                entry: Entry::new(item),
                announce: true,
            });
        }
        Decision::Unresolved { conflict } => {
            let shown = String::from_utf8_lossy(&key).into_owned();
            let mut info = conflict_info(pc, &conflict, false);
            info.kept_as = Some(format!(
                "each node keeps its own until `clustersync resolve {shown} --keep NODE`"
            ));
            tracing::warn!(
                "conflict on {}: versions from {}; unresolved (conflict = \"manual\"): clustersync resolve {shown} --keep NODE",
                describe(&inc.wire.item),
                conflict.nodes.join(" and "),
            );
            out.audit.push((
                "conflict",
                inc.wire.item.clone(),
                Some("unresolved (manual)".into()),
            ));
            out.conflicts.push((key.clone(), Some(info)));
            out.aside_remove.push(key);
        }
    }
}

fn conflict_info(pc: &PlanCtx, c: &crate::accounts::Conflict, resolved: bool) -> ConflictInfo {
    ConflictInfo {
        nodes: c.nodes.clone(),
        resolved,
        winner: c.winner.clone().unwrap_or_default(),
        kept_as: None,
        time: pc.now,
        versions: c
            .versions
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if v.origin.is_empty() {
                    v.origin = pc.policy.me.to_string();
                }
                v
            })
            .collect(),
    }
}

/// A conflict settled by the policy: logged, audited, listed by `conflicts` with what the
/// loser had.
fn record_conflict(pc: &PlanCtx, winner: &Item, c: &crate::accounts::Conflict, out: &mut Plan) {
    let loser = c
        .versions
        .iter()
        .find(|v| v.origin != winner.origin)
        .or(c.versions.first());
    let lost = loser.map(summary).unwrap_or_default();
    let loser_node = loser.map(|l| l.origin.clone()).unwrap_or_default();
    let mut info = conflict_info(pc, c, true);
    info.kept_as = Some(format!(
        "{loser_node}'s version lost ({lost}); redo it with the tools or run `clustersync resolve {} --keep {loser_node}`",
        String::from_utf8_lossy(&winner.key)
    ));
    tracing::warn!(
        "conflict on {}: versions from {}; {}'s kept ({}); {loser_node}'s version had {lost}",
        describe(winner),
        c.nodes.join(" and "),
        winner.origin,
        summary(winner),
    );
    let detail = format!("winner {}, loser {loser_node} ({lost})", winner.origin);
    out.audit.push(("conflict", winner.clone(), Some(detail)));
    out.conflicts.push((winner.key.clone(), Some(info)));
}

impl Domain for AccountsDomain {
    fn check(&self, items: &[WireItem], source: &Source) -> Checked {
        if source.version < 5 {
            return Checked::Held(format!(
                "{} runs the previous release (protocol {}): accounts are not exchanged with it until it is upgraded",
                source.peer, source.version
            ));
        }
        let Some(policy) = &self.g.accounts else {
            return Checked::Held("not the accounts group".into());
        };
        let members: Vec<String> = self.g.cfg.nodes.clone();
        let check = Check {
            policy,
            members: &members,
        };
        let mut keep = Vec::with_capacity(items.len());
        let mut refused = 0usize;
        for w in items {
            let r = if w.inline.is_some() {
                Err("content attached to an account".to_string())
            } else {
                validate_item(&w.item, &check)
            };
            if let Err(e) = &r {
                let msg = format!("refused account item {}: {e}", describe(&w.item));
                self.ctx
                    .audit_refused_item(self.g.name(), &w.item.key, &source.peer, &msg);
                if refused == 0 {
                    tracing::error!(peer = %source.peer, group = %self.g.name(), "{msg} (not applied; the link stays up)");
                }
                refused += 1;
            }
            keep.push(r.is_ok());
        }
        if refused == 0 {
            Checked::All
        } else {
            Checked::Some(keep)
        }
    }

    fn planner(&self) -> Arc<dyn Planner> {
        Arc::new(AccountsPlanner)
    }

    fn observe(&self, keys: &[Vec<u8>], dry: bool) -> Result<Vec<Observed>, ObserveError> {
        if !dry {
            // a tool's change first: it is decided against, never overwritten unseen
            self.scan_now().map_err(ObserveError::Failed)?;
        }
        let name = self.g.name();
        let fail = |e: crate::store::StoreError| ObserveError::Failed(e.to_string());
        let snap = self.ctx.store.snapshot().map_err(fail)?;
        keys.iter()
            .map(|k| {
                Ok(Observed {
                    local: snap.get(name, k).map_err(fail)?,
                    conflict: snap
                        .conflict(name, k)
                        .map_err(fail)?
                        .filter(|c| !c.resolved),
                    keep_drift: false,
                })
            })
            .collect()
    }

    async fn apply(self: Arc<Self>, steps: Vec<Step>, _prefer: Option<String>) -> Applied {
        let n = steps.len();
        tokio::task::spawn_blocking(move || {
            let outcomes = self.apply_blocking(&steps);
            Applied {
                results: steps.into_iter().zip(outcomes).collect(),
                lost: 0,
            }
        })
        .await
        .unwrap_or(Applied {
            results: Vec::new(),
            lost: n,
        })
    }

    async fn resolve(self: Arc<Self>, key: Vec<u8>, keep: String) -> Result<String, String> {
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || resolve(&me.ctx, &me.g, &me.acc, key, &keep))
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(head) = self.ctx.store.group_head(self.g.name()) {
            super::publish_head(&self.head, head);
        }
        *lock(&self.stamp) = files_stamp(&self.ctx.root);
        r
    }

    fn scan(&self, _req: &ScanRequest) -> ScanReport {
        match self.scan_now() {
            Ok(()) => ScanReport::default(),
            Err(e) => {
                tracing::error!(group = %self.g.name(), "reading the account files: {e}");
                ScanReport {
                    failed: true,
                    ..Default::default()
                }
            }
        }
    }

    fn dry_scan(&self) -> Vec<(&'static str, Vec<u8>)> {
        Vec::new()
    }

    fn after_commit(&self, applied: &[Vec<u8>]) {
        if !applied.is_empty() {
            // files owned by these accounts get their owner by name now
            self.ctx.owners.invalidate();
            (self.on_applied)();
        }
    }

    fn commit_failed(&self) {
        lock(&self.acc).forget();
    }

    fn poll(&self) -> bool {
        files_stamp(&self.ctx.root) != *lock(&self.stamp) || self.check_if_due()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::model::{Dot, Member, Members};
    use crate::item::VersionVector;

    fn members(version: &[(&str, u64)], names: &[&str]) -> Item {
        let mut v = VersionVector::default();
        for (n, c) in version {
            v.0.insert(n.to_string(), *c);
        }
        Item {
            key: AccountId::Members("sudo".into()).key(),
            version: v,
            origin: "a".into(),
            body: Some(Body::Account(Account::Members(Members {
                group: "sudo".into(),
                members: names
                    .iter()
                    .map(|n| Member {
                        user: n.to_string(),
                        dots: vec![Dot {
                            node: "a".into(),
                            counter: 1,
                        }],
                    })
                    .collect(),
            }))),
            beat: vec![],
        }
    }

    fn plan_with(local: &Item, incoming: &Item, attempts: u32) -> Plan {
        let kept_as = |_: &[u8]| None;
        let pc = PlanCtx {
            policy: crate::engine::decide::Policy {
                conflict: &crate::config::ConflictPolicy::Newest,
                compare_owner: true,
                me: "c",
            },
            roots: &[],
            kept_as: &kept_as,
            now: 0,
            replica: false,
            compared: false,
        };
        let inc = Incoming {
            wire: WireItem {
                item: incoming.clone(),
                inline: None,
            },
            from: ("b".into(), 1),
            attempts,
        };
        let obs = Observed {
            local: Some(Entry::new(local.clone())),
            ..Default::default()
        };
        AccountsPlanner.plan(&pc, vec![inc], vec![obs])
    }

    /// A member set committed but only partly applied is set aside with the very version the
    /// index has. Another copy of that version (the third node relaying it) must not take it
    /// off the set-aside list: the retry must still apply the rest (the full suite met it as a
    /// membership never written on one node while its index said it was).
    #[test]
    fn a_relayed_copy_never_drops_a_partly_applied_member_set() {
        let v = members(&[("a", 2), ("c", 1)], &["amy", "bob"]);
        let p = plan_with(&v, &v, 0);
        assert!(p.steps.is_empty(), "{p:?}");
        assert!(p.aside_remove.is_empty(), "{p:?}");
        // the retry of the set-aside record applies it again
        let p = plan_with(&v, &v, 1);
        assert_eq!(p.steps.len(), 1, "{p:?}");
        assert!(p.steps[0].again);
        assert!(p.aside_remove.is_empty(), "{p:?}");
        // an older set-aside record than the index's goes
        let old = members(&[("a", 1)], &["amy"]);
        let p = plan_with(&v, &old, 1);
        assert!(p.steps.is_empty(), "{p:?}");
        assert_eq!(p.aside_remove, vec![v.key.clone()]);
        // an older copy from a link leaves the set-aside list alone
        let p = plan_with(&v, &old, 0);
        assert!(p.steps.is_empty() && p.aside_remove.is_empty(), "{p:?}");
    }
}
