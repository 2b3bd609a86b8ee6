//! The four files of one root, indexed by name: which accounts are managed, their records,
//! the managed members of every group, and the lines that could not be read (pure; no I/O).
//!
//! A [`View`] is built in one pass over the lines (no record is made for an account nobody
//! asks about): name → line maps of the four tables, the uid/gid and primary gid of every
//! user, and which users and groups are managed ([`ManagedSet`](super::ManagedSet)). The
//! daemon keeps it between changes and patches it with the lines that changed
//! ([`View::patched`], `view/patch.rs`; the same view as one built anew, asserted in debug
//! builds). Records are made on demand ([`View::user`], [`View::group`],
//! [`View::members_of`]), and the canonical blocks when an apply first asks
//! ([`View::blocks`]), so a caller that looks only at what changed pays only for that.
//!
//! A managed account whose lines cannot be turned into a valid record (a malformed line, a
//! duplicate name, text that is not UTF-8, a field [`validate`](super::validate) refuses) is
//! reported by [`View::problems`] by file, line and name, so it is neither sent nor taken for
//! deleted. Problems never quote a line.

use super::db::{self, AccountFiles, DbFile, Table};
use super::managed::Policy;
use super::model::{AccountId, Aging, Group, Secret, User, shown_bytes};
use super::validate::{InvalidRecord, check_name, validate_group, validate_user};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// The view's maps: keys are names and ids read from the local files (not from peers), hashed
/// with a fast seeded hash; a view of 10,000 users and 11,000 groups is built in a few ms.
pub type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

mod patch;

/// A managed account that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadProblem {
    /// The account, when its name is UTF-8: the engine must not take it for deleted.
    pub account: Option<AccountId>,
    pub file: DbFile,
    /// 1-based.
    pub line: usize,
    /// The name, escaped for messages.
    pub name: String,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The line does not have the fields of its file.
    Malformed,
    /// A second line with the same name (the first one is used by the system).
    Duplicate,
    /// A field is not UTF-8.
    NotUtf8,
    /// The record is refused by validation (a name the files cannot hold unambiguously…).
    Invalid(InvalidRecord),
}

impl fmt::Display for ReadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/etc/{} line {}: account {}: ",
            self.file, self.line, self.name
        )?;
        match &self.kind {
            ProblemKind::Malformed => {
                f.write_str("malformed line, not synced (fix it with vipw/vigr)")
            }
            ProblemKind::Duplicate => {
                f.write_str("duplicate name, not synced (remove one of the lines with vipw/vigr)")
            }
            ProblemKind::NotUtf8 => f.write_str("a field is not UTF-8, not synced"),
            ProblemKind::Invalid(e) => write!(f, "{e}, not synced"),
        }
    }
}

/// What one `passwd` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLine {
    pub line: usize,
    pub uid: u32,
    pub gid: u32,
    pub managed: bool,
}

/// What one `group` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLine {
    pub line: usize,
    pub gid: u32,
    pub managed: bool,
}

/// Where the managed lines of one file are, when they form the canonical block (see
/// [`super::apply`]): exactly the lines `start..end`, sorted, and `end` is the first NIS line or
/// the end of the file. An apply to files in this layout patches the block instead of building
/// the files again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub start: usize,
    pub end: usize,
}

/// The four tables with their lookups (owned: kept between calls for the files it was made of).
#[derive(Debug)]
pub struct View {
    pub files: AccountFiles,
    /// First parsed `passwd` line of each name.
    pub users: Map<Bytes, UserLine>,
    /// First parsed `group` line of each name.
    pub groups: Map<Bytes, GroupLine>,
    /// uid → name of its first user; gid → name of its first group.
    pub uids: Map<u32, Bytes>,
    pub gids: Map<u32, Bytes>,
    /// First `shadow` / `gshadow` line of each name.
    pub shadow: Map<Bytes, usize>,
    pub gshadow: Map<Bytes, usize>,
    /// Names with more than one line in passwd / group (the lines after the first).
    pub dup_users: Map<Bytes, usize>,
    pub dup_groups: Map<Bytes, usize>,
    /// Lines that do not parse but may be a managed account's (names for messages).
    pub malformed: Vec<(DbFile, usize, Vec<u8>)>,
    /// The canonical blocks of passwd, shadow, group, gshadow (in [`DbFile::ALL`] order), when
    /// every file is in canonical layout; `None` otherwise.
    /// Found when first asked for ([`View::blocks`]): only an apply needs them.
    blocks: std::sync::OnceLock<Option<[Option<Block>; 4]>>,
    /// Made by [`View::patched`]: its blocks are found in one pass, without sorting.
    patched: bool,
    /// No name has two lines in any file, no id two accounts, no line is malformed: the view
    /// can be patched ([`View::patched`]).
    patchable: bool,
}

