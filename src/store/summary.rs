//! The summary of each group's index (schema 5, SPEC §5.14): a hash tree over every key's
//! path, version vector and content, kept in the `summary` table by the same transaction that
//! changes `items`, so two nodes can tell in one small message whether they hold the same, and
//! find the keys that differ by walking down only where they do.
//!
//! **What counts.** Each item that travels between nodes has a 128-bit [`digest`] of its
//! encoded key, its version vector (counters above zero, in name order) and what is synced of
//! its body: for files, directories and symlinks the kind, content hash, size, link text,
//! permission bits, mtime and extended attributes; for accounts the whole record. Left out,
//! because they legitimately differ between nodes: everything local (inode, ctime, sequence
//! number, the peer a version came from, `fresh`), the owner (uid and gid are mapped per node,
//! and a name may resolve on one node and not on another), `origin` and `beat` (bookkeeping of
//! how a version came about, not what it is). Left out entirely: tombstones (a deletion is
//! collected once every member confirmed it, on each node at its own time; "present here,
//! absent there" is found as a difference of the live item and settled by version vectors,
//! the tombstone included, which the peer still sends when it holds one) and unversioned
//! entries (a replica's adopted files, a group path directory nobody changed yet: they never
//! travel).
//!
//! **Shape.** Keys are ordered as in `items` (encoded). A key is a *boundary* at level `L`
//! (1 ≤ `L` ≤ [`MAX_LEVEL`]) when the first `5 × L` bits of the BLAKE3 hash of its encoded
//! key are zero ([`level_of`]), so one key in 32 starts a level-1 range, one in 1,024 a
//! level-2 range, and so on: boundaries depend on the keys alone, so two nodes holding mostly
//! the same keys cut them into mostly the same ranges, and a difference changes only the
//! ranges around it (a Merkle search tree). Level `L` has one row per range: the boundary key
//! it starts at (the empty key for the first range, which every level has), the wrapping sum
//! of the digests of the counted items in it, and their number. Level [`TOP`] has only the
//! first row: the root, the whole group. Ranges nest (a boundary at level `L` is one at every
//! level below), so a range of level `L` is exactly the ranges of level `L - 1` that start in
//! it, and level 0 is the items themselves.
//!
//! **Upkeep.** A transaction collects, per key, the digest before and after ([`Ops`]); before
//! it commits, [`apply`] processes them in descending key order: a changed digest adds the
//! difference to the one row containing the key at each level; a key that appears at level
//! `λ ≥ 1` splits the range containing it at each level up to `λ` (the new range's sum is read
//! from the level below, which is already up to date for every key at or above it: descending
//! order); a boundary key that goes merges its range into the previous one. Expected work per
//! changed key: one row per level, plus about one more row read for a split or merge.
//!
//! Invariant: for every group, level and row, the row's sum and count equal those of the
//! counted items in its range ([`check`] recomputes them, for tests). [`rebuild`] makes the
//! table from `items` in one pass: the migration to schema 5, and an index whose
//! `meta["summary"]` is not [`FORMAT`].

use super::{ITEMS, StoreError, dec, decode_entry};
use crate::item::{Body, Item};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

/// (group, level, encoded boundary key) → (sum of digests, number of counted items).
pub(crate) const SUMMARY: TableDefinition<(&str, u8, &[u8]), (u128, u64)> =
    TableDefinition::new("summary");

/// Bits of the key hash per level: 32 ranges of a level in one of the level above.
pub const FANOUT_BITS: u32 = 5;
/// The highest level a key can be a boundary of (ranges of about 33 million keys).
pub const MAX_LEVEL: u8 = 5;
/// The level of the root: one row per group, the whole group.
pub const TOP: u8 = MAX_LEVEL + 1;
/// Version of the digest and the shape; `meta["summary"]` holds the one the table was built
/// with, and [`super::Store::open`] rebuilds a table of another.
pub const FORMAT: u64 = 1;

/// A sum of digests and a count: a row, or the summary of any set of items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    pub hash: u128,
    pub count: u64,
}

impl Sum {
    fn add(&mut self, hash: u128, count: u64) {
        self.hash = self.hash.wrapping_add(hash);
        self.count = self.count.wrapping_add(count);
    }

