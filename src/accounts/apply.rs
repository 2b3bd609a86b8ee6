//! From the files and the items to put in place, to the new files and an outcome per item
//! (pure, no I/O), and the canonical layout every write uses.
//!
//! **Canonical layout** (so the same accounts give byte-identical files on every node): in each
//! file, the lines of managed accounts form one block, sorted by id then name (shadow in the
//! order of passwd, gshadow in the order of group), placed before the first NIS line (`+`/`-`)
//! or at the end; every other line stays as it is, in its order. A member list is written as
//! the node's own members (names that are not managed users here) in their order, then the
//! managed members sorted; gshadow's member list is the same as group's.
//!
//! **Order inside one apply**: user and group deletions, group upserts, user upserts, member
//! sets, so a rename (delete + add with the same id) frees the id first, a user's primary
//! group exists before the user, and a user exists before its memberships. Every check for an
//! item happens before its first edit, so an item set aside leaves no trace.
//!
//! Per item: applied; set aside with a reason (a collision with a different, unmanaged local
//! account, or a uid taken; a local line that cannot be parsed; a missing primary group or
//! group); partly applied (members that are not users here yet); or kept local (a group whose
//! deletion would leave a user without its primary group: the node re-announces its own copy).
//! An account that is not managed here is never written or deleted: a peer's deletion of a name
//! that is a different, unmanaged account here is applied as "nothing to delete".

use super::db::{self, AccountFiles, DbFile, Table};
use super::managed::Policy;
use super::model::{Account, AccountId, Group, Members, Secret, User, shown, shown_bytes};
use super::report::HomeRequest;
use super::view::{Block, View};
use crate::item::{Body, Item};
use bytes::Bytes;
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// In place (written, or already as wanted).
    Applied,
    /// Not applied; tried again later. `collision`: a different local account is in the way.
    Aside { reason: String, collision: bool },
    /// A member set applied without these members, which are not users here yet.
    Partial { waiting: Vec<String> },
    /// Not applied: this node keeps its own copy and announces it as a new version (a group
    /// still some user's primary group here).
    KeepLocal { reason: String },
}

/// The result of [`plan_files`].
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub files: AccountFiles,
    /// Per item, in the order given.
    pub outcomes: Vec<Outcome>,
    /// Homes to create if missing (only with `create_home`).
    pub homes: Vec<HomeRequest>,
    /// Local members of managed groups deleted by this or an earlier apply that no group made
    /// since took over, by gid (see [`plan_in`]).
    pub carried: HashMap<u32, Vec<Vec<u8>>>,
}

/// A user's lines after the apply (`None`: deleted).
type UserLines = Option<(Vec<u8>, Option<Vec<u8>>)>;
/// A line that joins a block, with its key (id, name).
type NewLine<'n> = ((u32, &'n [u8]), Vec<u8>);
/// The key (id, name) of a line kept in a block.
type KeyOf<'k> = dyn Fn(&[u8]) -> (u32, Vec<u8>) + 'k;

/// The managed block of one kind: (id, name) → (passwd or group line, shadow or gshadow line).
type Lines = BTreeMap<(u32, String), (Vec<u8>, Option<Vec<u8>>)>;

