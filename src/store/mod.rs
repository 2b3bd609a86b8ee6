//! The persistent index: every key of every group this node is in, with its item, version
//! vector and this node's sequence number for it; what each peer has applied from us and we
//! from it; where known chunks live; conflicts; items set aside; counters per group.
//!
//! Storage is one redb database (`<state-dir>/index.redb`, ACID, crash-safe), mode 0600.
//! **Schema version [`SCHEMA_VERSION`]** (5). Tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `schema`, `index_id`, `seq`, `inc:<group>`, `chunks_pending`, `written` (Unix seconds of the last commit; additive, no schema change) | u64 |
//! | `items` | (group, [`enc`]oded key) | postcard [`QuickStat`] then postcard [`Entry`] |
//! | `by_seq4` | (group, seq) | encoded key |
//! | `tombs` | (group, seq) | encoded key (tombstones only, for collection) |
//! | `peers` | (peer, group) | (peer's incarnation of the group, last seq of it applied here) |
//! | `acked` | (peer, group) | highest seq of ours the peer confirmed |
//! | `chunks4` | BLAKE3 of a chunk | (group, encoded key, offset, length) where last seen |
//! | `conflicts4` | (group, encoded key) | postcard [`ConflictInfo`] |
//! | `aside` | (group, encoded key) | postcard [`Aside`]: a peer's item not applied yet |
//! | `stats` | group | (files, directories, symlinks, bytes, tombstones) |
//! | `summary` | (group, level, encoded boundary key) | (sum of digests, count): the group's hash tree ([`summary`]) |
//!
//! **Keys** are stored with every `/` replaced by a NUL byte ([`enc`]); NUL never occurs in a
//! name, so the mapping is one to one, and the byte order of encoded keys is the order of a
//! depth-first walk that visits each directory's entries sorted by name. A scan can therefore
//! merge a sorted walk of the disk with a range of the index without holding either in memory.
//!
//! **Sequence numbers** are unique per index and strictly increasing: the next one is the
//! larger of the last plus one and the clock in microseconds, so an index restored from an old
//! snapshot never hands out a number that peers already saw.
//!
//! **Incarnations.** Each group has a random incarnation number on this node (`inc:<group>`),
//! renewed when the group is reset or a rollback is detected; a peer resumes from its saved
//! position only if that position refers to the current incarnation, otherwise it sends
//! everything again (items that came from us included).
//!
//! Invariants: every entry in `items` has exactly one `by_seq4` row at its current seq, and a
//! `tombs` row too when it is a tombstone; `stats` always equals the sum over `items`, and so
//! does `summary` (every transaction that changes `items` brings it up to date); a commit
//! is one transaction, so a crash leaves either the old or the new state; `chunks4` rows are
//! hints: readers verify the hash.
//!
//! **Chunk locations of bulk commits are written late.** `chunks4` is keyed by content hash, so
//! the rows of one batch land all over its B-tree: with redb's copy-on-write pages a batch of
//! 500 small files rewrote most of the table's leaves, ~10 % of a receiver's CPU in an initial
//! sync. A commit of at least [`DEFER_MIN`] changes keeps its chunk rows in memory (readers
//! see them: [`Store::chunk_location`] looks there first) and the next small commit, a commit
//! once [`FLUSH_AT`] rows or [`FLUSH_AFTER`] have gathered, a reset, or closing the store writes
//! them all in one go. While rows are pending, `meta` holds `chunks_pending` (set in the same
//! transaction as the first deferred commit, removed in the one that writes them), so after a
//! crash [`Store::open`] rebuilds `chunks4` from `items`.
//!
//! **Compatibility.** [`Store::open`] migrates an index of schema 4 (the previous release) or 3
//! (the one before) in place, each step in one transaction (`migrate`); a schema newer than
//! this binary is refused with [`StoreError::Schema`] and nothing is touched. `meta["summary"]`
//! names the format of the `summary` table ([`summary::FORMAT`]); an index whose table is of
//! another format (or has none) gets it rebuilt from `items` when it is opened.

mod migrate;
pub mod summary;

use crate::item::{Entry, Hash, Item, Kind, QuickStat};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A commit of at least this many changes defers its chunk rows (see the module doc).
pub const DEFER_MIN: usize = 256;
/// Deferred chunk rows are written once this many have gathered ...
pub const FLUSH_AT: usize = 65_536;
/// ... or once the oldest has waited this long (at the next commit).
pub const FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// A chunk row: group, encoded key, offset, length.
type Loc = (String, Vec<u8>, u64, u64);
/// Chunk rows to write (`None`: remove the row of that hash).
type ChunkOps = std::collections::HashMap<Hash, Option<Loc>>;

/// Chunk rows of bulk commits not written to `chunks4` yet.
#[derive(Default)]
struct Pending {
    ops: ChunkOps,
    since: Option<std::time::Instant>,
}

/// Chunk rows staged in a write transaction; [`Staged::done`] once it committed.
struct Staged<'a> {
    pending: std::sync::MutexGuard<'a, Pending>,
    ops: ChunkOps,
    flushed: bool,
}

impl Staged<'_> {
    fn done(self) {
        let Staged {
            mut pending,
            ops,
            flushed,
        } = self;
        if flushed {
            pending.ops.clear();
            pending.since = None;
        } else if !ops.is_empty() {
            pending.since.get_or_insert_with(std::time::Instant::now);
            pending.ops.extend(ops);
        }
    }
}

/// Page cache of the index database.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// On-disk schema version of the index.
pub const SCHEMA_VERSION: u64 = 5;
/// The oldest schema this build reads (migrated in place on open: 3 -> 4 -> 5).
pub const MIN_SCHEMA_VERSION: u64 = 3;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const ITEMS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("items");
pub(crate) const BY_SEQ: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("by_seq4");
pub(crate) const TOMBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("tombs");
pub(crate) const PEERS: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("peers");
pub(crate) const ACKED: TableDefinition<(&str, &str), u64> = TableDefinition::new("acked");
/// Per group, the highest seq of a tombstone collected here (schema 5): a peer resuming from
/// below it would miss deletions.
pub(crate) const COLLECTED: TableDefinition<&str, u64> = TableDefinition::new("collected");
pub(crate) const CHUNKS: TableDefinition<&[u8; 32], (&str, &[u8], u64, u64)> =
    TableDefinition::new("chunks4");
pub(crate) const CONFLICTS: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("conflicts4");
pub(crate) const ASIDE: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("aside");
pub(crate) const STATS: TableDefinition<&str, (u64, u64, u64, u64, u64)> =
    TableDefinition::new("stats");

/// Errors of the index store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
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
    #[error(
        "index {path} has schema version {found}, this clustersync ({}) reads {MIN_SCHEMA_VERSION} to {SCHEMA_VERSION}; {} (nothing was changed; see CHANGELOG.md, \"Going back\")",
        crate::release::VERSION,
        if *found > SCHEMA_VERSION { "a newer release wrote it: run that release, or restore the state directory saved before the upgrade, or move the index aside so that this node joins every group as new" } else { "a development build wrote it" }
    )]
    Schema { path: PathBuf, found: u64 },
}

/// A conflict this node detected, for `conflicts` and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictInfo {
    pub nodes: Vec<String>,
    pub resolved: bool,
    pub winner: String,
    /// Where the losing version was kept, if anywhere.
    pub kept_as: Option<String>,
    pub time: i64,
    /// For an unresolved (`manual`) conflict: the competing versions of other nodes.
    pub versions: Vec<Item>,
}

impl ConflictInfo {
    /// Record one more competing version (replacing an older one of the same origin).
    pub fn add_version(&mut self, r: &Item) {
        self.versions.retain(|v| v.origin != r.origin);
        self.versions.push(r.clone());
        if !self.nodes.contains(&r.origin) {
            self.nodes.push(r.origin.clone());
            self.nodes.sort();
        }
    }
}

/// A peer's item that could not be applied yet: kept here (the peer's position moved on) and
/// tried again until it applies or a newer version of the key replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aside {
    pub item: Item,
    /// The peer it came from.
    pub peer: String,
    /// That peer's incarnation of the group then.
    pub peer_inc: u64,
    /// Why it failed last.
    pub error: String,
    pub attempts: u32,
    /// Unix seconds of the first failure.
    pub since: i64,
}

/// Where a chunk's bytes can be read on this node (a hint: verify the hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    pub group: String,
    pub key: Vec<u8>,
    pub offset: u64,
    pub len: u64,
}

/// Counters of one group, kept by every commit (O(1) `status` and `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub tombstones: u64,
}