    fn sub(&mut self, hash: u128, count: u64) {
        self.hash = self.hash.wrapping_sub(hash);
        self.count = self.count.wrapping_sub(count);
    }

    /// `self` and `o` together.
    pub fn plus(mut self, o: Sum) -> Sum {
        self.add(o.hash, o.count);
        self
    }

    /// `self` without `o`.
    pub fn minus(mut self, o: Sum) -> Sum {
        self.sub(o.hash, o.count);
        self
    }

    /// The digest of one item, as a sum.
    pub fn one(hash: u128) -> Sum {
        Sum { hash, count: 1 }
    }
}

/// A row of the summary: the range starting at `key` (encoded; empty for the first range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: Vec<u8>,
    pub sum: Sum,
}

/// The highest level `ek` (an encoded key) is a boundary of; 0 when it is none.
pub fn level_of(ek: &[u8]) -> u8 {
    let h = blake3::hash(ek);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.as_bytes()[..8]);
    let x = u64::from_be_bytes(first);
    ((x.leading_zeros() / FANOUT_BITS) as u8).min(MAX_LEVEL)
}

/// The digest of an item under its encoded key, or `None` when it is not counted (see the
/// module doc: tombstones and unversioned entries).
pub fn digest(ek: &[u8], item: &Item) -> Option<u128> {
    let body = item.body.as_ref()?;
    if item.version.is_empty() {
        return None;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"clustersync summary 1\0");
    let field = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(&mut h, ek);
    for (n, c) in item.version.0.iter().filter(|(_, c)| **c > 0) {
        field(&mut h, n.as_bytes());
        h.update(&c.to_le_bytes());
    }
    h.update(&[0xff]);
    match body {
        Body::Fs(m) => {
            h.update(&[0, m.kind as u8]);
            h.update(&m.hash);
            h.update(&m.size.to_le_bytes());
            match &m.target {
                Some(t) => field(&mut h, t),
                None => {
                    h.update(&[0xff]);
                }
            }
            let mode = if m.kind == crate::item::Kind::Symlink {
                0
            } else {
                m.mode
            };
            h.update(&mode.to_le_bytes());
            h.update(&m.mtime_s.to_le_bytes());
            h.update(&m.mtime_ns.to_le_bytes());
            if m.xattrs.is_empty() {
                field(&mut h, &[]);
            } else {
                let xattrs = postcard::to_allocvec(&m.xattrs).unwrap_or_default();
                field(&mut h, &xattrs);
            }
        }
        other => {
            h.update(&[1]);
            let b = postcard::to_allocvec(other).unwrap_or_default();
            field(&mut h, &b);
        }
    }
    let out = h.finalize();
    let mut d = [0u8; 16];
    d.copy_from_slice(&out.as_bytes()[..16]);
    Some(u128::from_le_bytes(d))
}

/// The summary changes of one transaction of one group: per encoded key, the digest before the
/// transaction and after it.
#[derive(Debug, Default)]
pub(crate) struct Ops(BTreeMap<Vec<u8>, (Option<u128>, Option<u128>)>);

impl Ops {
    /// `ek` went from `old` to `new` (several changes of one key keep the first `old`).
    pub fn note(&mut self, ek: &[u8], old: Option<u128>, new: Option<u128>) {
        match self.0.get_mut(ek) {
            Some(e) => e.1 = new,
            None => {
                self.0.insert(ek.to_vec(), (old, new));
            }
        }
    }

    /// `ek` went from the item `old` to `new` (either absent).
    pub fn note_items(&mut self, ek: &[u8], old: Option<&Item>, new: Option<&Item>) {
        let o = old.and_then(|i| digest(ek, i));
        let n = new.and_then(|i| digest(ek, i));
        if o != n || self.0.contains_key(ek) {
            self.note(ek, o, n);
        }
    }
}

type SumTable<'t> = redb::Table<'t, (&'static str, u8, &'static [u8]), (u128, u64)>;
type ItemsTable<'t> = redb::Table<'t, (&'static str, &'static [u8]), &'static [u8]>;