struct Plan<'v> {
    view: &'v View,
    policy: &'v Policy,
    today: i64,
    /// Users: name → new lines and uid/gid (None = deleted).
    users: HashMap<String, (UserLines, u32, u32)>,
    /// Groups: name → new (group line without members, gshadow hash+admins) and gid.
    groups: HashMap<String, (Option<(Group, bool)>, u32)>,
    /// Group name → managed member names wanted (sorted), for member lists to rewrite.
    members: HashMap<String, Vec<String>>,
    /// Users removed from every list (deleted users).
    dropped: HashSet<String>,
    /// Local members of deleted managed groups by gid (for a rename, in this apply or a later
    /// one).
    carried: HashMap<u32, Vec<Vec<u8>>>,
    /// The gids of `carried` a new group took over.
    took: HashSet<u32>,
    homes: Vec<HomeRequest>,
    /// Ids taken or freed by this apply's edits (`None`: free).
    uid_over: HashMap<u32, Option<String>>,
    gid_over: HashMap<u32, Option<String>>,
    /// Primary gid → user names, from the files (built when a group deletion needs it).
    primary: Option<HashMap<u32, Vec<String>>>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<'v> Plan<'v> {
    // --- the state after the edits so far -------------------------------------------------

    /// uid and primary gid of user `name` now (after this apply's edits so far).
    fn user_now(&self, name: &str) -> Option<(u32, u32, bool)> {
        if let Some((lines, uid, gid)) = self.users.get(name) {
            return lines.as_ref().map(|_| (*uid, *gid, true));
        }
        self.view
            .users
            .get(name.as_bytes())
            .map(|u| (u.uid, u.gid, u.managed))
    }

    fn is_managed_user_now(&self, name: &str) -> bool {
        self.user_now(name).is_some_and(|u| u.2)
    }

    /// A member name (bytes) that is a managed user after the apply.
    fn managed_member(&self, m: &[u8]) -> bool {
        std::str::from_utf8(m).is_ok_and(|n| self.is_managed_user_now(n))
    }

    fn is_dropped(&self, m: &[u8]) -> bool {
        !self.dropped.is_empty() && std::str::from_utf8(m).is_ok_and(|n| self.dropped.contains(n))
    }

    /// Whether the member list of group `name` (now `field`) is rewritten by this apply.
    fn touches(&self, name: &str, field: &[u8]) -> bool {
        self.members.contains_key(name)
            || (!self.dropped.is_empty() && db::list(field).iter().any(|m| self.is_dropped(m)))
    }

    /// The user holding `uid` now, other than `except`.
    fn uid_holder(&self, uid: u32, except: &str) -> Option<String> {
        if let Some(o) = self.uid_over.get(&uid) {
            return o.clone().filter(|n| n != except);
        }
        let n = text(self.view.uids.get(&uid)?);
        match self.users.get(&n) {
            Some((Some(_), u, _)) if *u == uid => Some(n),
            Some(_) => None,
            None => Some(n),
        }
        .filter(|n| n != except)
    }

    fn gid_of_group_now(&self, name: &str) -> Option<u32> {
        if let Some((g, gid)) = self.groups.get(name) {
            return g.as_ref().map(|_| *gid);
        }
        self.view.groups.get(name.as_bytes()).map(|g| g.gid)
    }

    /// The group holding `gid` now, other than `except`.
    fn gid_holder(&self, gid: u32, except: &str) -> Option<String> {
        if let Some(o) = self.gid_over.get(&gid) {
            return o.clone().filter(|n| n != except);
        }
        let n = text(self.view.gids.get(&gid)?);
        match self.groups.get(&n) {
            Some((Some(_), g)) if *g == gid => Some(n),
            Some(_) => None,
            None => Some(n),
        }
        .filter(|n| n != except)
    }

    fn group_exists_now(&self, name: &str) -> bool {
        self.gid_of_group_now(name).is_some()
    }

    fn gid_exists_now(&self, gid: u32) -> bool {
        self.gid_holder(gid, "").is_some()
    }

    /// A user whose primary gid is `gid` now.
    fn primary_user_of(&mut self, gid: u32) -> Option<String> {
        for (n, (lines, _, g)) in &self.users {
            if lines.is_some() && *g == gid {
                return Some(n.clone());
            }
        }
        let view = self.view;
        let by_gid = self.primary.get_or_insert_with(|| {
            let mut m: HashMap<u32, Vec<String>> = HashMap::new();
            for (n, u) in &view.users {
                m.entry(u.gid).or_default().push(text(n));
            }
            m
        });
        by_gid
            .get(&gid)?
            .iter()
            .find(|n| !self.users.contains_key(*n))
            .cloned()
    }

    /// Record user `name` with `uid` (`None`: deleted) in the uid overlay.
    fn set_uid(&mut self, name: &str, old: Option<u32>, new: Option<u32>) {
        if let Some(o) = old
            && self.uid_holder(o, "").as_deref() == Some(name)
        {
            self.uid_over.insert(o, None);
        }
        if let Some(n) = new {
            self.uid_over.insert(n, Some(name.to_string()));
        }
    }

    fn set_gid(&mut self, name: &str, old: Option<u32>, new: Option<u32>) {
        if let Some(o) = old
            && self.gid_holder(o, "").as_deref() == Some(name)
        {
            self.gid_over.insert(o, None);
        }
        if let Some(n) = new {
            self.gid_over.insert(n, Some(name.to_string()));
        }
    }

    fn local_problem(&self, id: &AccountId) -> Option<String> {
        let (name, dup, table) = match id {
            AccountId::User(n) => (n, &self.view.dup_users, DbFile::Passwd),
            AccountId::Group(n) => (n, &self.view.dup_groups, DbFile::Group),
            AccountId::Members(_) => return None,
        };
        if let Some(i) = dup.get(name.as_bytes()) {
            return Some(format!(
                "{id} has several lines in /etc/{table} (line {}); they are left alone",
                i + 1
            ));
        }
        self.view
            .malformed
            .iter()
            .find(|(f, _, n)| *f == table && *n == name.as_bytes())
            .map(|(f, i, _)| {
                format!(
                    "its line in /etc/{f} (line {}) is malformed and left alone",
                    i + 1
                )
            })
    }

    // --- items ----------------------------------------------------------------------------

    fn delete_user(&mut self, name: &str) -> Outcome {
        if let Some(p) = self.local_problem(&AccountId::User(name.into())) {
            return Outcome::Aside {
                reason: p,
                collision: false,
            };
        }
        match self.user_now(name) {
            // a different, unmanaged account of that name: the managed one is not here
            None | Some((_, _, false)) => Outcome::Applied,
            Some((uid, gid, true)) => {
                self.set_uid(name, Some(uid), None);
                self.users.insert(name.to_string(), (None, uid, gid));
                self.dropped.insert(name.to_string());
                Outcome::Applied
            }
        }
    }

    fn delete_group(&mut self, name: &str) -> Outcome {
        if let Some(p) = self.local_problem(&AccountId::Group(name.into())) {
            return Outcome::Aside {
                reason: p,
                collision: false,
            };
        }
        let Some(g) = self.view.groups.get(name.as_bytes()).copied() else {
            if let Some((Some(_), gid)) = self.groups.get(name).cloned() {
                self.groups.insert(name.to_string(), (None, gid));
            }
            return Outcome::Applied;
        };
        if !g.managed {
            return Outcome::Applied;
        }
        if let Some(u) = self.primary_user_of(g.gid) {
            return Outcome::KeepLocal {
                reason: format!(
                    "group {} is the primary group of user {} here",
                    shown(name),
                    shown(&u)
                ),
            };
        }
        let local: Vec<Vec<u8>> = self
            .view
            .member_field(name.as_bytes())
            .map(|f| {
                db::list(f)
                    .into_iter()
                    .filter(|m| !self.view.is_managed_user(m))
                    .map(<[u8]>::to_vec)
                    .collect()
            })
            .unwrap_or_default();
        if !local.is_empty() {
            self.carried.insert(g.gid, local);
        }
        self.set_gid(name, Some(g.gid), None);
        self.groups.insert(name.to_string(), (None, g.gid));
        Outcome::Applied
    }

    fn upsert_group(&mut self, rec: &Group) -> Outcome {
        let id = AccountId::Group(rec.name.clone());
        if let Some(p) = self.local_problem(&id) {
            return Outcome::Aside {
                reason: p,
                collision: false,
            };
        }
        let owner = self.user_now(&rec.name).map(|(u, g, _)| (u, g));
        if !self.policy.set.group(&rec.name, rec.gid, owner) {
            return Outcome::Aside {
                reason: format!(
                    "{id} (gid {}) is not managed on this node (outside uid_range, and no managed user {} has it as primary group here)",
                    rec.gid,
                    shown(&rec.name)
                ),
                collision: false,
            };
        }
        if let Some(local) = self.view.groups.get(rec.name.as_bytes())
            && !self.groups.contains_key(&rec.name)
            && !local.managed
        {
            return collision(
                &id,
                rec.gid,
                &rec.name,
                local.gid,
                ", which is not managed here: same name, different account",
            );
        }
        if let Some(other) = self.gid_holder(rec.gid, &rec.name) {
            return collision(&id, rec.gid, &other, rec.gid, ": same gid, different name");
        }
        let old = self.gid_of_group_now(&rec.name);
        if !self.view.groups.contains_key(rec.name.as_bytes())
            && self.carried.contains_key(&rec.gid)
        {
            self.took.insert(rec.gid);
        }
        self.set_gid(&rec.name, old, Some(rec.gid));
        self.groups
            .insert(rec.name.clone(), (Some((rec.clone(), true)), rec.gid));
        Outcome::Applied
    }

    fn upsert_user(&mut self, rec: &User) -> Outcome {
        let id = AccountId::User(rec.name.clone());
        if let Some(p) = self.local_problem(&id) {
            return Outcome::Aside {
                reason: p,
                collision: false,
            };
        }
        if let Some(local) = self.view.users.get(rec.name.as_bytes())
            && !self.users.contains_key(&rec.name)
            && !local.managed
        {
            return collision(
                &id,
                rec.uid,
                &rec.name,
                local.uid,
                ", which is not managed here: same name, different account",
            );
        }
        if let Some(other) = self.uid_holder(rec.uid, &rec.name) {
            return collision(&id, rec.uid, &other, rec.uid, ": same uid, different name");
        }
        if !self.gid_exists_now(rec.gid) {
            return Outcome::Aside {
                reason: format!(
                    "{id}: its primary group (gid {}) does not exist here yet",
                    rec.gid
                ),
                collision: false,
            };
        }
        let pw_old = self
            .view
            .users
            .get(rec.name.as_bytes())
            .map(|u| self.view.files.passwd.line(u.line));
        let sp_old = match (
            &self.view.files.shadow,
            self.view.shadow.get(rec.name.as_bytes()),
        ) {
            (Some(t), Some(&i)) => Some(t.line(i)),
            _ => None,
        };
        let pw = passwd_line(rec, self.policy, self.view.files.shadow.is_some(), pw_old);
        let sp = self
            .view
            .files
            .shadow
            .is_some()
            .then(|| shadow_line(rec, self.policy, sp_old, self.today));
        let old = self.user_now(&rec.name).map(|u| u.0);
        self.set_uid(&rec.name, old, Some(rec.uid));
        self.users
            .insert(rec.name.clone(), (Some((pw, sp)), rec.uid, rec.gid));
        if self.policy.create_home {
            self.homes.push(HomeRequest {
                user: rec.name.clone(),
                home: rec.home.clone(),
                uid: rec.uid,
                gid: rec.gid,
            });
        }
        Outcome::Applied
    }

    fn members(&mut self, m: &Members) -> Outcome {
        if !self.group_exists_now(&m.group) {
            return Outcome::Aside {
                reason: format!(
                    "members of group {}: no group {} on this node",
                    shown(&m.group),
                    shown(&m.group)
                ),
                collision: false,
            };
        }
        let mut want = Vec::new();
        let mut waiting = Vec::new();
        for n in m.names() {
            match self.user_now(n) {
                Some((_, _, true)) => want.push(n.to_string()),
                // a different, unmanaged local account: its collision is reported with the user
                Some((_, _, false)) => {}
                None => waiting.push(n.to_string()),
            }
        }
        self.members.insert(m.group.clone(), want);
        if waiting.is_empty() {
            Outcome::Applied
        } else {
            Outcome::Partial { waiting }
        }
    }

    // --- assembling the new files -----------------------------------------------------------

    /// A member field: local members (not managed users after the apply) in their order, then
    /// `managed` sorted.
    fn member_field(&self, old: &[u8], managed: &[String]) -> Vec<u8> {
        let mut out: Vec<&[u8]> = Vec::new();
        let mut seen: HashSet<&[u8]> = HashSet::new();
        for m in db::list(old) {
            if self.is_dropped(m) || self.managed_member(m) {
                continue;
            }
            if seen.insert(m) {
                out.push(m);
            }
        }
        let mut managed: Vec<&str> = managed.iter().map(String::as_str).collect();
        managed.sort_unstable();
        managed.dedup();
        out.extend(managed.iter().map(|s| s.as_bytes()));
        out.join(&b',')
    }

    /// The member field of group `name` after the apply, when it changes; `old` is the
    /// current one.
    fn new_member_field(&self, name: &str, old: &[u8]) -> Option<Vec<u8>> {
        if !self.touches(name, old) {
            return None;
        }
        let managed: Vec<String> = match self.members.get(name) {
            Some(w) => w.clone(),
            None => db::list(old)
                .into_iter()
                .filter(|m| self.managed_member(m) && !self.is_dropped(m))
                .map(text)
                .collect(),
        };
        let f = self.member_field(old, &managed);
        (f != old).then_some(f)
    }

    /// The new files: the blocks of the files patched where they are in canonical layout
    /// (see [`Plan::patch`]), else built anew.
    fn assemble(&self) -> AccountFiles {
        match self.view.blocks() {
            Some(blocks) => self.patch(&blocks),
            None => self.assemble_full(),
        }
    }

    /// The new files from files in canonical layout, looking only at the lines of the accounts
    /// this apply changes: the same bytes as [`Plan::assemble_full`] (tested), at the cost of
    /// the change plus one copy of each file that changes. The layout is: the lines before the
    /// block (edited), the lines of changed accounts that stay, the block (its kept lines, the
    /// new ones put in place by (id, name)), the lines from the first NIS line on (edited).
    fn patch(&self, blocks: &[Option<Block>; 4]) -> AccountFiles {
        let v = self.view;
        let f = &v.files;
        // passwd and shadow: only when a user changes
        let (passwd, shadow) = if self.users.is_empty() {
            (f.passwd.clone(), f.shadow.clone())
        } else {
            let mut gone: HashSet<usize> = HashSet::new();
            let mut gone_sp: HashSet<usize> = HashSet::new();
            let mut new_pw: Vec<NewLine<'_>> = Vec::new();
            let mut new_sp: Vec<NewLine<'_>> = Vec::new();
            for (n, (lines, uid, _)) in &self.users {
                if let Some(u) = v.users.get(n.as_bytes()) {
                    gone.insert(u.line);
                }
                if let Some(&i) = v.shadow.get(n.as_bytes()) {
                    gone_sp.insert(i);
                }
                if let Some((pw, sp)) = lines {
                    new_pw.push(((*uid, n.as_bytes()), pw.clone()));
                    if let Some(sp) = sp {
                        new_sp.push(((*uid, n.as_bytes()), sp.clone()));
                    }
                }
            }
            let uid_of = |l: &[u8]| -> (u32, Vec<u8>) {
                let n = db::entry_name(l).unwrap_or_default();
                (v.users.get(n).map_or(0, |u| u.uid), n.to_vec())
            };
            let passwd = patched(
                &f.passwd,
                blocks[0],
                &gone,
                new_pw,
                &uid_of,
                &HashMap::new(),
            );
            let shadow = f
                .shadow
                .as_ref()
                .map(|t| patched(t, blocks[1], &gone_sp, new_sp, &uid_of, &HashMap::new()));
            (Arc::new(passwd), shadow.map(Arc::new))
        };
        // group and gshadow: only when a group, a member list or a user's private group changes
        let affected: BTreeSet<&str> = self
            .groups
            .keys()
            .map(String::as_str)
            .chain(
                self.users
                    .keys()
                    .map(String::as_str)
                    .filter(|n| v.groups.contains_key(n.as_bytes())),
            )
            .collect();
        if affected.is_empty() && self.members.is_empty() && self.dropped.is_empty() {
            return AccountFiles {
                passwd,
                shadow,
                group: f.group.clone(),
                gshadow: f.gshadow.clone(),
            };
        }
        let mut gone: HashSet<usize> = HashSet::new();
        let mut gone_sg: HashSet<usize> = HashSet::new();
        let mut moved_names: HashSet<&str> = HashSet::new();
        let mut new_gr: Vec<NewLine<'_>> = Vec::new();
        let mut new_sg: Vec<NewLine<'_>> = Vec::new();
        for &n in &affected {
            let moved = match self.groups.get(n) {
                Some((Some((rec, _)), gid)) => {
                    let old_gr = v.groups.get(n.as_bytes()).map(|g| f.group.line(g.line));
                    let old_sg = match (&f.gshadow, v.gshadow.get(n.as_bytes())) {
                        (Some(t), Some(&i)) => Some(t.line(i)),
                        _ => None,
                    };
                    let (gr, sg) = self.group_lines(rec, old_gr, old_sg, *gid);
                    let (gr, sg) = self.with_members(n, gr, sg);
                    new_gr.push(((*gid, n.as_bytes()), gr));
                    if let Some(sg) = sg {
                        new_sg.push(((*gid, n.as_bytes()), sg));
                    }
                    true
                }
                Some((None, _)) => true,
                None => {
                    // a user changed: its private group may become managed (or stay so)
                    let Some(g) = v.groups.get(n.as_bytes()) else {
                        continue;
                    };
                    let owner = self.user_now(n).map(|(u, gid, _)| (u, gid));
                    if !(g.managed || self.policy.set.group(n, g.gid, owner)) {
                        continue;
                    }
                    let (gr, sg) = self.block_group_lines(n, g.line);
                    new_gr.push(((g.gid, n.as_bytes()), gr));
                    if let Some(sg) = sg {
                        new_sg.push(((g.gid, n.as_bytes()), sg));
                    }
                    true
                }
            };
            if moved {
                moved_names.insert(n);
                if let Some(g) = v.groups.get(n.as_bytes()) {
                    gone.insert(g.line);
                }
                if let Some(&i) = v.gshadow.get(n.as_bytes()) {
                    gone_sg.insert(i);
                }
            }
        }
        // lines whose member list (or gshadow administrators) may change: the groups of member
        // sets, and every line that names a deleted user
        let mut edit_gr: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut edit_sg: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut touched: BTreeSet<&[u8]> = self.members.keys().map(|n| n.as_bytes()).collect();
        if !self.dropped.is_empty() {
            let finders: Vec<memchr::memmem::Finder<'_>> = self
                .dropped
                .iter()
                .map(|d| memchr::memmem::Finder::new(d.as_bytes()))
                .collect();
            let names = |t: &'v Table| -> Vec<&'v [u8]> {
                t.lines()
                    .iter()
                    .filter(|l| finders.iter().any(|fd| fd.find(l).is_some()))
                    .filter_map(|l| db::entry_name(l))
                    .collect()
            };
            touched.extend(names(&f.group));
            if let Some(t) = &f.gshadow {
                touched.extend(names(t));
            }
        }
        for n in touched {
            let Ok(name) = std::str::from_utf8(n) else {
                continue;
            };
            if moved_names.contains(name) {
                continue;
            }
            let g = v.groups.get(n).copied();
            if let Some(g) = g.filter(|g| g.managed) {
                // in the block: rewritten in place (its key does not change)
                let (gr, sg) = self.block_group_lines(name, g.line);
                edit_gr.insert(g.line, gr);
                if let (Some(sg), Some(&i)) = (sg, v.gshadow.get(n)) {
                    edit_sg.insert(i, sg);
                }
                continue;
            }
            if let Some(g) = g {
                let l = f.group.line(g.line);
                edit_gr.insert(g.line, self.edit_group_line(l));
            }
            if let (Some(t), Some(&i)) = (&f.gshadow, v.gshadow.get(n)) {
                edit_sg.insert(i, self.edit_gshadow_line(t.line(i)));
            }
        }
        let gid_of = |l: &[u8]| -> (u32, Vec<u8>) {
            let n = db::entry_name(l).unwrap_or_default();
            (v.groups.get(n).map_or(0, |g| g.gid), n.to_vec())
        };
        let group = patched(&f.group, blocks[2], &gone, new_gr, &gid_of, &edit_gr);
        let gshadow = f
            .gshadow
            .as_ref()
            .map(|t| patched(t, blocks[3], &gone_sg, new_sg, &gid_of, &edit_sg));
        AccountFiles {
            passwd,
            shadow,
            group: Arc::new(group),
            gshadow: gshadow.map(Arc::new),
        }
    }

    /// The lines of a managed group of the files that no item changes, as the block has them
    /// after the apply (member lists rewritten when this apply touches them).
    fn block_group_lines(&self, name: &str, line: usize) -> (Vec<u8>, Option<Vec<u8>>) {
        let v = self.view;
        let f = &v.files;
        let gr = f.group.line(line).to_vec();
        let sg = match (&f.gshadow, v.gshadow.get(name.as_bytes())) {
            (Some(t), Some(&i)) => Some(t.line(i).to_vec()),
            _ => None,
        };
        let field = db::parse_gr(&gr)
            .map(|x| x.members.to_vec())
            .unwrap_or_default();
        if self.touches(name, &field) {
            self.with_members(name, gr, sg)
        } else {
            (gr, sg)
        }
    }

    /// A group line that stays in place, its member list edited when this apply touches it.
    fn edit_group_line(&self, l: &[u8]) -> Vec<u8> {
        match db::parse_gr(l) {
            Some(gr) => match std::str::from_utf8(gr.name)
                .ok()
                .and_then(|n| self.new_member_field(n, gr.members))
            {
                Some(m) => db::replace_field(l, 3, &m),
                None => l.to_vec(),
            },
            None => l.to_vec(),
        }
    }

    /// A gshadow line that stays in place: its member list follows group's when this apply
    /// touches it, deleted users leave its administrators.
    fn edit_gshadow_line(&self, l: &[u8]) -> Vec<u8> {
        let v = self.view;
        match db::parse_sg(l) {
            Some(sg) => {
                let Ok(name) = std::str::from_utf8(sg.name) else {
                    return l.to_vec();
                };
                if !self.members.contains_key(name) && self.dropped.is_empty() {
                    return l.to_vec();
                }
                let mut line = l.to_vec();
                let gr_members = v
                    .member_field(sg.name)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_else(|| sg.members.to_vec());
                if let Some(m) = self.new_member_field(name, &gr_members) {
                    line = db::replace_field(&line, 3, &m);
                }
                self.without_dropped_admins(line)
            }
            None => l.to_vec(),
        }
    }

    /// The new files built anew (files not in canonical layout, or no blocks known).
    fn assemble_full(&self) -> AccountFiles {
        let v = self.view;
        let f = &v.files;
        // managed users after: name → (uid, passwd line, shadow line)
        let mut users: Lines = BTreeMap::new();
        let mut user_key: HashMap<String, (u32, String)> = HashMap::new();
        for (n, u) in &v.users {
            let name = text(n);
            if !u.managed || self.users.contains_key(&name) {
                continue;
            }
            let sp = match (&f.shadow, v.shadow.get(n)) {
                (Some(t), Some(&i)) => Some(t.line(i).to_vec()),
                _ => None,
            };
            user_key.insert(name.clone(), (u.uid, name.clone()));
            users.insert((u.uid, name), (f.passwd.line(u.line).to_vec(), sp));
        }
        for (n, (lines, uid, _)) in &self.users {
            if let Some((pw, sp)) = lines {
                user_key.insert(n.clone(), (*uid, n.clone()));
                users.insert((*uid, n.clone()), (pw.clone(), sp.clone()));
            }
        }
        // managed groups after
        let mut groups: Lines = BTreeMap::new();
        for (n, g) in &v.groups {
            let name = text(n);
            if self.groups.contains_key(&name) {
                continue;
            }
            let owner = self.user_now(&name).map(|(u, gid, _)| (u, gid));
            let managed_after = g.managed || self.policy.set.group(&name, g.gid, owner);
            if !managed_after {
                continue;
            }
            let gr = f.group.line(g.line).to_vec();
            let sg = match (&f.gshadow, v.gshadow.get(n)) {
                (Some(t), Some(&i)) => Some(t.line(i).to_vec()),
                _ => None,
            };
            let field = db::parse_gr(&gr)
                .map(|x| x.members.to_vec())
                .unwrap_or_default();
            let (gr, sg) = if self.touches(&name, &field) {
                self.with_members(&name, gr, sg)
            } else {
                (gr, sg)
            };
            groups.insert((g.gid, name), (gr, sg));
        }
        for (n, (g, gid)) in &self.groups {
            let Some((rec, _)) = g else { continue };
            let old_gr = v
                .groups
                .get(n.as_bytes())
                .map(|g| f.group.line(g.line).to_vec());
            let old_sg = match (&f.gshadow, v.gshadow.get(n.as_bytes())) {
                (Some(t), Some(&i)) => Some(t.line(i).to_vec()),
                _ => None,
            };
            let (gr, sg) = self.group_lines(rec, old_gr.as_deref(), old_sg.as_deref(), *gid);
            let (gr, sg) = self.with_members(n, gr, sg);
            groups.insert((*gid, n.clone()), (gr, sg));
        }
        let managed_user_names: HashSet<&[u8]> = user_key.keys().map(|k| k.as_bytes()).collect();
        let gone_users: HashSet<&[u8]> = self
            .users
            .iter()
            .filter(|(_, (l, _, _))| l.is_none())
            .map(|(n, _)| n.as_bytes())
            .collect();
        let managed_group_names: HashSet<Vec<u8>> =
            groups.keys().map(|(_, n)| n.as_bytes().to_vec()).collect();
        let gone_groups: HashSet<&[u8]> = self
            .groups
            .iter()
            .filter(|(_, (g, _))| g.is_none())
            .map(|(n, _)| n.as_bytes())
            .collect();
        // passwd and shadow
        let passwd = layout(
            &f.passwd,
            |i, n| {
                (managed_user_names.contains(n) && v.users.get(n).is_some_and(|u| u.line == i))
                    || (gone_users.contains(n) && v.users.get(n).is_some_and(|u| u.line == i))
            },
            users.values().map(|(pw, _)| pw.clone()).collect(),
            |l| l.to_vec(),
        );
        let shadow = f.shadow.as_ref().map(|t| {
            layout(
                t,
                |i, n| {
                    (managed_user_names.contains(n) || gone_users.contains(n))
                        && v.shadow.get(n) == Some(&i)
                },
                users.values().filter_map(|(_, sp)| sp.clone()).collect(),
                |l| l.to_vec(),
            )
        });
        // group and gshadow: other groups keep their place, with member lists edited
        let edit_gr = |l: &[u8]| -> Vec<u8> { self.edit_group_line(l) };
        let edit_sg = |l: &[u8]| -> Vec<u8> { self.edit_gshadow_line(l) };
        let group = layout(
            &f.group,
            |i, n| {
                (managed_group_names.contains(n) || gone_groups.contains(n))
                    && v.groups.get(n).is_some_and(|g| g.line == i)
            },
            groups.values().map(|(gr, _)| gr.clone()).collect(),
            edit_gr,
        );
        let gshadow = f.gshadow.as_ref().map(|t| {
            layout(
                t,
                |i, n| {
                    (managed_group_names.contains(n) || gone_groups.contains(n))
                        && v.gshadow.get(n) == Some(&i)
                },
                groups.values().filter_map(|(_, sg)| sg.clone()).collect(),
                edit_sg,
            )
        });
        AccountFiles {
            passwd: Arc::new(passwd),
            group: Arc::new(group),
            shadow: shadow.map(Arc::new),
            gshadow: gshadow.map(Arc::new),
        }
    }

    /// A managed group's lines with its member lists as they must be after the apply.
    fn with_members(
        &self,
        name: &str,
        gr: Vec<u8>,
        sg: Option<Vec<u8>>,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let old = db::parse_gr(&gr)
            .map(|g| g.members.to_vec())
            .unwrap_or_default();
        let managed: Vec<String> = match self.members.get(name) {
            Some(w) => w.clone(),
            None => db::list(&old)
                .into_iter()
                .filter(|m| self.managed_member(m) && !self.is_dropped(m))
                .map(text)
                .collect(),
        };
        let field = self.member_field(&old, &managed);
        let gr = if field != old {
            db::replace_field(&gr, 3, &field)
        } else {
            gr
        };
        let sg = sg.map(|sg| {
            let line = match db::parse_sg(&sg) {
                Some(s) if s.members != field.as_slice() => db::replace_field(&sg, 3, &field),
                _ => sg,
            };
            self.without_dropped_admins(line)
        });
        (gr, sg)
    }

    /// A gshadow line without the users this apply deletes among its administrators.
    fn without_dropped_admins(&self, line: Vec<u8>) -> Vec<u8> {
        let Some(s) = db::parse_sg(&line) else {
            return line;
        };
        let admins = db::list(s.admins);
        if !admins.iter().any(|a| self.is_dropped(a)) {
            return line;
        }
        let kept: Vec<&[u8]> = admins.into_iter().filter(|a| !self.is_dropped(a)).collect();
        db::replace_field(&line, 2, &kept.join(&b','))
    }

    /// The lines of an upserted group (members: the old line's, or those carried over from a
    /// group of the same gid deleted in this apply).
    fn group_lines(
        &self,
        rec: &Group,
        old_gr: Option<&[u8]>,
        old_sg: Option<&[u8]>,
        gid: u32,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let hash = |h: &Option<Secret>| {
            h.as_ref()
                .filter(|_| self.policy.passwords)
                .map(|s| s.expose().as_bytes().to_vec())
        };
        let old = old_gr.and_then(db::parse_gr);
        let members: Vec<u8> = match &old {
            Some(g) => g.members.to_vec(),
            None => self
                .carried
                .get(&gid)
                .map(|l| l.join(&b','))
                .unwrap_or_default(),
        };
        let has_gshadow = self.view.files.gshadow.is_some();
        let field = match (hash(&rec.password), has_gshadow) {
            (Some(_), true) => b"x".to_vec(),
            (Some(h), false) => h,
            (None, true) => old.as_ref().map_or(b"x".to_vec(), |g| g.passwd.to_vec()),
            (None, false) => old.as_ref().map_or(b"!".to_vec(), |g| g.passwd.to_vec()),
        };
        let gr = db::join(&[
            rec.name.as_bytes(),
            &field,
            rec.gid.to_string().as_bytes(),
            &members,
        ]);
        let sg = has_gshadow.then(|| {
            let old = old_sg.and_then(db::parse_sg);
            let h = match (hash(&rec.password), &old) {
                (Some(h), _) => h,
                (None, Some(o)) => o.hash.to_vec(),
                (None, None) => b"!".to_vec(),
            };
            let admins: Vec<&[u8]> = rec.admins.iter().map(|a| a.as_bytes()).collect();
            db::join(&[rec.name.as_bytes(), &h, &admins.join(&b','), &members])
        });
        (gr, sg)
    }
}

