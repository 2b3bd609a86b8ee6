//! What replicates: an [`Item`] is one key of a group (a logical path, or later an account)
//! with its version vector, the node whose change produced it, and its body (or none: a
//! tombstone). An [`Entry`] is an item as this node stores it, with what only this node knows.
//!
//! Everything here is pure data with comparisons; encoding with a version lives in `store`
//! (on disk) and `net::protocol` (on the wire).
//!
//! Invariants: a key of a file group is a logical path validated by [`name`]; a deleted item
//! keeps its version vector (a tombstone) so an offline delete can never be resurrected; for a
//! regular file the chunk lengths add up to `size` and `hash` is the BLAKE3 of the whole
//! content; **one version vector names one body**: a node that produces new content (a local
//! change, a resolution) bumps its own counter; a conflict settled by policy gives the merge
//! of both vectors to the winner's body, and since every node picks the same winner from the
//! same two items (`engine::decide`, property-tested), that merged vector names the same body
//! everywhere.

pub mod name;
pub mod v3;
pub mod version;

use crate::fs::xattr::Xattr;
use serde::{Deserialize, Serialize};
pub use version::{Causality, VersionVector};

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// What kind of filesystem entry an item describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

/// A content-defined chunk of a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub len: u32,
}

/// File owner, by number and (when it resolves on the node that read it) by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

impl Owner {
    /// What is compared between nodes: the names where both resolve, else the numbers.
    pub fn key(&self) -> (Option<&str>, Option<&str>, u32, u32) {
        match (&self.user, &self.group) {
            (Some(u), Some(g)) => (Some(u), Some(g), 0, 0),
            _ => (None, None, self.uid, self.gid),
        }
    }
}

/// A regular file of `size` bytes, one chunk, whose content hash is `[byte; 32]` (tests).
#[cfg(test)]
pub(crate) fn test_file(key: &[u8], version: VersionVector, byte: u8, size: u64) -> Item {
    Item {
        key: key.to_vec(),
        version,
        origin: "a".into(),
        beat: vec![],
        body: Some(Body::Fs(Meta {
            kind: Kind::File,
            mode: 0o644,
            mtime_s: 1,
            mtime_ns: 2,
            size,
            owner: Owner::default(),
            hash: [byte; 32],
            target: None,
            chunks: vec![ChunkRef {
                hash: [byte; 32],
                len: size as u32,
            }],
            xattrs: vec![],
        })),
    }
}

/// Metadata and content identity of a live filesystem entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky); 0 for symlinks.
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    /// Size of a file's content, or of a symlink's link text; 0 for directories.
    pub size: u64,
    pub owner: Owner,
    /// BLAKE3 of the content (file) or of the link text (symlink); zero for directories.
    pub hash: Hash,
    /// Link text of a symlink, as bytes (never followed).
    #[serde(with = "serde_bytes")]
    pub target: Option<Vec<u8>>,
    /// Content-defined chunks of a regular file, in order.
    pub chunks: Vec<ChunkRef>,
    /// Extended attributes and POSIX ACLs (groups with `xattrs = true`), sorted by name.
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    /// Same content: kind, bytes, link text (not mode, mtime, owner or attributes).
    pub fn same_data(&self, other: &Meta) -> bool {
        self.kind == other.kind
            && self.hash == other.hash
            && self.size == other.size
            && self.target == other.target
    }

    /// Identical in everything that is synced (ownership compared as [`Owner::key`] unless
    /// `compare_owner` is false).
    pub fn same_synced(&self, other: &Meta, compare_owner: bool) -> bool {
        self.same_data(other)
            && (self.kind == Kind::Symlink || self.mode == other.mode)
            && self.mtime_s == other.mtime_s
            && self.mtime_ns == other.mtime_ns
            && (!compare_owner || self.owner.key() == other.owner.key())
            && self.xattrs == other.xattrs
    }

    pub fn mtime_eq(&self, other: &Meta) -> bool {
        self.mtime_s == other.mtime_s && self.mtime_ns == other.mtime_ns
    }
}