/// The row of one level that the last keys fell in, and what they added to it (not written
/// yet): keys in descending order mostly fall in the same row, so most changes cost no lookup.
struct Current {
    start: Vec<u8>,
    /// Where the next row starts (`None`: the last row).
    end: Option<Vec<u8>>,
    delta: Sum,
}

impl Current {
    fn holds(&self, ek: &[u8]) -> bool {
        self.start.as_slice() <= ek && self.end.as_deref().is_none_or(|e| ek < e)
    }
}

struct Applier<'a, 't> {
    sum: SumTable<'t>,
    items: ItemsTable<'t>,
    group: &'a str,
    path: &'a Path,
    /// Per level (index 1 to `TOP`).
    cur: Vec<Option<Current>>,
    /// Every key this transaction changed, with its digest before and after (the [`Ops`]): a
    /// split sums the items of a range, mostly written by this very transaction in a bulk
    /// commit, and takes theirs from here instead of decoding them again.
    known: &'a BTreeMap<Vec<u8>, (Option<u128>, Option<u128>)>,
}

impl Applier<'_, '_> {
    fn err<E: Into<redb::Error>>(&self, e: E) -> StoreError {
        StoreError::Db {
            path: self.path.into(),
            source: e.into(),
        }
    }

    fn get(&self, level: u8, key: &[u8]) -> Result<Option<Sum>, StoreError> {
        Ok(self
            .sum
            .get((self.group, level, key))
            .map_err(|e| self.err(e))?
            .map(|v| {
                let (hash, count) = v.value();
                Sum { hash, count }
            }))
    }

    fn put(&mut self, level: u8, key: &[u8], s: Sum) -> Result<(), StoreError> {
        let path = self.path;
        self.sum
            .insert((self.group, level, key), (s.hash, s.count))
            .map_err(|e| StoreError::Db {
                path: path.into(),
                source: e.into(),
            })?;
        Ok(())
    }

    /// The row of `level` whose range holds `ek`, and where the next row starts (the first
    /// row of the level is made when the level has none).
    fn seek(&mut self, level: u8, ek: &[u8]) -> Result<(Vec<u8>, Option<Vec<u8>>), StoreError> {
        let empty: &[u8] = &[];
        let found = self
            .sum
            .range((self.group, level, empty)..=(self.group, level, ek))
            .map_err(|e| self.err(e))?
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?
            .map(|(k, _)| k.value().2.to_vec());
        let b = match found {
            Some(b) => b,
            None => {
                // the first row of the level (a group with nothing counted yet)
                self.put(level, &[], Sum::default())?;
                Vec::new()
            }
        };
        let e = self.next_after(level, ek)?;
        Ok((b, e))
    }

    /// The first row of `level` starting after `ek`.
    fn next_after(&self, level: u8, ek: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let empty: &[u8] = &[];
        let r = self
            .sum
            .range::<(&str, u8, &[u8])>((
                Bound::Excluded((self.group, level, ek)),
                Bound::Excluded((self.group, level + 1, empty)),
            ))
            .map_err(|e| self.err(e))?
            .next()
            .transpose()
            .map_err(|e| self.err(e))?;
        Ok(r.map(|(k, _)| k.value().2.to_vec()))
    }

    /// The last row of `level` starting before `ek`.
    fn prev_before(&self, level: u8, ek: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let empty: &[u8] = &[];
        let r = self
            .sum
            .range::<(&str, u8, &[u8])>((
                Bound::Included((self.group, level, empty)),
                Bound::Excluded((self.group, level, ek)),
            ))
            .map_err(|e| self.err(e))?
            .next_back()
            .transpose()
            .map_err(|e| self.err(e))?;
        Ok(r.map(|(k, _)| k.value().2.to_vec()))
    }

    /// Add `plus` and take `minus` off the row of `level` holding `ek`.
    fn add(
        &mut self,
        level: u8,
        ek: &[u8],
        plus: Option<Sum>,
        minus: Option<Sum>,
    ) -> Result<(), StoreError> {
        let l = level as usize;
        if !self.cur[l].as_ref().is_some_and(|c| c.holds(ek)) {
            self.settle(level)?;
            let (start, end) = self.seek(level, ek)?;
            self.cur[l] = Some(Current {
                start,
                end,
                delta: Sum::default(),
            });
        }
        if let Some(c) = self.cur[l].as_mut() {
            if let Some(p) = plus {
                c.delta = c.delta.plus(p);
            }
            if let Some(m) = minus {
                c.delta = c.delta.minus(m);
            }
        }
        Ok(())
    }