/// A collision of `id` (with id `own`) with local account `local` (id `local_id`).
fn collision(id: &AccountId, own: u32, local: &str, local_id: u32, why: &str) -> Outcome {
    let (kind, idname) = match id {
        AccountId::User(_) => ("user", "uid"),
        _ => ("group", "gid"),
    };
    Outcome::Aside {
        reason: format!(
            "{id} ({idname} {own}) collides with local {kind} {} ({idname} {local_id}){why}; not applied on this node",
            shown(local)
        ),
        collision: true,
    }
}

/// A table in canonical layout patched: `gone` lines leave, `new` lines (by key) join the lines
/// kept of `block` (in key order: `key` gives the key of a kept block line), `edits` replace
/// lines in place; the lines of `gone` that were not in the block are simply dropped.
fn patched(
    t: &Table,
    block: Option<Block>,
    gone: &HashSet<usize>,
    mut new: Vec<NewLine<'_>>,
    key: &KeyOf<'_>,
    edits: &HashMap<usize, Vec<u8>>,
) -> Table {
    let lines = t.lines();
    let Some(block) = block else {
        return t.clone();
    };
    new.sort_by(|a, b| a.0.cmp(&b.0));
    let line = |i: usize| -> Bytes {
        match edits.get(&i) {
            Some(e) => Bytes::from(e.clone()),
            None => lines[i].clone(),
        }
    };
    let mut out: Vec<Bytes> = Vec::with_capacity(lines.len() + new.len());
    out.extend((0..block.start).filter(|i| !gone.contains(i)).map(line));
    let kept: Vec<usize> = (block.start..block.end)
        .filter(|i| !gone.contains(i))
        .collect();
    let mut at = 0usize;
    for (k, l) in new {
        let upto = at
            + kept[at..].partition_point(|&i| {
                let (id, n) = key(&lines[i]);
                (id, n.as_slice()) < k
            });
        out.extend(kept[at..upto].iter().map(|&i| line(i)));
        out.push(Bytes::from(l));
        at = upto;
    }
    out.extend(kept[at..].iter().map(|&i| line(i)));
    out.extend(
        (block.end..lines.len())
            .filter(|i| !gone.contains(i))
            .map(line),
    );
    Table::from_lines(out, t)
}

