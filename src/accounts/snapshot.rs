//! From the files to the managed records (pure): what the engine compares with its index.
//!
//! A managed account whose lines cannot be turned into a valid record (malformed line, a
//! duplicate name, text that is not UTF-8, a field [`validate`](super::validate) refuses) is not
//! in the snapshot; it is listed in [`Snapshot::problems`] by file, line and name, so it is
//! neither sent nor taken for deleted. Problems never quote a line.

use super::db::{self, AccountFiles, DbFile, Table};
use super::managed::Policy;
use super::model::{AccountId, Aging, GroupRecord, Secret, UserRecord, shown_bytes};
use super::validate::{InvalidRecord, check_name, validate_group, validate_user};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The managed accounts of one root, as records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub users: BTreeMap<String, UserRecord>,
    pub groups: BTreeMap<String, GroupRecord>,
    /// Managed accounts left out, and why.
    pub problems: Vec<ReadProblem>,
    /// An interrupted apply finished (or given up) before reading.
    pub recovery: Option<super::report::Recovery>,
}

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
    /// The record is refused by validation.
    Invalid(InvalidRecord),
}

impl fmt::Display for ReadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: account {}: ",
            self.file, self.line, self.name
        )?;
        match &self.kind {
            ProblemKind::Malformed => f.write_str("malformed line, not synced"),
            ProblemKind::Duplicate => f.write_str("duplicate name, this line is ignored"),
            ProblemKind::NotUtf8 => f.write_str("a field is not UTF-8, not synced"),
            ProblemKind::Invalid(e) => write!(f, "{e}, not synced"),
        }
    }
}

impl Snapshot {
    /// Accounts that exist but could not be read (see [`Snapshot::problems`]): not to be taken
    /// for deleted.
    pub fn unreadable(&self) -> impl Iterator<Item = &AccountId> + '_ {
        self.problems.iter().filter_map(|p| p.account.as_ref())
    }

    /// The changes that turn `before` into `self`: upserts of new or different records and
    /// deletions of the ones that are gone (not of those that are only unreadable now).
    pub fn changes_since(&self, before: &Snapshot) -> Vec<super::Change> {
        use super::Change;
        let unreadable: BTreeSet<&AccountId> = self.unreadable().collect();
        let gone = |id: AccountId| !unreadable.contains(&id);
        let mut out = Vec::new();
        for (n, g) in &self.groups {
            if before.groups.get(n) != Some(g) {
                out.push(Change::Group(g.clone()));
            }
        }
        for (n, u) in &self.users {
            if before.users.get(n) != Some(u) {
                out.push(Change::User(u.clone()));
            }
        }
        for n in before
            .users
            .keys()
            .filter(|n| !self.users.contains_key(*n) && gone(AccountId::User(n.to_string())))
        {
            out.push(Change::DeleteUser(n.clone()));
        }
        for n in before
            .groups
            .keys()
            .filter(|n| !self.groups.contains_key(*n) && gone(AccountId::Group(n.to_string())))
        {
            out.push(Change::DeleteGroup(n.clone()));
        }
        out
    }

    /// Every account of the snapshot.
    pub fn ids(&self) -> impl Iterator<Item = AccountId> + '_ {
        let u = self.users.keys().map(|n| AccountId::User(n.clone()));
        u.chain(self.groups.keys().map(|n| AccountId::Group(n.clone())))
    }
}

fn text_name(name: &[u8]) -> Option<String> {
    String::from_utf8(name.to_vec()).ok()
}