    /// Write what was added to the current row of `level`, and forget it.
    fn settle(&mut self, level: u8) -> Result<(), StoreError> {
        if let Some(c) = self.cur[level as usize].take()
            && c.delta != Sum::default()
        {
            let row = self.get(level, &c.start)?.unwrap_or_default();
            self.put(level, &c.start, row.plus(c.delta))?;
        }
        Ok(())
    }

    /// Write every level's pending additions (before the shape changes, and at the end).
    fn flush(&mut self) -> Result<(), StoreError> {
        for level in 1..=TOP {
            self.settle(level)?;
        }
        Ok(())
    }

    /// The sum of `level` over [`lo`, `hi`): rows of that level, or at level 0 the items.
    fn sum_of(&self, level: u8, lo: &[u8], hi: Option<&[u8]>) -> Result<Sum, StoreError> {
        let mut s = Sum::default();
        if level == 0 {
            let r = self
                .items
                .range((self.group, lo)..)
                .map_err(|e| self.err(e))?;
            for row in r {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let (g, ek) = k.value();
                if g != self.group || hi.is_some_and(|h| ek >= h) {
                    break;
                }
                let d = match self.known.get(ek) {
                    Some((_, d)) => *d,
                    None => digest(ek, &decode_entry(self.path, &dec(ek), v.value())?.item),
                };
                if let Some(d) = d {
                    s.add(d, 1);
                }
            }
            return Ok(s);
        }
        let empty: &[u8] = &[];
        let upper = match hi {
            Some(h) => Bound::Excluded((self.group, level, h)),
            None => Bound::Excluded((self.group, level + 1, empty)),
        };
        let r = self
            .sum
            .range::<(&str, u8, &[u8])>((Bound::Included((self.group, level, lo)), upper))
            .map_err(|e| self.err(e))?;
        for row in r {
            let (_, v) = row.map_err(|e| self.err(e))?;
            let (hash, count) = v.value();
            s.add(hash, count);
        }
        Ok(s)
    }

    /// `ek` (counted with digest `d`) appeared and is a boundary of `level`: its range starts.
    /// Every level's additions are written (`flush`) before.
    fn split(&mut self, level: u8, ek: &[u8], d: u128) -> Result<(), StoreError> {
        let (b, e) = self.seek(level, ek)?;
        let s = self.sum_of(level - 1, ek, e.as_deref())?;
        let old = self.get(level, &b)?.unwrap_or_default();
        // the rest of [ek, e) was in b's range; ek itself was not
        self.put(level, &b, old.minus(s.minus(Sum::one(d))))?;
        self.put(level, ek, s)
    }

    /// `ek` (counted with digest `d`) went and was a boundary of `level`: its range joins the
    /// one before. Every level's additions are written (`flush`) before.
    fn merge(&mut self, level: u8, ek: &[u8], d: u128) -> Result<(), StoreError> {
        let Some(mine) = self.get(level, ek)? else {
            // not a row (cannot happen while the invariant holds): take d off where it is
            let (b, _) = self.seek(level, ek)?;
            let cur = self.get(level, &b)?.unwrap_or_default();
            return self.put(level, &b, cur.minus(Sum::one(d)));
        };
        let b = self.prev_before(level, ek)?.unwrap_or_default();
        let cur = self.get(level, &b)?.unwrap_or_default();
        self.put(level, &b, cur.plus(mine.minus(Sum::one(d))))?;
        let path = self.path;
        self.sum
            .remove((self.group, level, ek))
            .map_err(|e| StoreError::Db {
                path: path.into(),
                source: e.into(),
            })?;
        Ok(())
    }

