//! Deciding an apply, without touching the filesystem: from the four files and a batch of
//! changes to the new contents and a report.
//!
//! Order inside a batch: user deletions, group deletions, group upserts, user upserts, so that
//! a rename (delete + add with the same id) frees the id first and a user's groups exist
//! before its memberships are set. Every check for a change happens before its first edit, so a
//! refused or colliding change leaves no trace; an applied one edits passwd and shadow (or
//! group and gshadow) together, which keeps the files in agreement: a user in passwd has its
//! shadow line and a group its gshadow line whenever those files exist.

use super::db::{self, AccountFiles, DbFile, Table};
use super::managed::Policy;
use super::model::{Change, GroupRecord, Secret, UserRecord, shown_bytes};
use super::report::{
    ApplyReport, Collision, CollisionKind, HomeRequest, LocalAccount, Refusal, RefusalReason,
    Waiting,
};
use super::validate::{RecordKind, validate_change};
use std::collections::{BTreeMap, BTreeSet};

/// The result of [`AccountFiles::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The files as they should be.
    pub files: AccountFiles,
    /// The files whose bytes differ from the input.
    pub changed: BTreeSet<DbFile>,
    pub report: ApplyReport,
    /// Homes to create if missing (only with `create_home`).
    pub homes: Vec<HomeRequest>,
}

/// What one change came to.
enum Outcome {
    Done,
    Collided(Collision),
    Refused(RefusalReason),
}

/// Where a name stands in one table.
enum Found {
    Absent,
    One(usize),
    Malformed(usize),
    Duplicate,
}

fn lookup(t: &Table, name: &str, parses: fn(&[u8]) -> bool) -> Found {
    match t.find(name)[..] {
        [] => Found::Absent,
        [i] if parses(t.line(i)) => Found::One(i),
        [i] => Found::Malformed(i),
        _ => Found::Duplicate,
    }
}

fn pw_ok(l: &[u8]) -> bool {
    db::parse_pw(l).is_some()
}
fn gr_ok(l: &[u8]) -> bool {
    db::parse_gr(l).is_some()
}
fn sp_ok(l: &[u8]) -> bool {
    db::parse_sp(l).is_some()
}
fn sg_ok(l: &[u8]) -> bool {
    db::parse_sg(l).is_some()
}

/// A line index in an optional file, after the checks.
type Slot = Option<usize>;

/// Where a name's line is, for an edit: `Ok(Some(i))` to replace line `i`, `Ok(None)` to
/// append; an error when the local lines cannot be touched safely.
fn from_found(found: Found, file: DbFile) -> Result<Slot, RefusalReason> {
    match found {
        Found::Absent => Ok(None),
        Found::One(i) => Ok(Some(i)),
        Found::Malformed(i) => Err(RefusalReason::MalformedLocal { file, line: i + 1 }),
        Found::Duplicate => Err(RefusalReason::DuplicateLocal { file }),
    }
}

/// [`from_found`] for the companion line in shadow/gshadow (`Ok(None)` without that file).
fn companion(
    t: Option<&Table>,
    file: DbFile,
    name: &str,
    parses: fn(&[u8]) -> bool,
) -> Result<Slot, RefusalReason> {
    t.map_or(Ok(None), |t| from_found(lookup(t, name, parses), file))
}

fn local(kind: RecordKind, name: &[u8], id: u32) -> LocalAccount {
    LocalAccount {
        kind,
        name: shown_bytes(name),
        id,
    }
}

struct Planner<'p> {
    f: AccountFiles,
    policy: &'p Policy,
    today: i64,
    changed: BTreeSet<DbFile>,
    edits: usize,
    report: ApplyReport,
    homes: Vec<HomeRequest>,
    /// Primary gids of the managed users, here and in the batch: decides which groups are managed.
    managed_gids: BTreeSet<u32>,
    /// Primary gid → a user that has it, once the batch is applied.
    primary_after: BTreeMap<u32, String>,
    /// Gids the batch's groups bring.
    batch_gids: BTreeSet<u32>,
}

