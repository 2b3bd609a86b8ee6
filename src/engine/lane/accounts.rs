//! The accounts pseudo-group's lane (SPEC §5.7): each managed user and group is an item (key
//! `user/NAME` or `group/NAME`, body [`Body::User`]/[`Body::Group`]) that rides the same
//! version vectors, index, protocol, conflicts and audit log as files.
//!
//! - **Detect**: a scan reads `<root>/etc/{passwd,group,shadow,gshadow}` through
//!   [`AccountDb::read`] and compares each managed account with its index item; a difference
//!   is a new local version, an account gone from the files a tombstone (one that could not be
//!   read is never taken for deleted). The watcher reports writes and renames into `<root>/etc`;
//!   a timer compares the files' stat every second as a safety net.
//! - **Apply**: a peer's items are validated as account records ([`validate_change`]; a bad one
//!   refuses the whole batch, closes the link and is audited without its content), decided like
//!   any item (policy `newest`: the change made last by its origin's clock), and written in one
//!   [`AccountDb::apply`]: the shadow-utils lock, atomic rewrites, `-` backups. A collision
//!   with a different local account, or a refusal, sets the item aside (visible in `status`,
//!   audited, logged at ERROR naming both accounts) and it is tried again. File owners given by
//!   name are fixed in every file group once their accounts exist.
//! - Password hashes never reach a log line or the audit log: only names and versions do.