/// A table in canonical layout: lines for which `moved(index, name)` holds leave their place;
/// `block` goes before the first NIS line (or at the end); every other line is `edit`ed.
fn layout(
    t: &Table,
    moved: impl Fn(usize, &[u8]) -> bool,
    block: Vec<Vec<u8>>,
    edit: impl Fn(&[u8]) -> Vec<u8>,
) -> Table {
    let mut out: Vec<Bytes> = Vec::with_capacity(t.lines().len() + block.len());
    let mut anchor = None;
    for (i, l) in t.lines().iter().enumerate() {
        if let Some(n) = db::entry_name(l)
            && moved(i, n)
        {
            continue;
        }
        if anchor.is_none() && db::is_nis(l) {
            anchor = Some(out.len());
        }
        out.push(Bytes::from(edit(l)));
    }
    let at = anchor.unwrap_or(out.len());
    out.splice(at..at, block.into_iter().map(Bytes::from));
    Table::from_lines(out, t)
}

/// The passwd line of `rec`; the password field keeps the old one when hashes are not synced.
fn passwd_line(rec: &User, policy: &Policy, has_shadow: bool, old: Option<&[u8]>) -> Vec<u8> {
    let old = old.and_then(|l| db::parse_pw(l).map(|p| p.passwd.to_vec()));
    let hash = rec
        .password
        .as_ref()
        .filter(|_| policy.passwords)
        .map(|s| s.expose().as_bytes().to_vec());
    let field = match (hash, has_shadow) {
        (Some(_), true) => b"x".to_vec(),
        (Some(h), false) => h,
        (None, shadow) => old.unwrap_or_else(|| if shadow { b"x".to_vec() } else { b"!".to_vec() }),
    };
    db::join(&[
        rec.name.as_bytes(),
        &field,
        rec.uid.to_string().as_bytes(),
        rec.gid.to_string().as_bytes(),
        rec.gecos.as_bytes(),
        rec.home.as_bytes(),
        rec.shell.as_bytes(),
    ])
}