impl AccountFiles {
    /// Plan a batch of changes. `today` is the day number (days since 1970-01-01) put in the
    /// last-change field of a new user whose hash is not synced.
    pub fn plan(&self, changes: &[Change], policy: &Policy, today: i64) -> Plan {
        let mut p = Planner::new(self.clone(), changes, policy, today);
        let rank = |c: &Change| match c {
            Change::DeleteUser(_) => 0,
            Change::DeleteGroup(_) => 1,
            Change::Group(_) => 2,
            Change::User(_) => 3,
        };
        let mut ordered: Vec<&Change> = changes.iter().collect();
        ordered.sort_by_key(|c| rank(c));
        for c in ordered {
            p.one(c);
        }
        p.report.files = p.changed.iter().copied().collect();
        Plan {
            files: p.f,
            changed: p.changed,
            report: p.report,
            homes: p.homes,
        }
    }
}

impl<'p> Planner<'p> {
    fn new(f: AccountFiles, changes: &[Change], policy: &'p Policy, today: i64) -> Self {
        let mut managed_gids = f.managed_primary_gids(policy);
        let mut gone: BTreeSet<&str> = BTreeSet::new();
        let mut primary_after = BTreeMap::new();
        let mut batch_gids = BTreeSet::new();
        for c in changes {
            match c {
                Change::User(u) => {
                    gone.insert(&u.name);
                    if policy.set.user(&u.name, u.uid) {
                        managed_gids.insert(u.gid);
                    }
                    primary_after.insert(u.gid, u.name.clone());
                }
                Change::DeleteUser(n) => {
                    gone.insert(n);
                }
                Change::Group(g) => {
                    batch_gids.insert(g.gid);
                }
                Change::DeleteGroup(_) => {}
            }
        }
        for pw in f.passwd.lines().iter().filter_map(|l| db::parse_pw(l)) {
            let name = String::from_utf8_lossy(pw.name);
            if !gone.contains(name.as_ref()) {
                primary_after
                    .entry(pw.gid)
                    .or_insert_with(|| name.into_owned());
            }
        }
        Planner {
            f,
            policy,
            today,
            changed: BTreeSet::new(),
            edits: 0,
            report: ApplyReport::default(),
            homes: Vec::new(),
            managed_gids,
            primary_after,
            batch_gids,
        }
    }

    fn one(&mut self, c: &Change) {
        let id = c.id();
        if let Err(e) = validate_change(c, &self.policy.set) {
            self.report.refused.push(Refusal {
                account: id,
                reason: RefusalReason::Invalid(e),
            });
            return;
        }
        let before = self.edits;
        let outcome = match c {
            Change::DeleteUser(n) => self.delete_user(n),
            Change::DeleteGroup(n) => self.delete_group(n),
            Change::Group(g) => self.upsert_group(g),
            Change::User(u) => self.upsert_user(u),
        };
        match outcome {
            Outcome::Done if self.edits > before => self.report.applied.push(id),
            Outcome::Done => self.report.unchanged.push(id),
            Outcome::Collided(c) => self.report.collisions.push(c),
            Outcome::Refused(reason) => self.report.refused.push(Refusal {
                account: id,
                reason,
            }),
        }
    }

    // --- edits -----------------------------------------------------------------------------

    fn table_mut(&mut self, file: DbFile) -> Option<&mut Table> {
        match file {
            DbFile::Passwd => Some(&mut self.f.passwd),
            DbFile::Group => Some(&mut self.f.group),
            DbFile::Shadow => self.f.shadow.as_mut(),
            DbFile::Gshadow => self.f.gshadow.as_mut(),
        }
    }

    fn set_line(&mut self, file: DbFile, i: usize, line: Vec<u8>) {
        if self.table_mut(file).is_some_and(|t| t.set(i, line)) {
            self.changed.insert(file);
            self.edits += 1;
        }
    }