impl GroupStats {
    fn add(&mut self, e: &Entry, sign: i8) {
        let f = |x: &mut u64, by: u64| {
            *x = if sign > 0 {
                x.saturating_add(by)
            } else {
                x.saturating_sub(by)
            }
        };
        // in the accounts pseudo-group, users count as files and groups as directories
        match &e.item.body {
            Some(crate::item::Body::Fs(m)) => match m.kind {
                Kind::File => {
                    f(&mut self.files, 1);
                    f(&mut self.bytes, m.size);
                }
                Kind::Dir => f(&mut self.dirs, 1),
                Kind::Symlink => f(&mut self.symlinks, 1),
            },
            Some(crate::item::Body::User(_))
            | Some(crate::item::Body::Account(crate::accounts::Account::User { .. })) => {
                f(&mut self.files, 1)
            }
            Some(crate::item::Body::Group(_))
            | Some(crate::item::Body::Account(crate::accounts::Account::Group { .. })) => {
                f(&mut self.dirs, 1)
            }
            // member sets are part of their groups
            Some(crate::item::Body::Account(crate::accounts::Account::Members(_))) => {}
            None => f(&mut self.tombstones, 1),
        }
    }

    fn tuple(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes,
            self.tombstones,
        )
    }

    fn from_tuple(t: (u64, u64, u64, u64, u64)) -> GroupStats {
        GroupStats {
            files: t.0,
            dirs: t.1,
            symlinks: t.2,
            bytes: t.3,
            tombstones: t.4,
        }
    }

    /// Live entries of every kind.
    pub fn live(&self) -> u64 {
        self.files + self.dirs + self.symlinks
    }
}

/// One change to store.
#[derive(Debug)]
pub struct Change {
    pub entry: Entry,
    /// Give it a new sequence number (a new version to announce) or keep the current one
    /// (a local-only refresh such as a new inode number).
    pub announce: bool,
}

/// Everything else a commit of one group may carry, in the same transaction.
#[derive(Debug, Default)]
pub struct Extras {
    /// How far we applied a peer's items: (peer, its incarnation, seq).
    pub position: Option<(String, u64, u64)>,
    /// Items set aside (or updated), by key.
    pub aside_put: Vec<Aside>,
    /// Keys no longer set aside.
    pub aside_remove: Vec<Vec<u8>>,
    /// Conflicts to record (`Some`) or forget (`None`), by key.
    pub conflicts: Vec<(Vec<u8>, Option<ConflictInfo>)>,
    /// Keys to forget without a tombstone (the group's filter excludes them now).
    pub forget: Vec<Vec<u8>>,
}

impl Extras {
    pub fn is_empty(&self) -> bool {
        self.position.is_none()
            && self.aside_put.is_empty()
            && self.aside_remove.is_empty()
            && self.conflicts.is_empty()
            && self.forget.is_empty()
    }
}

/// Encode a key for storage: `/` becomes NUL (see the module doc).
pub fn enc(key: &[u8]) -> Vec<u8> {
    key.iter()
        .map(|b| if *b == b'/' { 0 } else { *b })
        .collect()
}

/// Decode a stored key.
pub fn dec(k: &[u8]) -> Vec<u8> {
    k.iter().map(|b| if *b == 0 { b'/' } else { *b }).collect()
}

/// Bounds of the encoded keys strictly below the (decoded) path `p`: `lo..hi`.
pub fn subtree_range(p: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if p == b"/" {
        return (vec![0, 1], vec![1]);
    }
    let mut lo = enc(p);
    let mut hi = lo.clone();
    lo.push(0);
    hi.push(1);
    (lo, hi)
}

/// The index database.
pub struct Store {
    /// `None` only while it is being opened again after an I/O error.
    db: std::sync::RwLock<Option<Database>>,
    /// An I/O error happened: redb answers every later call with `PreviousIo` until the
    /// database is opened again, which the next call tries first (a full disk that was freed,
    /// a filesystem that refused writes for a while: no restart needed).
    broken: std::sync::atomic::AtomicBool,
    path: PathBuf,
    index_id: u64,
    /// The highest sequence number when the index was opened (rollback detection).
    opened_seq: u64,
    /// Chunk rows of bulk commits, not in `chunks4` yet.
    pending: std::sync::Mutex<Pending>,
    /// What a sender needs to leave an entry out of a batch, for recent commits (see
    /// [`Head`]).
    heads: std::sync::Mutex<Heads>,
}

/// What a batch needs to leave an entry out without decoding it (a member set of a thousand
/// members costs thousands of allocations to decode): kept in memory for the last
/// [`Heads::MAX`] sequence numbers committed, checked against the key stored at that number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub from: Option<(String, u64)>,
    pub origin: String,
    pub deleted: bool,
    /// The item has no version (adopted).
    pub unversioned: bool,
}

#[derive(Debug, Default)]
struct Heads {
    by_seq: std::collections::HashMap<u64, (Vec<u8>, Head)>,
    order: std::collections::VecDeque<u64>,
}

impl Heads {
    const MAX: usize = 100_000;

    fn insert(&mut self, seq: u64, key: Vec<u8>, head: Head) {
        if self.by_seq.insert(seq, (key, head)).is_none() {
            self.order.push_back(seq);
        }
        while self.order.len() > Self::MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_seq.remove(&old);
            }
        }
    }
}

/// What [`Store::since_within`] read.
#[derive(Debug, Default)]
pub struct Since {
    /// The entries decoded, in sequence order.
    pub entries: Vec<Entry>,
    /// The sequence numbers of the entries left out by the caller's test on their [`Head`],
    /// not decoded (in order).
    pub left: Vec<u64>,
    /// Stopped on the bytes with entries left.
    pub over: bool,
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush_chunks() {
            tracing::warn!("index: writing pending chunk locations: {e}");
        }
    }
}

/// A random non-zero u64.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b).max(1)
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// See [`Store::snapshot`].
pub struct Snapshot<'s> {
    store: &'s Store,
    items: redb::ReadOnlyTable<(&'static str, &'static [u8]), &'static [u8]>,
    conflicts: redb::ReadOnlyTable<(&'static str, &'static [u8]), &'static [u8]>,
}

impl Snapshot<'_> {
    /// The entry of one key, as [`Store::get`].
    pub fn get(&self, group: &str, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        self.store.entry_in(&self.items, group, key)
    }

    /// The conflict recorded for one key, as [`Store::conflict`].
    pub fn conflict(&self, group: &str, key: &[u8]) -> Result<Option<ConflictInfo>, StoreError> {
        self.store.conflict_in(&self.conflicts, group, key)
    }
}

/// A range of quick-check views, in key order, holding its own read snapshot.
pub struct QuickRange {
    range: redb::Range<'static, (&'static str, &'static [u8]), &'static [u8]>,
    path: PathBuf,
}

impl Iterator for QuickRange {
    type Item = Result<(Vec<u8>, QuickStat), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.range.next()?;
        Some(match item {
            Err(e) => Err(StoreError::Db {
                path: self.path.clone(),
                source: e.into(),
            }),
            Ok((k, v)) => {
                let key = dec(k.value().1);
                decode_quick(&self.path, &key, v.value()).map(|q| (key, q))
            }
        })
    }
}

fn corrupt(path: &Path, key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.into(),
        key: crate::item::name::show(key).into_owned(),
        msg: e.to_string(),
    }
}

/// Decode a stored `items` value (the quick-check view, then the entry); strict.
pub fn decode_entry(path: &Path, key: &[u8], bytes: &[u8]) -> Result<Entry, StoreError> {
    let (_, rest) =
        postcard::take_from_bytes::<QuickStat>(bytes).map_err(|e| corrupt(path, key, e))?;
    let (e, rest) = postcard::take_from_bytes::<Entry>(rest).map_err(|e| corrupt(path, key, e))?;
    if !rest.is_empty() {
        return Err(corrupt(path, key, "trailing bytes"));
    }
    Ok(e)
}

/// Decode only the quick-check view of a stored `items` value.
pub fn decode_quick(path: &Path, key: &[u8], bytes: &[u8]) -> Result<QuickStat, StoreError> {
    postcard::take_from_bytes::<QuickStat>(bytes)
        .map(|(q, _)| q)
        .map_err(|e| corrupt(path, key, e))
}

/// The [`Head`] of an entry.
fn head_of(e: &Entry) -> Head {
    Head {
        from: e.from.clone(),
        origin: e.item.origin.clone(),
        deleted: e.item.is_deleted(),
        unversioned: e.item.version.is_empty(),
    }
}

