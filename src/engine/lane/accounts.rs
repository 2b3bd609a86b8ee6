//! The accounts pseudo-group's lane (SPEC §5.7): a thin caller of [`crate::accounts::sync`],
//! whose four steps hold all the account logic; this file only moves their inputs and outputs
//! between the index, the links, the audit log and the log.
//!
//! - **Scan**: read the files, [`Accounts::detect`], commit the local changes (announced),
//!   write the canonical layout when detect asks for it. Triggered by the watcher (writes and
//!   renames in `<root>/etc`) and a 1 s stat check.
//! - **A peer's batch**: [`validate_item`] each item (a refused one is audited and set aside,
//!   never a reason to close the link), then in one blocking call: scan first (so a tool's
//!   change is never overwritten without a decision), [`plan`] against the index,
//!   [`Accounts::apply`] what is taken together with what was set aside before, and commit
//!   everything with the peer's position in one transaction; only then acknowledge (SPEC
//!   §5.13). A peer of the previous release (protocol 4) sends account items this release does
//!   not apply: its batches are neither applied nor acknowledged (they wait for its upgrade),
//!   and status says so.
//! - Password hashes never reach a log line or the audit log: only names, ids and versions do.

use super::Lane;
use crate::accounts::sync::summary;
use crate::accounts::{
    Account, AccountDb, AccountId, Accounts, Check, Decision, IndexRead, Outcome, keep_local, plan,
    validate_item,
};
use crate::engine::group::GroupRt;
use crate::engine::link::{Link, lock};
use crate::engine::node::{Ctx, unix_now};
use crate::item::{Body, Entry, Item};
use crate::net::protocol::{Msg, WireItem};
use crate::store::{Aside, Change as StoreChange, ConflictInfo, Extras, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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

/// The account state of a lane (shared with its blocking calls).
pub type Shared = Arc<Mutex<Accounts>>;

/// A new account state for the accounts group.
pub fn new_state(ctx: &Ctx, g: &GroupRt) -> Option<Shared> {
    let policy = g.accounts.clone()?;
    Some(Arc::new(Mutex::new(Accounts::new(
        policy,
        ctx.name.clone(),
    ))))
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

    fn all(&mut self) -> Result<Vec<Item>, String> {
        let mut v = Vec::new();
        self.ctx
            .store
            .for_each(self.group, |e| {
                v.push(e.item.clone());
                true
            })
            .map_err(|e| e.to_string())?;
        Ok(v)
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
    let read = db.read().map_err(|e| e.to_string())?;
    if let Some(r) = &read.recovery {
        tracing::warn!(
            group = name,
            "an interrupted write of the account files was finished ({:?} completed, {:?} abandoned)",
            r.completed,
            r.abandoned
        );
    }
    let mut a = lock(acc);
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
            Ok(crate::accounts::Written::Done { files, locked }) => {
                tracing::debug!(
                    group = name,
                    "account files put in canonical order ({files:?}, locks held {locked:?})"
                );
                a.written(c);
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

/// One item to decide and apply: from a peer's batch, or set aside before.
struct Incoming {
    item: Item,
    peer: String,
    peer_inc: u64,
    attempts: u32,
    /// Set aside before and committed as it is (a member set partly applied): apply again.
    retry_same: bool,
}

/// Decide, write the account files once, commit with `position` (blocking). Returns the head,
/// how many items are set aside, and whether accounts changed on disk.
fn apply_batch(
    ctx: &Ctx,
    g: &GroupRt,
    acc: &Mutex<Accounts>,
    batch: Vec<Incoming>,
    position: Option<(String, u64, u64)>,
) -> Result<(u64, usize, bool), String> {
    let name = g.name();
    let db = AccountDb::new(&ctx.root);
    if g.accounts.is_none() {
        return Err("not the accounts group".into());
    }
    // what was set aside is tried again with every batch (a user that arrives lets its
    // memberships apply in the same write)
    let mut items = batch;
    let keys: BTreeSet<Vec<u8>> = items.iter().map(|i| i.item.key.clone()).collect();
    let aside_keys: BTreeSet<Vec<u8>> = ctx
        .store
        .aside(name)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|a| {
            let k = a.item.key.clone();
            if !keys.contains(&k) {
                items.push(Incoming {
                    retry_same: false,
                    item: a.item,
                    peer: a.peer,
                    peer_inc: a.peer_inc,
                    attempts: a.attempts,
                });
            }
            k
        })
        .collect();
    for _ in 0..4 {
        // a tool's change first: it is decided against, never overwritten unseen
        scan(ctx, g, acc)?;
        let locals: Vec<Option<Item>> = items
            .iter()
            .map(|i| ctx.store.get(name, &i.item.key).map(|e| e.map(|e| e.item)))
            .collect::<Result<_, StoreError>>()
            .map_err(|e| e.to_string())?;
        let peer_items: Vec<Item> = items.iter().map(|i| i.item.clone()).collect();
        let decisions = plan(&peer_items, &locals, &g.cfg.conflict);
        let mut extras = Extras {
            position: position.clone(),
            ..Default::default()
        };
        let mut committed: Vec<StoreChange> = Vec::new();
        let mut take: Vec<(usize, Item)> = Vec::new();
        for (i, d) in decisions.into_iter().enumerate() {
            let inc = &mut items[i];
            match d {
                Decision::Ignore => {
                    // a member set committed but only partly applied: apply it again
                    if aside_keys.contains(&inc.item.key)
                        && locals[i].as_ref().is_some_and(|l| {
                            l.version == inc.item.version && l.body == inc.item.body
                        })
                    {
                        inc.retry_same = true;
                        take.push((i, inc.item.clone()));
                    } else {
                        extras.aside_remove.push(inc.item.key.clone());
                    }
                }
                Decision::Take { item, conflict } => {
                    if let Some(c) = conflict {
                        record_conflict(ctx, name, &item, &c, &mut extras);
                    }
                    take.push((i, item));
                }
                Decision::Keep { item, conflict } => {
                    if let Some(c) = conflict {
                        record_conflict(ctx, name, &item, &c, &mut extras);
                    }
                    extras.aside_remove.push(item.key.clone());
                    committed.push(StoreChange {
                        entry: Entry::new(item),
                        announce: true,
                    });
                }
                Decision::Unresolved { conflict } => {
                    let mut info = conflict_info(&conflict, ctx, false);
                    info.kept_as = Some(format!(
                        "each node keeps its own until `clustersync resolve {} --keep NODE`",
                        String::from_utf8_lossy(&inc.item.key)
                    ));
                    tracing::warn!(
                        group = name,
                        "conflict on {}: versions from {}; unresolved (conflict = \"manual\"): clustersync resolve {} --keep NODE",
                        describe(&inc.item),
                        conflict.nodes.join(" and "),
                        String::from_utf8_lossy(&inc.item.key)
                    );
                    ctx.audit.log(crate::ops::audit::Rec {
                        group: name,
                        path: &inc.item.key,
                        kind: "conflict",
                        origin: &inc.item.origin,
                        version: &inc.item.version.display(),
                        peer: Some(&inc.peer),
                        detail: Some("unresolved (manual)"),
                    });
                    extras.conflicts.push((inc.item.key.clone(), Some(info)));
                    extras.aside_remove.push(inc.item.key.clone());
                }
            }
        }
        let take_items: Vec<Item> = take.iter().map(|(_, i)| i.clone()).collect();
        let applied = {
            let mut a = lock(acc);
            if take_items.is_empty() {
                None
            } else {
                match a.apply(&db, &take_items, crate::accounts::store::today()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::error!(group = name, "applying account items: {e}");
                        return Err(e.to_string());
                    }
                }
            }
        };
        if applied.as_ref().is_some_and(|r| r.stale) {
            continue;
        }
        let mut changed = false;
        if let Some(r) = &applied {
            if !r.files.is_empty() {
                changed = true;
                tracing::debug!(
                    group = name,
                    "account files written ({:?}), locks held {:?}",
                    r.files,
                    r.locked
                );
            }
            for h in &r.homes {
                tracing::info!(group = name, "{h}");
            }
            let quiet = r.outcomes.len() > 20;
            for ((i, t), o) in take.iter().zip(&r.outcomes) {
                let inc = &items[*i];
                outcome(
                    ctx,
                    g,
                    acc,
                    inc,
                    locals[*i].as_ref(),
                    t,
                    o,
                    quiet,
                    &mut committed,
                    &mut extras,
                )?;
            }
            let applied = r
                .outcomes
                .iter()
                .filter(|o| matches!(o, Outcome::Applied))
                .count();
            let waiting: Vec<&str> = r
                .outcomes
                .iter()
                .filter_map(|o| match o {
                    Outcome::Aside {
                        reason,
                        collision: false,
                    } => Some(reason.as_str()),
                    _ => None,
                })
                .collect();
            if quiet && applied > 0 {
                tracing::info!(group = name, "{applied} account items applied");
            }
            if let Some(first) = waiting.first() {
                tracing::warn!(
                    group = name,
                    "{} account items wait (tried again with every batch and every few seconds), e.g. {first}",
                    waiting.len()
                );
            }
        }
        let head = ctx.store.commit(name, committed, extras).map_err(|e| {
            lock(acc).forget();
            e.to_string()
        })?;
        let aside = ctx.store.aside(name).map_err(|e| e.to_string())?.len();
        return Ok((head, aside, changed));
    }
    Err("the account files kept changing while being applied; trying again later".into())
}

/// Record what became of one applied item.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one commit"
)]
fn outcome(
    ctx: &Ctx,
    g: &GroupRt,
    acc: &Mutex<Accounts>,
    inc: &Incoming,
    local: Option<&Item>,
    t: &Item,
    o: &Outcome,
    quiet: bool,
    committed: &mut Vec<StoreChange>,
    extras: &mut Extras,
) -> Result<(), String> {
    let name = g.name();
    let as_sent = t.version == inc.item.version && t.body == inc.item.body;
    let commit = |committed: &mut Vec<StoreChange>| {
        let mut e = Entry::new(t.clone());
        if as_sent {
            e.from = Some((inc.peer.clone(), inc.peer_inc));
        }
        committed.push(StoreChange {
            entry: e,
            announce: true,
        });
    };
    let clear_collision = |extras: &mut Extras| -> Result<(), String> {
        if ctx
            .store
            .conflict(name, &t.key)
            .map_err(|e| e.to_string())?
            .is_some_and(|c| is_collision(&c))
        {
            extras.conflicts.push((t.key.clone(), None));
        }
        Ok(())
    };
    match o {
        Outcome::Applied => {
            clear_collision(extras)?;
            extras.aside_remove.push(t.key.clone());
            if !inc.retry_same {
                let kind = if t.is_deleted() { "delete" } else { "apply" };
                ctx.audit_item(name, kind, t, Some(&inc.peer));
                if !quiet {
                    tracing::info!(
                        group = name,
                        "{} {} (from {})",
                        describe(t),
                        if t.is_deleted() { "deleted" } else { "applied" },
                        inc.peer
                    );
                }
                commit(committed);
            }
        }
        Outcome::Partial { waiting } => {
            if !inc.retry_same {
                ctx.audit_item(name, "apply", t, Some(&inc.peer));
                commit(committed);
            }
            let why = format!(
                "{}: waiting for {} to exist here",
                describe(t),
                waiting
                    .iter()
                    .map(|w| format!("user {w:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            extras.aside_put.push(Aside {
                item: t.clone(),
                peer: inc.peer.clone(),
                peer_inc: inc.peer_inc,
                error: why,
                attempts: inc.attempts + 1,
                since: unix_now(),
            });
        }
        Outcome::Aside { reason, collision } => {
            if inc.attempts == 0 {
                if *collision {
                    tracing::error!(group = name, "{reason}");
                } else {
                    tracing::debug!(group = name, "{reason}");
                }
                ctx.audit.log(crate::ops::audit::Rec {
                    group: name,
                    path: &t.key,
                    kind: if *collision {
                        "collision"
                    } else {
                        "not-applied"
                    },
                    origin: &t.origin,
                    version: &t.version.display(),
                    peer: Some(&inc.peer),
                    detail: Some(reason),
                });
            }
            if *collision {
                let mut nodes = vec![t.origin.clone(), ctx.name.clone()];
                nodes.retain(|n| !n.is_empty());
                nodes.sort();
                nodes.dedup();
                extras.conflicts.push((
                    t.key.clone(),
                    Some(ConflictInfo {
                        nodes,
                        resolved: false,
                        winner: String::new(),
                        kept_as: Some(format!("collision: {reason}")),
                        time: unix_now(),
                        versions: vec![],
                    }),
                ));
            }
            extras.aside_put.push(Aside {
                item: t.clone(),
                peer: inc.peer.clone(),
                peer_inc: inc.peer_inc,
                error: reason.clone(),
                attempts: inc.attempts + 1,
                since: unix_now(),
            });
        }
        Outcome::KeepLocal { reason } => {
            extras.aside_remove.push(t.key.clone());
            let a = lock(acc);
            let body = match id_of(&t.key) {
                Some(AccountId::Group(n)) => a
                    .local_group(&n)
                    .map(|group| Account::Group { group, made: 0 }),
                Some(AccountId::User(n)) => {
                    a.local_user(&n).map(|user| Account::User { user, made: 0 })
                }
                _ => None,
            };
            drop(a);
            let (Some(body), Some(local)) = (body, local) else {
                return Ok(());
            };
            let mine = keep_local(local, t, body, &ctx.name, crate::item::version::clock_ms());
            tracing::warn!(
                group = name,
                "{} kept on this node and announced again: {reason} (its deletion on {} would leave that user without it)",
                describe(t),
                t.origin
            );
            ctx.audit.log(crate::ops::audit::Rec {
                group: name,
                path: &t.key,
                kind: "kept",
                origin: &ctx.name,
                version: &mine.version.display(),
                peer: Some(&inc.peer),
                detail: Some(reason),
            });
            committed.push(StoreChange {
                entry: Entry::new(mine),
                announce: true,
            });
        }
    }
    Ok(())
}

fn conflict_info(c: &crate::accounts::Conflict, ctx: &Ctx, resolved: bool) -> ConflictInfo {
    ConflictInfo {
        nodes: c.nodes.clone(),
        resolved,
        winner: c.winner.clone().unwrap_or_default(),
        kept_as: None,
        time: unix_now(),
        versions: c
            .versions
            .iter()
            .map(|v| {
                let mut v = v.clone();
                if v.origin.is_empty() {
                    v.origin = ctx.name.clone();
                }
                v
            })
            .collect(),
    }
}

/// A conflict settled by the policy: logged, audited, listed by `conflicts`.
fn record_conflict(
    ctx: &Ctx,
    group: &str,
    winner: &Item,
    c: &crate::accounts::Conflict,
    extras: &mut Extras,
) {
    let loser = c
        .versions
        .iter()
        .find(|v| v.origin != winner.origin)
        .or(c.versions.first());
    let lost = loser.map(summary).unwrap_or_default();
    let loser_node = loser.map(|l| l.origin.clone()).unwrap_or_default();
    let mut info = conflict_info(c, ctx, true);
    info.kept_as = Some(format!(
        "{loser_node}'s version lost ({lost}); redo it with the tools or run `clustersync resolve {} --keep {loser_node}`",
        String::from_utf8_lossy(&winner.key)
    ));
    tracing::warn!(
        group,
        "conflict on {}: versions from {}; {}'s kept ({}); {loser_node}'s version had {lost}",
        describe(winner),
        c.nodes.join(" and "),
        winner.origin,
        summary(winner),
    );
    let detail = format!("winner {}, loser {loser_node} ({lost})", winner.origin);
    ctx.audit.log(crate::ops::audit::Rec {
        group,
        path: &winner.key,
        kind: "conflict",
        origin: &winner.origin,
        version: &winner.version.display(),
        peer: None,
        detail: Some(&detail),
    });
    extras.conflicts.push((winner.key.clone(), Some(info)));
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
    let mut version = local
        .as_ref()
        .map(|l| l.version.clone())
        .unwrap_or_default();
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
        key: key.clone(),
        version,
        origin: ctx.name.clone(),
        body,
        beat: Vec::new(),
    };
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
        if let Some(Outcome::Aside { reason, .. }) = r.outcomes.first() {
            return Err(format!(
                "{id}: {keep}'s version cannot be applied here: {reason}"
            ));
        }
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
                    ..info.clone()
                }),
            )],
            aside_remove: vec![key.clone()],
            ..Default::default()
        };
        ctx.audit_item(name, "resolve", &item, None);
        ctx.store
            .commit(
                name,
                vec![StoreChange {
                    entry: Entry::new(item),
                    announce: true,
                }],
                extras,
            )
            .map_err(|e| e.to_string())?;
        return Ok(format!(
            "{id}: {keep}'s version kept ({}); it is sent to every node",
            summary(&chosen)
        ));
    }
    Err("the account files kept changing; try again".into())
}