    /// Replace line `slot`, or append when `None`.
    fn put_line(&mut self, file: DbFile, slot: Slot, line: Vec<u8>) {
        match slot {
            Some(i) => self.set_line(file, i, line),
            None => {
                if let Some(t) = self.table_mut(file) {
                    t.push(line);
                    self.changed.insert(file);
                    self.edits += 1;
                }
            }
        }
    }

    fn remove_named(&mut self, file: DbFile, name: &str) {
        let n = self.table_mut(file).map_or(0, |t| {
            t.remove_where(|l| db::entry_name(l) == Some(name.as_bytes()))
        });
        if n > 0 {
            self.changed.insert(file);
            self.edits += 1;
        }
    }

    /// The hash to write, if hashes are synced and the record has one.
    fn hash<'r>(&self, h: &'r Option<Secret>) -> Option<&'r [u8]> {
        h.as_ref()
            .filter(|_| self.policy.passwords)
            .map(|s| s.expose().as_bytes())
    }

    // --- users -----------------------------------------------------------------------------

    fn delete_user(&mut self, name: &str) -> Outcome {
        let i = match from_found(lookup(&self.f.passwd, name, pw_ok), DbFile::Passwd) {
            Ok(Some(i)) => i,
            Ok(None) => return Outcome::Done,
            Err(r) => return Outcome::Refused(r),
        };
        let uid = db::parse_pw(self.f.passwd.line(i)).map_or(0, |p| p.uid);
        if !self.policy.set.user(name, uid) {
            return Outcome::Refused(RefusalReason::NotManaged {
                local_id: Some(uid),
            });
        }
        self.remove_named(DbFile::Passwd, name);
        self.remove_named(DbFile::Shadow, name);
        self.set_memberships(name, &BTreeSet::new(), true);
        Outcome::Done
    }

    fn upsert_user(&mut self, rec: &UserRecord) -> Outcome {
        let (pw_slot, sp_slot) = match self.check_user(rec) {
            Ok(slots) => slots,
            Err(o) => return o,
        };
        let line = self.passwd_line(rec, pw_slot);
        self.put_line(DbFile::Passwd, pw_slot, line);
        if self.f.shadow.is_some() {
            let line = self.shadow_line(rec, sp_slot);
            self.put_line(DbFile::Shadow, sp_slot, line);
        }
        let want: BTreeSet<&[u8]> = rec.groups.iter().map(|g| g.as_bytes()).collect();
        self.set_memberships(&rec.name, &want, false);
        let missing: Vec<String> = rec
            .groups
            .iter()
            .filter(|g| self.f.group.find(g).is_empty())
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.report.waiting.push(Waiting {
                user: rec.name.clone(),
                groups: missing,
            });
        }
        if self.policy.create_home {
            self.homes.push(HomeRequest {
                user: rec.name.clone(),
                home: rec.home.clone(),
                uid: rec.uid,
                gid: rec.gid,
            });
        }
        Outcome::Done
    }

    /// Everything that stops a user upsert, before any edit; else its passwd and shadow slots.
    fn check_user(&self, rec: &UserRecord) -> Result<(Slot, Slot), Outcome> {
        let refuse = Outcome::Refused;
        let collide = |local, kind| {
            Outcome::Collided(Collision {
                account: rec.id(),
                id: rec.uid,
                local,
                kind,
            })
        };
        let pw_slot =
            from_found(lookup(&self.f.passwd, &rec.name, pw_ok), DbFile::Passwd).map_err(refuse)?;
        let lines = self.f.passwd.lines();
        match pw_slot.and_then(|i| db::parse_pw(&lines[i])) {
            Some(pw) if pw.uid != rec.uid => {
                return Err(collide(
                    local(RecordKind::User, pw.name, pw.uid),
                    CollisionKind::Name,
                ));
            }
            Some(_) => {}
            None => {
                let taken = lines
                    .iter()
                    .filter_map(|l| db::parse_pw(l))
                    .find(|p| p.uid == rec.uid && p.name != rec.name.as_bytes());
                if let Some(p) = taken {
                    return Err(collide(
                        local(RecordKind::User, p.name, p.uid),
                        CollisionKind::Id,
                    ));
                }
            }
        }
        if let Some(g) = self.primary_group_conflict(rec) {
            return Err(collide(g, CollisionKind::PrimaryGroup));
        }
        let sp_slot =
            companion(self.f.shadow.as_ref(), DbFile::Shadow, &rec.name, sp_ok).map_err(refuse)?;
        Ok((pw_slot, sp_slot))
    }

    /// A local group that makes the user's primary group differ here.
    fn primary_group_conflict(&self, rec: &UserRecord) -> Option<LocalAccount> {
        let want = rec.group.as_deref()?;
        self.f
            .group
            .lines()
            .iter()
            .filter_map(|l| db::parse_gr(l))
            .find(|g| (g.gid == rec.gid) != (g.name == want.as_bytes()))
            .map(|g| local(RecordKind::Group, g.name, g.gid))
    }

    fn passwd_line(&self, rec: &UserRecord, slot: Slot) -> Vec<u8> {
        let old = slot.and_then(|i| db::parse_pw(self.f.passwd.line(i)).map(|p| p.passwd.to_vec()));
        let field = match (self.hash(&rec.password), self.f.shadow.is_some()) {
            (Some(_), true) => b"x".to_vec(),
            (Some(h), false) => h.to_vec(),
            (None, shadow) => {
                old.unwrap_or_else(|| if shadow { b"x".to_vec() } else { b"!".to_vec() })
            }
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

    fn shadow_line(&self, rec: &UserRecord, slot: Slot) -> Vec<u8> {
        let old = slot.zip(self.f.shadow.as_ref()).and_then(|(i, t)| {
            db::parse_sp(t.line(i)).map(|s| (s.hash.to_vec(), s.aging.last_change))
        });
        let (hash, last) = match (self.hash(&rec.password), old) {
            (Some(h), _) => (h.to_vec(), rec.aging.last_change),
            (None, Some((h, last))) => (h, last),
            (None, None) => (b"!".to_vec(), Some(self.today)),
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

    /// Make `user` a member of exactly the groups in `want` (in group and gshadow member
    /// lists); other members are left as they are. With `drop_admin`, also remove it from
    /// gshadow administrator lists (as `userdel` does).
    fn set_memberships(&mut self, user: &str, want: &BTreeSet<&[u8]>, drop_admin: bool) {
        for i in 0..self.f.group.lines().len() {
            let Some(gr) = db::parse_gr(self.f.group.line(i)) else {
                continue;
            };
            let member = want.contains(gr.name);
            let name = gr.name.to_vec();
            if let Some(m) = db::with_member(gr.members, user, member) {
                let line = db::replace_field(self.f.group.line(i), 3, &m);
                self.set_line(DbFile::Group, i, line);
            }
            let Some(sg_table) = &self.f.gshadow else {
                continue;
            };
            let Some(j) = sg_table.find(&name).first().copied() else {
                continue;
            };
            let Some(sg) = db::parse_sg(sg_table.line(j)) else {
                continue;
            };
            let mut line = sg_table.line(j).to_vec();
            if let Some(m) = db::with_member(sg.members, user, member) {
                line = db::replace_field(&line, 3, &m);
            }
            if drop_admin && let Some(a) = db::with_member(sg.admins, user, false) {
                line = db::replace_field(&line, 2, &a);
            }
            self.set_line(DbFile::Gshadow, j, line);
        }
    }

    // --- groups ----------------------------------------------------------------------------

    fn delete_group(&mut self, name: &str) -> Outcome {
        let i = match from_found(lookup(&self.f.group, name, gr_ok), DbFile::Group) {
            Ok(Some(i)) => i,
            Ok(None) => return Outcome::Done,
            Err(r) => return Outcome::Refused(r),
        };
        let gid = db::parse_gr(self.f.group.line(i)).map_or(0, |g| g.gid);
        if !self.policy.set.group(name, gid, &self.managed_gids) {
            return Outcome::Refused(RefusalReason::NotManaged {
                local_id: Some(gid),
            });
        }
        if !self.batch_gids.contains(&gid)
            && let Some(user) = self.primary_after.get(&gid)
        {
            return Outcome::Refused(RefusalReason::PrimaryGroupInUse { user: user.clone() });
        }
        self.remove_named(DbFile::Group, name);
        self.remove_named(DbFile::Gshadow, name);
        Outcome::Done
    }

    fn upsert_group(&mut self, rec: &GroupRecord) -> Outcome {
        if !self
            .policy
            .set
            .group(&rec.name, rec.gid, &self.managed_gids)
        {
            return Outcome::Refused(RefusalReason::NotManaged { local_id: None });
        }
        let (gr_slot, sg_slot) = match self.check_group(rec) {
            Ok(slots) => slots,
            Err(o) => return o,
        };
        let old = gr_slot.and_then(|i| {
            db::parse_gr(self.f.group.line(i)).map(|g| (g.passwd.to_vec(), g.members.to_vec()))
        });
        let field = match (self.hash(&rec.password), self.f.gshadow.is_some()) {
            (Some(_), true) => b"x".to_vec(),
            (Some(h), false) => h.to_vec(),
            (None, gshadow) => old.as_ref().map(|o| o.0.clone()).unwrap_or_else(|| {
                if gshadow {
                    b"x".to_vec()
                } else {
                    b"!".to_vec()
                }
            }),
        };
        let members = old.map(|o| o.1).unwrap_or_default();
        let line = db::join(&[
            rec.name.as_bytes(),
            &field,
            rec.gid.to_string().as_bytes(),
            &members,
        ]);
        self.put_line(DbFile::Group, gr_slot, line);
        if self.f.gshadow.is_some() {
            let line = self.gshadow_line(rec, sg_slot, &members);
            self.put_line(DbFile::Gshadow, sg_slot, line);
        }
        Outcome::Done
    }

    fn check_group(&self, rec: &GroupRecord) -> Result<(Slot, Slot), Outcome> {
        let collide = |local, kind| {
            Outcome::Collided(Collision {
                account: rec.id(),
                id: rec.gid,
                local,
                kind,
            })
        };
        let gr_slot = from_found(lookup(&self.f.group, &rec.name, gr_ok), DbFile::Group)
            .map_err(Outcome::Refused)?;
        let lines = self.f.group.lines();
        match gr_slot.and_then(|i| db::parse_gr(&lines[i])) {
            Some(g) if g.gid != rec.gid => {
                return Err(collide(
                    local(RecordKind::Group, g.name, g.gid),
                    CollisionKind::Name,
                ));
            }
            Some(_) => {}
            None => {
                let taken = lines
                    .iter()
                    .filter_map(|l| db::parse_gr(l))
                    .find(|g| g.gid == rec.gid && g.name != rec.name.as_bytes());
                if let Some(g) = taken {
                    return Err(collide(
                        local(RecordKind::Group, g.name, g.gid),
                        CollisionKind::Id,
                    ));
                }
            }
        }
        let sg_slot = companion(self.f.gshadow.as_ref(), DbFile::Gshadow, &rec.name, sg_ok)
            .map_err(Outcome::Refused)?;
        Ok((gr_slot, sg_slot))
    }

    fn gshadow_line(&self, rec: &GroupRecord, slot: Slot, group_members: &[u8]) -> Vec<u8> {
        let old = slot.zip(self.f.gshadow.as_ref()).and_then(|(i, t)| {
            db::parse_sg(t.line(i)).map(|s| (s.hash.to_vec(), s.members.to_vec()))
        });
        let hash = match (self.hash(&rec.password), &old) {
            (Some(h), _) => h.to_vec(),
            (None, Some((h, _))) => h.clone(),
            (None, None) => b"!".to_vec(),
        };
        let members = old.map(|o| o.1).unwrap_or_else(|| group_members.to_vec());
        let admins: Vec<&[u8]> = rec.admins.iter().map(|a| a.as_bytes()).collect();
        db::join(&[rec.name.as_bytes(), &hash, &admins.join(&b','), &members])
    }
}
