//! The four steps of account sync, behind narrow signatures with explicit I/O, for the engine
//! (the lane today, the accounts domain of the lane core later):
//!
//! - (a) **detect** ([`Accounts::detect`]): the files as read ([`AccountDb::read`]) and the
//!   index's entries (through [`IndexRead`]) → the local changes to commit, what cannot be read
//!   or left the managed set (for `status`), and the files in canonical layout when they are
//!   not (to write with [`AccountDb::write`]);
//! - (b) **validate** ([`validate_item`], pure): a peer's item before anything uses it;
//! - (c) **plan** ([`plan`], pure): a peer's items and the index entries of their keys → a
//!   [`Decision`] per item;
//! - (d) **apply** ([`Accounts::apply`]): the items to put in place (decisions `Take`, and
//!   items set aside earlier) → one write of the four files → an [`Outcome`] per item.
//!
//! [`Accounts`] keeps, between calls, the content of the four files that the index agrees
//! with (after a detect whose changes were committed, or an apply whose outcomes were), their
//! [`View`] (the lookups by name and id, made once per content), and the last [`FileSet`] read
//! or written, so that:
//! - a read ([`Accounts::read`]) reads again only the files whose stat changed;
//! - a detect of files nobody changed costs nothing, and otherwise looks only at the entries
//!   whose lines changed (the lines between the first and the last that differ);
//! - an apply to files in canonical layout patches the lines of the accounts it changes
//!   (see [`apply`]) and writes only the files that change.
//!
//! So the cost of a change grows with the change; what remains proportional to the database
//! is reading a file a tool rewrote (and indexing it), and writing a file that changes (it is
//! replaced whole, as shadow-utils does). The caller must commit what detect and apply return
//! before calling again, or call [`Accounts::forget`] (then the next detect compares every
//! account with the index).
//!
//! Invariants: an item is committed as applied only when the files hold it (or it deletes an
//! account this node does not manage: nothing to delete); an account whose lines cannot be read
//! is never taken for deleted; an account that leaves the managed set on this node is reported,
//! never turned into a deletion elsewhere; the same accounts give the same items on every node
//! (adopted items have no version, no origin and time 0).

use super::apply::{self, Outcome};
use super::db::{self, AccountFiles, DbFile};
use super::error::AccountsError;
use super::managed::Policy;
use super::merge::{self, Decision};
use super::model::{Account, AccountId, Dot, Group, Member, Members, User, shown};
use super::report::HomeOutcome;
use super::store::{AccountDb, FileSet, Written};
use super::validate::validate_account;
use super::view::View;
use crate::config::ConflictPolicy;
use crate::item::{Body, Item, VersionVector};
use foldhash::{HashMap, HashMapExt};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the local members of a deleted managed group wait for a new group of the same gid
/// (the other half of a rename) before they are forgotten.
pub const CARRY_FOR: Duration = Duration::from_secs(600);

/// Names of users, groups and member sets to look at.
type Names = BTreeSet<Vec<u8>>;

/// The index entries detect compares with.
pub trait IndexRead {
    /// The index's item for `key` (live or tombstone), if any.
    fn get(&mut self, key: &[u8]) -> Result<Option<Item>, String>;
    /// Every key of the accounts group, live or deleted (only when detect starts cold).
    fn keys(&mut self) -> Result<Vec<Vec<u8>>, String>;
    /// Every member set (`members/…`) of the index, live or deleted (only when a user comes
    /// back on top of its deletion).
    fn member_sets(&mut self) -> Result<Vec<Item>, String> {
        let mut out = Vec::new();
        for k in self.keys()? {
            if matches!(AccountId::from_key(&k), Some(AccountId::Members(_)))
                && let Some(i) = self.get(&k)?
            {
                out.push(i);
            }
        }
        Ok(out)
    }
}

