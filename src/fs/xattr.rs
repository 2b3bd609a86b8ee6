//! Extended attributes and POSIX ACLs of one file, directory or symlink: read them into a
//! portable, canonical list, check a peer's list against limits, and make an entry's
//! attributes exactly such a list.
//!
//! **What is synced**: names in the `user.`, `trusted.` and `security.` namespaces, and the two
//! POSIX ACL attributes `system.posix_acl_access` and `system.posix_acl_default`, minus what the
//! group's [`XattrFilter`] excludes (by default `security.selinux`: labels come from each node's
//! policy). ACLs travel decoded ([`Acl`]), each named user or group entry with its numeric id and,
//! when the id resolves on the reading node, its name, so that a receiver with
//! `owners = "by-name"` maps names to its own ids ([`map_by_name`]) as `rsync -A` does, and one
//! with `numeric` keeps the ids ([`map_numeric`]).
//!
//! **What never is**: any other namespace (other `system.*` names such as NFSv4 ACLs, `btrfs.*`,
//! …). When the process is not root, `trusted.*` (invisible without `CAP_SYS_ADMIN`) and
//! `security.*` (not writable without it): like `rsync -X` run by a user, only `user.*` and the
//! ACLs are synced. Applying never touches a name the filter does not cover, so a local SELinux
//! label survives an update.
//!
//! **Ordering**: a list is sorted by name bytes without duplicates, and ACL entries by tag then id
//! (the kernel's order), so two nodes with the same attributes (and the same accounts) produce
//! byte-identical encodings of the list.
//!
//! **Limits** (a peer's list is untrusted): names are at most [`MAX_NAME_LEN`] bytes, values at
//! most [`MAX_VALUE_LEN`], at most [`MAX_XATTRS`] attributes and [`MAX_TOTAL`] bytes per entry,
//! ACLs at most [`MAX_ACL_ENTRIES`] entries and well-formed. [`validate`] checks a list; what
//! [`read_fd`] returns always passes it, and [`apply_fd`] refuses a list that does not.
//!
//! **Races**: an attribute removed between listing and reading is skipped; one that grows is read
//! again with a bigger buffer, a bounded number of times ([`XattrError::Unstable`] after that).
//!
//! **Symlinks** are never followed (`l*xattr`). Linux refuses `user.*` attributes on symlinks and
//! ACLs there make no sense, so `EPERM`/`ENOTSUP` on a symlink means "none" when reading and a
//! skipped name (returned to the caller) when applying.
//!
//! **Order with other metadata**: apply after `fchown` (which clears `security.capability`) and
//! `fchmod` (which rewrites the access ACL's mask), on the temporary file's descriptor before the
//! rename, so the file never appears without its ACL. A filesystem that cannot store an attribute
//! makes applying fail with [`XattrError::Unsupported`], never drops it silently.

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd};
use rustix::fs::XattrFlags;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest attribute name, in bytes (Linux `XATTR_NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Largest value of one attribute, in bytes (Linux `XATTR_SIZE_MAX`); for an ACL, its encoded
/// size.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Most attributes on one entry.
pub const MAX_XATTRS: usize = 128;
/// Most bytes of names and values on one entry (an ACL counts its encoded size plus the
/// account names it carries).
pub const MAX_TOTAL: usize = 256 * 1024;
/// Most entries in one ACL: as many as fit in [`MAX_VALUE_LEN`].
pub const MAX_ACL_ENTRIES: usize = (MAX_VALUE_LEN - ACL_HEADER_LEN) / ACL_ENTRY_LEN;
/// Longest user or group name carried in an ACL entry (Linux `LOGIN_NAME_MAX`).
pub const MAX_ACCOUNT_NAME_LEN: usize = 256;

/// The access ACL of a file or directory.
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL of a directory, inherited by what is created in it.
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// Namespaces whose attributes may be synced (besides the two ACL names).
pub const NAMESPACES: &[&[u8]] = &[b"user.", b"trusted.", b"security."];
/// Namespaces that only root can read or write; skipped when not root.
pub const PRIVILEGED_NAMESPACES: &[&[u8]] = &[b"trusted.", b"security."];
/// The configuration's default `xattrs_exclude`.
pub const DEFAULT_EXCLUDE: &[&str] = &["security.selinux"];

/// Read permission bit of an ACL entry.
pub const ACL_READ: u8 = 4;
/// Write permission bit of an ACL entry.
pub const ACL_WRITE: u8 = 2;
/// Execute/search permission bit of an ACL entry.
pub const ACL_EXECUTE: u8 = 1;

// The kernel's `posix_acl_xattr` format: little-endian `u32` version, then entries of
// `u16 tag, u16 perm, u32 id`.
const ACL_VERSION: u32 = 2;
const ACL_HEADER_LEN: usize = 4;
const ACL_ENTRY_LEN: usize = 8;
const TAG_USER_OBJ: u16 = 0x01;
const TAG_USER: u16 = 0x02;
const TAG_GROUP_OBJ: u16 = 0x04;
const TAG_GROUP: u16 = 0x08;
const TAG_MASK: u16 = 0x10;
const TAG_OTHER: u16 = 0x20;
/// The id the kernel writes for entries that have none.
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// Attempts at listing or reading when the size keeps changing between the query and the read.
const RETRIES: usize = 8;
/// First buffer for a value; most are small, and a bigger one is asked for on `ERANGE`.
const VALUE_BUF: usize = 4096;

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Xattr {
    /// The full name with its namespace prefix, as bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub value: XattrValue,
}

/// The value of an attribute: the two ACL names carry a decoded [`Acl`], every other name its
/// bytes as they are.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum XattrValue {
    Raw(#[serde(with = "serde_bytes")] Vec<u8>),
    Acl(Acl),
}

/// A POSIX ACL in portable form: entries in the kernel's order (by tag, then id), named entries
/// with their id and, where it resolved on the reading node, their name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Acl {
    pub entries: Vec<AclEntry>,
}

/// One ACL entry: who, and `rwx` bits ([`ACL_READ`], [`ACL_WRITE`], [`ACL_EXECUTE`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclEntry {
    pub tag: AclTag,
    pub perm: u8,
}

/// Whom an ACL entry is about (variants in the kernel's order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AclTag {
    /// The file's owner.
    UserObj,
    /// A named user.
    User(AclQualifier),
    /// The file's group.
    GroupObj,
    /// A named group.
    Group(AclQualifier),
    /// The upper bound of named entries and the group entry.
    Mask,
    /// Everyone else.
    Other,
}

/// The user or group of a named ACL entry: its id on the node that read it, and its name there
/// if it has one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AclQualifier {
    pub id: u32,
    pub name: Option<String>,
}

/// Whether a qualifier is a user or a group (they are looked up in different tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    User,
    Group,
}

/// Why bytes are not an ACL, or an [`Acl`] is not one the kernel would take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    #[error("{0} bytes, shorter than the header")]
    Truncated(usize),
    #[error("version {0}, expected {ACL_VERSION}")]
    Version(u32),
    #[error("{0} bytes is not a header and whole entries")]
    Size(usize),
    #[error("{0} entries, more than {MAX_ACL_ENTRIES}")]
    TooManyEntries(usize),
    #[error("unknown tag {0:#x}")]
    UnknownTag(u16),
    #[error("permission bits {0:#o} beyond rwx")]
    Perm(u16),
    #[error("entries out of order (by tag, then id) or repeated")]
    Order,
    #[error("no {0} entry")]
    Missing(&'static str),
    #[error("named entries without a mask entry")]
    NoMask,
    #[error("bad account name (empty, over {MAX_ACCOUNT_NAME_LEN} bytes or with NUL)")]
    BadName,
}

/// Why a list of attributes is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("empty name")]
    EmptyName,
    #[error("name of {0} bytes, more than {MAX_NAME_LEN}")]
    NameTooLong(usize),
    #[error("NUL in name")]
    NulInName,
    #[error("not in a synced namespace (user., trusted., security., POSIX ACLs)")]
    Namespace,
    #[error("value of {0} bytes, more than {MAX_VALUE_LEN}")]
    ValueTooLarge(usize),
    #[error("an ACL name must carry an ACL and only an ACL name may")]
    WrongKind,
    #[error("bad ACL: {0}")]
    Acl(AclError),
    #[error("{0} attributes, more than {MAX_XATTRS}")]
    TooMany(usize),
    #[error("more than {MAX_TOTAL} bytes of attributes")]
    TooLarge,
    #[error("names out of order or repeated")]
    Unsorted,
}

/// An extended-attribute operation that failed. Attribute names are shown with non-printable
/// bytes escaped (`\xe9`); the caller adds the path of the entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XattrError {
    /// `ENOTSUP`/`EOPNOTSUPP` when setting or removing: this filesystem (or its mount options)
    /// cannot store this attribute. The engine reports it per group instead of dropping it.
    #[error("the filesystem does not support extended attribute {attr}")]
    Unsupported { attr: String },
    /// A system call failed; `attr` is empty for listing.
    #[error("{op} extended attribute {attr}: {source}")]
    Io {
        op: &'static str,
        attr: String,
        #[source]
        source: std::io::Error,
    },
    /// The attribute (or the list, when `attr` is empty) kept changing size while read.
    #[error("extended attribute {attr} kept changing size while being read")]
    Unstable { attr: String },
    /// The kernel returned an ACL this module cannot decode.
    #[error("extended attribute {attr}: {source}")]
    Acl {
        attr: String,
        #[source]
        source: AclError,
    },
    /// A list that breaks the limits or the format (`attr` is empty for the list as a whole).
    #[error("extended attributes refused{}: {reason}", at(.attr))]
    Invalid { attr: String, reason: Refusal },
    /// A bad `xattrs_include`/`xattrs_exclude` pattern.
    #[error("bad extended attribute pattern {pattern:?}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    /// A symlink variant was given something other than one file name.
    #[error("{name:?} is not a single file name")]
    NotAName { name: String },
}

fn at(attr: &str) -> String {
    if attr.is_empty() {
        String::new()
    } else {
        format!(" ({attr})")
    }
}

/// An attribute name for messages: printable ASCII as is, other bytes escaped.
fn show(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

fn io(op: &'static str, name: &[u8], e: Errno) -> XattrError {
    XattrError::Io {
        op,
        attr: show(name),
        source: e.into(),
    }
}

fn invalid(name: &[u8], reason: Refusal) -> XattrError {
    XattrError::Invalid {
        attr: show(name),
        reason,
    }
}

// ---------------------------------------------------------------------------------------------
// Names and accounts

/// Resolves ids to names (reading) and names to ids (applying by name). Injected so tests do not
/// depend on the machine's accounts.
pub trait Accounts {
    fn user_name(&self, uid: u32) -> Option<String>;
    fn group_name(&self, gid: u32) -> Option<String>;
    fn uid_of(&self, name: &str) -> Option<u32>;
    fn gid_of(&self, name: &str) -> Option<u32>;
}

/// The system's account database (NSS, through `nix`), uncached.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn user_name(&self, uid: u32) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    }
    fn group_name(&self, gid: u32) -> Option<String> {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
    }
    fn uid_of(&self, name: &str) -> Option<u32> {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }
    fn gid_of(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// `owners = "numeric"`: a named entry keeps the sender's id.
pub fn map_numeric(_kind: IdKind, q: &AclQualifier) -> u32 {
    q.id
}

/// `owners = "by-name"`: a named entry gets the local id of its name, or keeps the sender's id
/// when it has no name or the name does not exist here (as `rsync -A`).
pub fn map_by_name(accounts: &dyn Accounts) -> impl Fn(IdKind, &AclQualifier) -> u32 + '_ {
    move |kind, q| {
        q.name
            .as_deref()
            .and_then(|n| match kind {
                IdKind::User => accounts.uid_of(n),
                IdKind::Group => accounts.gid_of(n),
            })
            .unwrap_or(q.id)
    }
}

// ---------------------------------------------------------------------------------------------
// ACL codec

impl AclTag {
    /// The kernel's tag value and the id it sorts by (0 for entries without one).
    fn key(&self) -> (u16, u32) {
        match self {
            AclTag::UserObj => (TAG_USER_OBJ, 0),
            AclTag::User(q) => (TAG_USER, q.id),
            AclTag::GroupObj => (TAG_GROUP_OBJ, 0),
            AclTag::Group(q) => (TAG_GROUP, q.id),
            AclTag::Mask => (TAG_MASK, 0),
            AclTag::Other => (TAG_OTHER, 0),
        }
    }

    fn qualifier(&self) -> Option<&AclQualifier> {
        match self {
            AclTag::User(q) | AclTag::Group(q) => Some(q),
            _ => None,
        }
    }
}

fn tag_from(tag: u16, id: u32) -> Result<AclTag, AclError> {
    let q = || AclQualifier { id, name: None };
    Ok(match tag {
        TAG_USER_OBJ => AclTag::UserObj,
        TAG_USER => AclTag::User(q()),
        TAG_GROUP_OBJ => AclTag::GroupObj,
        TAG_GROUP => AclTag::Group(q()),
        TAG_MASK => AclTag::Mask,
        TAG_OTHER => AclTag::Other,
        t => return Err(AclError::UnknownTag(t)),
    })
}

impl Acl {
    /// Decode the kernel's `posix_acl_xattr` bytes (version 2, entries of tag/perm/id,
    /// little-endian), strictly: nothing trailing, known tags, `rwx` bits only, at most
    /// [`MAX_ACL_ENTRIES`], and an ACL the kernel itself would accept ([`Acl::check`]).
    /// Names are left empty; see [`Acl::resolve_names`].
    pub fn decode(bytes: &[u8]) -> Result<Acl, AclError> {
        let Some((head, body)) = bytes.split_first_chunk::<ACL_HEADER_LEN>() else {
            return Err(AclError::Truncated(bytes.len()));
        };
        let version = u32::from_le_bytes(*head);
        if version != ACL_VERSION {
            return Err(AclError::Version(version));
        }
        let (chunks, rest) = body.as_chunks::<ACL_ENTRY_LEN>();
        if !rest.is_empty() {
            return Err(AclError::Size(bytes.len()));
        }
        if chunks.len() > MAX_ACL_ENTRIES {
            return Err(AclError::TooManyEntries(chunks.len()));
        }
        let mut entries = Vec::with_capacity(chunks.len());
        for [t0, t1, p0, p1, i0, i1, i2, i3] in chunks {
            let perm = u16::from_le_bytes([*p0, *p1]);
            let perm = u8::try_from(perm)
                .ok()
                .filter(|p| *p <= 7)
                .ok_or(AclError::Perm(perm))?;
            let tag = tag_from(
                u16::from_le_bytes([*t0, *t1]),
                u32::from_le_bytes([*i0, *i1, *i2, *i3]),
            )?;
            entries.push(AclEntry { tag, perm });
        }
        let acl = Acl { entries };
        acl.check()?;
        Ok(acl)
    }

    /// Whether the kernel would accept this ACL, and it is in canonical form: entries strictly
    /// ordered by tag then id (so no repeats), `rwx` bits only, exactly one owner, group and
    /// other entry, a mask when there are named entries, account names that are plausible.
    pub fn check(&self) -> Result<(), AclError> {
        if self.entries.len() > MAX_ACL_ENTRIES {
            return Err(AclError::TooManyEntries(self.entries.len()));
        }
        let mut prev: Option<(u16, u32)> = None;
        for e in &self.entries {
            if e.perm > 7 {
                return Err(AclError::Perm(u16::from(e.perm)));
            }
            let key = e.tag.key();
            if prev.is_some_and(|p| p >= key) {
                return Err(AclError::Order);
            }
            prev = Some(key);
            if let Some(name) = e.tag.qualifier().and_then(|q| q.name.as_deref())
                && (name.is_empty() || name.len() > MAX_ACCOUNT_NAME_LEN || name.contains('\0'))
            {
                return Err(AclError::BadName);
            }
        }
        let has = |t: u16| self.entries.iter().any(|e| e.tag.key().0 == t);
        for (t, what) in [
            (TAG_USER_OBJ, "owner"),
            (TAG_GROUP_OBJ, "group"),
            (TAG_OTHER, "other"),
        ] {
            if !has(t) {
                return Err(AclError::Missing(what));
            }
        }
        if (has(TAG_USER) || has(TAG_GROUP)) && !has(TAG_MASK) {
            return Err(AclError::NoMask);
        }
        Ok(())
    }

    /// Encode for the kernel, each named entry's id given by `map` (see [`map_numeric`],
    /// [`map_by_name`]). Entries are sorted as the kernel expects. If the mapping sends two
    /// named entries to the same local id, they become one entry with the permissions both
    /// allow (never more than either granted).
    pub fn encode(&self, map: impl Fn(IdKind, &AclQualifier) -> u32) -> Vec<u8> {
        let mut raw: Vec<(u16, u32, u8)> = self
            .entries
            .iter()
            .map(|e| {
                let (tag, id) = match &e.tag {
                    AclTag::User(q) => (TAG_USER, map(IdKind::User, q)),
                    AclTag::Group(q) => (TAG_GROUP, map(IdKind::Group, q)),
                    other => (other.key().0, ACL_UNDEFINED_ID),
                };
                (tag, id, e.perm & 7)
            })
            .collect();
        raw.sort_unstable_by_key(|&(tag, id, _)| (tag, id));
        raw.dedup_by(|later, kept| {
            let same = (later.0, later.1) == (kept.0, kept.1);
            if same {
                kept.2 &= later.2;
            }
            same
        });
        let mut out = Vec::with_capacity(ACL_HEADER_LEN + ACL_ENTRY_LEN * raw.len());
        out.extend_from_slice(&ACL_VERSION.to_le_bytes());
        for (tag, id, perm) in raw {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&u16::from(perm).to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// Fill in the names of named entries from the local accounts.
    pub fn resolve_names(&mut self, accounts: &dyn Accounts) {
        for e in &mut self.entries {
            match &mut e.tag {
                AclTag::User(q) => q.name = accounts.user_name(q.id),
                AclTag::Group(q) => q.name = accounts.group_name(q.id),
                _ => {}
            }
        }
    }

    /// Size of the encoded ACL.
    fn encoded_len(&self) -> usize {
        ACL_HEADER_LEN + ACL_ENTRY_LEN * self.entries.len()
    }

    /// What the ACL costs against [`MAX_TOTAL`]: its encoded size and the names it carries.
    fn weight(&self) -> usize {
        let names: usize = self
            .entries
            .iter()
            .filter_map(|e| e.tag.qualifier().and_then(|q| q.name.as_ref()))
            .map(String::len)
            .sum();
        self.encoded_len().saturating_add(names)
    }
}

impl XattrValue {
    /// The bytes to give the kernel.
    fn encode(&self, map: &impl Fn(IdKind, &AclQualifier) -> u32) -> Cow<'_, [u8]> {
        match self {
            XattrValue::Raw(v) => Cow::Borrowed(v),
            XattrValue::Acl(a) => Cow::Owned(a.encode(map)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names, limits and the filter

fn is_acl_name(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// In a namespace that is synced at all (the prefix alone is not a name).
fn known_namespace(name: &[u8]) -> bool {
    is_acl_name(name)
        || NAMESPACES
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p))
}

fn privileged_namespace(name: &[u8]) -> bool {
    PRIVILEGED_NAMESPACES.iter().any(|p| name.starts_with(p))
}

fn check_name(name: &[u8]) -> Result<(), Refusal> {
    if name.is_empty() {
        Err(Refusal::EmptyName)
    } else if name.len() > MAX_NAME_LEN {
        Err(Refusal::NameTooLong(name.len()))
    } else if name.contains(&0) {
        Err(Refusal::NulInName)
    } else if !known_namespace(name) {
        Err(Refusal::Namespace)
    } else {
        Ok(())
    }
}

/// Check a list (a peer's, or one about to be applied) against the format and the limits:
/// sorted by name without repeats, valid names in a synced namespace, ACL names carrying
/// well-formed ACLs and other names raw bytes, each value and the whole within bounds.
pub fn validate(list: &[Xattr]) -> Result<(), XattrError> {
    if list.len() > MAX_XATTRS {
        return Err(invalid(b"", Refusal::TooMany(list.len())));
    }
    let mut total = 0usize;
    let mut prev: Option<&[u8]> = None;
    for x in list {
        check_name(&x.name).map_err(|r| invalid(&x.name, r))?;
        if prev.is_some_and(|p| p >= x.name.as_slice()) {
            return Err(invalid(&x.name, Refusal::Unsorted));
        }
        prev = Some(&x.name);
        let (size, weight) = match (&x.value, is_acl_name(&x.name)) {
            (XattrValue::Raw(v), false) => (v.len(), v.len()),
            (XattrValue::Acl(a), true) => {
                a.check().map_err(|e| invalid(&x.name, Refusal::Acl(e)))?;
                (a.encoded_len(), a.weight())
            }
            _ => return Err(invalid(&x.name, Refusal::WrongKind)),
        };
        if size > MAX_VALUE_LEN {
            return Err(invalid(&x.name, Refusal::ValueTooLarge(size)));
        }
        total = total.saturating_add(x.name.len()).saturating_add(weight);
        if total > MAX_TOTAL {
            return Err(invalid(b"", Refusal::TooLarge));
        }
    }
    Ok(())
}

/// Which attribute names a group syncs: in a synced namespace, matching `include` (all when it
/// is empty) and not `exclude`, and outside `trusted.*`/`security.*` unless the process is root.
/// Patterns are globs on the whole name (`*` also matches `.` and `/`).
#[derive(Clone, Debug)]
pub struct XattrFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    privileged: bool,
}

fn globs(patterns: &[String]) -> Result<GlobSet, XattrError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|source| XattrError::Pattern {
                pattern: p.clone(),
                source,
            })?;
        b.add(g);
    }
    b.build().map_err(|source| XattrError::Pattern {
        pattern: patterns.join(", "),
        source,
    })
}

impl XattrFilter {
    /// A filter from the group's `xattrs_include` and `xattrs_exclude` (the configuration's
    /// default exclude is [`DEFAULT_EXCLUDE`]); privileged namespaces count only when the
    /// effective uid is root.
    pub fn new(include: &[String], exclude: &[String]) -> Result<XattrFilter, XattrError> {
        Ok(XattrFilter {
            include: if include.is_empty() {
                None
            } else {
                Some(globs(include)?)
            },
            exclude: globs(exclude)?,
            privileged: rustix::process::geteuid().is_root(),
        })
    }

    /// Override whether `trusted.*` and `security.*` are covered (tests; a process with
    /// `CAP_SYS_ADMIN` that is not uid 0).
    pub fn privileged(mut self, yes: bool) -> XattrFilter {
        self.privileged = yes;
        self
    }

    /// Whether the attribute `name` is synced, and so may be read, set and removed.
    pub fn covers(&self, name: &[u8]) -> bool {
        if !known_namespace(name) || (!self.privileged && privileged_namespace(name)) {
            return false;
        }
        let c = Candidate::from_bytes(name);
        self.include
            .as_ref()
            .is_none_or(|g| g.is_match_candidate(&c))
            && !self.exclude.is_match_candidate(&c)
    }
}

// ---------------------------------------------------------------------------------------------
// System calls

/// What the `*xattr` calls act on: an open descriptor, or a path whose last component is not
/// followed.
#[derive(Clone, Copy)]
enum Target<'a> {
    Fd(BorrowedFd<'a>),
    Link(&'a Path),
}

impl Target<'_> {
    fn is_link(self) -> bool {
        matches!(self, Target::Link(_))
    }
    fn list_size(self) -> Result<usize, Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::flistxattr_query(fd),
            Target::Link(p) => rustix::fs::llistxattr_query(p),
        }
    }
    fn list(self, buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            Target::Link(p) => rustix::fs::llistxattr(p, buf),
        }
    }
    fn get_size(self, name: &[u8]) -> Result<usize, Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
            Target::Link(p) => rustix::fs::lgetxattr_query(p, name),
        }
    }
    fn get(self, name: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            Target::Link(p) => rustix::fs::lgetxattr(p, name, buf),
        }
    }
    fn set(self, name: &[u8], value: &[u8]) -> Result<(), Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::fsetxattr(fd, name, value, XattrFlags::empty()),
            Target::Link(p) => rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()),
        }
    }
    fn remove(self, name: &[u8]) -> Result<(), Errno> {
        match self {
            Target::Fd(fd) => rustix::fs::fremovexattr(fd, name),
            Target::Link(p) => rustix::fs::lremovexattr(p, name),
        }
    }
    /// The filesystem or the kind of entry does not take this attribute: "none" on a symlink.
    fn refuses(self, e: Errno) -> bool {
        self.is_link() && (e == Errno::PERM || e == Errno::NOTSUP)
    }
}

/// Split the kernel's list (names each ending in NUL).
fn split_names(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Every attribute name on the target (no support at all: none).
fn list_names(t: Target) -> Result<Vec<Vec<u8>>, XattrError> {
    let mut buf = Vec::new();
    for _ in 0..RETRIES {
        let size = match t.list_size() {
            Ok(0) => return Ok(Vec::new()),
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) if t.refuses(e) => return Ok(Vec::new()),
            Err(e) => return Err(io("list", b"", e)),
        };
        buf.resize(size, 0);
        match t.list(&mut buf) {
            Ok(n) => return Ok(split_names(&buf[..n.min(buf.len())])),
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(io("list", b"", e)),
        }
    }
    Err(XattrError::Unstable {
        attr: String::new(),
    })
}

/// The value of `name` into `buf`; `None` when it is gone (or refused on a symlink).
fn get_value<'b>(
    t: Target,
    name: &[u8],
    buf: &'b mut Vec<u8>,
) -> Result<Option<&'b [u8]>, XattrError> {
    if buf.len() < VALUE_BUF {
        buf.resize(VALUE_BUF, 0);
    }
    for _ in 0..RETRIES {
        match t.get(name, buf) {
            Ok(n) => return Ok(Some(&buf[..n.min(buf.len())])),
            // Gone since it was listed; or not storable here (then setting it will say so).
            Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
            Err(e) if t.refuses(e) => return Ok(None),
            Err(Errno::RANGE) => match t.get_size(name) {
                // Never a zero-length buffer: rustix would take it as a size query.
                Ok(size) => buf.resize(size.max(1), 0),
                Err(Errno::NODATA) => return Ok(None),
                Err(e) => return Err(io("read", name, e)),
            },
            Err(e) => return Err(io("read", name, e)),
        }
    }
    Err(XattrError::Unstable { attr: show(name) })
}

fn read(
    t: Target,
    filter: &XattrFilter,
    accounts: &dyn Accounts,
) -> Result<Vec<Xattr>, XattrError> {
    let mut names = list_names(t)?;
    names.retain(|n| filter.covers(n));
    names.sort_unstable();
    names.dedup();
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let Some(v) = get_value(t, &name, &mut buf)? else {
            continue;
        };
        let value = if is_acl_name(&name) {
            let mut acl = Acl::decode(v).map_err(|source| XattrError::Acl {
                attr: show(&name),
                source,
            })?;
            acl.resolve_names(accounts);
            XattrValue::Acl(acl)
        } else {
            XattrValue::Raw(v.to_vec())
        };
        out.push(Xattr { name, value });
    }
    validate(&out)?;
    Ok(out)
}

fn set_error(op: &'static str, name: &[u8], e: Errno) -> XattrError {
    if e == Errno::NOTSUP {
        XattrError::Unsupported { attr: show(name) }
    } else {
        io(op, name, e)
    }
}

/// Make the covered attributes of `t` exactly `want`; the names a symlink refused.
fn apply(
    t: Target,
    want: &[Xattr],
    filter: &XattrFilter,
    map: impl Fn(IdKind, &AclQualifier) -> u32,
) -> Result<Vec<Vec<u8>>, XattrError> {
    validate(want)?;
    let mut skipped = Vec::new();
    // Removals first: some filesystems (ext4) have little room for attributes.
    for name in list_names(t)?.iter().filter(|n| filter.covers(n)) {
        if want
            .binary_search_by(|x| x.name.as_slice().cmp(name))
            .is_ok()
        {
            continue;
        }
        match t.remove(name) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) if t.refuses(e) => skipped.push(name.clone()),
            Err(e) => return Err(set_error("remove", name, e)),
        }
    }
    let mut buf = Vec::new();
    for x in want.iter().filter(|x| filter.covers(&x.name)) {
        let bytes = x.value.encode(&map);
        if get_value(t, &x.name, &mut buf)? == Some(&*bytes) {
            continue;
        }
        match t.set(&x.name, &bytes) {
            Ok(()) => {}
            Err(e) if t.refuses(e) => skipped.push(x.name.clone()),
            Err(e) => return Err(set_error("set", &x.name, e)),
        }
    }
    Ok(skipped)
}

/// `dir`'s entry `name` as a path that reaches it through the open descriptor, so nothing but
/// the last component is resolved, and that one is not followed by `l*xattr` (needs `/proc`).
fn path_at(dir: BorrowedFd, name: &OsStr) -> Result<PathBuf, XattrError> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(XattrError::NotAName { name: show(b) });
    }
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    p.push(name);
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Public operations

/// The synced attributes of an open file or directory, sorted by name, ACLs decoded with names
/// from `accounts`. A filesystem without extended attributes has none. The list passes
/// [`validate`] (an entry with more than peers accept is an [`XattrError::Invalid`]).
pub fn read_fd(
    fd: impl AsFd,
    filter: &XattrFilter,
    accounts: &dyn Accounts,
) -> Result<Vec<Xattr>, XattrError> {
    read(Target::Fd(fd.as_fd()), filter, accounts)
}

/// Make the attributes of an open file or directory that `filter` covers exactly `want`:
/// set those that differ, remove those not wanted, leave every other name alone (entries of
/// `want` the filter does not cover are ignored too). Named ACL entries get the ids `map` gives.
/// `want` must pass [`validate`]. A default ACL on a non-directory is the kernel's error.
pub fn apply_fd(
    fd: impl AsFd,
    want: &[Xattr],
    filter: &XattrFilter,
    map: impl Fn(IdKind, &AclQualifier) -> u32,
) -> Result<(), XattrError> {
    // On a descriptor nothing is "refused": every failure is an error.
    apply(Target::Fd(fd.as_fd()), want, filter, map).map(drop)
}

/// [`read_fd`] for the entry `name` of the open directory `dir`, without following it if it is
/// a symlink (for symlinks, which cannot be opened). `name` is one file name.
pub fn read_link_nofollow(
    dir: impl AsFd,
    name: &OsStr,
    filter: &XattrFilter,
    accounts: &dyn Accounts,
) -> Result<Vec<Xattr>, XattrError> {
    let p = path_at(dir.as_fd(), name)?;
    read(Target::Link(&p), filter, accounts)
}

/// [`apply_fd`] for the entry `name` of the open directory `dir`, without following it. Returns
/// the names the entry refused (`EPERM`/`ENOTSUP`: Linux takes no `user.*` attributes and no
/// ACLs on a symlink); other failures are errors.
pub fn apply_link_nofollow(
    dir: impl AsFd,
    name: &OsStr,
    want: &[Xattr],
    filter: &XattrFilter,
    map: impl Fn(IdKind, &AclQualifier) -> u32,
) -> Result<Vec<Vec<u8>>, XattrError> {
    let p = path_at(dir.as_fd(), name)?;
    apply(Target::Link(&p), want, filter, map)
}

/// [`read_link_nofollow`] by path: the last component is not followed, but earlier ones are,
/// so use it only on local paths no peer chose (scanning), never to write on a peer's behalf.
pub fn read_path_nofollow(
    path: &Path,
    filter: &XattrFilter,
    accounts: &dyn Accounts,
) -> Result<Vec<Xattr>, XattrError> {
    read(Target::Link(path), filter, accounts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::process::Command;

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// `getfattr` dump of every attribute, without the `# file:` line.
    fn dump(p: &Path) -> String {
        run(
            "getfattr",
            &["-d", "-m", "-", "-e", "hex", "--absolute-names", s(p)],
        )
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
    }

    fn getfacl(p: &Path) -> String {
        run("getfacl", &["--omit-header", "--numeric", s(p)])
    }

    fn all() -> XattrFilter {
        XattrFilter::new(&[], &[]).unwrap().privileged(true)
    }

    fn raw(name: &str, v: &[u8]) -> Xattr {
        Xattr {
            name: name.as_bytes().to_vec(),
            value: XattrValue::Raw(v.to_vec()),
        }
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Accounts of a made-up machine: "daemon" is uid/gid 1 there, 4242/4343 here.
    struct Fake;
    impl Accounts for Fake {
        fn user_name(&self, uid: u32) -> Option<String> {
            (uid == 1).then(|| "daemon".into())
        }
        fn group_name(&self, gid: u32) -> Option<String> {
            (gid == 1).then(|| "daemon".into())
        }
        fn uid_of(&self, name: &str) -> Option<u32> {
            (name == "daemon").then_some(4242)
        }
        fn gid_of(&self, name: &str) -> Option<u32> {
            (name == "daemon").then_some(4343)
        }
    }

    fn entry(tag: AclTag, perm: u8) -> AclEntry {
        AclEntry { tag, perm }
    }

    fn named(id: u32, name: Option<&str>) -> AclQualifier {
        AclQualifier {
            id,
            name: name.map(String::from),
        }
    }

    fn base_acl() -> Acl {
        Acl {
            entries: vec![
                entry(AclTag::UserObj, 7),
                entry(AclTag::User(named(1, Some("daemon"))), 5),
                entry(AclTag::GroupObj, 5),
                entry(AclTag::Mask, 7),
                entry(AclTag::Other, 0),
            ],
        }
    }

    #[test]
    fn user_attributes_round_trip_and_unwanted_ones_go() {
        let d = tempfile::tempdir_in("/tmp").unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        File::create(&a).unwrap();
        File::create(&b).unwrap();
        run("setfattr", &["-n", "user.one", "-v", "1", s(&a)]);
        run("setfattr", &["-n", "user.bin", "-v", "0x00ff10", s(&a)]);
        run("setfattr", &["-n", "user.empty", s(&a)]);
        run("setfattr", &["-n", "user.stale", "-v", "x", s(&b)]);
        run("setfattr", &["-n", "user.one", "-v", "old", s(&b)]);

        let list = read_fd(File::open(&a).unwrap(), &all(), &Fake).unwrap();
        let names: Vec<_> = list.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(
            names,
            [&b"user.bin"[..], b"user.empty", b"user.one"],
            "sorted by name"
        );
        assert_eq!(list[0].value, XattrValue::Raw(vec![0, 0xff, 0x10]));
        assert_eq!(list[1].value, XattrValue::Raw(vec![]));

        apply_fd(File::open(&b).unwrap(), &list, &all(), map_numeric).unwrap();
        assert_eq!(dump(&a), dump(&b));
        assert!(!dump(&b).contains("user.stale"));
        // Applying again changes nothing and reads back the same list.
        apply_fd(File::open(&b).unwrap(), &list, &all(), map_numeric).unwrap();
        assert_eq!(
            read_fd(File::open(&b).unwrap(), &all(), &Fake).unwrap(),
            list
        );
        // The postcard form round-trips.
        let bytes = postcard::to_allocvec(&list).unwrap();
        assert_eq!(postcard::from_bytes::<Vec<Xattr>>(&bytes).unwrap(), list);
    }

    #[test]
    fn filter_leaves_other_names_alone() {
        let d = tempfile::tempdir_in("/tmp").unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        File::create(&a).unwrap();
        File::create(&b).unwrap();
        run(
            "setfattr",
            &["-n", "security.selinux", "-v", "theirs", s(&a)],
        );
        run("setfattr", &["-n", "user.keep.x", "-v", "1", s(&a)]);
        run("setfattr", &["-n", "security.selinux", "-v", "mine", s(&b)]);
        run("setfattr", &["-n", "user.other", "-v", "local", s(&b)]);
        run("setfattr", &["-n", "user.keep.old", "-v", "1", s(&b)]);

        let default = XattrFilter::new(&[], &strs(DEFAULT_EXCLUDE))
            .unwrap()
            .privileged(true);
        assert!(!default.covers(b"security.selinux"));
        assert!(default.covers(b"security.capability"));
        assert!(default.covers(ACL_ACCESS));
        assert!(!default.covers(b"system.nfs4_acl"));
        assert!(!default.covers(b"user."));
        let list = read_fd(File::open(&a).unwrap(), &default, &Fake).unwrap();
        assert_eq!(list, vec![raw("user.keep.x", b"1")]);

        let narrow = XattrFilter::new(&strs(&["user.keep*"]), &strs(DEFAULT_EXCLUDE))
            .unwrap()
            .privileged(true);
        apply_fd(File::open(&b).unwrap(), &list, &narrow, map_numeric).unwrap();
        let after = dump(&b);
        assert!(after.contains("security.selinux=0x6d696e65"), "{after}"); // "mine"
        assert!(after.contains("user.other="), "outside the filter: {after}");
        assert!(after.contains("user.keep.x="), "{after}");
        assert!(!after.contains("user.keep.old"), "{after}");

        // Not root: trusted.* and security.* are neither read nor touched.
        let user = XattrFilter::new(&[], &[]).unwrap().privileged(false);
        assert!(!user.covers(b"trusted.x") && !user.covers(b"security.ima"));
        assert!(user.covers(b"user.x") && user.covers(ACL_DEFAULT));
        let bad = XattrFilter::new(&strs(&["user.[a"]), &[]);
        assert!(matches!(bad, Err(XattrError::Pattern { .. })), "{bad:?}");
    }

    #[test]
    fn access_and_default_acls_on_directories() {
        let d = tempfile::tempdir_in("/tmp").unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        run(
            "setfacl",
            &[
                "-m",
                "u:12345:rwx,g:12346:r-x,d:u:12345:rwx,d:g:12346:r-x",
                s(&a),
            ],
        );
        run("setfacl", &["-m", "u:777:r--", s(&b)]); // to be replaced

        let list = read_fd(File::open(&a).unwrap(), &all(), &Fake).unwrap();
        let names: Vec<_> = list.iter().map(|x| x.name.as_slice()).collect();
        assert_eq!(names, [ACL_ACCESS, ACL_DEFAULT]);
        let XattrValue::Acl(acl) = &list[0].value else {
            panic!("not an ACL: {list:?}")
        };
        assert!(
            acl.entries
                .contains(&entry(AclTag::User(named(12345, None)), 7))
        );

        apply_fd(File::open(&b).unwrap(), &list, &all(), map_numeric).unwrap();
        assert_eq!(getfacl(&a), getfacl(&b));
        assert!(
            getfacl(&b).contains("default:user:12345:rwx"),
            "{}",
            getfacl(&b)
        );
        assert!(!getfacl(&b).contains("777"));
        // A file created later inherits the default ACL.
        let f = b.join("new");
        File::create(&f).unwrap();
        let inherited = getfacl(&f);
        assert!(inherited.contains("user:12345:rwx"), "{inherited}");
        assert!(inherited.contains("group:12346:r-x"), "{inherited}");

        // Nothing wanted: both ACLs go, the mode stays.
        apply_fd(File::open(&b).unwrap(), &[], &all(), map_numeric).unwrap();
        assert!(!dump(&b).contains("posix_acl"), "{}", dump(&b));
    }

    #[test]
    fn acl_entries_are_mapped_by_name() {
        let d = tempfile::tempdir_in("/tmp").unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        File::create(&a).unwrap();
        File::create(&b).unwrap();
        run("setfacl", &["-m", "u:1:rwx,g:1:r--,u:5555:r--", s(&a)]);

        let list = read_fd(File::open(&a).unwrap(), &all(), &Fake).unwrap();
        let XattrValue::Acl(acl) = &list[0].value else {
            panic!("not an ACL: {list:?}")
        };
        assert!(
            acl.entries
                .contains(&entry(AclTag::User(named(1, Some("daemon"))), 7))
        );
        assert!(
            acl.entries
                .contains(&entry(AclTag::User(named(5555, None)), 4))
        );

        let by_name = map_by_name(&Fake);
        let back = Acl::decode(&acl.encode(&by_name)).unwrap();
        assert!(
            back.entries
                .contains(&entry(AclTag::User(named(4242, None)), 7))
        );
        assert!(
            back.entries
                .contains(&entry(AclTag::Group(named(4343, None)), 4))
        );
        assert!(
            back.entries
                .contains(&entry(AclTag::User(named(5555, None)), 4))
        );

        apply_fd(File::open(&b).unwrap(), &list, &all(), &by_name).unwrap();
        let acl_b = getfacl(&b);
        assert!(acl_b.contains("user:4242:rwx"), "{acl_b}");
        assert!(acl_b.contains("group:4343:r--"), "{acl_b}");
        assert!(acl_b.contains("user:5555:r--"), "{acl_b}");
        assert!(!acl_b.contains("user:1:"), "{acl_b}");
    }

    #[test]
    fn encode_sorts_and_merges_collisions_to_the_lesser_grant() {
        let acl = Acl {
            entries: vec![
                entry(AclTag::UserObj, 7),
                entry(AclTag::User(named(1, Some("daemon"))), 7),
                entry(AclTag::User(named(4242, None)), 5),
                entry(AclTag::GroupObj, 5),
                entry(AclTag::Mask, 7),
                entry(AclTag::Other, 0),
            ],
        };
        // By name, "daemon" becomes 4242 too: one entry, r-x.
        let back = Acl::decode(&acl.encode(map_by_name(&Fake))).unwrap();
        let users: Vec<_> = back
            .entries
            .iter()
            .filter(|e| matches!(e.tag, AclTag::User(_)))
            .collect();
        assert_eq!(users, [&entry(AclTag::User(named(4242, None)), 5)]);
        // Numeric: unchanged, and in the kernel's byte layout.
        let bytes = base_acl().encode(map_numeric);
        assert_eq!(
            &bytes[..12],
            &[2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(&bytes[12..20], &[2, 0, 5, 0, 1, 0, 0, 0]);
        let mut plain = base_acl();
        plain.entries[1] = entry(AclTag::User(named(1, None)), 5);
        assert_eq!(Acl::decode(&bytes).unwrap(), plain);
    }

    #[test]
    fn decode_refuses_damaged_bytes() {
        let good = base_acl().encode(map_numeric);
        assert!(Acl::decode(&good).is_ok());
        for n in 0..good.len() {
            assert!(Acl::decode(&good[..n]).is_err(), "truncated to {n}");
        }
        let with = |at: usize, b: u8| {
            let mut v = good.clone();
            v[at] = b;
            Acl::decode(&v)
        };
        assert_eq!(with(0, 1), Err(AclError::Version(1)));
        assert_eq!(with(4, 0x40), Err(AclError::UnknownTag(0x40)));
        assert_eq!(with(6, 8), Err(AclError::Perm(8)));
        assert_eq!(with(7, 1), Err(AclError::Perm(0x107)));
        assert_eq!(with(12, 0x20), Err(AclError::Order)); // user:1 becomes a second "other"
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(Acl::decode(&extra), Err(AclError::Size(extra.len())));
        // No owner entry; named entries without a mask.
        assert_eq!(
            Acl::decode(
                &good[..4]
                    .iter()
                    .chain(&good[12..])
                    .copied()
                    .collect::<Vec<_>>()
            ),
            Err(AclError::Missing("owner"))
        );
        let no_mask: Vec<u8> = good[..28].iter().chain(&good[36..]).copied().collect();
        assert_eq!(Acl::decode(&no_mask), Err(AclError::NoMask));
        let mut huge = 2u32.to_le_bytes().to_vec();
        huge.resize(4 + 8 * (MAX_ACL_ENTRIES + 1), 0);
        assert_eq!(
            Acl::decode(&huge),
            Err(AclError::TooManyEntries(MAX_ACL_ENTRIES + 1))
        );
        for junk in [&b""[..], b"\x02\0\0", b"\xff\xff\xff\xff", b"\x02\0\0\0"] {
            assert!(Acl::decode(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn validate_refuses_hostile_lists() {
        let reason = |list: &[Xattr]| match validate(list) {
            Err(XattrError::Invalid { reason, .. }) => reason,
            other => panic!("accepted or other error: {other:?}"),
        };
        let ok = vec![
            raw("security.capability", b"x"),
            Xattr {
                name: ACL_ACCESS.to_vec(),
                value: XattrValue::Acl(base_acl()),
            },
            raw("trusted.a", &[0; MAX_VALUE_LEN]),
            raw("user.a", b""),
        ];
        validate(&ok).unwrap();

        assert_eq!(reason(&[raw("", b"")]), Refusal::EmptyName);
        let long = format!("user.{}", "x".repeat(MAX_NAME_LEN));
        assert_eq!(reason(&[raw(&long, b"")]), Refusal::NameTooLong(long.len()));
        assert_eq!(reason(&[raw("user.a\0b", b"")]), Refusal::NulInName);
        for ns in ["user.", "system.nfs4_acl", "btrfs.compression", "other"] {
            assert_eq!(reason(&[raw(ns, b"")]), Refusal::Namespace, "{ns}");
        }
        assert_eq!(
            reason(&[raw("user.a", &[0; MAX_VALUE_LEN + 1])]),
            Refusal::ValueTooLarge(MAX_VALUE_LEN + 1)
        );
        assert_eq!(
            reason(&[raw("user.b", b""), raw("user.a", b"")]),
            Refusal::Unsorted
        );
        assert_eq!(
            reason(&[raw("user.a", b""), raw("user.a", b"")]),
            Refusal::Unsorted
        );
        let many: Vec<_> = (0..=MAX_XATTRS)
            .map(|i| raw(&format!("user.{i:04}"), b""))
            .collect();
        assert_eq!(reason(&many), Refusal::TooMany(MAX_XATTRS + 1));
        let big: Vec<_> = (0..5)
            .map(|i| raw(&format!("user.{i}"), &[0; MAX_VALUE_LEN]))
            .collect();
        assert_eq!(reason(&big), Refusal::TooLarge);
        // ACL names carry ACLs, and only they do; ACLs must be well-formed.
        assert_eq!(
            reason(&[raw("system.posix_acl_access", b"\x02\0\0\0")]),
            Refusal::WrongKind
        );
        let acl_as = |name: &str, acl: Acl| Xattr {
            name: name.as_bytes().to_vec(),
            value: XattrValue::Acl(acl),
        };
        assert_eq!(
            reason(&[acl_as("user.acl", base_acl())]),
            Refusal::WrongKind
        );
        let mut unsorted = base_acl();
        unsorted.entries.swap(0, 1);
        let mut no_mask = base_acl();
        no_mask.entries.remove(3);
        let mut bad_perm = base_acl();
        bad_perm.entries[0].perm = 8;
        let mut bad_name = base_acl();
        bad_name.entries[1].tag = AclTag::User(named(1, Some("")));
        for (acl, want) in [
            (unsorted, AclError::Order),
            (no_mask, AclError::NoMask),
            (bad_perm, AclError::Perm(8)),
            (bad_name, AclError::BadName),
            (Acl { entries: vec![] }, AclError::Missing("owner")),
        ] {
            assert_eq!(
                reason(&[acl_as("system.posix_acl_default", acl)]),
                Refusal::Acl(want)
            );
        }
        // apply_fd refuses such a list before touching anything.
        let f = tempfile::tempfile_in("/tmp").unwrap();
        let e = apply_fd(
            &f,
            &[raw("user.b", b""), raw("user.a", b"")],
            &all(),
            map_numeric,
        );
        assert!(matches!(e, Err(XattrError::Invalid { .. })), "{e:?}");
    }

    #[test]
    fn symlinks_are_never_followed() {
        let d = tempfile::tempdir_in("/tmp").unwrap();
        let target = d.path().join("target");
        File::create(&target).unwrap();
        run("setfattr", &["-n", "user.t", "-v", "1", s(&target)]);
        std::os::unix::fs::symlink("target", d.path().join("link")).unwrap();
        let dir = File::open(d.path()).unwrap();
        let link = OsStr::new("link");

        // The target's attribute is not the link's.
        assert_eq!(
            read_link_nofollow(&dir, link, &all(), &Fake).unwrap(),
            vec![]
        );
        assert_eq!(
            read_path_nofollow(&d.path().join("link"), &all(), &Fake).unwrap(),
            vec![]
        );
        // user.* is refused on a symlink: skipped, not an error; trusted.* (root) is set on the
        // link itself, and the target is untouched.
        let want = vec![raw("trusted.l", b"2"), raw("user.l", b"2")];
        let skipped = apply_link_nofollow(&dir, link, &want, &all(), map_numeric).unwrap();
        assert_eq!(skipped, vec![b"user.l".to_vec()]);
        assert_eq!(
            read_link_nofollow(&dir, link, &all(), &Fake).unwrap(),
            vec![raw("trusted.l", b"2")]
        );
        let t = dump(&target);
        assert!(t.contains("user.t=") && !t.contains(".l="), "{t}");
        for bad in ["", ".", "..", "a/b"] {
            let e = read_link_nofollow(&dir, OsStr::new(bad), &all(), &Fake);
            assert!(
                matches!(e, Err(XattrError::NotAName { .. })),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn no_support_is_its_own_error() {
        // procfs stores no extended attributes.
        let f = File::open("/proc/self/status").unwrap();
        assert_eq!(read_fd(&f, &all(), &Fake).unwrap(), vec![]);
        let e = apply_fd(&f, &[raw("user.a", b"1")], &all(), map_numeric);
        assert!(
            matches!(&e, Err(XattrError::Unsupported { attr }) if attr == "user.a"),
            "{e:?}"
        );
    }

    /// The committed seeds of the `decode_acl` fuzz target are still what they claim to be.
    #[test]
    fn fuzz_seeds_decode() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_acl");
        let (mut acls, mut lists, mut lists_with_acl) = (0, 0, 0);
        for f in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            if Acl::decode(&bytes).is_ok() {
                acls += 1;
            } else {
                let list: Vec<Xattr> = postcard::from_bytes(&bytes).unwrap();
                validate(&list).unwrap();
                lists += 1;
                if list.iter().any(|x| matches!(x.value, XattrValue::Acl(_))) {
                    lists_with_acl += 1;
                }
            }
        }
        assert!(acls >= 1 && lists >= 1 && lists_with_acl >= 1);
    }

    #[test]
    fn names_in_errors_are_escaped() {
        let e = invalid(b"user.caf\xe9", Refusal::Namespace).to_string();
        assert!(e.contains("user.caf\\xe9"), "{e}");
    }

    mod props {
        use super::*;
        use proptest::collection::{btree_map, vec};
        use proptest::prelude::*;

        /// A well-formed ACL: sorted named entries, a mask when there are any (and sometimes
        /// when there are none).
        fn acl() -> impl Strategy<Value = Acl> {
            let ids = || btree_map(any::<u32>(), 0u8..8, 0..12);
            (
                ids(),
                ids(),
                [0u8..8, 0u8..8, 0u8..8, 0u8..8],
                any::<bool>(),
            )
                .prop_map(|(users, groups, [u, g, m, o], mask)| {
                    let mut entries = vec![entry(AclTag::UserObj, u)];
                    let q = |id| named(id, None);
                    entries.extend(users.iter().map(|(id, p)| entry(AclTag::User(q(*id)), *p)));
                    entries.push(entry(AclTag::GroupObj, g));
                    entries.extend(
                        groups
                            .iter()
                            .map(|(id, p)| entry(AclTag::Group(q(*id)), *p)),
                    );
                    if mask || !users.is_empty() || !groups.is_empty() {
                        entries.push(entry(AclTag::Mask, m));
                    }
                    entries.push(entry(AclTag::Other, o));
                    Acl { entries }
                })
        }

        proptest! {
            #[test]
            fn acl_codec_round_trips(acl in acl()) {
                prop_assert_eq!(acl.check(), Ok(()));
                prop_assert_eq!(Acl::decode(&acl.encode(map_numeric)), Ok(acl.clone()));
                let list = vec![Xattr { name: ACL_DEFAULT.to_vec(), value: XattrValue::Acl(acl) }];
                prop_assert!(validate(&list).is_ok());
                let bytes = postcard::to_allocvec(&list).unwrap();
                prop_assert_eq!(postcard::from_bytes::<Vec<Xattr>>(&bytes).unwrap(), list);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
                if let Ok(acl) = Acl::decode(&bytes) {
                    prop_assert_eq!(Acl::decode(&acl.encode(map_numeric)), Ok(acl));
                }
                if let Ok(list) = postcard::from_bytes::<Vec<Xattr>>(&bytes) {
                    let _ = validate(&list);
                }
            }
        }
    }
}