impl View {
    /// Index the tables (one pass, no record made).
    pub fn new(files: &AccountFiles, policy: &Policy) -> View {
        let files = files.clone();
        let mut v = View {
            files: files.clone(),
            users: Map::with_capacity_and_hasher(files.passwd.lines().len(), Default::default()),
            groups: Map::with_capacity_and_hasher(files.group.lines().len(), Default::default()),
            uids: Map::with_capacity_and_hasher(files.passwd.lines().len(), Default::default()),
            gids: Map::with_capacity_and_hasher(files.group.lines().len(), Default::default()),
            shadow: Map::default(),
            gshadow: Map::default(),
            dup_users: Map::default(),
            dup_groups: Map::default(),
            malformed: Vec::new(),
            blocks: std::sync::OnceLock::new(),
            patched: false,
            patchable: true,
        };
        let mut shared_ids = false;
        let mut pw_malformed = Vec::new();
        for (i, l) in files.passwd.lines().iter().enumerate() {
            let Some(name) = db::entry_name(l) else {
                continue;
            };
            match db::parse_pw(l) {
                Some(pw) => {
                    let name = l.slice_ref(name);
                    if v.users.contains_key(&name) {
                        v.dup_users.insert(name, i);
                        continue;
                    }
                    let managed =
                        std::str::from_utf8(&name).is_ok_and(|n| policy.set.user(n, pw.uid));
                    shared_ids |= v.uids.contains_key(&pw.uid);
                    v.uids.entry(pw.uid).or_insert_with(|| name.clone());
                    v.users.insert(
                        name,
                        UserLine {
                            line: i,
                            uid: pw.uid,
                            gid: pw.gid,
                            managed,
                        },
                    );
                }
                None => pw_malformed.push((i, name, l)),
            }
        }
        for (i, name, l) in pw_malformed {
            if maybe_managed(policy, l, name, &|n, id| policy.set.user(n, id)) {
                v.malformed.push((DbFile::Passwd, i, name.to_vec()));
            }
        }
        let mut gr_malformed = Vec::new();
        for (i, l) in files.group.lines().iter().enumerate() {
            let Some(name) = db::entry_name(l) else {
                continue;
            };
            match db::parse_gr(l) {
                Some(gr) => {
                    let name = l.slice_ref(name);
                    if v.groups.contains_key(&name) {
                        v.dup_groups.insert(name, i);
                        continue;
                    }
                    let owner = v.users.get(&name).map(|u| (u.uid, u.gid));
                    let managed = std::str::from_utf8(&name)
                        .is_ok_and(|n| policy.set.group(n, gr.gid, owner));
                    shared_ids |= v.gids.contains_key(&gr.gid);
                    v.gids.entry(gr.gid).or_insert_with(|| name.clone());
                    v.groups.insert(
                        name,
                        GroupLine {
                            line: i,
                            gid: gr.gid,
                            managed,
                        },
                    );
                }
                None => gr_malformed.push((i, name, l)),
            }
        }
        for (i, name, l) in gr_malformed {
            let owner = v.users.get(name).map(|u| (u.uid, u.gid));
            if maybe_managed(policy, l, name, &|n, id| policy.set.group(n, id, owner)) {
                v.malformed.push((DbFile::Group, i, name.to_vec()));
            }
        }
        let mut dup_lines = false;
        if let Some(t) = &files.shadow {
            (v.shadow, dup_lines) = first_lines(t);
        }
        if let Some(t) = &files.gshadow {
            let (m, dup) = first_lines(t);
            v.gshadow = m;
            dup_lines |= dup;
        }
        v.patchable = !shared_ids
            && !dup_lines
            && v.dup_users.is_empty()
            && v.dup_groups.is_empty()
            && v.malformed.is_empty();
        v
    }

