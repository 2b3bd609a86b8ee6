//! Accounts: the managed Linux users and groups kept identical on every member node (SPEC §3
//! `[accounts]`, §5.7).
//!
//! This module is everything account-specific; the engine replicates each managed account as
//! its own item (version vectors, conflicts, audit) and calls it at the two ends:
//!
//! - **detect**: [`AccountDb::read`] (at start-up, and after inotify on `<root>/etc`, see
//!   [`AccountDb::watch_paths`]) gives a [`Snapshot`] of the managed [`UserRecord`]s and
//!   [`GroupRecord`]s; [`Snapshot::changes_since`] compares two snapshots;
//! - **receive**: [`Change::decode`] and [`validate_changes`] check a peer's records (a bad
//!   record refuses the batch);
//! - **apply**: [`AccountDb::apply`] writes a batch of [`Change`]s like the shadow-utils tools
//!   do and returns an [`ApplyReport`] (applied, unchanged, collisions, refusals, homes).
//!
//! The modules follow that flow: [`managed`] (which accounts), [`db`] (the four files as
//! lines), [`snapshot`] (files → records), [`validate`], [`plan`] (records + files → new files,
//! pure), [`store`] (locks, atomic writes, backups, crash journal), [`home`].
//!
//! # Decisions
//!
//! - **Membership belongs to the user.** A [`UserRecord`] lists every group whose member list
//!   names the user (`groups`). Applying it adds the user's name to those groups' member lists
//!   (in `group` and `gshadow`) and removes it from every other group's; other names in those
//!   lists are left alone. A [`GroupRecord`] carries no members: a group's local members may
//!   be unmanaged users that do not exist on other nodes. So when `usermod -aG` adds a user to
//!   a group, the user's item changes, not the group's.
//! - **Groups outside the range: only the membership.** A supplementary group that is not
//!   managed (e.g. `sudo`, `www-data`) is not replicated; only the managed user's name in its
//!   member list is. A user's primary group, and a group named like a user in `users`, is
//!   managed as a whole, since the user cannot exist without it.
//! - **Ids never change in place.** A managed account whose name exists locally with another
//!   uid/gid, or whose id belongs to another name, is a collision: not applied, reported
//!   naming both accounts (renumbering would orphan the files owned by the old id; the
//!   administrator settles it with `usermod -u` / `groupmod -g`, which also fix ownership).
//! - **`passwords = false`**: records carry no hash and no last-change day. A new user gets a
//!   locked password (`!`) and today as last change; an existing user keeps its local hash.
//!   The same for group hashes in gshadow.
//! - **Homes** are created (never moved, never deleted) from `<root>/etc/skel` with mode 0700
//!   or `HOME_MODE`; `UMASK` is not used (see [`home::home_mode`]).
//! - **Locking**: `lckpwdf` (`<root>/etc/.pwd.lock`) and shadow-utils' per-file `.lock` files,
//!   15 s at most (see [`lock`]).
//!
//! # Invariants
//!
//! - Lines that are not a managed account's are written back byte for byte, in place; the
//!   only edits to them are a managed user's name added to or removed from a member list.
//! - uid/gid 0 is never managed, written or deleted; an account outside the managed set on
//!   this node is never changed or deleted.
//! - After every apply, a user in passwd has its shadow line and a group its gshadow line (when
//!   those files exist); files are replaced by rename with their mode, owner and SELinux label,
//!   the previous content kept as `passwd-`, `shadow-`, `group-`, `gshadow-`.
//! - No hash ever appears in a `Debug` output, an error or a report.

pub mod db;
pub mod error;
pub mod home;
pub mod lock;
pub mod managed;
pub mod model;
pub mod plan;
pub mod report;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use db::{AccountFiles, DbFile};
pub use error::AccountsError;
pub use managed::{ManagedSet, Policy};
pub use model::{
    AccountId, Aging, Change, DecodeError, GroupRecord, MAX_RECORD_BYTES, Secret, UserRecord,
};
pub use plan::Plan;
pub use report::{
    ApplyReport, Collision, CollisionKind, HomeOutcome, HomeRequest, LocalAccount, Recovery,
    Refusal, RefusalReason, Waiting,
};
pub use snapshot::{ProblemKind, ReadProblem, Snapshot};
pub use store::AccountDb;
pub use validate::{
    InvalidRecord, validate_change, validate_changes, validate_group, validate_user,
};

#[cfg(test)]
mod tests;
