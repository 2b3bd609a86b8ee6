//! Migrations of the index from older schemas, each in one write transaction (a crash leaves
//! the old schema intact and the next start tries again).
//!
//! **3 → 4** (the previous release): keys become byte strings stored with `/` as NUL; entries
//! gain extended attributes (none) and byte link texts; the echo marker `from` now names the
//! peer's incarnation, which schema 3 did not know, so it is dropped (the next exchange sends
//! those items back once, and the peer ignores them as equal); tombstones get their own table;
//! counters per group are computed; conflicts convert; chunk locations are rewritten; peers'
//! positions and acknowledgements keep their meaning and stay. Old tables are deleted.
//!
//! **4 → 5**: an acknowledgement now means "applied and saved durably" (SPEC §5.13); the
//! previous release also acknowledged batches it never saved (a stopped group, a failed
//! commit), so the acknowledgements it recorded are not trusted for collecting tombstones:
//! `acked` is emptied (the next exchange with each peer records it again, under the new
//! meaning). Account items change format (SPEC §5.7, second version): a schema-4 `User`
//! body becomes this release's user (its fields; `made` = its origin's counter, the time the
//! change was noticed) and a `Group` body this release's group, in items, set-aside items and
//! conflicts, with their version vectors kept. Memberships (the `groups` of a schema-4 user)
//! are not migrated: the first scan after the upgrade records each group's member set from the
//! files as a change of this node, and the member sets of the nodes that upgrade merge without
//! a conflict. The `summary` table (the hash tree of each group, `store::summary`) is built
//! from `items` (account items already in this release's format) and `meta["summary"]`
//! records its format. Everything else keeps its meaning.

use super::{
    ACKED, ASIDE, Aside, BY_SEQ, CHUNKS, CONFLICTS, ConflictInfo, GroupStats, ITEMS, META, STATS,
    StoreError, TOMBS, decode_entry, enc, encode_entry,
};
use crate::item::v3::{ConflictInfoV3, EntryV3, QuickStatV3};
use crate::item::{Body, Entry, Item};
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;

const FILES_V3: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("files");
const BY_SEQ_V3: TableDefinition<(&str, u64), &str> = TableDefinition::new("by_seq");
const CHUNKS_V3: TableDefinition<&[u8; 32], (&str, &str, u64, u64)> =
    TableDefinition::new("chunks");
const CONFLICTS_V3: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("conflicts");

/// Migrate an index of schema 3 to schema 4 in place.
pub(super) fn v3_to_v4(db: &Database, path: &Path) -> Result<(), StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    let corrupt = |key: &str, e: postcard::Error| StoreError::Corrupt {
        path: path.into(),
        key: key.into(),
        msg: format!("schema 3 entry: {e}"),
    };
    let tx = db.begin_write().map_err(|e| err(e.into()))?;
    let mut n = 0usize;
    {
        let files = tx.open_table(FILES_V3).map_err(|e| err(e.into()))?;
        let mut items = tx.open_table(ITEMS).map_err(|e| err(e.into()))?;
        let mut bs = tx.open_table(BY_SEQ).map_err(|e| err(e.into()))?;
        let mut tombs = tx.open_table(TOMBS).map_err(|e| err(e.into()))?;
        let mut stats: HashMap<String, GroupStats> = HashMap::new();
        for row in files.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let (group, p) = k.value();
            let (_, rest) =
                postcard::take_from_bytes::<QuickStatV3>(v.value()).map_err(|e| corrupt(p, e))?;
            let old: EntryV3 = postcard::from_bytes(rest).map_err(|e| corrupt(p, e))?;
            let e = Entry {
                item: old.rec.into(),
                seq: old.seq,
                ino: old.ino,
                ctime_s: old.ctime_s,
                ctime_ns: old.ctime_ns,
                from: None,
                fresh: false,
            };
            let key = enc(&e.item.key);
            let bytes = encode_entry(path, &e)?;
            items
                .insert((group, key.as_slice()), bytes.as_slice())
                .map_err(|e| err(e.into()))?;
            bs.insert((group, e.seq), key.as_slice())
                .map_err(|e| err(e.into()))?;
            if e.item.is_deleted() {
                tombs
                    .insert((group, e.seq), key.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            stats.entry(group.to_string()).or_default().add(&e, 1);
            n += 1;
        }
        let mut st = tx.open_table(STATS).map_err(|e| err(e.into()))?;
        for (g, s) in &stats {
            st.insert(g.as_str(), s.tuple())
                .map_err(|e| err(e.into()))?;
        }
        let old_chunks = tx.open_table(CHUNKS_V3).map_err(|e| err(e.into()))?;
        let mut chunks = tx.open_table(CHUNKS).map_err(|e| err(e.into()))?;
        for row in old_chunks.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let (g, p, off, len) = v.value();
            let key = enc(p.as_bytes());
            chunks
                .insert(k.value(), (g, key.as_slice(), off, len))
                .map_err(|e| err(e.into()))?;
        }
        let old_conflicts = tx.open_table(CONFLICTS_V3).map_err(|e| err(e.into()))?;
        let mut conflicts = tx.open_table(CONFLICTS).map_err(|e| err(e.into()))?;
        for row in old_conflicts.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let (g, p) = k.value();
            let c: ConflictInfoV3 = postcard::from_bytes(v.value()).map_err(|e| corrupt(p, e))?;
            let c = ConflictInfo {
                nodes: c.nodes,
                resolved: c.resolved,
                winner: c.winner,
                kept_as: c.kept_as,
                time: c.time,
                versions: c.versions.into_iter().map(Into::into).collect(),
            };
            let b = postcard::to_allocvec(&c).map_err(|e| corrupt(p, e))?;
            conflicts
                .insert((g, enc(p.as_bytes()).as_slice()), b.as_slice())
                .map_err(|e| err(e.into()))?;
        }
        let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert("schema", 4).map_err(|e| err(e.into()))?;
    }
    for t in [FILES_V3, CONFLICTS_V3] {
        tx.delete_table(t).map_err(|e| err(e.into()))?;
    }
    tx.delete_table(BY_SEQ_V3).map_err(|e| err(e.into()))?;
    tx.delete_table(CHUNKS_V3).map_err(|e| err(e.into()))?;
    tx.commit().map_err(|e| err(e.into()))?;
    tracing::info!(
        "index {}: migrated {n} entries from schema 3 to schema 4",
        path.display()
    );
    Ok(())
}