/// What [`Accounts::detect`] found.
#[derive(Debug, Default)]
pub struct Detected {
    /// New local versions to commit (and announce), in the order to apply them elsewhere:
    /// group deletions, groups, user deletions, users, member sets.
    pub changes: Vec<Item>,
    /// Accounts that cannot be read or left the managed set here, for `status` (sorted, no
    /// hash, names escaped).
    pub problems: Vec<String>,
    /// The files in canonical layout, when they are not: write them with
    /// [`AccountDb::write`] (a `Stale` answer just means a tool wrote meanwhile).
    pub canonical: Option<AccountFiles>,
    /// The changes are adopted copies (the node joined accounts as new).
    pub adopted: bool,
}

/// What [`Accounts::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// One per item given, in order; empty when `stale`.
    pub outcomes: Vec<Outcome>,
    /// The files changed since the last detect: nothing was written; detect (and commit),
    /// plan again, apply again.
    pub stale: bool,
    /// The files rewritten.
    pub files: Vec<DbFile>,
    /// How long the passwd locks were held.
    pub locked: Duration,
    pub homes: Vec<HomeOutcome>,
}

/// Account sync of one node (the state kept between calls; see the module documentation).
#[derive(Debug)]
pub struct Accounts {
    policy: Policy,
    me: String,
    /// The files' content that the index agrees with; `None`: unknown (compare everything).
    files: Option<AccountFiles>,
    /// The view of `files` (made when first needed).
    view: Option<Arc<View>>,
    /// The files as last read or written (what the next read compares the stat with).
    last: Option<FileSet>,
    /// Local members of managed groups deleted here, by gid, until a new group of that gid
    /// takes them over (a rename that arrives in two batches) or [`CARRY_FOR`] passes.
    carried: HashMap<u32, (Vec<Vec<u8>>, Instant)>,
    /// Accounts that left the managed set on this node while the index has them live.
    left: BTreeMap<AccountId, String>,
    /// Read problems by account key.
    problems: BTreeMap<String, String>,
    /// Lines that may be a managed account's but do not parse (as of the last detect).
    malformed: Vec<String>,
    /// A detect ran (a node joins as new only at its first detect).
    detected: bool,
    /// A checker ([`Accounts::checker`]): detect works out no canonical layout.
    check_only: bool,
}

fn key_name(id: &AccountId) -> String {
    String::from_utf8_lossy(&id.key()).into_owned()
}

/// The account body of an item.
fn account(i: &Item) -> Option<&Account> {
    match &i.body {
        Some(Body::Account(a)) => Some(a),
        _ => None,
    }
}

/// The names of a live member-set item (empty for a tombstone or none).
fn member_names(i: Option<&Item>) -> Vec<String> {
    match i.and_then(account) {
        Some(Account::Members(m)) => m.names().map(String::from).collect(),
        _ => Vec::new(),
    }
}

impl Accounts {
    pub fn new(policy: Policy, me: impl Into<String>) -> Accounts {
        Accounts {
            policy,
            me: me.into(),
            files: None,
            view: None,
            last: None,
            carried: HashMap::new(),
            left: BTreeMap::new(),
            problems: BTreeMap::new(),
            malformed: Vec::new(),
            detected: false,
            check_only: false,
        }
    }

