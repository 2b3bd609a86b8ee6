//! The persistent index: every path of every group this node is in, with its record, its
//! version vector and this node's sequence number for it; plus what each peer has already
//! applied from us, where known chunks live, and recorded conflicts.
//!
//! Storage is one redb database (`<state-dir>/index.redb`, ACID, crash-safe). Schema version
//! [`SCHEMA_VERSION`], tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name (`schema`, `index_id`, `seq`) | u64 |
//! | `files` | (group, logical path) | postcard [`QuickStat`] then postcard [`Entry`] |
//! | `by_seq` | (group, seq) | logical path |
//! | `peers` | (peer, group) | (peer's index id, last applied seq) |
//! | `chunks` | BLAKE3 of a chunk | (group, logical path, offset, length) where it was last seen |
//! | `acked` | (peer, group) | highest seq of ours the peer confirmed applying |
//! | `conflicts` | (group, logical path) | postcard [`ConflictInfo`] |
//!
//! Invariants: `seq` only grows; every live or deleted entry in `files` has exactly one
//! `by_seq` row with its current seq; a commit is one transaction, so a crash leaves either
//! the old or the new state. `chunks` rows are hints: readers verify the hash before use.

use crate::record::{Entry, Hash, QuickStat};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Page cache of the index database.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// On-disk schema version of the index.
pub const SCHEMA_VERSION: u64 = 3;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FILES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("files");
const BY_SEQ: TableDefinition<(&str, u64), &str> = TableDefinition::new("by_seq");
const PEERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("peers");
const CHUNKS: TableDefinition<&[u8; 32], (&str, &str, u64, u64)> = TableDefinition::new("chunks");
const ACKED: TableDefinition<(&str, &str), u64> = TableDefinition::new("acked");
const CONFLICTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("conflicts");

/// Errors of the index store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("index {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("index {path}: corrupt entry for {key}: {msg}")]
    Corrupt {
        path: PathBuf,
        key: String,
        msg: String,
    },
    #[error("index {path} has schema version {found}, this clustersync reads {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: u64 },
}

/// A conflict this node detected, for `conflicts` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub nodes: Vec<String>,
    pub resolved: bool,
    pub winner: String,
    /// Where the losing version was kept (a backup id), if anywhere.
    pub kept_as: Option<String>,
    pub time: i64,
    /// For an unresolved (`manual`) conflict: the competing versions of other nodes.
    pub versions: Vec<crate::record::Record>,
}

impl ConflictInfo {
    /// Record one more competing version (replacing an older one of the same origin).
    pub fn add_version(&mut self, r: &crate::record::Record) {
        self.versions.retain(|v| v.origin != r.origin);
        self.versions.push(r.clone());
        if !self.nodes.contains(&r.origin) {
            self.nodes.push(r.origin.clone());
            self.nodes.sort();
        }
    }
}

/// Where a chunk's bytes can be read on this node (a hint: verify the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub group: String,
    pub path: String,
    pub offset: u64,
    pub len: u64,
}

/// One change to store.
#[derive(Debug)]
pub struct Change {
    pub entry: Entry,
    /// Give it a new sequence number (a new version to announce) or keep the current one
    /// (a local-only refresh such as a new inode number).
    pub announce: bool,
}

/// The index database.
pub struct Index {
    db: Database,
    path: PathBuf,
    index_id: u64,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return t ^ (std::process::id() as u64) << 32;
    }
    u64::from_le_bytes(b).max(1)
}