/// Encode an entry as the `items` table stores it.
pub fn encode_entry(path: &Path, e: &Entry) -> Result<Vec<u8>, StoreError> {
    let mut v = postcard::to_allocvec(&e.quick()).map_err(|x| corrupt(path, &e.item.key, x))?;
    let body = postcard::to_allocvec(e).map_err(|x| corrupt(path, &e.item.key, x))?;
    v.extend_from_slice(&body);
    Ok(v)
}

impl Store {
    fn err<E: Into<redb::Error>>(&self, e: E) -> StoreError {
        let source: redb::Error = e.into();
        if matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.broken
                .store(true, std::sync::atomic::Ordering::Release);
        }
        StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    /// After an I/O error, open the database again (redb refuses everything until then).
    /// Fails while a transaction of the old one is still alive; the next call tries again.
    fn heal(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        if !self.broken.load(Acquire) {
            return Ok(());
        }
        let mut g = match self.db.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if !self.broken.swap(false, AcqRel) {
            return Ok(());
        }
        // the old handle holds the file's lock: drop it first
        *g = None;
        match Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&self.path)
        {
            Ok(db) => {
                tracing::warn!(
                    "index {}: opened again after an I/O error",
                    self.path.display()
                );
                *g = Some(db);
                Ok(())
            }
            Err(e) => {
                self.broken
                    .store(true, std::sync::atomic::Ordering::Release);
                Err(StoreError::Db {
                    path: self.path.clone(),
                    source: e.into(),
                })
            }
        }
    }

    /// The database, opened again first if an I/O error broke it.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.heal()?;
        let g = match self.db.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match g.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Db {
                path: self.path.clone(),
                source: redb::Error::DatabaseClosed,
            }),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.with_db(|db| db.begin_read().map_err(|e| self.err(e)))
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.with_db(|db| db.begin_write().map_err(|e| self.err(e)))
    }

    /// Open (or create, or migrate) the index at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let dberr = |e: redb::Error| StoreError::Db {
            path: path.into(),
            source: e,
        };
        // a bounded page cache keeps memory per indexed file small (SPEC §7)
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| dberr(e.into()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let schema = {
            let tx = db.begin_read().map_err(|e| dberr(e.into()))?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get("schema")
                    .map_err(|e| dberr(e.into()))?
                    .map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(dberr(e.into())),
            }
        };
        match schema {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    path: path.into(),
                    found: v,
                });
            }
            Some(3) => {
                migrate::v3_to_v4(&db, path)?;
                migrate::v4_to_v5(&db, path)?;
            }
            Some(4) => migrate::v4_to_v5(&db, path)?,
            Some(v) if v < MIN_SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    path: path.into(),
                    found: v,
                });
            }
            _ => {}
        }
        let mut st = Store {
            db: std::sync::RwLock::new(Some(db)),
            broken: Default::default(),
            path: path.into(),
            index_id: 0,
            opened_seq: 0,
            pending: Default::default(),
            heads: Default::default(),
        };
        let tx = st.begin_write()?;
        let id;
        {
            let mut meta = tx.open_table(META).map_err(|e| st.err(e))?;
            if meta.get("schema").map_err(|e| st.err(e))?.is_none() {
                meta.insert("schema", SCHEMA_VERSION)
                    .map_err(|e| st.err(e))?;
            }
            let cur = meta
                .get("index_id")
                .map_err(|e| st.err(e))?
                .map(|v| v.value());
            id = match cur {
                Some(v) => v,
                None => {
                    let v = random_u64();
                    meta.insert("index_id", v).map_err(|e| st.err(e))?;
                    v
                }
            };
            tx.open_table(ITEMS).map_err(|e| st.err(e))?;
            tx.open_table(BY_SEQ).map_err(|e| st.err(e))?;
            tx.open_table(TOMBS).map_err(|e| st.err(e))?;
            tx.open_table(PEERS).map_err(|e| st.err(e))?;
            tx.open_table(ACKED).map_err(|e| st.err(e))?;
            tx.open_table(COLLECTED).map_err(|e| st.err(e))?;
            tx.open_table(CHUNKS).map_err(|e| st.err(e))?;
            tx.open_table(CONFLICTS).map_err(|e| st.err(e))?;
            tx.open_table(ASIDE).map_err(|e| st.err(e))?;
            tx.open_table(STATS).map_err(|e| st.err(e))?;
        }
        let built = {
            let meta = tx.open_table(META).map_err(|e| st.err(e))?;
            meta.get("summary")
                .map_err(|e| st.err(e))?
                .map(|v| v.value())
        };
        if built != Some(summary::FORMAT) {
            let t0 = std::time::Instant::now();
            let n = summary::rebuild(&tx, path)?;
            let mut meta = tx.open_table(META).map_err(|e| st.err(e))?;
            meta.insert("summary", summary::FORMAT)
                .map_err(|e| st.err(e))?;
            if n > 0 {
                tracing::info!(
                    "index {}: built the summary of {n} items in {:?}",
                    path.display(),
                    t0.elapsed()
                );
            }
        }
        tx.commit().map_err(|e| st.err(e))?;
        st.index_id = id;
        st.opened_seq = st.max_seq()?;
        st.rebuild_chunks_if_pending()?;
        Ok(st)
    }

    /// The highest sequence number when the index was opened.
    pub fn opened_seq(&self) -> u64 {
        self.opened_seq
    }

    /// This index's random identity; changes when the index is recreated.
    pub fn index_id(&self) -> u64 {
        self.index_id
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn meta_get(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.begin_read()?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta.get(key).map_err(|e| self.err(e))?.map(|v| v.value()))
    }

    /// When this index last recorded a change (Unix seconds), if it ever did since the key
    /// exists (0.3).
    pub fn written(&self) -> Result<Option<u64>, StoreError> {
        self.meta_get("written")
    }

    /// Highest sequence number given out so far.
    pub fn max_seq(&self) -> Result<u64, StoreError> {
        Ok(self.meta_get("seq")?.unwrap_or(0))
    }

    /// This node's incarnation of `group` (created on first use). Created in the write
    /// transaction that looks for it, so that links starting together (each building its
    /// `Hello`) all see the same one: two made at once, the last one written, told peers two
    /// incarnations of one group.
    pub fn incarnation(&self, group: &str) -> Result<u64, StoreError> {
        let k = format!("inc:{group}");
        if let Some(v) = self.meta_get(&k)? {
            return Ok(v);
        }
        let tx = self.begin_write()?;
        let v = {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let had = meta
                .get(k.as_str())
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match had {
                Some(v) => v,
                None => {
                    let v = random_u64();
                    meta.insert(k.as_str(), v).map_err(|e| self.err(e))?;
                    v
                }
            }
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(v)
    }

    /// Whether `group` ever had an incarnation here (the node runs it or ran it).
    pub fn incarnation_known(&self, group: &str) -> bool {
        self.meta_get(&format!("inc:{group}"))
            .ok()
            .flatten()
            .is_some()
    }

    /// Give `group` a new incarnation: every peer sends us everything of it again and we send
    /// them everything (reset, rollback).
    pub fn renew_incarnation(&self, group: &str) -> Result<u64, StoreError> {
        let k = format!("inc:{group}");
        let v = random_u64();
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(k.as_str(), v).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(v)
    }

    /// The quick-check view of one key.
    pub fn get_quick(&self, group: &str, key: &[u8]) -> Result<Option<QuickStat>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let k = enc(key);
        match t.get((group, k.as_slice())).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_quick(&self.path, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// The entry of one key.
    pub fn get(&self, group: &str, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        self.entry_in(&t, group, key)
    }

    /// The entry of one key in an open `items` table.
    fn entry_in(
        &self,
        t: &impl ReadableTable<(&'static str, &'static [u8]), &'static [u8]>,
        group: &str,
        key: &[u8],
    ) -> Result<Option<Entry>, StoreError> {
        match t
            .get((group, enc(key).as_slice()))
            .map_err(|e| self.err(e))?
        {
            Some(v) => Ok(Some(decode_entry(&self.path, key, v.value())?)),
            None => Ok(None),
        }
    }

    /// One read snapshot of the entries and conflicts, for looking up many keys (a received
    /// batch) without a transaction each. It sees nothing committed after it was taken.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        let tx = self.begin_read()?;
        Ok(Snapshot {
            store: self,
            items: tx.open_table(ITEMS).map_err(|e| self.err(e))?,
            conflicts: tx.open_table(CONFLICTS).map_err(|e| self.err(e))?,
        })
    }

    /// Is there a live entry strictly below `path`? Stops at the first one.
    pub fn any_live_below(&self, group: &str, path: &[u8]) -> Result<bool, StoreError> {
        for r in self.quick_below(group, path)? {
            if r?.1.live {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The quick-check views strictly below `path`, in walk order, from one snapshot.
    pub fn quick_below(&self, group: &str, path: &[u8]) -> Result<QuickRange, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let (lo, hi) = subtree_range(path);
        // the range keeps the snapshot alive; keys are copied out as it goes
        let range = t
            .range((group, lo.as_slice())..(group, hi.as_slice()))
            .map_err(|e| self.err(e))?;
        Ok(QuickRange {
            range,
            path: self.path.clone(),
        })
    }

    /// The entry of `path` (if any) and of every key below it, in walk order.
    pub fn subtree(&self, group: &str, path: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        if let Some(e) = self.get(group, path)? {
            out.push(e);
        }
        let (lo, hi) = subtree_range(path);
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        for item in t
            .range((group, lo.as_slice())..(group, hi.as_slice()))
            .map_err(|e| self.err(e))?
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(decode_entry(&self.path, &dec(k.value().1), v.value())?);
        }
        Ok(out)
    }

    /// Every key of a group (live or tombstone), in key order, without decoding an entry.
    pub fn keys(&self, group: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let lo: &[u8] = &[];
        let mut out = Vec::new();
        for item in t.range((group, lo)..).map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            if k.value().0 != group {
                break;
            }
            out.push(dec(k.value().1));
        }
        Ok(out)
    }

    /// Visit every entry of a group.
    pub fn for_each(
        &self,
        group: &str,
        mut f: impl FnMut(&Entry) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let lo: &[u8] = &[];
        for item in t.range((group, lo)..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.value().0 != group {
                break;
            }
            if !f(&decode_entry(&self.path, &dec(k.value().1), v.value())?) {
                break;
            }
        }
        Ok(())
    }

    /// Entries of `group` with a sequence number above `after`, in sequence order.
    pub fn since(&self, group: &str, after: u64, max: usize) -> Result<Vec<Entry>, StoreError> {
        Ok(self
            .since_within(group, after, max, usize::MAX, &|_| false)?
            .entries)
    }

    /// [`Store::since`] that also stops once the entries read hold `max_bytes` as stored
    /// (at least one entry is read): a batch of large items (account member sets of a
    /// thousand members) decodes only what it can send, not `max` entries each time. An entry
    /// whose [`Head`] is known (a recent commit) and for which `leave(head)` holds is
    /// counted in [`Since::left`] without being read or decoded.
    pub fn since_within(
        &self,
        group: &str,
        after: u64,
        max: usize,
        max_bytes: usize,
        leave: &dyn Fn(&Head) -> bool,
    ) -> Result<Since, StoreError> {
        let tx = self.begin_read()?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let mut out = Since::default();
        let mut bytes = 0usize;
        for item in bs
            .range((group, after.saturating_add(1))..=(group, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            if out.entries.len() + out.left.len() >= max {
                break;
            }
            if bytes >= max_bytes {
                out.over = true;
                break;
            }
            let (s, k) = item.map_err(|e| self.err(e))?;
            let (seq, k) = (s.value().1, k.value());
            let left = {
                let h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
                h.by_seq
                    .get(&seq)
                    .is_some_and(|(key, head)| key.as_slice() == k && leave(head))
            };
            if left {
                out.left.push(seq);
                continue;
            }
            if let Some(v) = items.get((group, k)).map_err(|e| self.err(e))? {
                let v = v.value();
                bytes = bytes.saturating_add(v.len());
                out.entries.push(decode_entry(&self.path, &dec(k), v)?);
            }
        }
        Ok(out)
    }

    /// The highest sequence number of an entry of `group` (0 when it has none).
    pub fn group_head(&self, group: &str) -> Result<u64, StoreError> {
        let tx = self.begin_read()?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let mut r = bs
            .range((group, 0u64)..=(group, u64::MAX))
            .map_err(|e| self.err(e))?;
        match r.next_back() {
            Some(item) => Ok(item.map_err(|e| self.err(e))?.0.value().1),
            None => Ok(0),
        }
    }

    /// Number of entries of `group` with a sequence number above `after` (O(that number)).
    pub fn count_since(&self, group: &str, after: u64) -> Result<u64, StoreError> {
        let tx = self.begin_read()?;
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

    /// Number and bytes of the entries of `group` above `after` (O(that number)).
    pub fn pending_since(&self, group: &str, after: u64) -> Result<(u64, u64), StoreError> {
        let tx = self.begin_read()?;
        let bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
        let items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
        let (mut n, mut bytes) = (0, 0);
        for item in bs
            .range((group, after.saturating_add(1))..=(group, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (_, k) = item.map_err(|e| self.err(e))?;
            n += 1;
            if let Some(v) = items.get((group, k.value())).map_err(|e| self.err(e))? {
                let q = decode_quick(&self.path, k.value(), v.value())?;
                if q.kind == Some(Kind::File) {
                    bytes += q.size;
                }
            }
        }
        Ok((n, bytes))
    }

    /// The counters of `group`.
    pub fn stats(&self, group: &str) -> Result<GroupStats, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(STATS).map_err(|e| self.err(e))?;
        Ok(t.get(group)
            .map_err(|e| self.err(e))?
            .map(|v| GroupStats::from_tuple(v.value()))
            .unwrap_or_default())
    }

    /// Store changes and extras of one group in one transaction (made durable before it
    /// returns); returns the highest seq afterwards.
    pub fn commit(
        &self,
        group: &str,
        changes: Vec<Change>,
        extras: Extras,
    ) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        let seq;
        let bulk = changes.len() >= DEFER_MIN;
        let mut heads = Vec::new();
        let mut ops = ChunkOps::new();
        let mut sums = summary::Ops::default();
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
            let mut bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
            let mut tombs = tx.open_table(TOMBS).map_err(|e| self.err(e))?;
            let chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            let mut stats_t = tx.open_table(STATS).map_err(|e| self.err(e))?;
            let mut stats = stats_t
                .get(group)
                .map_err(|e| self.err(e))?
                .map(|v| GroupStats::from_tuple(v.value()))
                .unwrap_or_default();
            let mut next = meta
                .get("seq")
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            let now = now_micros();
            for mut ch in changes {
                let key = enc(&ch.entry.item.key);
                let old = match items
                    .get((group, key.as_slice()))
                    .map_err(|e| self.err(e))?
                {
                    Some(v) => Some(decode_entry(&self.path, &ch.entry.item.key, v.value())?),
                    None => None,
                };
                if ch.announce || old.is_none() {
                    if let Some(o) = &old {
                        bs.remove((group, o.seq)).map_err(|e| self.err(e))?;
                        if o.item.is_deleted() {
                            tombs.remove((group, o.seq)).map_err(|e| self.err(e))?;
                        }
                    }
                    next = (next + 1).max(now);
                    ch.entry.seq = next;
                    bs.insert((group, next), key.as_slice())
                        .map_err(|e| self.err(e))?;
                    heads.push((next, key.clone(), head_of(&ch.entry)));
                    if ch.entry.item.is_deleted() {
                        tombs
                            .insert((group, next), key.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                } else if let Some(o) = &old {
                    ch.entry.seq = o.seq;
                    if o.item.is_deleted() != ch.entry.item.is_deleted() {
                        if ch.entry.item.is_deleted() {
                            tombs
                                .insert((group, o.seq), key.as_slice())
                                .map_err(|e| self.err(e))?;
                        } else {
                            tombs.remove((group, o.seq)).map_err(|e| self.err(e))?;
                        }
                    }
                }
                if let Some(o) = &old {
                    stats.add(o, -1);
                    // chunk locations that pointed here are forgotten
                    if let Some(m) = o.item.meta() {
                        for c in &m.chunks {
                            if self.points_here(&chunks, &ops, &c.hash, group, &key)? {
                                ops.insert(c.hash, None);
                            }
                        }
                    }
                }
                stats.add(&ch.entry, 1);
                if let Some(m) = ch.entry.item.meta() {
                    let mut off = 0u64;
                    for c in &m.chunks {
                        ops.insert(
                            c.hash,
                            Some((group.to_string(), key.clone(), off, c.len as u64)),
                        );
                        off += c.len as u64;
                    }
                }
                sums.note_items(&key, old.as_ref().map(|o| &o.item), Some(&ch.entry.item));
                let bytes = encode_entry(&self.path, &ch.entry)?;
                items
                    .insert((group, key.as_slice()), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            meta.insert("seq", next).map_err(|e| self.err(e))?;
            // when this index last recorded a change, in Unix seconds (`status` without a
            // daemon shows it; the file's own time moves whenever anything opens it)
            meta.insert("written", now / 1_000_000)
                .map_err(|e| self.err(e))?;
            stats_t
                .insert(group, stats.tuple())
                .map_err(|e| self.err(e))?;
            seq = next;
        }
        self.write_extras(&tx, group, extras, &mut ops, &mut sums)?;
        summary::apply(&tx, &self.path, group, sums)?;
        let staged = self.stage_chunks(&tx, ops, !bulk)?;
        tx.commit().map_err(|e| self.err(e))?;
        staged.done();
        let mut h = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        for (seq, key, head) in heads {
            h.insert(seq, key, head);
        }
        Ok(seq)
    }

    fn write_extras(
        &self,
        tx: &redb::WriteTransaction,
        group: &str,
        x: Extras,
        ops: &mut ChunkOps,
        sums: &mut summary::Ops,
    ) -> Result<(), StoreError> {
        if !x.forget.is_empty() {
            let mut items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
            let mut bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
            let mut tombs = tx.open_table(TOMBS).map_err(|e| self.err(e))?;
            let chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            let mut stats_t = tx.open_table(STATS).map_err(|e| self.err(e))?;
            let mut stats = stats_t
                .get(group)
                .map_err(|e| self.err(e))?
                .map(|v| GroupStats::from_tuple(v.value()))
                .unwrap_or_default();
            for k in &x.forget {
                let ek = enc(k);
                let old = match items
                    .remove((group, ek.as_slice()))
                    .map_err(|e| self.err(e))?
                {
                    Some(v) => decode_entry(&self.path, k, v.value())?,
                    None => continue,
                };
                bs.remove((group, old.seq)).map_err(|e| self.err(e))?;
                tombs.remove((group, old.seq)).map_err(|e| self.err(e))?;
                stats.add(&old, -1);
                sums.note_items(&ek, Some(&old.item), None);
                if let Some(m) = old.item.meta() {
                    for c in &m.chunks {
                        if self.points_here(&chunks, ops, &c.hash, group, &ek)? {
                            ops.insert(c.hash, None);
                        }
                    }
                }
            }
            stats_t
                .insert(group, stats.tuple())
                .map_err(|e| self.err(e))?;
        }
        if let Some((peer, inc, seq)) = x.position {
            let mut t = tx.open_table(PEERS).map_err(|e| self.err(e))?;
            t.insert((peer.as_str(), group), (inc, seq))
                .map_err(|e| self.err(e))?;
        }
        if !x.aside_put.is_empty() || !x.aside_remove.is_empty() {
            let mut t = tx.open_table(ASIDE).map_err(|e| self.err(e))?;
            for k in &x.aside_remove {
                t.remove((group, enc(k).as_slice()))
                    .map_err(|e| self.err(e))?;
            }
            for a in &x.aside_put {
                let b =
                    postcard::to_allocvec(a).map_err(|e| corrupt(&self.path, &a.item.key, e))?;
                t.insert((group, enc(&a.item.key).as_slice()), b.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        if !x.conflicts.is_empty() {
            let mut t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
            for (k, c) in &x.conflicts {
                let ek = enc(k);
                match c {
                    Some(c) => {
                        let b = postcard::to_allocvec(c).map_err(|e| corrupt(&self.path, k, e))?;
                        t.insert((group, ek.as_slice()), b.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    None => {
                        t.remove((group, ek.as_slice())).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Store only extras (a position, aside changes, conflicts) of one group.
    pub fn commit_extras(&self, group: &str, extras: Extras) -> Result<(), StoreError> {
        if extras.is_empty() {
            return Ok(());
        }
        let tx = self.begin_write()?;
        let mut ops = ChunkOps::new();
        let mut sums = summary::Ops::default();
        self.write_extras(&tx, group, extras, &mut ops, &mut sums)?;
        summary::apply(&tx, &self.path, group, sums)?;
        let staged = self.stage_chunks(&tx, ops, true)?;
        tx.commit().map_err(|e| self.err(e))?;
        staged.done();
        Ok(())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether the chunk row of `hash` (this transaction's `ops`, then the pending rows, then
    /// the table) points at `key` of `group`.
    fn points_here(
        &self,
        chunks: &redb::Table<&[u8; 32], (&str, &[u8], u64, u64)>,
        ops: &ChunkOps,
        hash: &Hash,
        group: &str,
        key: &[u8],
    ) -> Result<bool, StoreError> {
        let at = |l: &Option<Loc>| l.as_ref().is_some_and(|l| l.0 == group && l.1 == key);
        if let Some(l) = ops.get(hash) {
            return Ok(at(l));
        }
        if let Some(l) = self.lock_pending().ops.get(hash) {
            return Ok(at(l));
        }
        Ok(chunks.get(hash).map_err(|e| self.err(e))?.is_some_and(|v| {
            let (g, p, _, _) = v.value();
            g == group && p == key
        }))
    }

    /// Stage this transaction's chunk rows: written to the table together with every pending
    /// row when `now` (or when enough have gathered, or the oldest is old), else kept pending.
    /// The returned guard holds the pending rows locked until [`Staged::done`], called once the
    /// transaction committed, so that no reader or writer sees the rows in neither place.
    fn stage_chunks(
        &self,
        tx: &redb::WriteTransaction,
        ops: ChunkOps,
        now: bool,
    ) -> Result<Staged<'_>, StoreError> {
        let pending = self.lock_pending();
        let flush = now
            || pending.ops.len() + ops.len() >= FLUSH_AT
            || pending.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER);
        if flush {
            if !pending.ops.is_empty() || !ops.is_empty() {
                let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
                // this transaction's rows last: they are the newer
                for (h, l) in pending.ops.iter().chain(ops.iter()) {
                    match l {
                        Some((g, k, off, len)) => {
                            chunks
                                .insert(h, (g.as_str(), k.as_slice(), *off, *len))
                                .map_err(|e| self.err(e))?;
                        }
                        None => {
                            chunks.remove(h).map_err(|e| self.err(e))?;
                        }
                    }
                }
            }
            if !pending.ops.is_empty() {
                let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
                meta.remove("chunks_pending").map_err(|e| self.err(e))?;
            }
        } else if pending.ops.is_empty() && !ops.is_empty() {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert("chunks_pending", 1).map_err(|e| self.err(e))?;
        }
        Ok(Staged {
            pending,
            ops,
            flushed: flush,
        })
    }

    /// Write every pending chunk row now (also done when the store is dropped).
    pub fn flush_chunks(&self) -> Result<(), StoreError> {
        if self.lock_pending().ops.is_empty() {
            return Ok(());
        }
        let tx = self.begin_write()?;
        let staged = self.stage_chunks(&tx, ChunkOps::new(), true)?;
        tx.commit().map_err(|e| self.err(e))?;
        staged.done();
        Ok(())
    }

    /// After a stop with chunk rows still pending (a crash): write the rows of every item
    /// again, from `items`.
    fn rebuild_chunks_if_pending(&self) -> Result<(), StoreError> {
        let pending = {
            let tx = self.begin_read()?;
            let meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.get("chunks_pending")
                .map_err(|e| self.err(e))?
                .is_some()
        };
        if !pending {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let tx = self.begin_write()?;
        let mut n = 0u64;
        {
            let items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
            let mut chunks = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
            for row in items.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let (group, ek) = k.value();
                let e = decode_entry(&self.path, &dec(ek), v.value())?;
                if let Some(m) = e.item.meta() {
                    let mut off = 0u64;
                    for c in &m.chunks {
                        chunks
                            .insert(&c.hash, (group, ek, off, c.len as u64))
                            .map_err(|e| self.err(e))?;
                        off += c.len as u64;
                        n += 1;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.remove("chunks_pending").map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        tracing::info!(
            "index {}: the last run stopped with chunk locations unwritten; rebuilt {n} from the items in {:?}",
            self.path.display(),
            t0.elapsed()
        );
        Ok(())
    }

    /// Where a chunk was last seen.
    pub fn chunk_location(&self, hash: &Hash) -> Result<Option<ChunkLocation>, StoreError> {
        if let Some(l) = self.lock_pending().ops.get(hash) {
            return Ok(l.as_ref().map(|(g, k, off, len)| ChunkLocation {
                group: g.clone(),
                key: dec(k),
                offset: *off,
                len: *len,
            }));
        }
        let tx = self.begin_read()?;
        let t = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
        Ok(t.get(hash).map_err(|e| self.err(e))?.map(|v| {
            let (g, p, o, l) = v.value();
            ChunkLocation {
                group: g.to_string(),
                key: dec(p),
                offset: o,
                len: l,
            }
        }))
    }

    /// Highest seq of ours that `peer` confirmed for `group`.
    pub fn acked(&self, peer: &str, group: &str) -> Result<u64, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
        Ok(t.get((peer, group))
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Remember that `peer` confirmed our items of `group` up to `seq` (not fsynced: a crash
    /// may lose the latest, which only makes `status` count some items as pending again).
    pub fn set_acked(&self, peer: &str, group: &str, seq: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write()?;
        {
            let mut t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
            t.insert((peer, group), seq).map_err(|e| self.err(e))?;
        }
        tx.set_durability(redb::Durability::None)
            .map_err(|e| corrupt(&self.path, b"acked", e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// What we have applied of `peer`'s items of `group`: (its incarnation then, seq).
    pub fn peer_position(&self, peer: &str, group: &str) -> Result<(u64, u64), StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(PEERS).map_err(|e| self.err(e))?;
        Ok(t.get((peer, group))
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or((0, 0)))
    }

    /// The recorded conflict of one key, if any.
    pub fn conflict(&self, group: &str, key: &[u8]) -> Result<Option<ConflictInfo>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
        self.conflict_in(&t, group, key)
    }

    /// The conflict recorded for one key in an open `conflicts` table.
    fn conflict_in(
        &self,
        t: &impl ReadableTable<(&'static str, &'static [u8]), &'static [u8]>,
        group: &str,
        key: &[u8],
    ) -> Result<Option<ConflictInfo>, StoreError> {
        match t
            .get((group, enc(key).as_slice()))
            .map_err(|e| self.err(e))?
        {
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| corrupt(&self.path, key, e)),
            None => Ok(None),
        }
    }

    /// All recorded conflicts: (group, key, info).
    pub fn conflicts(&self) -> Result<Vec<(String, Vec<u8>, ConflictInfo)>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(CONFLICTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (g, p) = k.value();
            let key = dec(p);
            let c: ConflictInfo =
                postcard::from_bytes(v.value()).map_err(|e| corrupt(&self.path, &key, e))?;
            out.push((g.to_string(), key, c));
        }
        Ok(out)
    }

    /// Items of `group` set aside.
    pub fn aside(&self, group: &str) -> Result<Vec<Aside>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(ASIDE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let lo: &[u8] = &[];
        for item in t.range((group, lo)..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.value().0 != group {
                break;
            }
            let key = dec(k.value().1);
            out.push(postcard::from_bytes(v.value()).map_err(|e| corrupt(&self.path, &key, e))?);
        }
        Ok(out)
    }

    /// Remove tombstones of `group` with a sequence number at most `upto` (every member has
    /// confirmed them), except those of paths with an item set aside here. Returns how many
    /// went.
    pub fn collect_tombstones(&self, group: &str, upto: u64) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        let mut n = 0u64;
        let mut floor = 0u64;
        {
            let mut tombs = tx.open_table(TOMBS).map_err(|e| self.err(e))?;
            let mut items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
            let mut bs = tx.open_table(BY_SEQ).map_err(|e| self.err(e))?;
            let mut stats_t = tx.open_table(STATS).map_err(|e| self.err(e))?;
            let aside = tx.open_table(ASIDE).map_err(|e| self.err(e))?;
            let mut stats = stats_t
                .get(group)
                .map_err(|e| self.err(e))?
                .map(|v| GroupStats::from_tuple(v.value()))
                .unwrap_or_default();
            let mut gone: Vec<(u64, Vec<u8>)> = Vec::new();
            for item in tombs
                .range((group, 0u64)..=(group, upto))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = item.map_err(|e| self.err(e))?;
                gone.push((k.value().1, v.value().to_vec()));
                if gone.len() >= 100_000 {
                    break;
                }
            }
            for (seq, key) in gone {
                // an item of this path set aside here (an older version that could not be
                // applied yet) must still meet the deletion when it is retried, or it would
                // bring the path back
                if aside
                    .get((group, key.as_slice()))
                    .map_err(|e| self.err(e))?
                    .is_some()
                {
                    continue;
                }
                tombs.remove((group, seq)).map_err(|e| self.err(e))?;
                bs.remove((group, seq)).map_err(|e| self.err(e))?;
                let live = match items
                    .get((group, key.as_slice()))
                    .map_err(|e| self.err(e))?
                {
                    Some(v) => decode_quick(&self.path, &key, v.value())?.live,
                    None => true,
                };
                if !live {
                    items
                        .remove((group, key.as_slice()))
                        .map_err(|e| self.err(e))?;
                    stats.tombstones = stats.tombstones.saturating_sub(1);
                    n += 1;
                }
                floor = floor.max(seq);
            }
            stats_t
                .insert(group, stats.tuple())
                .map_err(|e| self.err(e))?;
            let mut col = tx.open_table(COLLECTED).map_err(|e| self.err(e))?;
            let was = col
                .get(group)
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(0);
            if floor > was {
                col.insert(group, floor).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// The highest seq of `group` whose tombstone was collected here (0: none): a peer whose
    /// position is below it would miss deletions if it were only sent what came after.
    pub fn collected_floor(&self, group: &str) -> Result<u64, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(COLLECTED).map_err(|e| self.err(e))?;
        Ok(t.get(group)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Forget everything of `group` on this node (`clustersync reset`): its items, positions,
    /// acknowledgements, conflicts, set-aside items and counters, and renew its incarnation.
    /// Files on disk are not touched.
    pub fn reset_group(&self, group: &str) -> Result<u64, StoreError> {
        let tx = self.begin_write()?;
        // pending chunk rows go to the table first, where the group's are removed below
        let staged = self.stage_chunks(&tx, ChunkOps::new(), true)?;
        let mut n = 0u64;
        {
            let lo: &[u8] = &[];
            let mut items = tx.open_table(ITEMS).map_err(|e| self.err(e))?;
            let keys: Vec<Vec<u8>> = items
                .range((group, lo)..)
                .map_err(|e| self.err(e))?
                .map_while(|r| r.ok())
                .take_while(|(k, _)| k.value().0 == group)
                .map(|(k, _)| k.value().1.to_vec())
                .collect();
            for k in &keys {
                items
                    .remove((group, k.as_slice()))
                    .map_err(|e| self.err(e))?;
                n += 1;
            }
            for def in [BY_SEQ, TOMBS] {
                let mut t = tx.open_table(def).map_err(|e| self.err(e))?;
                let seqs: Vec<u64> = t
                    .range((group, 0u64)..=(group, u64::MAX))
                    .map_err(|e| self.err(e))?
                    .map_while(|r| r.ok())
                    .map(|(k, _)| k.value().1)
                    .collect();
                for s in seqs {
                    t.remove((group, s)).map_err(|e| self.err(e))?;
                }
            }
            for def in [CONFLICTS, ASIDE] {
                let mut t = tx.open_table(def).map_err(|e| self.err(e))?;
                let ks: Vec<Vec<u8>> = t
                    .range((group, lo)..)
                    .map_err(|e| self.err(e))?
                    .map_while(|r| r.ok())
                    .take_while(|(k, _)| k.value().0 == group)
                    .map(|(k, _)| k.value().1.to_vec())
                    .collect();
                for k in ks {
                    t.remove((group, k.as_slice())).map_err(|e| self.err(e))?;
                }
            }
            {
                let mut t = tx.open_table(PEERS).map_err(|e| self.err(e))?;
                let ks: Vec<String> = t
                    .iter()
                    .map_err(|e| self.err(e))?
                    .map_while(|r| r.ok())
                    .filter(|(k, _)| k.value().1 == group)
                    .map(|(k, _)| k.value().0.to_string())
                    .collect();
                for p in ks {
                    t.remove((p.as_str(), group)).map_err(|e| self.err(e))?;
                }
            }
            tx.open_table(COLLECTED)
                .map_err(|e| self.err(e))?
                .remove(group)
                .map_err(|e| self.err(e))?;
            {
                let mut t = tx.open_table(ACKED).map_err(|e| self.err(e))?;
                let ks: Vec<String> = t
                    .iter()
                    .map_err(|e| self.err(e))?
                    .map_while(|r| r.ok())
                    .filter(|(k, _)| k.value().1 == group)
                    .map(|(k, _)| k.value().0.to_string())
                    .collect();
                for p in ks {
                    t.remove((p.as_str(), group)).map_err(|e| self.err(e))?;
                }
            }
            {
                let mut t = tx.open_table(CHUNKS).map_err(|e| self.err(e))?;
                let ks: Vec<[u8; 32]> = t
                    .iter()
                    .map_err(|e| self.err(e))?
                    .map_while(|r| r.ok())
                    .filter(|(_, v)| v.value().0 == group)
                    .map(|(k, _)| *k.value())
                    .collect();
                for h in ks {
                    t.remove(&h).map_err(|e| self.err(e))?;
                }
            }
            let mut stats_t = tx.open_table(STATS).map_err(|e| self.err(e))?;
            stats_t.remove(group).map_err(|e| self.err(e))?;
            summary::clear(&tx, &self.path, group)?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(format!("inc:{group}").as_str(), random_u64())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        staged.done();
        Ok(n)
    }

    /// The root of `group`'s summary: the sum of the digests of every counted item, and how
    /// many there are ([`summary`]).
    pub fn summary_root(&self, group: &str) -> Result<summary::Sum, StoreError> {
        let tx = self.begin_read()?;
        let (rows, _) = summary::rows(&tx, &self.path, group, summary::TOP, &[], None, 1)?;
        Ok(rows.first().map(|r| r.sum).unwrap_or_default())
    }

    /// The rows of `group`'s summary at `level` whose range starts in [`lo`, `hi`) (encoded
    /// keys; `hi` `None`: to the end), at most `max`; level 0: one row per counted item (its
    /// key and digest). Also whether more were left out.
    pub fn summary_rows(
        &self,
        group: &str,
        level: u8,
        lo: &[u8],
        hi: Option<&[u8]>,
        max: usize,
    ) -> Result<(Vec<summary::Row>, bool), StoreError> {
        let tx = self.begin_read()?;
        summary::rows(&tx, &self.path, group, level, lo, hi, max)
    }

    /// Recompute `group`'s summary from its items and compare: the first row that differs
    /// (level, encoded key, stored, computed), or `None` when the table is right.
    pub fn summary_check(&self, group: &str) -> Result<Option<summary::Mismatch>, StoreError> {
        let tx = self.begin_read()?;
        summary::check(&tx, &self.path, group)
    }

    /// Groups that have entries in this index.
    pub fn groups(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.begin_read()?;
        let t = tx.open_table(STATS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            out.push(k.value().to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Body, VersionVector};

    fn entry(path: &[u8], hash: u8) -> Entry {
        Entry::new(crate::item::test_file(
            path,
            VersionVector::default(),
            hash,
            5,
        ))
    }

    fn ch(e: Entry) -> Change {
        Change {
            entry: e,
            announce: true,
        }
    }

    /// `since_within` stops on its byte budget (after at least one entry) and leaves out,
    /// undecoded, what the caller's test on the in-memory head says, only for the key stored
    /// at that seq; a store opened again knows no heads and decodes everything.
    #[test]
    fn since_within_stops_on_bytes_and_leaves_out_by_head() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.redb");
        let mut from_b = entry(b"/r/b", 2);
        from_b.from = Some(("b".into(), 7));
        {
            let ix = Store::open(&p).unwrap();
            ix.commit(
                "g",
                vec![ch(entry(b"/r/a", 1)), ch(from_b), ch(entry(b"/r/c", 3))],
                Extras::default(),
            )
            .unwrap();
            let all = ix.since_within("g", 0, 10, usize::MAX, &|_| false).unwrap();
            assert_eq!((all.entries.len(), all.left.len(), all.over), (3, 0, false));
            let one = ix.since_within("g", 0, 10, 1, &|_| false).unwrap();
            assert_eq!(
                (one.entries.len(), one.over),
                (1, true),
                "one entry, then over"
            );
            let held = |h: &Head| h.from.as_ref().is_some_and(|(p, _)| p == "b");
            let got = ix.since_within("g", 0, 10, usize::MAX, &held).unwrap();
            let keys: Vec<&[u8]> = got.entries.iter().map(|e| e.item.key.as_slice()).collect();
            assert_eq!(keys, vec![b"/r/a".as_slice(), b"/r/c".as_slice()]);
            assert_eq!(got.left.len(), 1);
            assert!(got.entries[0].seq < got.left[0] && got.left[0] < got.entries[1].seq);
        }
        let ix = Store::open(&p).unwrap();
        let got = ix.since_within("g", 0, 10, usize::MAX, &|_| true).unwrap();
        assert_eq!(
            (got.entries.len(), got.left.len()),
            (3, 0),
            "no heads after a restart"
        );
    }

    #[test]
    fn key_order_is_walk_order() {
        let mut keys: Vec<Vec<u8>> = [&b"/r/a-c"[..], b"/r/a", b"/r/a/b", b"/r/a/b/c", b"/r/b"]
            .iter()
            .map(|k| enc(k))
            .collect();
        keys.sort();
        let back: Vec<Vec<u8>> = keys.iter().map(|k| dec(k)).collect();
        assert_eq!(
            back,
            vec![
                b"/r/a".to_vec(),
                b"/r/a/b".to_vec(),
                b"/r/a/b/c".to_vec(),
                b"/r/a-c".to_vec(),
                b"/r/b".to_vec()
            ]
        );
        let (lo, hi) = subtree_range(b"/r/a");
        assert!(
            lo.as_slice() < enc(b"/r/a/b").as_slice() && enc(b"/r/a/b").as_slice() < hi.as_slice()
        );
        assert!(enc(b"/r/a-c").as_slice() >= hi.as_slice());
        let (lo, hi) = subtree_range(b"/");
        assert!(lo.as_slice() <= enc(b"/a").as_slice() && enc(b"/a").as_slice() < hi.as_slice());
        assert!(enc(b"/").as_slice() < lo.as_slice());
    }

    #[test]
    fn seq_subtree_chunks_stats_tombstones_persist() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.redb");
        let id;
        let inc;
        {
            let ix = Store::open(&p).unwrap();
            id = ix.index_id();
            inc = ix.incarnation("g").unwrap();
            let s1 = ix
                .commit(
                    "g",
                    vec![
                        ch(entry(b"/r/a", 1)),
                        ch(entry(b"/r/a/b", 2)),
                        ch(entry(b"/r/a-c\xe9", 3)),
                    ],
                    Extras::default(),
                )
                .unwrap();
            assert!(s1 > 1_000_000, "seqs follow the clock: {s1}");
            let sub = ix.subtree("g", b"/r/a").unwrap();
            assert_eq!(sub.len(), 2);
            let st = ix.stats("g").unwrap();
            assert_eq!((st.files, st.bytes), (3, 15));
            let first = ix.since("g", 0, 1).unwrap()[0].seq;
            assert_eq!(ix.since("g", first, 10).unwrap().len(), 2);
            // re-announcing moves the entry to the end of the sequence
            ix.commit("g", vec![ch(entry(b"/r/a", 4))], Extras::default())
                .unwrap();
            let head = ix.group_head("g").unwrap();
            assert_eq!(ix.get("g", b"/r/a").unwrap().unwrap().seq, head);
            assert_eq!(ix.count_since("g", 0).unwrap(), 3);
            assert_eq!(ix.chunk_location(&[1; 32]).unwrap(), None);
            assert_eq!(
                ix.chunk_location(&[4; 32]).unwrap(),
                Some(ChunkLocation {
                    group: "g".into(),
                    key: b"/r/a".to_vec(),
                    offset: 0,
                    len: 5
                })
            );
            // a local-only refresh keeps the seq
            let mut e = entry(b"/r/a", 4);
            e.ino = 99;
            ix.commit(
                "g",
                vec![Change {
                    entry: e,
                    announce: false,
                }],
                Extras {
                    position: Some(("b".into(), 7, 3)),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(ix.get("g", b"/r/a").unwrap().unwrap().seq, head);
            // a tombstone, then its collection
            let mut t = entry(b"/r/a/b", 2);
            t.item.body = None;
            let s = ix.commit("g", vec![ch(t)], Extras::default()).unwrap();
            assert_eq!(ix.stats("g").unwrap().tombstones, 1);
            assert_eq!(ix.stats("g").unwrap().files, 2);
            assert_eq!(ix.collect_tombstones("g", s - 1).unwrap(), 0);
            // not while an older version of the path waits set aside here: its retry must
            // still meet the deletion
            let aside = Aside {
                item: entry(b"/r/a/b", 1).item,
                peer: "b".into(),
                peer_inc: 1,
                error: "not yet".into(),
                attempts: 1,
                since: 0,
            };
            let put = Extras {
                aside_put: vec![aside],
                ..Default::default()
            };
            ix.commit("g", vec![], put).unwrap();
            assert_eq!(ix.collect_tombstones("g", s).unwrap(), 0);
            assert!(ix.get("g", b"/r/a/b").unwrap().is_some());
            let gone = Extras {
                aside_remove: vec![b"/r/a/b".to_vec()],
                ..Default::default()
            };
            ix.commit("g", vec![], gone).unwrap();
            assert_eq!(ix.collect_tombstones("g", s).unwrap(), 1);
            assert!(ix.get("g", b"/r/a/b").unwrap().is_none());
            assert_eq!(ix.stats("g").unwrap().tombstones, 0);
            let q: Vec<Vec<u8>> = ix
                .quick_below("g", b"/r")
                .unwrap()
                .map(|r| r.unwrap().0)
                .collect();
            assert_eq!(q, vec![b"/r/a".to_vec(), b"/r/a-c\xe9".to_vec()]);
        }
        let ix = Store::open(&p).unwrap();
        assert_eq!(ix.index_id(), id);
        assert_eq!(ix.incarnation("g").unwrap(), inc);
        assert_eq!(ix.peer_position("b", "g").unwrap(), (7, 3));
        assert_eq!(ix.peer_position("c", "g").unwrap(), (0, 0));
        assert_eq!(ix.reset_group("g").unwrap(), 2);
        assert_ne!(ix.incarnation("g").unwrap(), inc);
        assert_eq!(ix.stats("g").unwrap(), GroupStats::default());
        assert_eq!(ix.peer_position("b", "g").unwrap(), (0, 0));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_snapshot_sees_what_was_committed_before_it_and_nothing_after() {
        let d = tempfile::tempdir().unwrap();
        let ix = Store::open(&d.path().join("index.redb")).unwrap();
        let info = ConflictInfo {
            nodes: vec!["a".into(), "b".into()],
            resolved: false,
            winner: String::new(),
            kept_as: None,
            time: 1,
            versions: vec![],
        };
        let extras = Extras {
            conflicts: vec![(b"/r/x".to_vec(), Some(info.clone()))],
            ..Extras::default()
        };
        ix.commit("g", vec![ch(entry(b"/r/x", 1))], extras).unwrap();
        let snap = ix.snapshot().unwrap();
        ix.commit(
            "g",
            vec![ch(entry(b"/r/x", 2)), ch(entry(b"/r/y", 3))],
            Extras::default(),
        )
        .unwrap();
        let x = snap.get("g", b"/r/x").unwrap().unwrap();
        assert_eq!(x.item.meta().unwrap().hash, [1; 32]);
        assert!(snap.get("g", b"/r/y").unwrap().is_none());
        assert!(snap.get("other", b"/r/x").unwrap().is_none());
        assert_eq!(snap.conflict("g", b"/r/x").unwrap(), Some(info));
        assert_eq!(snap.conflict("g", b"/r/y").unwrap(), None);
        drop(snap);
        let now = ix.snapshot().unwrap();
        assert_eq!(
            now.get("g", b"/r/x").unwrap(),
            ix.get("g", b"/r/x").unwrap()
        );
        assert_eq!(
            now.get("g", b"/r/x")
                .unwrap()
                .unwrap()
                .item
                .meta()
                .unwrap()
                .hash,
            [2; 32]
        );
        assert!(now.get("g", b"/r/y").unwrap().is_some());
    }

    #[test]
    fn previous_release_index_is_migrated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.redb");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v3/index.redb"),
            &p,
        )
        .unwrap();
        let ix = Store::open(&p).unwrap();
        let st = ix.stats("www").unwrap();
        assert_eq!(
            (st.files, st.dirs, st.symlinks, st.tombstones),
            (3, 4, 1, 1)
        );
        assert_eq!(st.bytes, 100_018);
        let link = ix.get("www", b"/srv/www/dir/link").unwrap().unwrap();
        assert_eq!(
            link.item.meta().unwrap().target.as_deref(),
            Some(&b"../hello.txt"[..])
        );
        let gone = ix.get("www", b"/srv/www/gone.txt").unwrap().unwrap();
        assert!(gone.item.is_deleted());
        let big = ix.get("www", b"/srv/www/dir/big.bin").unwrap().unwrap();
        let c = &big.item.meta().unwrap().chunks[0];
        assert_eq!(
            ix.chunk_location(&c.hash).unwrap().map(|l| l.key),
            Some(b"/srv/www/dir/big.bin".to_vec())
        );
        assert_eq!(ix.count_since("www", 0).unwrap(), 9);
        // the peer's position survives
        assert_ne!(ix.peer_position("b", "www").unwrap().1, 0);
        drop(ix);
        // a second open does nothing more
        let ix = Store::open(&p).unwrap();
        assert_eq!(ix.stats("www").unwrap().files, 3);
    }

    /// `n` new files from `from` on, each with a chunk of its own.
    fn bulk(from: usize, n: usize) -> Vec<Change> {
        (from..from + n)
            .map(|i| {
                let mut e = entry(format!("/r/f{i}").as_bytes(), 0);
                let h = crate::fs::chunk::hash(&i.to_le_bytes());
                if let Some(Body::Fs(m)) = e.item.body.as_mut() {
                    m.hash = h;
                    m.chunks[0].hash = h;
                }
                ch(e)
            })
            .collect()
    }

    fn hash_of(i: usize) -> Hash {
        crate::fs::chunk::hash(&i.to_le_bytes())
    }

    /// (row in `chunks4`, `chunks_pending` set), read from the database itself.
    fn on_disk(st: &Store, h: &Hash) -> (bool, bool) {
        st.with_db(|db| Ok(on_disk_db(db, h))).unwrap()
    }

    fn on_disk_db(db: &Database, h: &Hash) -> (bool, bool) {
        let tx = db.begin_read().unwrap();
        let row = tx.open_table(CHUNKS).unwrap().get(h).unwrap().is_some();
        let meta = tx.open_table(META).unwrap();
        (row, meta.get("chunks_pending").unwrap().is_some())
    }

    /// A bulk commit's chunk rows wait in memory, where readers find them; the next small
    /// commit writes them; closing the store writes them; after a crash (rows lost with the
    /// process) the next open rebuilds them from the items.
    #[test]
    fn bulk_chunk_rows_are_found_written_late_and_rebuilt_after_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("index.redb");
        let ix = Store::open(&p).unwrap();
        ix.commit("g", bulk(0, DEFER_MIN), Extras::default())
            .unwrap();
        assert_eq!(on_disk(&ix, &hash_of(3)), (false, true), "deferred");
        let found = ix.chunk_location(&hash_of(3)).unwrap().unwrap();
        assert_eq!((found.key.as_slice(), found.len), (&b"/r/f3"[..], 5));
        // a second bulk commit replaces f3's content: its old row is gone for readers too
        let mut again = bulk(DEFER_MIN, DEFER_MIN);
        let mut f3 = bulk(3, 1).remove(0);
        f3.entry.item.body = entry(b"/r/f3", 7).item.body;
        again.push(f3);
        ix.commit("g", again, Extras::default()).unwrap();
        assert_eq!(ix.chunk_location(&hash_of(3)).unwrap(), None);
        assert_eq!(
            ix.chunk_location(&[7; 32]).unwrap().map(|l| l.key),
            Some(b"/r/f3".to_vec())
        );
        // a small commit writes everything pending
        ix.commit("g", bulk(10_000, 1), Extras::default()).unwrap();
        assert_eq!(on_disk(&ix, &hash_of(DEFER_MIN + 1)), (true, false));
        assert_eq!(on_disk(&ix, &[7; 32]), (true, false));
        assert_eq!(on_disk(&ix, &hash_of(3)), (false, false), "removed");
        // closing writes them
        ix.commit("g", bulk(20_000, DEFER_MIN), Extras::default())
            .unwrap();
        drop(ix);
        let db = Database::open(&p).unwrap();
        assert_eq!(on_disk_db(&db, &hash_of(20_005)), (true, false));
        drop(db);
        // a crash: the pending rows die with the process
        let ix = Store::open(&p).unwrap();
        ix.commit("g", bulk(30_000, DEFER_MIN), Extras::default())
            .unwrap();
        ix.lock_pending().ops.clear();
        drop(ix);
        let db = Database::open(&p).unwrap();
        assert_eq!(on_disk_db(&db, &hash_of(30_005)), (false, true));
        drop(db);
        let ix = Store::open(&p).unwrap();
        assert_eq!(on_disk(&ix, &hash_of(30_005)), (true, false), "rebuilt");
        for i in [0, 5, DEFER_MIN + 2, 10_000, 20_001, 30_000 + DEFER_MIN - 1] {
            assert!(ix.chunk_location(&hash_of(i)).unwrap().is_some(), "{i}");
        }
        assert_eq!(
            ix.chunk_location(&[7; 32]).unwrap().map(|l| l.key),
            Some(b"/r/f3".to_vec())
        );
        // a reset takes the group's pending rows too
        ix.commit("g", bulk(40_000, DEFER_MIN), Extras::default())
            .unwrap();
        ix.reset_group("g").unwrap();
        assert_eq!(ix.chunk_location(&hash_of(40_001)).unwrap(), None);
        assert_eq!(on_disk(&ix, &hash_of(40_001)), (false, false));
    }
}