impl Lane {
    fn accounts_state(&mut self) -> Shared {
        self.accounts
            .get_or_insert_with(|| {
                new_state(&self.ctx, &self.g).unwrap_or_else(|| {
                    Arc::new(Mutex::new(Accounts::new(
                        crate::accounts::Policy {
                            set: crate::accounts::ManagedSet::default(),
                            passwords: false,
                            create_home: false,
                        },
                        self.ctx.name.clone(),
                    )))
                })
            })
            .clone()
    }

    fn accounts_problems(&self, problems: Vec<String>) {
        let mut p = lock(&self.state.notes);
        for n in problems.iter().filter(|n| !p.contains(n)) {
            tracing::warn!(group = %self.name(), "accounts: {n}");
        }
        *p = problems;
    }

    /// Scan the account files.
    pub(super) async fn accounts_scan(&mut self) {
        let (ctx, g, acc) = (self.ctx.clone(), self.g.clone(), self.accounts_state());
        self.accounts_stamp = files_stamp(&ctx.root);
        match tokio::task::spawn_blocking(move || scan(&ctx, &g, &acc)).await {
            Ok(Ok((head, problems))) => {
                self.publish(head);
                self.accounts_problems(problems);
            }
            Ok(Err(e)) => tracing::error!(group = %self.name(), "reading the account files: {e}"),
            Err(e) => tracing::error!(group = %self.name(), "account scan: {e}"),
        }
    }

