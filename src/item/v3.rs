//! The previous release's item format (index schema 3, wire protocol 3), kept to read an old
//! index once (`store::migrate`) and to keep syncing with a node one release behind during a
//! rolling upgrade (`net::v3`).
//!
//! Postcard is not self-describing: the field order and enum variant order below are the
//! format and must never change. Conversion to the current [`Item`] is total; conversion back
//! fails for what the previous release cannot represent (a name that is not UTF-8, extended
//! attributes, a body that is not a file, directory or symlink).

use super::version::VersionVector;
use super::{Body, ChunkRef, Hash, Item, Kind, Meta, Owner};
use serde::{Deserialize, Serialize};

/// Kind of a schema-3 entry (same variants and order as [`Kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KindV3 {
    File,
    Dir,
    Symlink,
}

/// Schema-3 metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaV3 {
    pub kind: KindV3,
    pub mode: u32,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub size: u64,
    pub owner: Owner,
    pub hash: Hash,
    pub target: Option<String>,
    pub chunks: Vec<ChunkRef>,
}

/// A schema-3 record: what protocol 3 sends and index schema 3 stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordV3 {
    pub path: String,
    pub version: VersionVector,
    pub origin: String,
    pub meta: Option<MetaV3>,
    pub beat: Vec<String>,
}

/// A schema-3 index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryV3 {
    pub rec: RecordV3,
    pub seq: u64,
    pub ino: u64,
    pub ctime_s: i64,
    pub ctime_ns: u32,
    pub from: Option<String>,
}

/// The schema-3 quick-check prefix of an index value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickStatV3 {
    pub live: bool,
    pub kind: Option<KindV3>,
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

/// A schema-3 conflict record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfoV3 {
    pub nodes: Vec<String>,
    pub resolved: bool,
    pub winner: String,
    pub kept_as: Option<String>,
    pub time: i64,
    pub versions: Vec<RecordV3>,
}

fn kind_from(k: KindV3) -> Kind {
    match k {
        KindV3::File => Kind::File,
        KindV3::Dir => Kind::Dir,
        KindV3::Symlink => Kind::Symlink,
    }
}

fn kind_to(k: Kind) -> KindV3 {
    match k {
        Kind::File => KindV3::File,
        Kind::Dir => KindV3::Dir,
        Kind::Symlink => KindV3::Symlink,
    }
}

impl From<RecordV3> for Item {
    fn from(r: RecordV3) -> Item {
        Item {
            key: r.path.into_bytes(),
            version: r.version,
            origin: r.origin,
            body: r.meta.map(|m| {
                Body::Fs(Meta {
                    kind: kind_from(m.kind),
                    mode: m.mode,
                    mtime_s: m.mtime_s,
                    mtime_ns: m.mtime_ns,
                    size: m.size,
                    owner: m.owner,
                    hash: m.hash,
                    target: m.target.map(String::into_bytes),
                    chunks: m.chunks,
                    xattrs: Vec::new(),
                })
            }),
            beat: r.beat,
        }
    }
}

/// Why an item cannot travel to a node of the previous release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInV3 {
    /// The path or a link text is not UTF-8.
    Name,
    /// The entry has extended attributes or ACLs.
    Xattrs,
    /// A user or group of the accounts group (protocol 3 carries files only).
    Account,
}

impl std::fmt::Display for NotInV3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotInV3::Name => "names that are not UTF-8",
            NotInV3::Xattrs => "extended attributes",
            NotInV3::Account => "accounts",
        })
    }
}

impl TryFrom<&Item> for RecordV3 {
    type Error = NotInV3;

    fn try_from(i: &Item) -> Result<RecordV3, NotInV3> {
        let path = String::from_utf8(i.key.clone()).map_err(|_| NotInV3::Name)?;
        let meta = match &i.body {
            None => None,
            Some(Body::User(_) | Body::Group(_) | Body::Account(_)) => {
                return Err(NotInV3::Account);
            }
            Some(Body::Fs(m)) => {
                if !m.xattrs.is_empty() {
                    return Err(NotInV3::Xattrs);
                }
                let target = match &m.target {
                    None => None,
                    Some(t) => Some(String::from_utf8(t.clone()).map_err(|_| NotInV3::Name)?),
                };
                Some(MetaV3 {
                    kind: kind_to(m.kind),
                    mode: m.mode,
                    mtime_s: m.mtime_s,
                    mtime_ns: m.mtime_ns,
                    size: m.size,
                    owner: m.owner.clone(),
                    hash: m.hash,
                    target,
                    chunks: m.chunks.clone(),
                })
            }
        };
        Ok(RecordV3 {
            path,
            version: i.version.clone(),
            origin: i.origin.clone(),
            meta,
            beat: i.beat.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = RecordV3 {
            path: "/srv/www/a".into(),
            version: VersionVector::default(),
            origin: "a".into(),
            meta: Some(MetaV3 {
                kind: KindV3::Symlink,
                mode: 0,
                mtime_s: 1,
                mtime_ns: 2,
                size: 3,
                owner: Owner::default(),
                hash: [1; 32],
                target: Some("../x".into()),
                chunks: vec![],
            }),
            beat: vec![],
        };
        let i: Item = r.clone().into();
        assert_eq!(RecordV3::try_from(&i), Ok(r));
        let mut bad = i.clone();
        bad.key = b"/srv/www/caf\xe9".to_vec();
        assert_eq!(RecordV3::try_from(&bad), Err(NotInV3::Name));
        // an account is not a tombstone to a node of the previous release (found by fuzzing)
        let mut acct = i.clone();
        acct.key = b"group/web".to_vec();
        acct.body = Some(Body::Group(crate::accounts::v4::GroupRecord {
            name: "web".into(),
            gid: 1000,
            password: None,
            admins: vec![],
        }));
        assert_eq!(RecordV3::try_from(&acct), Err(NotInV3::Account));
    }
}
