//! Accounts: the managed Linux users and groups kept identical on every member node (SPEC §3
//! `[accounts]`, §5.7).
//!
//! This module is everything account-specific; the engine replicates each account item of the
//! `@accounts` pseudo-group on the same version vectors, index, protocol and audit log as
//! files, and calls the four steps of [`sync`]: **detect** (files + index → local changes),
//! **validate** (a peer's item), **plan** (peer items + index entries → decisions) and
//! **apply** (items → one write of the four files → an outcome per item).
//!
//! The modules follow that flow: [`model`] (the items: a user's fields, a group's fields, a
//! group's member set), [`managed`] (which accounts), [`db`] (the four files as lines),
//! [`view`] (files → records, pure), [`validate`], [`merge`] (concurrent versions, pure),
//! [`apply`] (items + files → new files in canonical layout, pure), [`store`] (locks, atomic
//! writes, backups, crash journal), [`home`], and [`v4`] (the previous release's records).
//!
//! # Decisions
//!
//! - **Three units**, matching what administrators change independently: a user's fields
//!   (`user/NAME`), a group's fields (`group/NAME`), and a group's members (`members/NAME`, an
//!   observed-remove set: concurrent adds both survive, a removal removes). Concurrent changes
//!   of a user's or group's fields are a conflict settled by `[accounts] conflict` by the time
//!   the change was made; member sets never conflict.
//! - **Memberships of managed users** are synced in any group (also `sudo`, which is not
//!   managed); a group's other members (local users) are the node's own and are kept.
//! - **Ids are part of the account**: a uid or gid change of a managed account propagates; a
//!   managed account whose name or id is held by a different, unmanaged local account is set
//!   aside on that node (a collision), reported, and retried; renumbering a local account would
//!   orphan its files, so the administrator settles it with `usermod -u` / `groupmod -g`.
//! - **Leaving the managed set** (e.g. `usermod -u` outside `uid_range`) is reported on that
//!   node and never turned into a deletion elsewhere.
//! - **Canonical layout**: managed lines form one sorted block before the NIS lines, member
//!   lists list local members first and managed ones sorted, so the same accounts give
//!   byte-identical files everywhere; every other line is kept byte for byte, in its order.
//! - **`passwords = false`**: items carry no hash and no last-change day; a new user gets a
//!   locked password (`!`) and today as last change; an existing user keeps its local hash.
//! - **Homes** are created (never moved, never deleted) from `<root>/etc/skel` with mode 0700
//!   or `HOME_MODE`; `UMASK` is not used (see [`home::home_mode`]).
//! - **Locking**: `lckpwdf` (`<root>/etc/.pwd.lock`) and shadow-utils' per-file `.lock` files,
//!   15 s at most, held only to read, and to check and rename a write (see [`store`]).
//!
//! # Invariants
//!
//! - Lines that are not a managed account's are written back byte for byte, in their order;
//!   the only edits to them are a managed user's name added to or removed from a member list.
//! - uid/gid 0 is never managed, written or deleted; an account outside the managed set on
//!   this node is never changed or deleted.
//! - After every write, a managed user in passwd has its shadow line and a managed group its
//!   gshadow line (when those files exist), and a user is written only when its primary group
//!   exists; files are replaced by rename with their mode, owner and SELinux label, the
//!   previous content kept as `passwd-`, `shadow-`, `group-`, `gshadow-`.
//! - No hash ever appears in a `Debug` output, an error or a report.

pub mod apply;
pub mod db;
pub mod error;
pub mod home;
pub mod lock;
pub mod managed;
pub mod merge;
pub mod model;
pub mod report;
pub mod store;
pub mod sync;
pub mod v4;
pub mod validate;
pub mod view;

pub use apply::Outcome;
pub use db::{AccountFiles, DbFile};
pub use error::AccountsError;
pub use managed::{ManagedSet, Policy};
pub use merge::{Conflict, Decision};
pub use model::{
    Account, AccountId, Aging, DecodeError, Dot, Group, MAX_RECORD_BYTES, Member, Members, Secret,
    User,
};
pub use report::{HomeOutcome, HomeRequest, Recovery};
pub use store::{AccountDb, FileSet, Written};
pub use sync::{Accounts, Applied, Check, Detected, IndexRead, keep_local, plan, validate_item};
pub use validate::{InvalidRecord, validate_account, validate_group, validate_user};
pub use view::{ProblemKind, ReadProblem, View};

#[cfg(test)]
mod tests;
