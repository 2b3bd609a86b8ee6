//! One path's state as the cluster knows it: what kind of entry it is, its metadata, its
//! content identity (whole-file BLAKE3 and content-defined chunk list) and its version vector.
//!
//! A [`Record`] is what travels between nodes; an [`Entry`] is a record plus what only this
//! node knows (the inode and change time used by the quick check of a scan).
//!
//! Invariants: `path` is a logical path (absolute, as written in the config, without the node's
//! `root` prefix) validated by [`crate::paths`]; a deleted record keeps its version vector (a
//! tombstone) so an offline delete can never be resurrected; for a regular file the chunk
//! lengths add up to `size` and `hash` is the BLAKE3 of the whole content.

use crate::version::VersionVector;
use serde::{Deserialize, Serialize};

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// What kind of filesystem entry a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// File owner, by number and (when it resolves) by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

/// Metadata and content identity of a live entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits (including setuid/setgid/sticky); 0 for symlinks.
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub size: u64,
    pub owner: Owner,
    /// BLAKE3 of the content (file) or of the link text (symlink); zero for directories.
    pub hash: Hash,
    /// Link text of a symlink, as it is (never followed).
    pub target: Option<String>,
    /// Content-defined chunks of a regular file, in order.
    pub chunks: Vec<ChunkRef>,
}

impl Meta {
    /// Same content and metadata, ignoring mtime and (optionally) ownership.
    pub fn same_content(&self, other: &Meta, compare_owner: bool) -> bool {
        self.kind == other.kind
            && self.hash == other.hash
            && self.size == other.size
            && (self.kind == Kind::Symlink || self.mode == other.mode)
            && self.target == other.target
            && (!compare_owner || self.owner_key() == other.owner_key())
    }

    /// Identical in everything that is synced.
    pub fn same_all(&self, other: &Meta, compare_owner: bool) -> bool {
        self.same_content(other, compare_owner) && self.mtime_eq(other)
    }

    fn owner_key(&self) -> (Option<&str>, Option<&str>, u32, u32) {
        match (&self.owner.user, &self.owner.group) {
            (Some(u), Some(g)) => (Some(u), Some(g), 0, 0),
            _ => (None, None, self.owner.uid, self.owner.gid),
        }
    }

    pub fn mtime_eq(&self, other: &Meta) -> bool {
        self.mtime_s == other.mtime_s && self.mtime_ns == other.mtime_ns
    }
}

/// The cluster-wide state of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub path: String,
    pub version: VersionVector,
    /// The node whose change produced this content.
    pub origin: String,
    /// `None` for a deletion (tombstone).
    pub meta: Option<Meta>,
    /// Nodes whose concurrent versions this version won against in an automatic conflict
    /// resolution (empty for an ordinary change); lets the losing nodes list the conflict.
    pub beat: Vec<String>,
}

impl Record {
    pub fn is_deleted(&self) -> bool {
        self.meta.is_none()
    }

    pub fn kind(&self) -> Option<Kind> {
        self.meta.as_ref().map(|m| m.kind)
    }

    pub fn size(&self) -> u64 {
        self.meta.as_ref().map(|m| m.size).unwrap_or(0)
    }
}

/// A record as stored in this node's index, with local-only quick-check data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub rec: Record,
    /// This node's sequence number for the last change of this entry.
    pub seq: u64,
    /// Inode and ctime seen when the entry last matched the disk (0 when unknown).
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
    /// The peer this exact version came from (it is not sent back there).
    pub from: Option<String>,
}

/// What the quick check of a scan compares, stored ahead of each index entry so a scan can
/// read it without decoding the whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Entry {
    /// The quick-check view of this entry.
    pub fn quick(&self) -> QuickStat {
        let m = self.rec.meta.as_ref();
        QuickStat {
            live: m.is_some(),
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