fn shadow_line(rec: &User, policy: &Policy, old: Option<&[u8]>, today: i64) -> Vec<u8> {
    let old = old.and_then(|l| db::parse_sp(l).map(|s| (s.hash.to_vec(), s.aging.last_change)));
    let hash = rec
        .password
        .as_ref()
        .filter(|_| policy.passwords)
        .map(|s| s.expose().as_bytes().to_vec());
    let (hash, last) = match (hash, old) {
        (Some(h), _) => (h, rec.aging.last_change),
        (None, Some((h, last))) => (h, last),
        (None, None) => (b"!".to_vec(), Some(today)),
    };
    let a = &rec.aging;
    db::join(&[
        rec.name.as_bytes(),
        &hash,
        &db::num(last),
        &db::num(a.min),
        &db::num(a.max),
        &db::num(a.warn),
        &db::num(a.inactive),
        &db::num(a.expire),
        &db::num(a.reserved),
    ])
}

/// Plan putting `items` (validated, live or deleted) in place on `files`. `today` is the day
/// number put in the last-change field of a new user whose hash is not synced.
pub fn plan_files(files: &AccountFiles, policy: &Policy, items: &[Item], today: i64) -> FilePlan {
    plan_in(
        &View::new(files, policy),
        policy,
        items,
        today,
        &HashMap::new(),
    )
}