    /// No detect ran yet: the caller passes `adopt` to [`Accounts::detect`] only then (with an
    /// empty index), so only what the files held when the node started is adopted.
    pub fn first_detect(&self) -> bool {
        !self.detected
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The files were written as `set` (the canonical layout a detect asked for): the index
    /// agrees with them as it did with the files read.
    pub fn written(&mut self, set: FileSet) {
        self.view = Some(self.view_for(&set.files, &[]));
        self.files = Some(set.files.clone());
        self.last = Some(set);
    }

    /// Forget what the index agrees with (a commit failed, the index was reset): the next
    /// detect compares every account with the index.
    pub fn forget(&mut self) {
        self.files = None;
        self.view = None;
    }

    /// Read the four files (under the locks), again only those whose stat changed since the
    /// last read or write.
    pub fn read(&mut self, db: &AccountDb) -> Result<FileSet, AccountsError> {
        let set = db.read_since(self.last.as_ref())?;
        self.last = Some(set.clone());
        Ok(set)
    }

    /// The view of the files the index agrees with.
    fn view(&mut self) -> Option<Arc<View>> {
        let files = self.files.clone()?;
        match &self.view {
            Some(v) if v.files.same_tables(&files) => Some(v.clone()),
            _ => {
                let v = self.view_for(&files, &[]);
                self.view = Some(v.clone());
                Some(v)
            }
        }
    }

    /// The view of `files`: the kept view patched with the lines that changed when nothing
    /// else holds it (see [`View::patched`]; `known`: windows computed already), else built
    /// anew. The kept view is taken.
    fn view_for(&mut self, files: &AccountFiles, known: &[db::Compared]) -> Arc<View> {
        if let Some(v) = self.view.take_if(|v| v.files.same_tables(files)) {
            return v;
        }
        Arc::new(match self.view.take().map(Arc::try_unwrap) {
            Some(Ok(v)) => v.patched(files, &self.policy, known),
            _ => View::new(files, &self.policy),
        })
    }

    /// What `status` shows: read problems and accounts that left the managed set.
    pub fn problems(&self) -> Vec<String> {
        self.malformed
            .iter()
            .chain(self.problems.values())
            .chain(self.left.values())
            .cloned()
            .collect()
    }

    /// (a) Compare the files with the index; see [`Detected`]. `now_ms`: the clock (ms since
    /// the epoch); `adopt`: the index holds no account yet (the node joins as new): what the
    /// files have is stored unversioned, so any change made anywhere wins over it.
    pub fn detect(
        &mut self,
        read: &FileSet,
        index: &mut dyn IndexRead,
        now_ms: u64,
        adopt: bool,
    ) -> Result<Detected, AccountsError> {
        let policy = self.policy.clone();
        let new = &read.files;
        if !adopt && self.detected && self.agrees(read) {
            // nothing changed since what the index agrees with
            self.files = Some(new.clone());
            return Ok(Detected {
                problems: self.problems(),
                ..Detected::default()
            });
        }
        let made = if adopt {
            0
        } else {
            read.mtime_ms()
                .min(i64::try_from(now_ms).unwrap_or(i64::MAX))
        };
        let ix = |e: String| AccountsError::Index(e);
        // what to look at: every account when cold, else the entries whose lines changed
        let cold = self.files.is_none();
        let changed = self.files.as_ref().map(|old| changed_accounts(old, new));
        // what the view of the old files says of the users whose lines changed (that view is
        // then patched into the view of the new files): managed, a user, a group of that name;
        // a user whose lines did not change is what it was
        let old_facts: Option<HashMap<Vec<u8>, (bool, bool, bool)>> = match (self.view(), &changed)
        {
            (Some(v), Some((u, _, _))) => Some(
                u.iter()
                    .map(|n| {
                        let facts = (
                            v.is_managed_user(n),
                            v.users.contains_key(n.as_slice()),
                            v.groups.contains_key(n.as_slice()),
                        );
                        (n.clone(), facts)
                    })
                    .collect(),
            ),
            _ => None,
        };
        let compared = changed.as_ref().map_or(&[][..], |c| &c.2[..]);
        let view = self.view_for(new, compared);
        let (users, groups, mut member_groups): (Names, Names, Names) = match changed {
            None => {
                let mut u: BTreeSet<Vec<u8>> = view.users.keys().map(|n| n.to_vec()).collect();
                let mut g: BTreeSet<Vec<u8>> = view.groups.keys().map(|n| n.to_vec()).collect();
                for k in index.keys().map_err(ix)? {
                    match AccountId::from_key(&k) {
                        Some(AccountId::User(n)) => {
                            u.insert(n.into_bytes());
                        }
                        Some(AccountId::Group(n)) | Some(AccountId::Members(n)) => {
                            g.insert(n.into_bytes());
                        }
                        None => {}
                    }
                }
                (u, g.clone(), g)
            }
            Some((u, g, _)) => (u, g.clone(), g),
        };
        // a user whose managed-ness changed: its memberships changed without its groups' lines
        if let Some(facts) = &old_facts {
            let flipped: BTreeSet<&[u8]> = users
                .iter()
                .filter(|n| {
                    facts.get(n.as_slice()).is_some_and(|&(managed, user, _)| {
                        managed != view.is_managed_user(n)
                            && user
                            && view.users.contains_key(n.as_slice())
                    })
                })
                .map(Vec::as_slice)
                .collect();
            if !flipped.is_empty() {
                for g in view.groups.keys() {
                    if view
                        .member_field(g)
                        .is_some_and(|f| db::list(f).iter().any(|m| flipped.contains(m)))
                    {
                        member_groups.insert(g.to_vec());
                    }
                }
            }
            // a user private group follows its user
            for u in &users {
                if view.groups.contains_key(u.as_slice())
                    || facts.get(u.as_slice()).is_some_and(|f| f.2)
                {
                    member_groups.insert(u.clone());
                }
            }
        }
        let groups: BTreeSet<Vec<u8>> = groups
            .into_iter()
            .chain(
                users
                    .iter()
                    .filter(|u| view.groups.contains_key(u.as_slice()))
                    .cloned(),
            )
            .collect();

        let mut out = Detected {
            adopted: adopt,
            ..Detected::default()
        };
        let mut group_dels = Vec::new();
        let mut group_sets = Vec::new();
        let mut user_dels = Vec::new();
        let mut user_sets = Vec::new();
        let mut member_sets = Vec::new();
        let mut deleted_groups: BTreeSet<String> = BTreeSet::new();
        // users added on top of their deletion (a name used again)
        let mut reborn: BTreeSet<String> = BTreeSet::new();
        // users
        for n in &users {
            let Ok(name) = std::str::from_utf8(n) else {
                continue;
            };
            let id = AccountId::User(name.to_string());
            let pkey = key_name(&id);
            self.problems.remove(&pkey);
            self.left.remove(&id);
            let key = id.key();
            match view.user(n, &policy) {
                Some(Ok(rec)) => {
                    let old = index.get(&key).map_err(ix)?;
                    if old.as_ref().is_some_and(Item::is_deleted) {
                        reborn.insert(name.to_string());
                    }
                    let same = old
                        .as_ref()
                        .and_then(account)
                        .is_some_and(|a| matches!(a, Account::User { user, .. } if *user == rec));
                    if !same {
                        let body = Account::User { user: rec, made };
                        user_sets.push(self.version(key, old, Some(body), now_ms, adopt));
                    }
                }
                Some(Err(p)) => {
                    self.problems.insert(pkey, p.to_string());
                }
                None => {
                    let old = index.get(&key).map_err(ix)?;
                    if old.as_ref().is_some_and(|o| !o.is_deleted()) {
                        if let Some(u) = view.users.get(n.as_slice()) {
                            self.left.insert(
                                id.clone(),
                                format!(
                                    "{id}: uid {} is outside the managed set on this node; the other nodes keep the cluster's version (not synced from here: change it back, or delete it with userdel)",
                                    u.uid
                                ),
                            );
                        } else if !self.unreadable(&view, &id) {
                            user_dels.push(self.version(key, old, None, now_ms, adopt));
                        }
                    }
                }
            }
        }
        // groups
        for n in &groups {
            let Ok(name) = std::str::from_utf8(n) else {
                continue;
            };
            let id = AccountId::Group(name.to_string());
            let pkey = key_name(&id);
            self.problems.remove(&pkey);
            self.left.remove(&id);
            let key = id.key();
            match view.group(n, &policy) {
                Some(Ok(rec)) => {
                    let old = index.get(&key).map_err(ix)?;
                    let same = old.as_ref().and_then(account).is_some_and(
                        |a| matches!(a, Account::Group { group, .. } if *group == rec),
                    );
                    if !same {
                        let body = Account::Group { group: rec, made };
                        group_sets.push(self.version(key, old, Some(body), now_ms, adopt));
                    }
                }
                Some(Err(p)) => {
                    self.problems.insert(pkey, p.to_string());
                }
                None => {
                    let old = index.get(&key).map_err(ix)?;
                    if old.as_ref().is_some_and(|o| !o.is_deleted()) {
                        if let Some(g) = view.groups.get(n.as_slice()) {
                            self.left.insert(
                                id.clone(),
                                format!(
                                    "{id}: gid {} is outside the managed set on this node; the other nodes keep the cluster's version (not synced from here: change it back, or delete it with groupdel)",
                                    g.gid
                                ),
                            );
                        } else if !self.unreadable(&view, &id) {
                            deleted_groups.insert(name.to_string());
                            group_dels.push(self.version(key, old, None, now_ms, adopt));
                        }
                    }
                }
            }
        }
        // lines that may be managed accounts' but do not parse
        self.malformed = view
            .problems_malformed()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        // a user added again after its deletion starts with the groups the files give it: a
        // member set of the index that still names the old user (a concurrent add that
        // survived the deletion; no file has it) is compared, so that membership is removed
        // here and everywhere, never handed to the new user by the nodes that apply it
        if !reborn.is_empty() {
            for it in index.member_sets().map_err(ix)? {
                if let Some(Account::Members(m)) = account(&it)
                    && m.members.iter().any(|x| reborn.contains(&x.user))
                {
                    member_groups.insert(m.group.clone().into_bytes());
                }
            }
        }
        // member sets
        // (a user whose lines did not change was what it is now)
        let was_user = |m: &str| match &old_facts {
            Some(f) => f
                .get(m.as_bytes())
                .map_or_else(|| view.is_managed_user(m.as_bytes()), |x| x.0),
            None => false,
        };
        for n in &member_groups {
            let Ok(name) = std::str::from_utf8(n) else {
                continue;
            };
            let key = AccountId::Members(name.to_string()).key();
            let Some(now) = view.members_of(n) else {
                // the group is gone here: its member set goes with a managed group only
                if deleted_groups.contains(name) {
                    let old = index.get(&key).map_err(ix)?;
                    if old.as_ref().is_some_and(|o| !o.is_deleted()) {
                        member_sets.push(self.version(key, old, None, now_ms, adopt));
                    }
                }
                continue;
            };
            let old = index.get(&key).map_err(ix)?;
            let had = member_names(old.as_ref());
            // members that are not managed users here and were not: not removed by this node
            let mut want: BTreeSet<String> = now.iter().cloned().collect();
            for m in &had {
                if !view.is_managed_user(m.as_bytes()) && (cold || !was_user(m)) {
                    want.insert(m.clone());
                }
            }
            let want: Vec<String> = want.into_iter().collect();
            if want == had && old.as_ref().is_some_and(|o| !o.is_deleted()) {
                continue;
            }
            if want.is_empty() && old.as_ref().is_none_or(Item::is_deleted) {
                continue;
            }
            member_sets.push(self.members_version(key, name, old, &want, now_ms, adopt));
        }
        out.changes = group_dels
            .into_iter()
            .chain(group_sets)
            .chain(user_dels)
            .chain(user_sets)
            .chain(member_sets)
            .collect();
        // canonical layout
        let reorder: BTreeSet<String> = if cold {
            view.groups
                .keys()
                .filter(|g| !view.members_canonical(g))
                .filter_map(|g| std::str::from_utf8(g).ok().map(String::from))
                .collect()
        } else {
            // a group whose lists are in canonical order already needs nothing (a bulk write in
            // canonical order is not built a second time)
            member_groups
                .iter()
                .filter(|g| !view.members_canonical(g))
                .filter_map(|g| std::str::from_utf8(g).ok().map(String::from))
                .collect()
        };
        // only when a tool wrote lines since (what this node wrote itself is canonical already)
        if !self.check_only && (cold || !users.is_empty() || !member_groups.is_empty()) {
            let canonical = apply::canonical_in(&view, &policy, &reorder);
            if canonical != *new {
                out.canonical = Some(canonical);
            }
        }
        out.problems = self.problems();
        self.files = Some(new.clone());
        self.view = Some(view);
        self.detected = true;
        Ok(out)
    }

    fn unreadable(&self, view: &View, id: &AccountId) -> bool {
        self.problems.contains_key(&key_name(id))
            || view
                .malformed
                .iter()
                .any(|(_, _, n)| *n == id.name().as_bytes())
    }

    /// A new local version of `key` on top of `old`.
    fn version(
        &self,
        key: Vec<u8>,
        old: Option<Item>,
        body: Option<Account>,
        now_ms: u64,
        adopt: bool,
    ) -> Item {
        // a change made on top of a version is never older than it (a clock that went back)
        let floor = old.as_ref().map_or(0, merge::made_of);
        let body = body.map(|b| match b {
            Account::User { user, made } => Account::User {
                user,
                made: made.max(floor),
            },
            Account::Group { group, made } => Account::Group {
                group,
                made: made.max(floor),
            },
            m => m,
        });
        let mut version = old.map(|o| o.version).unwrap_or_default();
        let origin = if adopt {
            String::new()
        } else {
            version.bump(&self.me, now_ms);
            self.me.clone()
        };
        Item {
            key,
            version,
            origin,
            body: body.map(Body::Account),
            beat: Vec::new(),
        }
    }

    /// A new local version of a member set: kept members keep their dots, new ones get this
    /// change's dot.
    fn members_version(
        &self,
        key: Vec<u8>,
        group: &str,
        old: Option<Item>,
        want: &[String],
        now_ms: u64,
        adopt: bool,
    ) -> Item {
        let dots: HashMap<String, Vec<Dot>> = match old.as_ref().and_then(account) {
            Some(Account::Members(m)) => m
                .members
                .iter()
                .map(|x| (x.user.clone(), x.dots.clone()))
                .collect(),
            _ => HashMap::new(),
        };
        let mut item = self.version(key, old, None, now_ms, adopt);
        let dot = Dot {
            node: self.me.clone(),
            counter: item.version.get(&self.me),
        };
        if want.is_empty() {
            return item;
        }
        let members = want
            .iter()
            .map(|u| Member {
                user: u.clone(),
                dots: match dots.get(u) {
                    Some(d) => d.clone(),
                    None if adopt => Vec::new(),
                    None => vec![dot.clone()],
                },
            })
            .collect();
        item.body = Some(Body::Account(Account::Members(Members {
            group: group.to_string(),
            members,
        })));
        item
    }

    /// (d) Put `items` in place in one write (decisions `Take` of [`plan`], and items set aside
    /// before). Reads the files first; if they changed since the last detect, nothing is
    /// written and [`Applied::stale`] is set. `today`: the day number for a new user whose hash
    /// is not synced.
    pub fn apply(
        &mut self,
        db: &AccountDb,
        items: &[impl Borrow<Item>],
        today: i64,
    ) -> Result<Applied, AccountsError> {
        let stale = Applied {
            outcomes: Vec::new(),
            stale: true,
            files: Vec::new(),
            locked: Duration::ZERO,
            homes: Vec::new(),
        };
        let read = self.read(db)?;
        if !self.agrees(&read) {
            return Ok(stale);
        }
        // the very tables read, so the next read's comparison is by pointer
        self.files = Some(read.files.clone());
        let Some(view) = self.view() else {
            return Ok(stale);
        };
        self.carried.retain(|_, (_, at)| at.elapsed() < CARRY_FOR);
        let carried: HashMap<u32, Vec<Vec<u8>>> = self
            .carried
            .iter()
            .map(|(gid, (m, _))| (*gid, m.clone()))
            .collect();
        let plan = apply::plan_in(&view, &self.policy, items, today, &carried);
        let (files, locked) = match db.write(&read, &plan.files)? {
            Written::Stale => return Ok(stale),
            Written::Unchanged => (Vec::new(), Duration::ZERO),
            Written::Done { files, locked, set } => {
                self.last = Some(set);
                (files, locked)
            }
        };
        for (it, o) in items.iter().zip(&plan.outcomes) {
            if *o == Outcome::Applied
                && let Some(id) = AccountId::from_key(&it.borrow().key)
            {
                self.left.remove(&id);
            }
        }
        let now = Instant::now();
        self.carried = plan
            .carried
            .into_iter()
            .map(|(gid, m)| {
                let at = match self.carried.get(&gid) {
                    Some((old, at)) if *old == m => *at,
                    _ => now,
                };
                (gid, (m, at))
            })
            .collect();
        if !files.is_empty() {
            // the kept view is patched to the files written
            drop(view);
            self.view = Some(self.view_for(&plan.files, &[]));
            self.files = Some(plan.files);
        }
        let mut homes = Vec::new();
        if self.policy.create_home && !plan.homes.is_empty() {
            let etc = db.etc();
            let defs = std::fs::read_to_string(etc.join("login.defs")).unwrap_or_default();
            let mode = super::home::home_mode(&defs);
            for req in &plan.homes {
                homes.extend(super::home::ensure_home(db.root(), req, mode));
            }
        }
        Ok(Applied {
            outcomes: plan.outcomes,
            stale: false,
            files,
            locked,
            homes,
        })
    }

    /// Whether `read` is the content the index agrees with (what the last detect or apply
    /// left): nothing changed on disk since.
    pub fn agrees(&self, read: &FileSet) -> bool {
        self.files
            .as_ref()
            .is_some_and(|f| f.same_tables(&read.files) || *f == read.files)
    }

    /// An instance of its own for [`Accounts::differences`], sharing this one's view of the
    /// files the index agrees with (so the check builds none), taken under the caller's lock;
    /// the check itself then runs without it.
    pub fn checker(&mut self) -> Accounts {
        let mut fresh = Accounts::new(self.policy.clone(), self.me.clone());
        fresh.detected = true;
        fresh.check_only = true;
        fresh.view = self.view();
        fresh
    }

    /// (e) **check** (on a [`Accounts::checker`]): the accounts whose files (as `read`) and
    /// index differ, found by a detect that compares every account, as a daemon starting
    /// now would: nothing is committed and the daemon's own instance is untouched. When
    /// `read` is what the index agrees with ([`Accounts::agrees`]) and every apply was
    /// committed, the answer is empty; anything else is a difference `status` must not hide.
    pub fn differences(
        mut self,
        read: &FileSet,
        index: &mut dyn IndexRead,
        now_ms: u64,
    ) -> Result<Vec<AccountId>, AccountsError> {
        let det = self.detect(read, index, now_ms, false)?;
        Ok(det
            .changes
            .iter()
            .filter_map(|i| AccountId::from_key(&i.key))
            .collect())
    }

    /// The record of a group as the files have it now (for a group kept local, see
    /// [`Outcome::KeepLocal`]).
    pub fn local_group(&mut self, name: &str) -> Option<Group> {
        let policy = self.policy.clone();
        self.view()?
            .group(name.as_bytes(), &policy)
            .and_then(Result::ok)
    }

    /// The record of a user as the files have it now.
    pub fn local_user(&mut self, name: &str) -> Option<User> {
        let policy = self.policy.clone();
        self.view()?
            .user(name.as_bytes(), &policy)
            .and_then(Result::ok)
    }
}

/// The new local version that keeps this node's copy of `local` against `remote` (a group
/// still in use here as a primary group): it descends from both, so it wins everywhere.
pub fn keep_local(local: &Item, remote: &Item, body: Account, me: &str, now_ms: u64) -> Item {
    let mut version: VersionVector = local.version.clone();
    version.merge(&remote.version);
    version.bump(me, now_ms);
    let body = match body {
        Account::User { user, .. } => Account::User {
            user,
            made: i64::try_from(now_ms).unwrap_or(i64::MAX),
        },
        Account::Group { group, .. } => Account::Group {
            group,
            made: i64::try_from(now_ms).unwrap_or(i64::MAX),
        },
        m => m,
    };
    Item {
        key: local.key.clone(),
        version,
        origin: me.to_string(),
        body: Some(Body::Account(body)),
        beat: Vec::new(),
    }
}

/// The users and the groups whose lines changed between `old` and `new`, and the windows
/// compared (for the view's patch). In each file, the names of the entry lines between the
/// first and the last line that differ (in either version): every name whose record may have
/// changed (its first line, a line added or removed, a duplicate that appeared or went), and
/// only those. Lines before and after that window are the same lines at the same places, so
/// they are compared, not parsed.
fn changed_accounts(old: &AccountFiles, new: &AccountFiles) -> (Names, Names, Vec<db::Compared>) {
    let mut compared = Vec::new();
    let mut names = |f: DbFile| -> Names {
        let (a, b) = match (old.shared(f), new.shared(f)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => return Names::new(),
            (None, None) => return Names::new(),
            (Some(a), Some(b)) => (a.clone(), b.clone()),
            // a file that appeared or went: every line of the one there
            (a, b) => {
                let empty = Arc::new(db::Table::parse(b""));
                (
                    a.cloned().unwrap_or_else(|| empty.clone()),
                    b.cloned().unwrap_or(empty),
                )
            }
        };
        let w = db::Window::of(&a, &b);
        let out = a.lines()[w.first..w.old_end]
            .iter()
            .chain(&b.lines()[w.first..w.new_end])
            .filter_map(|l| db::entry_name(l))
            .map(<[u8]>::to_vec)
            .collect();
        compared.push(db::Compared {
            old: a,
            new: b,
            window: w,
        });
        out
    };
    let mut u = names(DbFile::Passwd);
    u.extend(names(DbFile::Shadow));
    let mut g = names(DbFile::Group);
    g.extend(names(DbFile::Gshadow));
    (u, g, compared)
}

/// The nodes of the accounts group and the policy a peer's item is checked against.
pub struct Check<'a> {
    pub policy: &'a Policy,
    /// `[accounts] nodes`.
    pub members: &'a [String],
}