use super::Lane;
use crate::accounts::{AccountDb, AccountId, Change, Snapshot, validate_change};
use crate::engine::decide::{Decision, Policy, decide};
use crate::engine::group::GroupRt;
use crate::engine::link::{Link, lock};
use crate::engine::node::{Ctx, unix_now};
use crate::item::{Body, Entry, Item};
use crate::net::protocol::{Msg, WireItem};
use crate::store::{Aside, Change as StoreChange, Extras, StoreError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The item key of an account.
pub fn key_of(id: &AccountId) -> Vec<u8> {
    match id {
        AccountId::User(n) => format!("user/{n}").into_bytes(),
        AccountId::Group(n) => format!("group/{n}").into_bytes(),
    }
}

/// The account a key names.
pub fn id_of(key: &[u8]) -> Option<AccountId> {
    let s = std::str::from_utf8(key).ok()?;
    if let Some(n) = s.strip_prefix("user/") {
        return Some(AccountId::User(n.to_string()));
    }
    s.strip_prefix("group/")
        .map(|n| AccountId::Group(n.to_string()))
}

/// The change that puts `item` in place (or removes its account).
fn change_of(item: &Item) -> Option<Change> {
    match (&item.body, id_of(&item.key)?) {
        (Some(Body::User(u)), AccountId::User(n)) if u.name == n => Some(Change::User(u.clone())),
        (Some(Body::Group(g)), AccountId::Group(n)) if g.name == n => {
            Some(Change::Group(g.clone()))
        }
        (None, AccountId::User(n)) => Some(Change::DeleteUser(n)),
        (None, AccountId::Group(n)) => Some(Change::DeleteGroup(n)),
        _ => None,
    }
}

/// Check a peer's account item before anything uses it.
pub fn validate_item(
    g: &GroupRt,
    w: &WireItem,
    known_node: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let i = &w.item;
    let Some(policy) = &g.accounts else {
        return Err("not the accounts group".into());
    };
    if w.inline.is_some() {
        return Err("content attached to an account".into());
    }
    if !known_node(&i.origin) || !g.cfg.nodes.contains(&i.origin) {
        return Err(format!(
            "origin {:?} is not a member of [accounts]",
            i.origin
        ));
    }
    if i.version.len() > 1024
        || i.version.0.keys().any(|k| k.len() > 255)
        || i.version.is_empty()
        || i.version
            .0
            .values()
            .any(|c| *c > crate::engine::apply::max_counter())
    {
        return Err("bad version vector".into());
    }
    if i.beat.len() > 1024 {
        return Err("oversized list of beaten nodes".into());
    }
    let change = change_of(i).ok_or("key and record do not match")?;
    validate_change(&change, &policy.set).map_err(|e| e.to_string())
}

fn read_snapshot(ctx: &Ctx, g: &GroupRt) -> Result<Snapshot, String> {
    let Some(policy) = &g.accounts else {
        return Err("not the accounts group".into());
    };
    let mut policy = policy.clone();
    // groups the index holds stay managed while they exist
    let mut kept = Vec::new();
    let _ = ctx.store.for_each(g.name(), |e| {
        if let Some(Body::Group(gr)) = &e.item.body {
            kept.push(gr.name.clone());
        }
        true
    });
    policy.set.keep_groups(kept);
    AccountDb::new(&ctx.root)
        .read(&policy)
        .map_err(|e| e.to_string())
}

/// Is the index body `known` what the files show (`now`), apart from memberships in groups
/// that do not exist here (a user applied before its groups)?
fn same_account(known: &Body, now: &Body, local_groups: &BTreeSet<String>) -> bool {
    match (known, now) {
        (Body::User(a), Body::User(b)) => {
            let mut a = a.clone();
            a.groups.retain(|x| local_groups.contains(x));
            let mut b = b.clone();
            b.groups.retain(|x| local_groups.contains(x));
            a == b
        }
        (a, b) => a == b,
    }
}

/// Compare the account files with the index and commit new versions (blocking).
fn scan(ctx: &Ctx, g: &GroupRt) -> Result<u64, String> {
    let snap = read_snapshot(ctx, g)?;
    for p in &snap.problems {
        tracing::warn!(group = %g.name(), "accounts: {p:?}");
    }
    let local_groups: BTreeSet<String> = group_names(&ctx.root);
    let clock = crate::item::version::clock_ms();
    let mut changes = Vec::new();
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    let bodies = snap
        .users
        .values()
        .map(|u| (AccountId::User(u.name.clone()), Body::User(u.clone())))
        .chain(
            snap.groups
                .values()
                .map(|gr| (AccountId::Group(gr.name.clone()), Body::Group(gr.clone()))),
        );
    for (id, body) in bodies {
        let key = key_of(&id);
        seen.insert(key.clone());
        let old = ctx.store.get(g.name(), &key).map_err(|e| e.to_string())?;
        let same = old
            .as_ref()
            .and_then(|o| o.item.body.as_ref())
            .is_some_and(|b| same_account(b, &body, &local_groups));
        if same {
            continue;
        }
        let mut version = old.map(|o| o.item.version).unwrap_or_default();
        version.bump(&ctx.name, clock);
        changes.push(StoreChange {
            entry: Entry::new(Item {
                key,
                version,
                origin: ctx.name.clone(),
                body: Some(body),
                beat: vec![],
            }),
            announce: true,
        });
    }
    let unreadable: BTreeSet<Vec<u8>> = snap.unreadable().map(key_of).collect();
    let mut gone = Vec::new();
    ctx.store
        .for_each(g.name(), |e| {
            if !e.item.is_deleted()
                && !seen.contains(&e.item.key)
                && !unreadable.contains(&e.item.key)
            {
                gone.push(e.clone());
            }
            true
        })
        .map_err(|e| e.to_string())?;
    for e in gone {
        let mut version = e.item.version.clone();
        version.bump(&ctx.name, clock);
        changes.push(StoreChange {
            entry: Entry::new(Item {
                key: e.item.key,
                version,
                origin: ctx.name.clone(),
                body: None,
                beat: vec![],
            }),
            announce: true,
        });
    }
    if changes.is_empty() {
        return Ok(0);
    }
    for c in &changes {
        let kind = if c.entry.item.is_deleted() {
            "local-delete"
        } else {
            "local-change"
        };
        ctx.audit_item(g.name(), kind, &c.entry.item, None);
        tracing::info!(group = %g.name(), "{} {}", describe(&c.entry.item), if c.entry.item.is_deleted() { "deleted here" } else { "changed here" });
    }
    ctx.store
        .commit(g.name(), changes, Extras::default())
        .map_err(|e| e.to_string())
}

/// The keys of `deletions` that name an account existing here that is not managed (a peer
/// may only delete managed accounts).
fn unmanaged_deletions(ctx: &Ctx, g: &GroupRt, deletions: &[Item]) -> BTreeSet<Vec<u8>> {
    if deletions.is_empty() {
        return BTreeSet::new();
    }
    let Ok(snap) = read_snapshot(ctx, g) else {
        return BTreeSet::new();
    };
    let users = names_in(&ctx.root.join("etc/passwd"));
    let groups = names_in(&ctx.root.join("etc/group"));
    deletions
        .iter()
        .filter(|i| match id_of(&i.key) {
            Some(AccountId::User(n)) => users.contains(&n) && !snap.users.contains_key(&n),
            Some(AccountId::Group(n)) => groups.contains(&n) && !snap.groups.contains_key(&n),
            None => true,
        })
        .map(|i| i.key.clone())
        .collect()
}

/// The names of the entries of a passwd-like file.
fn names_in(file: &std::path::Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter(|n| {
            !n.is_empty() && !n.starts_with('#') && !n.starts_with('+') && !n.starts_with('-')
        })
        .map(String::from)
        .collect()
}

/// `user niden` / `group devs`.
pub fn describe(item: &Item) -> String {
    id_of(&item.key)
        .map(|i| i.to_string())
        .unwrap_or_else(|| item.show().into_owned())
}

fn group_names(root: &std::path::Path) -> BTreeSet<String> {
    names_in(&root.join("etc/group"))
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

impl Lane {
    /// Scan the account files.
    pub(super) async fn accounts_scan(&mut self) {
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        self.accounts_stamp = files_stamp(&ctx.root);
        match tokio::task::spawn_blocking(move || scan(&ctx, &g)).await {
            Ok(Ok(head)) => self.publish(head),
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
        let known = |n: &str| self.ctx.cfg.nodes.contains_key(n);
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let deletions: Vec<Item> = items
            .iter()
            .filter(|w| w.item.is_deleted())
            .map(|w| w.item.clone())
            .collect();
        let unmanaged =
            tokio::task::spawn_blocking(move || unmanaged_deletions(&ctx, &g, &deletions))
                .await
                .unwrap_or_default();
        for w in &items {
            let check = validate_item(&self.g, w, &known).and_then(|()| {
                if unmanaged.contains(&w.item.key) {
                    Err("it deletes an account this node does not manage".to_string())
                } else {
                    Ok(())
                }
            });
            if let Err(e) = check {
                let msg = format!("refused account record {}: {e}", describe(&w.item));
                tracing::error!(peer = %link.peer, group = %group, "{msg}; closing the link");
                self.ctx
                    .audit_refused_item(&group, &w.item.key, &link.peer, &msg);
                let _ = link.send(Msg::Bye { reason: msg }).await;
                link.close();
                return;
            }
        }
        let inc = link.peer_inc(&group);
        let batch = items
            .into_iter()
            .map(|w| (w.item, (link.peer.clone(), inc), 0))
            .collect();
        self.accounts_apply(batch, Some((link.peer.clone(), inc, through)))
            .await;
        {
            let mut r = lock(&link.remote);
            let e = r.entry(group.clone()).or_default();
            e.applied = e.applied.max(through);
        }
        let _ = link.send(Msg::Ack { group, through }).await;
    }

    /// Account items a comparison with a peer found different (validated): decided like a
    /// batch of that peer, with no position.
    pub(super) async fn accounts_found(&mut self, from: (String, u64), items: Vec<WireItem>) {
        let batch: Vec<_> = items
            .into_iter()
            .map(|w| (w.item, from.clone(), 0))
            .collect();
        if !batch.is_empty() {
            self.accounts_apply(batch, None).await;
        }
    }

    /// Set-aside account items whose next try is due.
    pub(super) async fn accounts_retry(&mut self) {
        let ctx = self.ctx.clone();
        let name = self.name().to_string();
        let Ok(Ok(all)) = tokio::task::spawn_blocking(move || ctx.store.aside(&name)).await else {
            return;
        };
        let batch: Vec<_> = all
            .into_iter()
            .map(|a| (a.item, (a.peer, a.peer_inc), a.attempts))
            .collect();
        if !batch.is_empty() {
            self.accounts_apply(batch, None).await;
        }
    }

    /// Decide, write the account files once, commit.
    async fn accounts_apply(
        &mut self,
        items: Vec<(Item, (String, u64), u32)>,
        position: Option<(String, u64, u64)>,
    ) {
        let (ctx, g) = (self.ctx.clone(), self.g.clone());
        let group = self.name().to_string();
        if ctx.opts.dry_run {
            for (i, _, _) in &items {
                ctx.dry_run_line(if i.is_deleted() { "delete" } else { "receive" }, &i.key);
            }
            return;
        }
        let r = tokio::task::spawn_blocking(move || -> Result<(u64, usize, bool), StoreError> {
            let name = g.name();
            let policy_d = Policy {
                conflict: &g.cfg.conflict,
                compare_owner: true,
                me: &ctx.name,
            };
            let mut extras = Extras {
                position,
                ..Default::default()
            };
            let mut keeps = Vec::new();
            let mut takes: Vec<(Item, (String, u64), u32, bool)> = Vec::new();
            for (item, from, attempts) in items {
                let local = ctx.store.get(name, &item.key)?;
                match decide(local.as_ref().map(|e| &e.item), &item, &policy_d) {
                    Decision::Ignore | Decision::Unresolved { .. } => {
                        extras.aside_remove.push(item.key.clone())
                    }
                    Decision::Take { item: t, conflict } => {
                        if let Some(c) = conflict {
                            tracing::warn!(
                                group = name,
                                "conflict on {}: versions from {}; {} wins (newest)",
                                describe(&t),
                                c.nodes.join(" and "),
                                c.winner.clone().unwrap_or_default()
                            );
                            ctx.audit_item(name, "conflict", &t, None);
                            extras.conflicts.push((
                                t.key.clone(),
                                Some(crate::store::ConflictInfo {
                                    nodes: c.nodes,
                                    resolved: true,
                                    winner: c.winner.unwrap_or_default(),
                                    kept_as: Some(format!(
                                        "passwd-, shadow-, group-, gshadow- on {}",
                                        ctx.name
                                    )),
                                    time: unix_now(),
                                    versions: vec![],
                                }),
                            ));
                        }
                        let as_sent = t.version == item.version;
                        takes.push((t, from, attempts, as_sent));
                    }
                    Decision::Keep { item: k, .. } => {
                        if let Some(mut e) = local {
                            e.item = k;
                            e.from = None;
                            keeps.push(StoreChange {
                                entry: e,
                                announce: true,
                            });
                        }
                    }
                }
            }
            let changes: Vec<Change> = takes.iter().filter_map(|t| change_of(&t.0)).collect();
            let mut committed = keeps;
            let mut owners = false;
            if let Some(policy) = g.accounts.clone()
                && !changes.is_empty()
            {
                let report = AccountDb::new(&ctx.root).apply(&policy, &changes);
                let report = match report {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(group = name, "applying account changes: {e}");
                        for (t, from, attempts, _) in takes {
                            extras.aside_put.push(Aside {
                                item: t,
                                peer: from.0,
                                peer_inc: from.1,
                                error: e.to_string(),
                                attempts: attempts + 1,
                                since: unix_now(),
                            });
                        }
                        let n = ctx.store.commit(name, committed, extras)?;
                        return Ok((n, ctx.store.aside(name)?.len(), false));
                    }
                };
                let mut failed: std::collections::HashMap<AccountId, String> = Default::default();
                let collided: BTreeSet<AccountId> = report
                    .collisions
                    .iter()
                    .map(|c| c.account.clone())
                    .collect();
                for c in &report.collisions {
                    tracing::error!(group = name, "{c}");
                    failed.insert(c.account.clone(), c.to_string());
                }
                for r in &report.refused {
                    tracing::error!(group = name, "{r}");
                    failed.insert(r.account.clone(), r.to_string());
                }
                for h in &report.homes {
                    tracing::info!(group = name, "{h}");
                }
                for (t, from, attempts, as_sent) in takes {
                    let Some(id) = id_of(&t.key) else { continue };
                    if let Some(why) = failed.get(&id) {
                        let collision = collided.contains(&id);
                        if attempts == 0 {
                            ctx.audit.log(crate::ops::audit::Rec {
                                group: name,
                                path: &t.key,
                                kind: if collision {
                                    "collision"
                                } else {
                                    "not-applied"
                                },
                                origin: &t.origin,
                                version: &t.version.display(),
                                peer: Some(&from.0),
                                detail: Some(why),
                            });
                        }
                        if collision {
                            // reported as a conflict until the administrator settles it
                            let mut nodes = vec![t.origin.clone(), ctx.name.clone()];
                            nodes.sort();
                            nodes.dedup();
                            extras.conflicts.push((
                                t.key.clone(),
                                Some(crate::store::ConflictInfo {
                                    nodes,
                                    resolved: false,
                                    winner: String::new(),
                                    kept_as: Some(why.clone()),
                                    time: unix_now(),
                                    versions: vec![],
                                }),
                            ));
                        }
                        extras.aside_remove.retain(|k| *k != t.key);
                        extras.aside_put.push(Aside {
                            item: t,
                            peer: from.0,
                            peer_inc: from.1,
                            error: why.clone(),
                            attempts: attempts + 1,
                            since: unix_now(),
                        });
                        continue;
                    }
                    owners = true;
                    // a collision settled by the administrator: no longer a conflict
                    if ctx
                        .store
                        .conflict(name, &t.key)?
                        .is_some_and(|c| !c.resolved)
                    {
                        extras.conflicts.push((t.key.clone(), None));
                    }
                    ctx.audit_item(
                        name,
                        if t.is_deleted() { "delete" } else { "apply" },
                        &t,
                        Some(&from.0),
                    );
                    tracing::info!(
                        group = name,
                        "{} {} (from {})",
                        describe(&t),
                        if t.is_deleted() { "deleted" } else { "applied" },
                        from.0
                    );
                    extras.aside_remove.push(t.key.clone());
                    let mut e = Entry::new(t);
                    if as_sent {
                        e.from = Some(from);
                    }
                    committed.push(StoreChange {
                        entry: e,
                        announce: true,
                    });
                }
            }
            let n = ctx.store.commit(name, committed, extras)?;
            Ok((n, ctx.store.aside(name)?.len(), owners))
        })
        .await;
        match r {
            Ok(Ok((head, aside, owners))) => {
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
            Ok(Err(e)) => tracing::error!(group = %group, "index commit: {e}"),
            Err(e) => tracing::error!(group = %group, "account apply task: {e}"),
        }
    }
}