    /// The account files changed since the last scan (their stat).
    pub(super) fn accounts_touched(&self) -> bool {
        files_stamp(&self.ctx.root) != self.accounts_stamp
    }

    /// A peer's batch of account items.
    pub(super) async fn accounts_remote(
        &mut self,
        link: Arc<Link>,
        items: Vec<WireItem>,
        through: u64,
    ) {
        let group = self.name().to_string();
        if link.version < 5 {
            // the previous release's account items: not applied, not acknowledged
            let mut warned = lock(&self.state.warning);
            let msg = format!(
                "{} runs the previous release (protocol {}): accounts are not exchanged with it until it is upgraded",
                link.peer, link.version
            );
            if warned.as_deref() != Some(msg.as_str()) {
                tracing::warn!(group = %group, "{msg}");
                *warned = Some(msg);
            }
            return;
        }
        let members: Vec<String> = self.g.cfg.nodes.clone();
        let Some(policy) = self.g.accounts.clone() else {
            return;
        };
        let check = Check {
            policy: &policy,
            members: &members,
        };
        let inc = link.peer_inc(&group);
        let mut batch = Vec::with_capacity(items.len());
        let mut refused: BTreeMap<Vec<u8>, String> = BTreeMap::new();
        for w in items {
            let r = if w.inline.is_some() {
                Err("content attached to an account".to_string())
            } else {
                validate_item(&w.item, &check)
            };
            match r {
                Ok(()) => batch.push(Incoming {
                    item: w.item,
                    peer: link.peer.clone(),
                    peer_inc: inc,
                    attempts: 0,
                    retry_same: false,
                }),
                Err(e) => {
                    let msg = format!("refused account item {}: {e}", describe(&w.item));
                    self.ctx
                        .audit_refused_item(&group, &w.item.key, &link.peer, &msg);
                    refused.insert(w.item.key.clone(), msg);
                }
            }
        }
        if !refused.is_empty() {
            tracing::error!(peer = %link.peer, group = %group, "{} account items refused (not applied; the link stays up): {}", refused.len(), refused.values().next().cloned().unwrap_or_default());
        }
        if self.ctx.opts.dry_run {
            for i in &batch {
                self.ctx.dry_run_line(
                    if i.item.is_deleted() {
                        "delete"
                    } else {
                        "receive"
                    },
                    &i.item.key,
                );
            }
            return;
        }
        let (ctx, g, acc) = (self.ctx.clone(), self.g.clone(), self.accounts_state());
        let position = Some((link.peer.clone(), inc, through));
        let r =
            tokio::task::spawn_blocking(move || apply_batch(&ctx, &g, &acc, batch, position)).await;
        match r {
            Ok(Ok((head, aside, owners))) => {
                self.after_apply(head, aside, owners);
                {
                    let mut r = lock(&link.remote);
                    let e = r.entry(group.clone()).or_default();
                    e.applied = e.applied.max(through);
                }
                let _ = link.send(Msg::Ack { group, through }).await;
            }
            // not saved: not acknowledged, the peer sends it again
            Ok(Err(e)) => {
                tracing::error!(group = %group, "account batch from {} not applied: {e}", link.peer)
            }
            Err(e) => tracing::error!(group = %group, "account apply task: {e}"),
        }
    }

