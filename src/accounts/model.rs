//! The account items that travel between nodes (the `@accounts` pseudo-group).
//!
//! Three kinds of item, each its own unit of replication and conflict, because administrators
//! change them independently:
//!
//! - `user/NAME` → [`Account::User`]: a user's `passwd` and `shadow` fields;
//! - `group/NAME` → [`Account::Group`]: a group's gid, hash and administrators;
//! - `members/NAME` → [`Account::Members`]: the managed users listed as members of group NAME
//!   (managed or not), as an observed-remove set: each member carries the dots (node, counter)
//!   of the changes that added it, so concurrent versions merge without a conflict —
//!   concurrent adds both survive, a removal removes what its node had seen (see
//!   [`super::merge`]).
//!
//! A user or group carries `made`: when the change was made, in milliseconds since the epoch
//! (the account files' modification time when it was found, so a change made while the daemon
//! was stopped keeps its own time), `0` for an account adopted by a node that joined as new
//! (such a copy loses against any change made anywhere).
//!
//! Invariant: the password hash lives only in a [`Secret`], whose `Debug` is redacted and which
//! has no `Display`, so no formatted record, item or error can show it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest encoded [`Account`] accepted by [`Account::decode`] (a member set of 10,000 users
/// with a dot each is about 300 KiB).
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

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

/// A managed user's fields (its memberships are in the [`Members`] of its groups).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    /// Login shell; empty means `/bin/sh`, as in `passwd`.
    pub shell: String,
    /// The hash from `shadow` (or from `passwd` when there is no `shadow` line); `None` when
    /// hashes are not synced (`passwords = false`).
    pub password: Option<Secret>,
    pub aging: Aging,
}

/// A managed group's fields.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    /// The hash from `gshadow` (or from `group` when there is no `gshadow` line); `None` when
    /// hashes are not synced.
    pub password: Option<Secret>,
    /// Group administrators from `gshadow`, in file order.
    pub admins: Vec<String>,
}

/// The change (node, counter) that added a member: the node's counter in the item's version
/// vector right after that change.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Dot {
    pub node: String,
    pub counter: u64,
}

/// One managed user in a group's member set. `dots` is sorted and empty only for a member of
/// an adopted (unversioned) set.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub dots: Vec<Dot>,
}

/// The managed members of one group, sorted by user name, each once.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Members {
    pub group: String,
    pub members: Vec<Member>,
}

impl Members {
    /// The member names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|m| m.user.as_str())
    }

    pub fn contains(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.user.as_str().cmp(user))
            .is_ok()
    }
}

/// The body of a live account item.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Account {
    /// `made`: milliseconds since the epoch when the change was made; 0 = adopted.
    User {
        user: User,
        made: i64,
    },
    Group {
        group: Group,
        made: i64,
    },
    Members(Members),
}

impl Account {
    /// The account this body is about.
    pub fn id(&self) -> AccountId {
        match self {
            Account::User { user, .. } => AccountId::User(user.name.clone()),
            Account::Group { group, .. } => AccountId::Group(group.name.clone()),
            Account::Members(m) => AccountId::Members(m.group.clone()),
        }
    }

    /// When the change was made (0: unknown, adopted); members have none.
    pub fn made(&self) -> i64 {
        match self {
            Account::User { made, .. } | Account::Group { made, .. } => *made,
            Account::Members(_) => 0,
        }
    }

    /// The same fields (everything but `made`).
    pub fn same_fields(&self, other: &Account) -> bool {
        match (self, other) {
            (Account::User { user: a, .. }, Account::User { user: b, .. }) => a == b,
            (Account::Group { group: a, .. }, Account::Group { group: b, .. }) => a == b,
            (Account::Members(a), Account::Members(b)) => a == b,
            _ => false,
        }
    }

    /// The postcard encoding (what [`Account::decode`] reads).
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        postcard::to_allocvec(self).map_err(DecodeError::Postcard)
    }

    /// Decode untrusted bytes: at most [`MAX_RECORD_BYTES`], no trailing data. The result is
    /// not validated yet: call [`crate::accounts::validate_account`] before using it.
    pub fn decode(bytes: &[u8]) -> Result<Account, DecodeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::TooLong {
                len: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let (a, rest) =
            postcard::take_from_bytes::<Account>(bytes).map_err(DecodeError::Postcard)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(a)
    }

    /// A rough size of the encoding, for batch limits.
    pub fn size_hint(&self) -> usize {
        match self {
            Account::User { user, .. } => {
                96 + user.gecos.len() + user.home.len() + user.shell.len()
            }
            Account::Group { group, .. } => {
                64 + group.admins.iter().map(|a| a.len() + 1).sum::<usize>()
            }
            Account::Members(m) => {
                32 + m
                    .members
                    .iter()
                    .map(|x| {
                        2 + x.user.len() + x.dots.iter().map(|d| d.node.len() + 11).sum::<usize>()
                    })
                    .sum::<usize>()
            }
        }
    }
}

/// Which account an item is about. Users, groups and member sets are separate namespaces.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum AccountId {
    User(String),
    Group(String),
    /// The member set of a group.
    Members(String),
}

impl AccountId {
    /// The item key: `user/NAME`, `group/NAME`, `members/NAME`.
    pub fn key(&self) -> Vec<u8> {
        match self {
            AccountId::User(n) => format!("user/{n}").into_bytes(),
            AccountId::Group(n) => format!("group/{n}").into_bytes(),
            AccountId::Members(n) => format!("members/{n}").into_bytes(),
        }
    }

    /// The account a key names (`None`: not an account key).
    pub fn from_key(key: &[u8]) -> Option<AccountId> {
        let s = std::str::from_utf8(key).ok()?;
        if let Some(n) = s.strip_prefix("user/") {
            return Some(AccountId::User(n.to_string()));
        }
        if let Some(n) = s.strip_prefix("group/") {
            return Some(AccountId::Group(n.to_string()));
        }
        s.strip_prefix("members/")
            .map(|n| AccountId::Members(n.to_string()))
    }

    /// The name in the key.
    pub fn name(&self) -> &str {
        match self {
            AccountId::User(n) | AccountId::Group(n) | AccountId::Members(n) => n,
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccountId::User(n) => write!(f, "user {}", shown(n)),
            AccountId::Group(n) => write!(f, "group {}", shown(n)),
            AccountId::Members(n) => write!(f, "members of group {}", shown(n)),
        }
    }
}

/// Why bytes did not decode into an [`Account`].
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