    /// The canonical blocks of passwd, shadow, group, gshadow (in [`DbFile::ALL`] order), when
    /// every file is in canonical layout; `None` otherwise (an apply then builds the files
    /// anew). Found once, when first asked for.
    pub fn blocks(&self) -> Option<[Option<Block>; 4]> {
        *self.blocks.get_or_init(|| {
            if self.patched {
                self.blocks_in_one_pass()
            } else {
                self.find_blocks()
            }
        })
    }

    /// The same view, saying its files are not in canonical layout (tests: an apply that
    /// builds the files anew).
    #[cfg(test)]
    pub fn without_blocks(mut self) -> View {
        self.blocks = std::sync::OnceLock::from(None);
        self
    }

    /// The canonical blocks, if every file is in canonical layout with no duplicate or
    /// malformed line of a managed account (else `None`: an apply builds the files anew).
    fn find_blocks(&self) -> Option<[Option<Block>; 4]> {
        if !self.malformed.is_empty()
            || self.dup_users.keys().any(|n| self.is_managed_user(n))
            || self
                .dup_groups
                .keys()
                .any(|n| self.groups.get(&n[..]).is_some_and(|g| g.managed))
        {
            return None;
        }
        let mut users: Vec<(u32, &[u8], usize)> = self
            .users
            .iter()
            .filter(|(_, u)| u.managed)
            .map(|(n, u)| (u.uid, &n[..], u.line))
            .collect();
        users.sort_unstable();
        let mut groups: Vec<(u32, &[u8], usize)> = self
            .groups
            .iter()
            .filter(|(_, g)| g.managed)
            .map(|(n, g)| (g.gid, &n[..], g.line))
            .collect();
        groups.sort_unstable();
        // text order of the names as the canonical layout sorts them (names are UTF-8)
        let pw = block_of(&self.files.passwd, users.iter().map(|u| Some(u.2)))?;
        let gr = block_of(&self.files.group, groups.iter().map(|g| Some(g.2)))?;
        let sp = match &self.files.shadow {
            Some(t) => Some(block_of(
                t,
                users
                    .iter()
                    .map(|u| self.shadow.get(u.1).copied())
                    .filter(Option::is_some),
            )?),
            None => None,
        };
        let sg = match &self.files.gshadow {
            Some(t) => Some(block_of(
                t,
                groups
                    .iter()
                    .map(|g| self.gshadow.get(g.1).copied())
                    .filter(Option::is_some),
            )?),
            None => None,
        };
        Some([Some(pw), sp, Some(gr), sg])
    }

    /// Names of the managed users, sorted.
    pub fn managed_users(&self) -> BTreeSet<&[u8]> {
        self.users
            .iter()
            .filter(|(_, u)| u.managed)
            .map(|(n, _)| &n[..])
            .collect()
    }

    /// Names of the managed groups, sorted.
    pub fn managed_groups(&self) -> BTreeSet<&[u8]> {
        self.groups
            .iter()
            .filter(|(_, g)| g.managed)
            .map(|(n, _)| &n[..])
            .collect()
    }

    /// Whether `name` is a managed user here.
    pub fn is_managed_user(&self, name: &[u8]) -> bool {
        self.users.get(name).is_some_and(|u| u.managed)
    }