impl Index {
    fn err<E: Into<redb::Error>>(&self, e: E) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Open (or create) the index at `path`.
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        // a bounded page cache keeps memory per indexed file small (SPEC §7)
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| IndexError::Db {
                path: path.into(),
                source: e.into(),
            })?;
        let mut ix = Index {
            db,
            path: path.into(),
            index_id: 0,
        };
        let tx = ix.db.begin_write().map_err(|e| ix.err(e))?;
        let id;
        {
            let mut meta = tx.open_table(META).map_err(|e| ix.err(e))?;
            let schema = meta
                .get("schema")
                .map_err(|e| ix.err(e))?
                .map(|v| v.value());
            match schema {
                Some(v) if v != SCHEMA_VERSION => {
                    return Err(IndexError::Schema {
                        path: path.into(),
                        found: v,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| ix.err(e))?;
                }
            }
            let cur = meta
                .get("index_id")
                .map_err(|e| ix.err(e))?
                .map(|v| v.value());
            id = match cur {
                Some(v) => v,
                None => {
                    let v = random_u64();
                    meta.insert("index_id", v).map_err(|e| ix.err(e))?;
                    v
                }
            };
            tx.open_table(FILES).map_err(|e| ix.err(e))?;
            tx.open_table(BY_SEQ).map_err(|e| ix.err(e))?;
            tx.open_table(PEERS).map_err(|e| ix.err(e))?;
            tx.open_table(CHUNKS).map_err(|e| ix.err(e))?;
            tx.open_table(CONFLICTS).map_err(|e| ix.err(e))?;
            tx.open_table(ACKED).map_err(|e| ix.err(e))?;
        }
        tx.commit().map_err(|e| ix.err(e))?;
        ix.index_id = id;
        Ok(ix)
    }

    /// This index's random identity; changes when the index is recreated.
    pub fn index_id(&self) -> u64 {
        self.index_id
    }

    /// Highest sequence number given out so far.
    pub fn max_seq(&self) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta
            .get("seq")
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn corrupt(&self, key: &str, e: postcard::Error) -> IndexError {
        IndexError::Corrupt {
            path: self.path.clone(),
            key: key.into(),
            msg: e.to_string(),
        }
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<Entry, IndexError> {
        let (_, rest) =
            postcard::take_from_bytes::<QuickStat>(bytes).map_err(|e| self.corrupt(key, e))?;
        postcard::from_bytes(rest).map_err(|e| self.corrupt(key, e))
    }

    fn decode_quick(&self, key: &str, bytes: &[u8]) -> Result<QuickStat, IndexError> {
        postcard::take_from_bytes::<QuickStat>(bytes)
            .map(|(q, _)| q)
            .map_err(|e| self.corrupt(key, e))
    }

    fn encode(&self, e: &Entry) -> Result<Vec<u8>, IndexError> {
        let mut v = postcard::to_allocvec(&e.quick()).map_err(|x| self.corrupt(&e.rec.path, x))?;
        let body = postcard::to_allocvec(e).map_err(|x| self.corrupt(&e.rec.path, x))?;
        v.extend_from_slice(&body);
        Ok(v)
    }

    /// The quick-check view of one path.
    pub fn get_quick(&self, group: &str, path: &str) -> Result<Option<QuickStat>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        match t.get((group, path)).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode_quick(path, v.value())?)),
            None => Ok(None),
        }
    }

    /// Is there a live entry strictly below `path`? Stops at the first one.
    pub fn any_live_below(&self, group: &str, path: &str) -> Result<bool, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        let (lo, hi) = crate::paths::subtree_bounds(path);
        for item in t
            .range((group, lo.as_str())..(group, hi.as_str()))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if self.decode_quick(k.value().1, v.value())?.live {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The quick-check view of `path` and of every path below it.
    pub fn subtree_quick(
        &self,
        group: &str,
        path: &str,
    ) -> Result<Vec<(String, QuickStat)>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        if let Some(v) = t.get((group, path)).map_err(|e| self.err(e))? {
            out.push((path.to_string(), self.decode_quick(path, v.value())?));
        }
        let (lo, hi) = crate::paths::subtree_bounds(path);
        for item in t
            .range((group, lo.as_str())..(group, hi.as_str()))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let p = k.value().1;
            out.push((p.to_string(), self.decode_quick(p, v.value())?));
        }
        Ok(out)
    }

    /// The entry of one path.
    pub fn get(&self, group: &str, path: &str) -> Result<Option<Entry>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        match t.get((group, path)).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(path, v.value())?)),
            None => Ok(None),
        }
    }

    /// The entry of `path` (if any) and of every path below it, in path order.
    pub fn subtree(&self, group: &str, path: &str) -> Result<Vec<Entry>, IndexError> {
        let mut out = Vec::new();
        if let Some(e) = self.get(group, path)? {
            out.push(e);
        }
        let (lo, hi) = crate::paths::subtree_bounds(path);
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        for item in t
            .range((group, lo.as_str())..(group, hi.as_str()))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(k.value().1, v.value())?);
        }
        Ok(out)
    }

    /// Visit every entry of a group.
    pub fn for_each(&self, group: &str, mut f: impl FnMut(&Entry)) -> Result<(), IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILES).map_err(|e| self.err(e))?;
        for item in t
            .range((group, "")..(group, "\u{10FFFF}"))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            f(&self.decode(k.value().1, v.value())?);
        }
        Ok(())
    }

    /// Entries of `group` with a sequence number above `after`, in sequence order.
    pub fn since(&self, group: &str, after: u64, max: usize) -> Result<Vec<Entry>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let files = tx.open_table(FILES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in bs
            .range((group, after.saturating_add(1))..=(group, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, p) = item.map_err(|e| self.err(e))?;
            let p = p.value();
            if let Some(v) = files.get((group, p)).map_err(|e| self.err(e))? {
                out.push(self.decode(p, v.value())?);
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The highest sequence number of an entry of `group` (0 when it has none).
    pub fn group_head(&self, group: &str) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let mut r = bs
            .range((group, 0u64)..=(group, u64::MAX))
            .map_err(|e| self.err(e))?;
        match r.next_back() {
            Some(item) => Ok(item.map_err(|e| self.err(e))?.0.value().1),
            None => Ok(0),
        }
    }

    /// Number of entries of `group` with a sequence number above `after`.
    pub fn count_since(&self, group: &str, after: u64) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let mut n = 0;
        for item in bs
            .range((group, after.saturating_add(1))..=(group, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            item.map_err(|e| self.err(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Store changes of one group in one transaction; returns the highest seq afterwards.
    pub fn commit(&self, group: &str, changes: Vec<Change>) -> Result<u64, IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let seq;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut files = tx.open_table(FILES).map_err(|e| self.err(e))?;
            let mut bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            let mut next = meta
                .get("seq")
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            for mut ch in changes {
                let path = ch.entry.rec.path.clone();
                let old = match files.get((group, path.as_str())).map_err(|e| self.err(e))? {
                    Some(v) => Some(self.decode(&path, v.value())?),
                    None => None,
                };
                if ch.announce || old.is_none() {
                    if let Some(o) = &old {
                        bs.remove((group, o.seq)).map_err(|e| self.err(e))?;
                    }
                    next += 1;
                    ch.entry.seq = next;
                    bs.insert((group, next), path.as_str())
                        .map_err(|e| self.err(e))?;
                } else if let Some(o) = &old {
                    ch.entry.seq = o.seq;
                }
                // chunk locations: forget the old ones that pointed here, add the new ones
                if let Some(m) = old.as_ref().and_then(|o| o.rec.meta.as_ref()) {
                    for c in &m.chunks {
                        let here = match chunks.get(&c.hash).map_err(|e| self.err(e))? {
                            Some(v) => {
                                let (g, p, _, _) = v.value();
                                g == group && p == path
                            }
                            None => false,
                        };
                        if here {
                            chunks.remove(&c.hash).map_err(|e| self.err(e))?;
                        }
                    }
                }
                if let Some(m) = ch.entry.rec.meta.as_ref() {
                    let mut off = 0u64;
                    for c in &m.chunks {
                        chunks
                            .insert(&c.hash, (group, path.as_str(), off, c.len as u64))
                            .map_err(|e| self.err(e))?;
                        off += c.len as u64;
                    }
                }
                let bytes = self.encode(&ch.entry)?;
                files
                    .insert((group, path.as_str()), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            meta.insert("seq", next).map_err(|e| self.err(e))?;
            seq = next;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(seq)
    }

    /// Where a chunk was last seen.
    pub fn chunk_location(&self, hash: &Hash) -> Result<Option<ChunkLocation>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        Ok(t.get(hash).map_err(|e| self.err(e))?.map(|v| {
            let (g, p, o, l) = v.value();
            ChunkLocation {
                group: g.to_string(),
                path: p.to_string(),
                offset: o,
                len: l,
            }
        }))
    }

    /// Highest seq of ours that `peer` confirmed applying for `group`.
    pub fn acked(&self, peer: &str, group: &str) -> Result<u64, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
        Ok(t.get((peer, group))
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Remember that `peer` applied our records of `group` up to `seq`.
    pub fn set_acked(&self, peer: &str, group: &str, seq: u64) -> Result<(), IndexError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
            t.insert((peer, group), seq).map_err(|e| self.err(e))?;
        }
        tx.set_durability(redb::Durability::None)
            .map_err(|e| IndexError::Corrupt {
                path: self.path.clone(),
                key: "acked".into(),
                msg: e.to_string(),
            })?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// What `peer` has applied of our index for `group`: (our index id then, seq).
    pub fn peer_position(&self, peer: &str, group: &str) -> Result<(u64, u64), IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PEERS).map_err(|e| self.err(e))?;
        Ok(t.get((peer, group))
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or((0, 0)))
    }

    /// Remember how far we have applied `peer`'s index for `group`.
    pub fn set_peer_position(
        &self,
        peer: &str,
        group: &str,
        index_id: u64,
        seq: u64,
    ) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(PEERS).map_err(|e| self.err(e))?;
            t.insert((peer, group), (index_id, seq))
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Record (or update) a conflict.
    pub fn put_conflict(
        &self,
        group: &str,
        path: &str,
        c: &ConflictInfo,
    ) -> Result<(), IndexError> {
        let bytes = postcard::to_allocvec(c).map_err(|e| IndexError::Corrupt {
            path: self.path.clone(),
            key: path.into(),
            msg: e.to_string(),
        })?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
            t.insert((group, path), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The recorded conflict of one path, if any.
    pub fn conflict(&self, group: &str, path: &str) -> Result<Option<ConflictInfo>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
        match t.get((group, path)).map_err(|e| self.err(e))? {
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| IndexError::Corrupt {
                    path: self.path.clone(),
                    key: path.into(),
                    msg: e.to_string(),
                }),
            None => Ok(None),
        }
    }

    /// All recorded conflicts: (group, path, info).
    pub fn conflicts(&self) -> Result<Vec<(String, String, ConflictInfo)>, IndexError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (g, p) = k.value();
            let c: ConflictInfo =
                postcard::from_bytes(v.value()).map_err(|e| IndexError::Corrupt {
                    path: self.path.clone(),
                    key: p.into(),
                    msg: e.to_string(),
                })?;
            out.push((g.to_string(), p.to_string(), c));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChunkRef, Kind, Meta, Owner, Record};
    use crate::version::VersionVector;

    fn entry(path: &str, hash: u8) -> Entry {
        Entry {
            rec: Record {
                path: path.into(),
                version: VersionVector::default(),
                origin: "a".into(),
                beat: vec![],
                meta: Some(Meta {
                    kind: Kind::File,
                    mode: 0o644,
                    mtime_s: 1,
                    mtime_ns: 2,
                    size: 5,
                    owner: Owner::default(),
                    hash: [hash; 32],
                    target: None,
                    chunks: vec![ChunkRef {
                        hash: [hash; 32],
                        len: 5,
                    }],
                }),
            },
            seq: 0,
            ino: 1,
            ctime_s: 0,
            ctime_ns: 0,

            from: None,
        }
    }

    #[test]
    fn seq_subtree_chunks_persist() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.redb");
        let id;
        {
            let ix = Index::open(&p).unwrap();
            id = ix.index_id();
            let s = ix
                .commit(
                    "g",
                    vec![
                        Change {
                            entry: entry("/r/a", 1),
                            announce: true,
                        },
                        Change {
                            entry: entry("/r/a/b", 2),
                            announce: true,
                        },
                        Change {
                            entry: entry("/r/a-c", 3),
                            announce: true,
                        },
                    ],
                )
                .unwrap();
            assert_eq!(s, 3);
            let sub = ix.subtree("g", "/r/a").unwrap();
            assert_eq!(sub.len(), 2);
            assert_eq!(ix.since("g", 1, 10).unwrap().len(), 2);
            // re-announcing moves the entry to the end of the sequence
            ix.commit(
                "g",
                vec![Change {
                    entry: entry("/r/a", 4),
                    announce: true,
                }],
            )
            .unwrap();
            let s = ix.since("g", 3, 10).unwrap();
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].rec.path, "/r/a");
            assert_eq!(ix.count_since("g", 0).unwrap(), 3);
            assert_eq!(ix.chunk_location(&[1; 32]).unwrap(), None);
            assert_eq!(
                ix.chunk_location(&[4; 32]).unwrap(),
                Some(ChunkLocation {
                    group: "g".into(),
                    path: "/r/a".into(),
                    offset: 0,
                    len: 5
                })
            );
            // a local-only refresh keeps the seq
            let mut e = entry("/r/a", 4);
            e.ino = 99;
            ix.commit(
                "g",
                vec![Change {
                    entry: e,
                    announce: false,
                }],
            )
            .unwrap();
            assert_eq!(ix.get("g", "/r/a").unwrap().unwrap().seq, 4);
            ix.set_peer_position("b", "g", 7, 3).unwrap();
        }
        let ix = Index::open(&p).unwrap();
        assert_eq!(ix.index_id(), id);
        assert_eq!(ix.max_seq().unwrap(), 4);
        assert_eq!(ix.peer_position("b", "g").unwrap(), (7, 3));
        assert_eq!(ix.peer_position("c", "g").unwrap(), (0, 0));
    }
}
