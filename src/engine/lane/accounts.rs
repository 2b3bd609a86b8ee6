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

use super::core::{Failure, Outcome, ScanReport};
use super::domain::{Applied, Domain, ObserveError, ScanRequest};
use super::plan::{Observed, Step};
use crate::accounts::{AccountDb, AccountId, Change, Snapshot, validate_change};
use crate::engine::group::GroupRt;
use crate::engine::node::{Ctx, unix_now};
use crate::engine::peer::lock;
use crate::item::{Body, Entry, Item};
use crate::net::protocol::WireItem;
use crate::store::{Change as StoreChange, ConflictInfo, Extras};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

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

/// The accounts pseudo-group as a domain of the lane's one pipeline.
pub struct AccountsDomain {
    pub(super) ctx: Arc<Ctx>,
    pub(super) g: Arc<GroupRt>,
    pub(super) head: Arc<watch::Sender<u64>>,
    /// The stat of the account files at the last scan.
    stamp: Mutex<Vec<(u64, i64, i64, u64)>>,
    /// Called once accounts were applied: file owners given by name may resolve now.
    on_applied: Box<dyn Fn() + Send + Sync>,
}

impl AccountsDomain {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        g: Arc<GroupRt>,
        head: Arc<watch::Sender<u64>>,
        on_applied: Box<dyn Fn() + Send + Sync>,
    ) -> AccountsDomain {
        AccountsDomain {
            ctx,
            g,
            head,
            stamp: Mutex::new(Vec::new()),
            on_applied,
        }
    }

    /// Write the taken accounts once, under the shadow-utils locks (blocking).
    fn apply_blocking(&self, steps: &[Step]) -> Vec<Outcome> {
        let Some(policy) = self.g.accounts.clone() else {
            return steps
                .iter()
                .map(|_| not_applied("not the accounts group"))
                .collect();
        };
        let deletions: Vec<Item> = steps
            .iter()
            .filter(|s| s.item.is_deleted())
            .map(|s| s.item.clone())
            .collect();
        let unmanaged = unmanaged_deletions(&self.ctx, &self.g, &deletions);
        let changes: Vec<Change> = steps
            .iter()
            .filter(|s| !unmanaged.contains(&s.item.key))
            .filter_map(|s| change_of(&s.item))
            .collect();
        let report = if changes.is_empty() {
            Default::default()
        } else {
            match AccountDb::new(&self.ctx.root).apply(&policy, &changes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(group = %self.g.name(), "applying account changes: {e}");
                    return steps.iter().map(|_| not_applied(&e.to_string())).collect();
                }
            }
        };
        let mut failed: HashMap<AccountId, (String, bool)> = HashMap::new();
        for c in &report.collisions {
            tracing::error!(group = %self.g.name(), "{c}");
            failed.insert(c.account.clone(), (c.to_string(), true));
        }
        for r in &report.refused {
            tracing::error!(group = %self.g.name(), "{r}");
            failed.insert(r.account.clone(), (r.to_string(), false));
        }
        for h in &report.homes {
            tracing::info!(group = %self.g.name(), "{h}");
        }
        *lock(&self.stamp) = files_stamp(&self.ctx.root);
        steps
            .iter()
            .map(|s| self.outcome(s, &unmanaged, &failed))
            .collect()
    }

    fn outcome(
        &self,
        s: &Step,
        unmanaged: &BTreeSet<Vec<u8>>,
        failed: &HashMap<AccountId, (String, bool)>,
    ) -> Outcome {
        if unmanaged.contains(&s.item.key) {
            return not_applied(&format!(
                "{}: it deletes an account this node does not manage",
                describe(&s.item)
            ));
        }
        let Some(id) = id_of(&s.item.key) else {
            return not_applied("not an account key");
        };
        let Some((why, collision)) = failed.get(&id) else {
            tracing::info!(
                group = %self.g.name(),
                "{} {} (from {})",
                describe(&s.item),
                if s.item.is_deleted() { "deleted" } else { "applied" },
                s.from.0
            );
            return Outcome::Done(Box::new(Entry::new(s.item.clone())));
        };
        let conflict = collision.then(|| {
            // reported as a conflict until the administrator settles it
            let mut nodes = vec![s.item.origin.clone(), self.ctx.name.clone()];
            nodes.sort();
            nodes.dedup();
            ConflictInfo {
                nodes,
                resolved: false,
                winner: String::new(),
                kept_as: Some(why.clone()),
                time: unix_now(),
                versions: vec![],
            }
        });
        Outcome::Failed(Failure {
            error: why.clone(),
            audit_first: Some(if *collision {
                "collision"
            } else {
                "not-applied"
            }),
            conflict,
            ..Default::default()
        })
    }
}

fn not_applied(why: &str) -> Outcome {
    Outcome::Failed(Failure {
        error: why.to_string(),
        audit_first: Some("not-applied"),
        ..Default::default()
    })
}

impl Domain for AccountsDomain {
    fn check(&self, items: &[WireItem]) -> Result<(), (Vec<u8>, String)> {
        let known = |n: &str| self.ctx.cfg.nodes.contains_key(n);
        for w in items {
            if let Err(e) = validate_item(&self.g, w, &known) {
                let key = w.item.key[..w.item.key.len().min(4096)].to_vec();
                return Err((
                    key,
                    format!("refused account record {}: {e}", describe(&w.item)),
                ));
            }
        }
        Ok(())
    }

    fn observe(&self, keys: &[Vec<u8>], _dry: bool) -> Result<Vec<Observed>, ObserveError> {
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

    async fn resolve(self: Arc<Self>, _key: Vec<u8>, _keep: String) -> Result<String, String> {
        Err("account conflicts are settled automatically (the newest change wins; the previous files are kept as passwd-, shadow-, group-, gshadow-)".into())
    }

    fn scan(&self, _req: &ScanRequest) -> ScanReport {
        *lock(&self.stamp) = files_stamp(&self.ctx.root);
        match scan(&self.ctx, &self.g) {
            Ok(head) => super::publish_head(&self.head, head),
            Err(e) => tracing::error!(group = %self.g.name(), "reading the account files: {e}"),
        }
        ScanReport::default()
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

    fn poll(&self) -> bool {
        files_stamp(&self.ctx.root) != *lock(&self.stamp)
    }
}