    /// The record of managed user `name` (`None`: no such managed user), or why it cannot be
    /// read.
    pub fn user(&self, name: &[u8], policy: &Policy) -> Option<Result<User, ReadProblem>> {
        let u = self.users.get(name).filter(|u| u.managed)?;
        let problem = |file, line: usize, kind| ReadProblem {
            account: std::str::from_utf8(name)
                .ok()
                .map(|n| AccountId::User(n.to_string())),
            file,
            line: line + 1,
            name: shown_bytes(name),
            kind,
        };
        if let Some(&i) = self.dup_users.get(name) {
            return Some(Err(problem(DbFile::Passwd, i, ProblemKind::Duplicate)));
        }
        let line = self.files.passwd.line(u.line);
        let Some(pw) = db::parse_pw(line) else {
            return Some(Err(problem(DbFile::Passwd, u.line, ProblemKind::Malformed)));
        };
        let sp = match (self.files.shadow.as_ref(), self.shadow.get(name)) {
            (Some(t), Some(&i)) => match db::parse_sp(t.line(i)) {
                Some(sp) => Some(sp),
                None => return Some(Err(problem(DbFile::Shadow, i, ProblemKind::Malformed))),
            },
            _ => None,
        };
        let (hash, aging) = match sp {
            Some(sp) if pw.passwd == b"x" => (sp.hash, sp.aging),
            _ => (pw.passwd, Aging::default()),
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let (Some(n), Some(gecos), Some(home), Some(shell), Some(hash)) = (
            text(pw.name),
            text(pw.gecos),
            text(pw.home),
            text(pw.shell),
            text(hash),
        ) else {
            return Some(Err(problem(DbFile::Passwd, u.line, ProblemKind::NotUtf8)));
        };
        let (password, aging) = if policy.passwords {
            (Some(Secret::new(hash)), aging)
        } else {
            (
                None,
                Aging {
                    last_change: None,
                    ..aging
                },
            )
        };
        let rec = User {
            name: n,
            uid: pw.uid,
            gid: pw.gid,
            gecos,
            home,
            shell,
            password,
            aging,
        };
        Some(match validate_user(&rec, &policy.set) {
            Ok(()) => Ok(rec),
            Err(e) => Err(problem(DbFile::Passwd, u.line, ProblemKind::Invalid(e))),
        })
    }

    /// The record of managed group `name`, like [`View::user`].
    pub fn group(&self, name: &[u8], policy: &Policy) -> Option<Result<Group, ReadProblem>> {
        let g = self.groups.get(name).filter(|g| g.managed)?;
        let problem = |file, line: usize, kind| ReadProblem {
            account: std::str::from_utf8(name)
                .ok()
                .map(|n| AccountId::Group(n.to_string())),
            file,
            line: line + 1,
            name: shown_bytes(name),
            kind,
        };
        if let Some(&i) = self.dup_groups.get(name) {
            return Some(Err(problem(DbFile::Group, i, ProblemKind::Duplicate)));
        }
        let Some(gr) = db::parse_gr(self.files.group.line(g.line)) else {
            return Some(Err(problem(DbFile::Group, g.line, ProblemKind::Malformed)));
        };
        let sg = match (self.files.gshadow.as_ref(), self.gshadow.get(name)) {
            (Some(t), Some(&i)) => match db::parse_sg(t.line(i)) {
                Some(sg) => Some(sg),
                None => return Some(Err(problem(DbFile::Gshadow, i, ProblemKind::Malformed))),
            },
            _ => None,
        };
        let (hash, admins) = match sg {
            Some(sg) => (sg.hash, db::list(sg.admins)),
            None => (gr.passwd, Vec::new()),
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let admins: Option<Vec<String>> = admins.into_iter().map(text).collect();
        let (Some(n), Some(hash), Some(admins)) = (text(gr.name), text(hash), admins) else {
            return Some(Err(problem(DbFile::Group, g.line, ProblemKind::NotUtf8)));
        };
        let rec = Group {
            name: n,
            gid: gr.gid,
            password: policy.passwords.then(|| Secret::new(hash)),
            admins,
        };
        Some(match validate_group(&rec) {
            Ok(()) => Ok(rec),
            Err(e) => Err(problem(DbFile::Group, g.line, ProblemKind::Invalid(e))),
        })
    }

    /// The raw member field of group `name` (`None`: no such group).
    pub fn member_field(&self, name: &[u8]) -> Option<&[u8]> {
        let g = self.groups.get(name)?;
        db::parse_gr(self.files.group.line(g.line)).map(|gr| gr.members)
    }

    /// Whether the member lists of group `name` are in canonical order already: local members
    /// first, each once, in their order, then the managed users sorted, each once; and the
    /// gshadow line's list the same as group's (what [`super::apply`] writes for a group whose
    /// members it touches). `true` for no such group. No allocation beyond a few local names:
    /// a detect checks a thousand groups of a thousand members this way instead of building
    /// their lines again.
    pub fn members_canonical(&self, name: &[u8]) -> bool {
        let Some(field) = self.member_field(name) else {
            return true;
        };
        let mut last: Option<&[u8]> = None;
        let mut locals: Vec<&[u8]> = Vec::new();
        for m in db::list(field) {
            if self.is_managed_user(m) {
                if last.is_some_and(|l| l >= m) {
                    return false;
                }
                last = Some(m);
            } else {
                if last.is_some() || locals.contains(&m) {
                    return false;
                }
                locals.push(m);
            }
        }
        match (&self.files.gshadow, self.gshadow.get(name)) {
            (Some(t), Some(&i)) => db::parse_sg(t.line(i)).is_some_and(|s| s.members == field),
            _ => true,
        }
    }

    /// The managed users listed as members of group `name`, sorted and unique (`None`: no
    /// such group). Names that are not UTF-8 are never managed.
    pub fn members_of(&self, name: &[u8]) -> Option<Vec<String>> {
        let field = self.member_field(name)?;
        let mut v: Vec<String> = db::list(field)
            .into_iter()
            .filter(|m| self.is_managed_user(m))
            .filter_map(|m| String::from_utf8(m.to_vec()).ok())
            .collect();
        v.sort();
        v.dedup();
        Some(v)
    }

    /// Every managed account that cannot be read, and lines that may be one.
    pub fn problems(&self, policy: &Policy) -> Vec<ReadProblem> {
        let mut out = self.problems_malformed();
        for n in self.managed_users() {
            if let Some(Err(p)) = self.user(n, policy) {
                out.push(p);
            }
        }
        for n in self.managed_groups() {
            if let Some(Err(p)) = self.group(n, policy) {
                out.push(p);
            }
        }
        out.sort_by_key(|p| (p.file, p.line));
        out
    }

    /// Lines that do not parse but may be a managed account's.
    pub fn problems_malformed(&self) -> Vec<ReadProblem> {
        let mut out = Vec::new();
        for (file, i, name) in &self.malformed {
            out.push(ReadProblem {
                account: std::str::from_utf8(name).ok().map(|n| match file {
                    DbFile::Passwd | DbFile::Shadow => AccountId::User(n.to_string()),
                    _ => AccountId::Group(n.to_string()),
                }),
                file: *file,
                line: i + 1,
                name: shown_bytes(name),
                kind: ProblemKind::Malformed,
            });
        }
        out.sort_by_key(|p| (p.file, p.line));
        out
    }
}

/// The first line of each name, and whether some name has several.
fn first_lines(t: &Table) -> (Map<Bytes, usize>, bool) {
    let mut m: Map<Bytes, usize> =
        Map::with_capacity_and_hasher(t.lines().len(), Default::default());
    let mut dup = false;
    for (i, l) in t.lines().iter().enumerate() {
        if let Some(n) = db::entry_name(l) {
            match m.entry(l.slice_ref(n)) {
                std::collections::hash_map::Entry::Occupied(_) => dup = true,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
    }
    (m, dup)
}

/// The block of `lines` (line numbers of the managed entries in canonical order; `None` items
/// were filtered out): `Some` when they are exactly the consecutive lines that end at the
/// first NIS line (or the end of the file).
fn block_of(t: &Table, lines: impl Iterator<Item = Option<usize>>) -> Option<Block> {
    let anchor = t.nis_start();
    let mut n = 0usize;
    let mut first = None;
    for (k, i) in lines.enumerate() {
        let i = i?;
        let start = *first.get_or_insert(i);
        if i != start + k {
            return None;
        }
        n = k + 1;
    }
    let start = first.unwrap_or(anchor);
    (start + n == anchor).then_some(Block { start, end: anchor })
}

/// Whether a malformed line may be a managed account's: its name is listed in `users`, or
/// its name is valid and its id (third field) is managed or unreadable. Such lines are
/// problems, so the account is not taken for deleted.
fn maybe_managed(
    policy: &Policy,
    line: &[u8],
    name: &[u8],
    managed: &dyn Fn(&str, u32) -> bool,
) -> bool {
    let Ok(name) = std::str::from_utf8(name) else {
        return false;
    };
    if policy.set.user_names().any(|u| u == name) {
        return true;
    }
    if check_name(name).is_err() {
        return false;
    }
    let id = line
        .split(|&c| c == b':')
        .nth(2)
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse::<u32>().ok());
    id.is_none_or(|id| managed(name, id))
}