    fn after_apply(&mut self, head: u64, aside: usize, owners: bool) {
        self.publish(head);
        self.state.aside.store(aside as u64, Ordering::Relaxed);
        self.accounts_stamp = files_stamp(&self.ctx.root);
        if owners {
            // files owned by these accounts get their owner by name now
            self.ctx.owners.invalidate();
            for l in self.ctx.lanes() {
                if !l.group.is_accounts() {
                    l.owners_changed();
                }
            }
        }
    }

    /// Set-aside account items whose next try is due.
    pub(super) async fn accounts_retry(&mut self) {
        let (ctx, g, acc) = (self.ctx.clone(), self.g.clone(), self.accounts_state());
        let r = tokio::task::spawn_blocking(move || apply_batch(&ctx, &g, &acc, Vec::new(), None))
            .await;
        match r {
            Ok(Ok((head, aside, owners))) => self.after_apply(head, aside, owners),
            Ok(Err(e)) => {
                tracing::warn!(group = %self.name(), "retrying set-aside account items: {e}")
            }
            Err(e) => tracing::error!(group = %self.name(), "account retry task: {e}"),
        }
    }

    /// `clustersync resolve user/NAME --keep NODE`.
    pub(super) async fn accounts_resolve(
        &mut self,
        key: Vec<u8>,
        keep: String,
    ) -> Result<String, String> {
        let (ctx, g, acc) = (self.ctx.clone(), self.g.clone(), self.accounts_state());
        let r = tokio::task::spawn_blocking(move || resolve(&ctx, &g, &acc, key, &keep))
            .await
            .map_err(|e| e.to_string())?;
        if let Ok(head) = self.ctx.store.group_head(self.name()) {
            self.publish(head);
        }
        self.accounts_stamp = files_stamp(&self.ctx.root);
        r
    }
}