/// [`plan_files`] on the files of `view` (kept between applies: nothing is indexed again).
///
/// `carried`: the local members (names that are not managed users here) of managed groups an
/// earlier apply deleted, by gid ([`FilePlan::carried`] of that apply). A group this apply
/// makes with one of those gids gets them: a rename (`groupmod -n`) is a deletion and a new
/// group with the same gid, which may arrive in two batches (or the new name first, set aside
/// while the old one still holds the gid), and this node's own members of the group stay.
pub fn plan_in(
    view: &View,
    policy: &Policy,
    items: &[impl Borrow<Item>],
    today: i64,
    carried: &HashMap<u32, Vec<Vec<u8>>>,
) -> FilePlan {
    let mut p = Plan {
        view,
        policy,
        today,
        users: HashMap::new(),
        groups: HashMap::new(),
        members: HashMap::new(),
        dropped: HashSet::new(),
        carried: carried.clone(),
        took: HashSet::new(),
        homes: Vec::new(),
        uid_over: HashMap::new(),
        gid_over: HashMap::new(),
        primary: None,
    };
    let rank = |i: &Item| -> u8 {
        match (AccountId::from_key(&i.key), &i.body) {
            (Some(AccountId::User(_)), None) => 0,
            (Some(AccountId::Group(_)), None) => 1,
            (_, Some(Body::Account(Account::Group { .. }))) => 2,
            (_, Some(Body::Account(Account::User { .. }))) => 3,
            _ => 4,
        }
    };
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| rank(items[i].borrow()));
    let mut outcomes = vec![Outcome::Applied; items.len()];
    for i in order {
        let it: &Item = items[i].borrow();
        let out = match (AccountId::from_key(&it.key), &it.body) {
            (Some(AccountId::User(n)), None) => p.delete_user(&n),
            (Some(AccountId::Group(n)), None) => p.delete_group(&n),
            (Some(AccountId::Members(n)), None) => {
                if p.group_exists_now(&n) {
                    p.members.insert(n, Vec::new());
                }
                Outcome::Applied
            }
            (_, Some(Body::Account(Account::Group { group, .. }))) => p.upsert_group(group),
            (_, Some(Body::Account(Account::User { user, .. }))) => p.upsert_user(user),
            (_, Some(Body::Account(Account::Members(m)))) => p.members(m),
            _ => Outcome::Aside {
                reason: format!(
                    "{} is not an account item of this release",
                    shown_bytes(&it.key)
                ),
                collision: false,
            },
        };
        outcomes[i] = out;
    }
    let files = p.assemble();
    let mut carried = p.carried;
    carried.retain(|gid, _| !p.took.contains(gid));
    FilePlan {
        files,
        outcomes,
        homes: p.homes,
        carried,
    }
}

/// The files in canonical layout, with nothing else changed (the member lists of `groups`
/// reordered: local members first, managed ones sorted). Used after a tool's change on this
/// node, so the same accounts give the same bytes everywhere.
pub fn canonical(files: &AccountFiles, policy: &Policy, groups: &BTreeSet<String>) -> AccountFiles {
    canonical_in(&View::new(files, policy), policy, groups)
}

/// [`canonical`] of the files of `view`.
pub fn canonical_in(view: &View, policy: &Policy, groups: &BTreeSet<String>) -> AccountFiles {
    let mut p = Plan {
        view,
        policy,
        today: 0,
        users: HashMap::new(),
        groups: HashMap::new(),
        members: HashMap::new(),
        dropped: HashSet::new(),
        carried: HashMap::new(),
        took: HashSet::new(),
        homes: Vec::new(),
        uid_over: HashMap::new(),
        gid_over: HashMap::new(),
        primary: None,
    };
    for g in groups {
        if let Some(m) = view.members_of(g.as_bytes()) {
            p.members.insert(g.clone(), m);
        }
    }
    p.assemble()
}
