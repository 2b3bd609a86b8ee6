//! What an apply did, change by change: the engine logs, audits and shows these.
//!
//! Nothing here carries a hash; names are escaped for messages.

use super::db::DbFile;
use super::model::{AccountId, shown};
use super::validate::{InvalidRecord, RecordKind};
use std::fmt;

/// The outcome of one apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changed on disk.
    pub applied: Vec<AccountId>,
    /// Already as wanted; nothing written for them.
    pub unchanged: Vec<AccountId>,
    /// Not applied: a different local account holds the name or id (SPEC §5.7).
    pub collisions: Vec<Collision>,
    /// Not applied for another reason (outside the managed set here, a local line that cannot
    /// be parsed, a group that is still someone's primary group…).
    pub refused: Vec<Refusal>,
    /// Users applied without some memberships because those groups do not exist here yet;
    /// apply these users again once the groups have arrived.
    pub waiting: Vec<Waiting>,
    /// Home directories created or not created.
    pub homes: Vec<HomeOutcome>,
    /// The files rewritten (each with its `-` backup).
    pub files: Vec<DbFile>,
    /// An interrupted earlier apply that was completed or abandoned first.
    pub recovery: Option<Recovery>,
}

impl ApplyReport {
    /// Whether every change was applied or already in place.
    pub fn is_clean(&self) -> bool {
        self.collisions.is_empty()
            && self.refused.is_empty()
            && self.waiting.is_empty()
            && self
                .homes
                .iter()
                .all(|h| matches!(h, HomeOutcome::Created { .. }))
    }
}

/// A local account, as named in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAccount {
    pub kind: RecordKind,
    /// Escaped for messages.
    pub name: String,
    pub id: u32,
}

impl fmt::Display for LocalAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = match self.kind {
            RecordKind::User => "uid",
            RecordKind::Group => "gid",
        };
        write!(f, "local {} {} ({id} {})", self.kind, self.name, self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollisionKind {
    /// The name exists here with another id.
    Name,
    /// The id belongs to another name here.
    Id,
    /// The user's primary gid is another group here, or its primary group has another gid.
    PrimaryGroup,
}

/// A managed account that a different local account stands in the way of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub account: AccountId,
    /// The record's uid (users) or gid (groups).
    pub id: u32,
    pub local: LocalAccount,
    pub kind: CollisionKind,
}

impl fmt::Display for Collision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idname = match self.account {
            AccountId::User(_) => "uid",
            AccountId::Group(_) => "gid",
        };
        write!(
            f,
            "{} ({idname} {}) collides with {}: ",
            self.account, self.id, self.local
        )?;
        f.write_str(match self.kind {
            CollisionKind::Name => "same name, different id",
            CollisionKind::Id => "same id, different name",
            CollisionKind::PrimaryGroup => "its primary group differs here",
        })?;
        f.write_str("; not applied on this node")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The account is not managed on this node (the local one, with this id, or the record).
    NotManaged { local_id: Option<u32> },
    /// The local line of this account does not parse; it is left as it is.
    MalformedLocal { file: DbFile, line: usize },
    /// The name has several lines locally; they are left as they are.
    DuplicateLocal { file: DbFile },
    /// A group still is a user's primary group (as `groupdel` refuses).
    PrimaryGroupInUse { user: String },
    /// The record fails validation.
    Invalid(InvalidRecord),
}

/// A change that was not applied, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub account: AccountId,
    pub reason: RefusalReason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} not applied: ", self.account)?;
        match &self.reason {
            RefusalReason::NotManaged { local_id: Some(id) } => {
                write!(f, "the local account (id {id}) is not managed on this node")
            }
            RefusalReason::NotManaged { local_id: None } => {
                f.write_str("it is not managed on this node")
            }
            RefusalReason::MalformedLocal { file, line } => {
                write!(
                    f,
                    "its line in {file} (line {line}) is malformed and left alone"
                )
            }
            RefusalReason::DuplicateLocal { file } => {
                write!(f, "it has several lines in {file}, which are left alone")
            }
            RefusalReason::PrimaryGroupInUse { user } => {
                write!(f, "it is the primary group of user {}", shown(user))
            }
            RefusalReason::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// A user applied without its membership in groups that do not exist here yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub user: String,
    pub groups: Vec<String>,
}

/// A home directory to create (when missing) for an applied user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeRequest {
    pub user: String,
    pub home: String,
    pub uid: u32,
    pub gid: u32,
}

/// What happened to a missing home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HomeOutcome {
    Created {
        user: String,
        home: String,
        mode: u32,
    },
    /// Not created, on purpose (e.g. its parent is missing or not root's).
    Skipped {
        user: String,
        home: String,
        why: String,
    },
    Failed {
        user: String,
        home: String,
        error: String,
    },
}

impl fmt::Display for HomeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HomeOutcome::Created { user, home, mode } => {
                write!(
                    f,
                    "created home {} of {} (mode {mode:04o})",
                    shown(home),
                    shown(user)
                )
            }
            HomeOutcome::Skipped { user, home, why } => {
                write!(
                    f,
                    "home {} of {} not created: {why}",
                    shown(home),
                    shown(user)
                )
            }
            HomeOutcome::Failed { user, home, error } => {
                write!(
                    f,
                    "home {} of {} could not be created: {error}",
                    shown(home),
                    shown(user)
                )
            }
        }
    }
}

/// An apply interrupted by a crash, found in its journal and finished (or given up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Renamed into place as the interrupted apply meant to.
    pub completed: Vec<DbFile>,
    /// Not renamed because the file changed meanwhile; the temp file was removed.
    pub abandoned: Vec<DbFile>,
}