/// The body of a live item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "one body per item; boxing would only burden every caller"
)]
pub enum Body {
    /// A file, directory or symlink.
    Fs(Meta),
    /// A managed user of the previous release (protocol 4, index schema 4): decoded from a
    /// protocol-4 peer and migrated from an old index, never made or applied by this release.
    User(crate::accounts::v4::UserRecord),
    /// A managed group of the previous release (see `User`).
    Group(crate::accounts::v4::GroupRecord),
    /// An account item of the `@accounts` pseudo-group (key `user/NAME`, `group/NAME` or
    /// `members/NAME`; protocol 5, index schema 5).
    Account(crate::accounts::Account),
}

/// The cluster-wide state of one key of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// A logical path (file groups).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: VersionVector,
    /// The node whose change produced this body.
    pub origin: String,
    /// `None` for a deletion (tombstone).
    pub body: Option<Body>,
    /// Nodes whose concurrent versions this version won against in an automatic conflict
    /// resolution (empty for an ordinary change); lets the losing nodes list the conflict.
    pub beat: Vec<String>,
}

impl Item {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }

    /// The filesystem metadata of a live file, directory or symlink.
    pub fn meta(&self) -> Option<&Meta> {
        match &self.body {
            Some(Body::Fs(m)) => Some(m),
            _ => None,
        }
    }

    pub fn meta_mut(&mut self) -> Option<&mut Meta> {
        match &mut self.body {
            Some(Body::Fs(m)) => Some(m),
            _ => None,
        }
    }

    pub fn kind(&self) -> Option<Kind> {
        self.meta().map(|m| m.kind)
    }

    pub fn size(&self) -> u64 {
        self.meta().map(|m| m.size).unwrap_or(0)
    }

    /// The key as a printable path (see [`name::show`]).
    pub fn show(&self) -> std::borrow::Cow<'_, str> {
        name::show(&self.key)
    }

    /// Identical bodies (both deleted counts as identical).
    pub fn same_body(&self, other: &Item, compare_owner: bool) -> bool {
        match (&self.body, &other.body) {
            (None, None) => true,
            (Some(Body::Fs(a)), Some(Body::Fs(b))) => a.same_synced(b, compare_owner),
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }
}

/// An item as stored in this node's index, with local-only quick-check data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub item: Item,
    /// This node's sequence number for the last change of this entry.
    pub seq: u64,
    /// Inode and ctime seen when the entry last matched the disk (0 when unknown).
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
    /// The peer this exact version came from and that peer's index id at the time: it is not
    /// sent back to that same index (a peer that started over with a new index gets it).
    pub from: Option<(String, u64)>,
    /// This node made this version and its content is new (not only its metadata or
    /// attributes): only then does a small file's content travel inline with it.
    pub fresh: bool,
}

impl Entry {
    /// A fresh entry for `item` with no local data yet.
    pub fn new(item: Item) -> Entry {
        Entry {
            item,
            seq: 0,
            ino: 0,
            ctime_s: 0,
            ctime_ns: 0,
            from: None,
            fresh: false,
        }
    }

    /// The quick-check view of this entry.
    pub fn quick(&self) -> QuickStat {
        let m = self.item.meta();
        QuickStat {
            live: !self.item.is_deleted(),
            kind: m.map(|m| m.kind),
            size: m.map_or(0, |m| m.size),
            mtime_s: m.map_or(0, |m| m.mtime_s),
            mtime_ns: m.map_or(0, |m| m.mtime_ns),
            mode: m.map_or(0, |m| m.mode),
            uid: m.map_or(0, |m| m.owner.uid),
            gid: m.map_or(0, |m| m.owner.gid),
            ino: self.ino,
            ctime_s: self.ctime_s,
            ctime_ns: self.ctime_ns,
        }
    }
}

/// What the quick check of a scan compares, stored ahead of each index entry so a scan can
/// read it without decoding the whole item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QuickStat {
    pub live: bool,
    pub kind: Option<Kind>,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Parse lowercase or uppercase hex into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim().as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&b), "0001abff");
        assert_eq!(unhex::<4>("0001ABff"), Some(b));
        assert_eq!(unhex::<4>("0001ab"), None);
        assert_eq!(unhex::<2>("zz00"), None);
    }
}