/// Migrate an index of schema 4 to schema 5 in place.
pub(super) fn v4_to_v5(db: &Database, path: &Path) -> Result<(), StoreError> {
    let err = |e: redb::Error| StoreError::Db {
        path: path.into(),
        source: e,
    };
    let corrupt = |key: &[u8], e: postcard::Error| StoreError::Corrupt {
        path: path.into(),
        key: String::from_utf8_lossy(key).into_owned(),
        msg: format!("schema 4 entry: {e}"),
    };
    let group = crate::engine::group::ACCOUNTS;
    let lo: &[u8] = &[];
    let tx = db.begin_write().map_err(|e| err(e.into()))?;
    let mut n = 0usize;
    {
        // account items: this release's bodies
        let mut items = tx.open_table(ITEMS).map_err(|e| err(e.into()))?;
        let rows: Vec<(Vec<u8>, Vec<u8>)> = items
            .range((group, lo)..)
            .map_err(|e| err(e.into()))?
            .map_while(|r| r.ok())
            .take_while(|(k, _)| k.value().0 == group)
            .map(|(k, v)| (k.value().1.to_vec(), v.value().to_vec()))
            .collect();
        for (k, v) in rows {
            let mut e = decode_entry(path, &k, &v)?;
            if account_v5(&mut e.item) {
                let bytes = encode_entry(path, &e)?;
                items
                    .insert((group, k.as_slice()), bytes.as_slice())
                    .map_err(|e| err(e.into()))?;
                n += 1;
            }
        }
        for (is_aside, def) in [(true, ASIDE), (false, CONFLICTS)] {
            let mut t = tx.open_table(def).map_err(|e| err(e.into()))?;
            let rows: Vec<(Vec<u8>, Vec<u8>)> = t
                .range((group, lo)..)
                .map_err(|e| err(e.into()))?
                .map_while(|r| r.ok())
                .take_while(|(k, _)| k.value().0 == group)
                .map(|(k, v)| (k.value().1.to_vec(), v.value().to_vec()))
                .collect();
            for (k, v) in rows {
                let bytes = if is_aside {
                    let mut a: Aside = postcard::from_bytes(&v).map_err(|e| corrupt(&k, e))?;
                    account_v5(&mut a.item);
                    postcard::to_allocvec(&a).map_err(|e| corrupt(&k, e))?
                } else {
                    let mut c: ConflictInfo =
                        postcard::from_bytes(&v).map_err(|e| corrupt(&k, e))?;
                    for i in &mut c.versions {
                        account_v5(i);
                    }
                    postcard::to_allocvec(&c).map_err(|e| corrupt(&k, e))?
                };
                t.insert((group, k.as_slice()), bytes.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
        }
        // acknowledgements of the previous release may cover batches never saved
        tx.delete_table(ACKED).map_err(|e| err(e.into()))?;
        tx.open_table(ACKED).map_err(|e| err(e.into()))?;
    }
    let summed = super::summary::rebuild(&tx, path)?;
    {
        let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert("summary", super::summary::FORMAT)
            .map_err(|e| err(e.into()))?;
        meta.insert("schema", 5).map_err(|e| err(e.into()))?;
    }
    tx.commit().map_err(|e| err(e.into()))?;
    tracing::info!(
        "index {}: migrated from schema 4 to schema 5 ({n} account items in this release's format, summary of {summed} items built)",
        path.display()
    );
    Ok(())
}

/// Turn a schema-4 account body into this release's (true when it changed).
pub(crate) fn account_v5(i: &mut Item) -> bool {
    use crate::accounts::Account;
    let made = i64::try_from(i.version.get(&i.origin)).unwrap_or(i64::MAX);
    let body = match &i.body {
        Some(Body::User(u)) => Account::User {
            user: u.to_user(),
            made,
        },
        Some(Body::Group(g)) => Account::Group {
            group: g.to_group(),
            made,
        },
        _ => return false,
    };
    i.body = Some(Body::Account(body));
    true
}