/// (b) Check a peer's account item before anything uses it (pure). A refused item is set
/// aside and reported by the caller; it never closes the link.
pub fn validate_item(item: &Item, check: &Check<'_>) -> Result<(), String> {
    let Some(id) = AccountId::from_key(&item.key) else {
        return Err(format!(
            "{} is not an account key",
            shown(&String::from_utf8_lossy(&item.key))
        ));
    };
    let adopted = item.version.is_empty();
    if adopted {
        if !item.origin.is_empty() && !check.members.contains(&item.origin) {
            return Err(format!(
                "origin {} is not a member of [accounts]",
                shown(&item.origin)
            ));
        }
    } else if !check.members.contains(&item.origin) {
        return Err(format!(
            "origin {} is not a member of [accounts]",
            shown(&item.origin)
        ));
    }
    if item.version.len() > 1024
        || item.version.0.keys().any(|k| k.is_empty() || k.len() > 255)
        || item
            .version
            .0
            .values()
            .any(|c| *c > crate::engine::apply::max_counter())
    {
        return Err("bad version vector".into());
    }
    if item.beat.len() > 1024 || item.beat.iter().any(|b| b.len() > 255) {
        return Err("oversized list of beaten nodes".into());
    }
    if super::validate::check_name(id.name()).is_err() {
        return Err(format!("{id}: the name cannot be synced"));
    }
    match (&item.body, &id) {
        (None, _) => Ok(()),
        (Some(Body::Account(a)), _) if a.id() == id => {
            let counter = |n: &str| item.version.get(n);
            validate_account(a, &check.policy.set, &counter).map_err(|e| e.to_string())
        }
        (Some(Body::User(_) | Body::Group(_)), _) => Err(format!(
            "{id}: an account record of the previous release (0.2), which this release does not apply"
        )),
        _ => Err(format!("{id}: key and record do not match")),
    }
}

/// (c) Decide each peer item against the index's entry for its key (pure; `local[i]` is the
/// entry for `items[i]`). Borrowed: a member set of a thousand members is not copied to be
/// looked at.
pub fn plan<'a>(
    items: impl IntoIterator<Item = &'a Item>,
    local: &[Option<&'a Item>],
    policy: &ConflictPolicy,
) -> Vec<Decision> {
    items
        .into_iter()
        .zip(local.iter().copied().chain(std::iter::repeat(None)))
        .map(|(r, l)| merge::decide(l, r, policy))
        .collect()
}

/// A short description of what a losing version had, for `conflicts` and the audit log (never
/// a hash): `uid 2050, shell /bin/sh` or `deleted`.
pub fn summary(i: &Item) -> String {
    match account(i) {
        None => "deleted".into(),
        Some(Account::User { user, .. }) => format!(
            "uid {}, gid {}, home {}, shell {}",
            user.uid,
            user.gid,
            shown(&user.home),
            shown(&user.shell)
        ),
        Some(Account::Group { group, .. }) => {
            format!("gid {}, administrators {:?}", group.gid, group.admins)
        }
        Some(Account::Members(m)) => format!("{} members", m.members.len()),
    }
}