/// Whether a malformed line may be a managed account's: its name is listed in `users`, or
/// its name is valid and its id (third field) is managed or unreadable. Such lines are
/// problems, so the account is not taken for deleted.
fn maybe_managed(
    policy: &Policy,
    line: &[u8],
    name: &[u8],
    managed: impl Fn(&str, u32) -> bool,
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

/// Why a record could not be made: the kind, and the file and line at fault when it is not
/// the line being read.
type Fault = (Option<(DbFile, usize)>, ProblemKind);

fn utf8(b: &[u8]) -> Result<String, Fault> {
    String::from_utf8(b.to_vec()).map_err(|_| (None, ProblemKind::NotUtf8))
}

/// The first line named `name` in an optional table, parsed: `Ok(None)` when there is none,
/// an error when it does not parse (its data must not be replaced by a default).
fn first<'a, T>(
    t: Option<&'a Table>,
    file: DbFile,
    name: &[u8],
    parse: fn(&'a [u8]) -> Option<T>,
) -> Result<Option<T>, Fault> {
    let Some(t) = t else { return Ok(None) };
    match t
        .lines()
        .iter()
        .position(|l| db::entry_name(l) == Some(name))
    {
        None => Ok(None),
        Some(i) => match parse(&t.lines()[i]) {
            Some(v) => Ok(Some(v)),
            None => Err((Some((file, i + 1)), ProblemKind::Malformed)),
        },
    }
}

impl AccountFiles {
    /// The managed accounts in these files.
    pub fn snapshot(&self, policy: &Policy) -> Snapshot {
        let mut snap = Snapshot::default();
        let primary = self.read_users(policy, &mut snap);
        self.read_groups(policy, &primary, &mut snap);
        snap
    }

    /// Managed users' primary gids (as used to decide which groups are managed).
    pub(crate) fn managed_primary_gids(&self, policy: &Policy) -> BTreeSet<u32> {
        self.passwd
            .lines()
            .iter()
            .filter_map(|l| db::parse_pw(l))
            .filter(|p| std::str::from_utf8(p.name).is_ok_and(|n| policy.set.user(n, p.uid)))
            .map(|p| p.gid)
            .collect()
    }

    fn read_users(&self, policy: &Policy, snap: &mut Snapshot) -> BTreeSet<u32> {
        let mut seen = BTreeSet::new();
        let mut primary = BTreeSet::new();
        for (i, line) in self.passwd.lines().iter().enumerate() {
            let Some(name) = db::entry_name(line) else {
                continue;
            };
            let problem = |kind| ReadProblem {
                account: text_name(name).map(AccountId::User),
                file: DbFile::Passwd,
                line: i + 1,
                name: shown_bytes(name),
                kind,
            };
            let Some(pw) = db::parse_pw(line) else {
                if maybe_managed(policy, line, name, |n, id| policy.set.user(n, id)) {
                    snap.problems.push(problem(ProblemKind::Malformed));
                }
                continue;
            };
            let managed = std::str::from_utf8(name).is_ok_and(|n| policy.set.user(n, pw.uid));
            if !managed {
                continue;
            }
            if !seen.insert(name.to_vec()) {
                snap.problems.push(problem(ProblemKind::Duplicate));
                continue;
            }
            primary.insert(pw.gid);
            match self.user_record(&pw, policy) {
                Ok(rec) => match validate_user(&rec, &policy.set) {
                    Ok(()) => {
                        snap.users.insert(rec.name.clone(), rec);
                    }
                    Err(e) => snap.problems.push(problem(ProblemKind::Invalid(e))),
                },
                Err((at, kind)) => {
                    let mut p = problem(kind);
                    if let Some((file, line)) = at {
                        (p.file, p.line) = (file, line);
                    }
                    snap.problems.push(p);
                }
            }
        }
        primary
    }

    /// The record of a managed `passwd` line; an error names the file and line at fault.
    fn user_record(&self, pw: &db::Pw<'_>, policy: &Policy) -> Result<UserRecord, Fault> {
        let name = utf8(pw.name)?;
        let sp = first(self.shadow.as_ref(), DbFile::Shadow, pw.name, db::parse_sp)?;
        let (hash, aging) = match sp {
            Some(sp) if pw.passwd == b"x" => (sp.hash, sp.aging),
            _ => (pw.passwd, Aging::default()),
        };
        let group = self
            .group
            .lines()
            .iter()
            .filter_map(|l| db::parse_gr(l))
            .find(|g| g.gid == pw.gid)
            .map(|g| utf8(g.name))
            .transpose()?;
        let mut groups = Vec::new();
        for g in self.group.lines().iter().filter_map(|l| db::parse_gr(l)) {
            if db::list(g.members).contains(&pw.name) {
                groups.push(utf8(g.name)?);
            }
        }
        groups.sort();
        groups.dedup();
        let (password, aging) = if policy.passwords {
            (Some(Secret::new(utf8(hash)?)), aging)
        } else {
            (
                None,
                Aging {
                    last_change: None,
                    ..aging
                },
            )
        };
        Ok(UserRecord {
            name,
            uid: pw.uid,
            gid: pw.gid,
            group,
            gecos: utf8(pw.gecos)?,
            home: utf8(pw.home)?,
            shell: utf8(pw.shell)?,
            groups,
            password,
            aging,
        })
    }

    fn read_groups(&self, policy: &Policy, primary: &BTreeSet<u32>, snap: &mut Snapshot) {
        let mut seen = BTreeSet::new();
        for (i, line) in self.group.lines().iter().enumerate() {
            let Some(name) = db::entry_name(line) else {
                continue;
            };
            let problem = |kind| ReadProblem {
                account: text_name(name).map(AccountId::Group),
                file: DbFile::Group,
                line: i + 1,
                name: shown_bytes(name),
                kind,
            };
            let Some(gr) = db::parse_gr(line) else {
                if maybe_managed(policy, line, name, |n, id| policy.set.group(n, id, primary)) {
                    snap.problems.push(problem(ProblemKind::Malformed));
                }
                continue;
            };
            let managed =
                std::str::from_utf8(name).is_ok_and(|n| policy.set.group(n, gr.gid, primary));
            if !managed {
                continue;
            }
            if !seen.insert(name.to_vec()) {
                snap.problems.push(problem(ProblemKind::Duplicate));
                continue;
            }
            match self.group_record(&gr, policy) {
                Ok(rec) => match validate_group(&rec, &policy.set) {
                    Ok(()) => {
                        snap.groups.insert(rec.name.clone(), rec);
                    }
                    Err(e) => snap.problems.push(problem(ProblemKind::Invalid(e))),
                },
                Err((at, kind)) => {
                    let mut p = problem(kind);
                    if let Some((file, line)) = at {
                        (p.file, p.line) = (file, line);
                    }
                    snap.problems.push(p);
                }
            }
        }
    }

    fn group_record(&self, gr: &db::Gr<'_>, policy: &Policy) -> Result<GroupRecord, Fault> {
        let sg = first(
            self.gshadow.as_ref(),
            DbFile::Gshadow,
            gr.name,
            db::parse_sg,
        )?;
        let (hash, admins) = match sg {
            Some(sg) => (sg.hash, db::list(sg.admins)),
            None => (gr.passwd, Vec::new()),
        };
        let admins = admins
            .into_iter()
            .map(utf8)
            .collect::<Result<Vec<_>, _>>()?;
        let password = if policy.passwords {
            Some(Secret::new(utf8(hash)?))
        } else {
            None
        };
        Ok(GroupRecord {
            name: utf8(gr.name)?,
            gid: gr.gid,
            password,
            admins,
        })
    }
}
