//! The account records that travel between nodes, and the changes an apply takes.
//!
//! A [`UserRecord`] is one managed user: its `passwd` line, its `shadow` line and the names of
//! the groups it belongs to. A [`GroupRecord`] is one managed group: its `group` line and its
//! `gshadow` line, without the member lists (members belong to the user records, see the
//! module documentation of [`crate::accounts`]).
//!
//! Invariant: the password hash lives only in a [`Secret`], whose `Debug` is redacted and which
//! has no `Display`, so no formatted record, change or error can show it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest encoded [`Change`] accepted by [`Change::decode`] (a record is a few hundred bytes).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A password hash (the second field of `shadow` or `gshadow`), e.g. `$y$j9T$…`, `!`, `*`.
///
/// `Debug` prints `Secret(<redacted>)`; there is no `Display`. Use [`Secret::expose`] only to
/// write the hash into a file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(hash: impl Into<String>) -> Self {
        Secret(hash.into())
    }

    /// The hash itself, for writing it into `shadow`/`gshadow`; never for messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The aging fields of a `shadow` line (days since 1970-01-01, or days); `None` is an empty
/// field. `last_change` travels with the hash: it is `None` in records read with
/// `passwords = false`, and a node keeps its own then.
#[derive(Clone, Default, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Aging {
    pub last_change: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub warn: Option<i64>,
    pub inactive: Option<i64>,
    pub expire: Option<i64>,
    /// The reserved ninth field; normally empty.
    pub reserved: Option<i64>,
}

/// One managed user.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Name of the primary group on the node that read the record; `None` when no group has
    /// that gid there.
    pub group: Option<String>,
    pub gecos: String,
    pub home: String,
    /// Login shell; empty means `/bin/sh`, as in `passwd`.
    pub shell: String,
    /// Supplementary groups by name, sorted and without duplicates: every group whose member
    /// list names this user.
    pub groups: Vec<String>,
    /// The hash from `shadow` (or from `passwd` when there is no `shadow` line); `None` when
    /// hashes are not synced (`passwords = false`).
    pub password: Option<Secret>,
    pub aging: Aging,
}

/// One managed group (its members are in the user records).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub gid: u32,
    /// The hash from `gshadow` (or from `group` when there is no `gshadow` line); `None` when
    /// hashes are not synced.
    pub password: Option<Secret>,
    /// Group administrators from `gshadow`, in file order.
    pub admins: Vec<String>,
}

/// Which account an item is about. Users and groups are separate namespaces.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum AccountId {
    User(String),
    Group(String),
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::User(n) => write!(f, "user {}", shown(n)),
            AccountId::Group(n) => write!(f, "group {}", shown(n)),
        }
    }
}

/// One change to apply: a managed account as it should be, or its removal.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "a few hundred bytes per change; boxing would only burden every caller"
)]
pub enum Change {
    User(UserRecord),
    Group(GroupRecord),
    DeleteUser(String),
    DeleteGroup(String),
}

impl UserRecord {
    pub fn id(&self) -> AccountId {
        AccountId::User(self.name.clone())
    }
}

impl GroupRecord {
    pub fn id(&self) -> AccountId {
        AccountId::Group(self.name.clone())
    }
}

impl Change {
    pub fn id(&self) -> AccountId {
        match self {
            Change::User(u) => u.id(),
            Change::Group(g) => g.id(),
            Change::DeleteUser(n) => AccountId::User(n.clone()),
            Change::DeleteGroup(n) => AccountId::Group(n.clone()),
        }
    }

    /// The postcard encoding (what [`Change::decode`] reads).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        postcard::to_allocvec(self).map_err(DecodeError::Postcard)
    }

    /// Decode untrusted bytes: at most [`MAX_RECORD_BYTES`], no trailing data. The result is
    /// not validated yet: call [`crate::accounts::validate_change`] before using it.
    pub fn decode(bytes: &[u8]) -> Result<Change, DecodeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLong {
                len: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let (change, rest) =
            postcard::take_from_bytes::<Change>(bytes).map_err(DecodeError::Postcard)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(change)
    }
}

/// Why bytes did not decode into a [`Change`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("account record of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("account record does not decode: {0}")]
    Postcard(postcard::Error),
    #[error("{0} bytes of trailing data after the account record")]
    Trailing(usize),
}

/// A name as it may appear in a message: quoted and escaped (so a hostile name cannot forge
/// log lines) and cut at 64 characters.
pub(crate) fn shown(name: &str) -> String {
    const MAX: usize = 64;
    let mut s: String = name.chars().take(MAX).collect();
    if s.len() < name.len() {
        s.push('…');
    }
    format!("{s:?}")
}

/// Like [`shown`] for bytes read from a file, which need not be UTF-8.
pub(crate) fn shown_bytes(name: &[u8]) -> String {
    shown(&String::from_utf8_lossy(name))
}