    fn one(&mut self, ek: &[u8], old: Option<u128>, new: Option<u128>) -> Result<(), StoreError> {
        match (old, new) {
            (Some(o), Some(n)) if o != n => {
                for level in 1..=TOP {
                    self.add(level, ek, Some(Sum::one(n)), Some(Sum::one(o)))?;
                }
            }
            (None, Some(n)) => {
                let top = level_of(ek);
                if top > 0 {
                    self.flush()?;
                }
                for level in 1..=top {
                    self.split(level, ek, n)?;
                }
                for level in top + 1..=TOP {
                    self.add(level, ek, Some(Sum::one(n)), None)?;
                }
            }
            (Some(o), None) => {
                let top = level_of(ek);
                if top > 0 {
                    self.flush()?;
                }
                for level in 1..=top {
                    self.merge(level, ek, o)?;
                }
                for level in top + 1..=TOP {
                    self.add(level, ek, None, Some(Sum::one(o)))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Bring the summary of `group` up to date with `ops`, in the transaction that changed
/// `items` (after every `items` row of it is written).
pub(crate) fn apply(
    tx: &WriteTransaction,
    path: &Path,
    group: &str,
    ops: Ops,
) -> Result<(), StoreError> {
    if ops.0.is_empty() {
        return Ok(());
    }
    let err = |e: redb::TableError| StoreError::Db {
        path: path.into(),
        source: e.into(),
    };
    let mut a = Applier {
        sum: tx.open_table(SUMMARY).map_err(err)?,
        items: tx.open_table(ITEMS).map_err(err)?,
        group,
        path,
        cur: (0..=TOP).map(|_| None).collect(),
        known: &ops.0,
    };
    // descending: a split reads the level below over keys at or above its own, all done
    for (ek, (old, new)) in ops.0.iter().rev() {
        a.one(ek, *old, *new)?;
    }
    a.flush()
}

/// Forget the summary of `group` (its items are all gone: `reset`).
pub(crate) fn clear(tx: &WriteTransaction, path: &Path, group: &str) -> Result<(), StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    let mut t = tx.open_table(SUMMARY).map_err(|e| err(e.into()))?;
    let empty: &[u8] = &[];
    let keys: Vec<(u8, Vec<u8>)> = t
        .range((group, 0u8, empty)..=(group, u8::MAX, empty))
        .map_err(|e| err(e.into()))?
        .map(|r| r.map(|(k, _)| (k.value().1, k.value().2.to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.into()))?;
    for (l, k) in keys {
        t.remove((group, l, k.as_slice()))
            .map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// Make the summary of every group from `items`, replacing whatever the table held.
pub(crate) fn rebuild(tx: &WriteTransaction, path: &Path) -> Result<u64, StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    tx.delete_table(SUMMARY).map_err(|e| err(e.into()))?;
    let mut t = tx.open_table(SUMMARY).map_err(|e| err(e.into()))?;
    let items = tx.open_table(ITEMS).map_err(|e| err(e.into()))?;
    let mut n = 0u64;
    // per level: the row being summed (level 0 unused)
    let mut cur: Vec<Row> = Vec::new();
    let mut group: Option<String> = None;
    let flush = |t: &mut SumTable, g: &str, cur: &[Row]| -> Result<(), StoreError> {
        for (l, r) in cur.iter().enumerate().skip(1) {
            t.insert((g, l as u8, r.key.as_slice()), (r.sum.hash, r.sum.count))
                .map_err(|e| err(e.into()))?;
        }
        Ok(())
    };
    let fresh = || -> Vec<Row> {
        (0..=TOP)
            .map(|_| Row {
                key: Vec::new(),
                sum: Sum::default(),
            })
            .collect()
    };
    for row in items.iter().map_err(|e| err(e.into()))? {
        let (k, v) = row.map_err(|e| err(e.into()))?;
        let (g, ek) = k.value();
        if group.as_deref() != Some(g) {
            if let Some(prev) = &group {
                flush(&mut t, prev, &cur)?;
            }
            group = Some(g.to_string());
            cur = fresh();
        }
        let e = decode_entry(path, &dec(ek), v.value())?;
        let Some(d) = digest(ek, &e.item) else {
            continue;
        };
        n += 1;
        let top = level_of(ek);
        for (l, row) in cur.iter_mut().enumerate().skip(1).take(top as usize) {
            let done = std::mem::replace(
                row,
                Row {
                    key: ek.to_vec(),
                    sum: Sum::default(),
                },
            );
            t.insert(
                (g, l as u8, done.key.as_slice()),
                (done.sum.hash, done.sum.count),
            )
            .map_err(|e| err(e.into()))?;
        }
        for r in cur.iter_mut().skip(1) {
            r.sum.add(d, 1);
        }
    }
    if let Some(g) = &group {
        flush(&mut t, g, &cur)?;
    }
    Ok(n)
}

/// A row of the summary that is not what the items make it: (level, encoded key, stored,
/// computed).
pub type Mismatch = (u8, Vec<u8>, Option<Sum>, Option<Sum>);

/// Recompute the summary of `group` from `items` and compare it with the table: the first
/// row that differs. For tests and checks.
pub(crate) fn check(
    tx: &redb::ReadTransaction,
    path: &Path,
    group: &str,
) -> Result<Option<Mismatch>, StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    let items = tx.open_table(ITEMS).map_err(|e| err(e.into()))?;
    let mut want: BTreeMap<(u8, Vec<u8>), Sum> = BTreeMap::new();
    let mut start: Vec<Vec<u8>> = vec![Vec::new(); TOP as usize + 1];
    let lo: &[u8] = &[];
    let mut any = false;
    for row in items.range((group, lo)..).map_err(|e| err(e.into()))? {
        let (k, v) = row.map_err(|e| err(e.into()))?;
        let (g, ek) = k.value();
        if g != group {
            break;
        }
        let e = decode_entry(path, &dec(ek), v.value())?;
        let Some(d) = digest(ek, &e.item) else {
            continue;
        };
        any = true;
        let top = level_of(ek);
        for (l, s) in start.iter_mut().enumerate().skip(1).take(top as usize) {
            *s = ek.to_vec();
            want.entry((l as u8, ek.to_vec())).or_default();
        }
        for (l, s) in start.iter().enumerate().skip(1) {
            want.entry((l as u8, s.clone())).or_default().add(d, 1);
        }
    }
    let t = match tx.open_table(SUMMARY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(want
                .into_iter()
                .find(|(_, s)| *s != Sum::default())
                .map(|((l, k), s)| (l, k, None, Some(s))));
        }
        Err(e) => return Err(err(e.into())),
    };
    let mut have: BTreeMap<(u8, Vec<u8>), Sum> = BTreeMap::new();
    for row in t
        .range((group, 0u8, lo)..=(group, u8::MAX, lo))
        .map_err(|e| err(e.into()))?
    {
        let (k, v) = row.map_err(|e| err(e.into()))?;
        let (hash, count) = v.value();
        let s = Sum { hash, count };
        // empty first rows of a group with nothing counted are the same as none
        if s == Sum::default() && k.value().2.is_empty() {
            continue;
        }
        have.insert((k.value().1, k.value().2.to_vec()), s);
    }
    if !any {
        want.clear();
    }
    want.retain(|(_, k), s| !(k.is_empty() && *s == Sum::default()));
    for (k, s) in &want {
        if have.get(k) != Some(s) {
            return Ok(Some((k.0, k.1.clone(), have.get(k).copied(), Some(*s))));
        }
    }
    for (k, s) in &have {
        if !want.contains_key(k) {
            return Ok(Some((k.0, k.1.clone(), Some(*s), None)));
        }
    }
    Ok(None)
}

/// Read access for comparisons.
pub(crate) fn rows(
    tx: &redb::ReadTransaction,
    path: &Path,
    group: &str,
    level: u8,
    lo: &[u8],
    hi: Option<&[u8]>,
    max: usize,
) -> Result<(Vec<Row>, bool), StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    let mut out = Vec::new();
    if level == 0 {
        let items = tx.open_table(ITEMS).map_err(|e| err(e.into()))?;
        for row in items.range((group, lo)..).map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let (g, ek) = k.value();
            if g != group || hi.is_some_and(|h| ek >= h) {
                break;
            }
            let e = decode_entry(path, &dec(ek), v.value())?;
            if let Some(d) = digest(ek, &e.item) {
                if out.len() >= max {
                    return Ok((out, true));
                }
                out.push(Row {
                    key: ek.to_vec(),
                    sum: Sum::one(d),
                });
            }
        }
        return Ok((out, false));
    }
    let t = match tx.open_table(SUMMARY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((out, false)),
        Err(e) => return Err(err(e.into())),
    };
    let empty: &[u8] = &[];
    let upper = match hi {
        Some(h) => Bound::Excluded((group, level, h)),
        None => Bound::Excluded((group, level.saturating_add(1), empty)),
    };
    for row in t
        .range::<(&str, u8, &[u8])>((Bound::Included((group, level, lo)), upper))
        .map_err(|e| err(e.into()))?
    {
        let (k, v) = row.map_err(|e| err(e.into()))?;
        let (hash, count) = v.value();
        if out.len() >= max {
            return Ok((out, true));
        }
        out.push(Row {
            key: k.value().2.to_vec(),
            sum: Sum { hash, count },
        });
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Entry, VersionVector};
    use crate::store::{Change, Extras, Store};
    use proptest::prelude::*;

    fn key(i: u32) -> Vec<u8> {
        format!("/r/d{}/f{i}", i % 7).into_bytes()
    }

    /// A file at key `i` with version `v` of node a and content `c`; `v == 0`: unversioned.
    fn file(i: u32, v: u64, c: u8) -> Entry {
        let mut version = VersionVector::default();
        if v > 0 {
            version.bump("a", v);
        }
        Entry::new(crate::item::test_file(&key(i), version, c, 1))
    }

    fn tomb(i: u32, v: u64) -> Entry {
        let mut e = file(i, v, 0);
        e.item.body = None;
        e
    }

    /// Every row of every level of `group`, in order.
    fn all_rows(ix: &Store, group: &str) -> Vec<(u8, Row)> {
        let mut out = Vec::new();
        for l in 0..=TOP {
            let (rows, more) = ix.summary_rows(group, l, &[], None, usize::MAX).unwrap();
            assert!(!more);
            out.extend(
                rows.into_iter()
                    .filter(|r| !(r.key.is_empty() && r.sum == Sum::default()))
                    .map(|r| (l, r)),
            );
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u32, u64, u8),
        Tomb(u32, u64),
        Forget(u32),
        Unversioned(u32),
        Owner(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let k = 0u32..3000;
        prop_oneof![
            4 => (k.clone(), 1u64..5, 0u8..4).prop_map(|(i, v, c)| Op::Put(i, v, c)),
            2 => (k.clone(), 1u64..5).prop_map(|(i, v)| Op::Tomb(i, v)),
            1 => k.clone().prop_map(Op::Forget),
            1 => k.clone().prop_map(Op::Unversioned),
            1 => k.prop_map(Op::Owner),
        ]
    }

    fn run(ix: &Store, batch: &[Op]) {
        let mut changes = Vec::new();
        let mut forget = Vec::new();
        for o in batch {
            let e = match o {
                Op::Put(i, v, c) => file(*i, *v, *c),
                Op::Tomb(i, v) => tomb(*i, *v),
                Op::Unversioned(i) => file(*i, 0, 9),
                Op::Owner(i) => {
                    // a local-only change: the digest stays
                    let Some(mut e) = ix.get("g", &key(*i)).unwrap() else {
                        continue;
                    };
                    if let Some(m) = e.item.meta_mut() {
                        m.owner.uid += 1;
                    }
                    e.ino += 1;
                    changes.push(Change {
                        entry: e,
                        announce: false,
                    });
                    continue;
                }
                Op::Forget(i) => {
                    forget.push(key(*i));
                    continue;
                }
            };
            changes.push(Change {
                entry: e,
                announce: true,
            });
        }
        let extras = Extras {
            forget,
            ..Default::default()
        };
        if changes.is_empty() {
            ix.commit_extras("g", extras).unwrap();
        } else {
            ix.commit("g", changes, extras).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// The incremental summary always equals the one computed from the items, and two
        /// indexes holding the same items have the same summary however they got there.
        #[test]
        fn summary_follows_every_change(
            first in proptest::collection::vec((0u32..3000, 1u64..5, 0u8..4), 500..1500),
            batches in proptest::collection::vec(proptest::collection::vec(op(), 1..300), 1..8),
        ) {
            let d = tempfile::tempdir().unwrap();
            let ix = Store::open(&d.path().join("a.redb")).unwrap();
            let bulk: Vec<Op> = first.iter().map(|(i, v, c)| Op::Put(*i, *v, *c)).collect();
            run(&ix, &bulk);
            prop_assert_eq!(ix.summary_check("g").unwrap(), None);
            for b in &batches {
                run(&ix, b);
                prop_assert_eq!(ix.summary_check("g").unwrap(), None);
            }
            // the same items, committed at once in another order, into another index
            let other = Store::open(&d.path().join("b.redb")).unwrap();
            let mut all = Vec::new();
            ix.for_each("g", |e| {
                all.push(e.clone());
                true
            })
            .unwrap();
            all.reverse();
            other
                .commit(
                    "g",
                    all.into_iter()
                        .map(|entry| Change { entry, announce: true })
                        .collect(),
                    Extras::default(),
                )
                .unwrap();
            prop_assert_eq!(other.summary_check("g").unwrap(), None);
            prop_assert_eq!(ix.summary_root("g").unwrap(), other.summary_root("g").unwrap());
            prop_assert_eq!(all_rows(&ix, "g"), all_rows(&other, "g"));
        }
    }

    #[test]
    fn what_counts() {
        let k = enc_key(b"/r/x");
        let live = file(1, 3, 1);
        assert!(digest(&k, &live.item).is_some());
        assert_eq!(
            digest(&k, &tomb(1, 3).item),
            None,
            "tombstones are left out"
        );
        assert_eq!(
            digest(&k, &file(1, 0, 1).item),
            None,
            "unversioned entries too"
        );
        let mut other = live.clone();
        other.ino = 99;
        other.seq = 7;
        other.from = Some(("b".into(), 3));
        other.fresh = true;
        other.item.origin = "b".into();
        other.item.beat = vec!["c".into()];
        if let Some(m) = other.item.meta_mut() {
            m.owner.uid = 1000;
            m.owner.user = Some("x".into());
        }
        assert_eq!(
            digest(&k, &live.item),
            digest(&k, &other.item),
            "local and per-node fields do not count"
        );
        let mut v = live.clone();
        v.item.version.bump("b", 1);
        assert_ne!(digest(&k, &live.item), digest(&k, &v.item));
        let mut zero = live.clone();
        zero.item.version.0.insert("z".into(), 0);
        assert_eq!(digest(&k, &live.item), digest(&k, &zero.item));
        let mut m = live.clone();
        if let Some(meta) = m.item.meta_mut() {
            meta.mode = 0o600;
        }
        assert_ne!(digest(&k, &live.item), digest(&k, &m.item));
        assert_ne!(
            digest(&k, &live.item),
            digest(&enc_key(b"/r/y"), &live.item)
        );
    }

    fn enc_key(k: &[u8]) -> Vec<u8> {
        crate::store::enc(k)
    }

    #[test]
    fn levels_are_rare_and_nested() {
        let mut counts = [0usize; TOP as usize + 1];
        for i in 0..100_000u32 {
            counts[level_of(&key(i)) as usize] += 1;
        }
        // about 1 in 32 is a boundary of level 1 or more, 1 in 1,024 of level 2 or more
        let at_least_1: usize = counts[1..].iter().sum();
        let at_least_2: usize = counts[2..].iter().sum();
        assert!((2_500..3_800).contains(&at_least_1), "{counts:?}");
        assert!((50..160).contains(&at_least_2), "{counts:?}");
    }

    #[test]
    fn reset_clears_and_reopen_keeps() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("i.redb");
        {
            let ix = Store::open(&p).unwrap();
            run(&ix, &(0..400).map(|i| Op::Put(i, 1, 1)).collect::<Vec<_>>());
            assert_eq!(ix.summary_root("g").unwrap().count, 400);
        }
        let ix = Store::open(&p).unwrap();
        assert_eq!(ix.summary_root("g").unwrap().count, 400);
        assert_eq!(ix.summary_check("g").unwrap(), None);
        ix.reset_group("g").unwrap();
        assert_eq!(ix.summary_root("g").unwrap(), Sum::default());
        assert_eq!(ix.summary_check("g").unwrap(), None);
    }
}
