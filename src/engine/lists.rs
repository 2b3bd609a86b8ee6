//! Long chunk lists travel as group hashes on protocol 5 (`Msg::IndexGrouped`).
//!
//! A 256 MiB file cut into 16 KiB chunks lists 16,384 chunk refs (~590 KB): sent whole with
//! every edit, the list would cost more than a small edit itself. The sender cuts a list of at
//! least [`GROUPED_MIN`] refs into groups whose ends follow the chunks' hashes
//! (`protocol::chunk_groups`, ~64 refs each), and sends each group's hash and length instead.
//! The receiver takes the groups it finds in its own version of the file (an edit changes only
//! the groups around it), asks the sender for the others (`GetChunkLists`, answered from the
//! sender's index by content hash), checks each against its hash, and hands the batch on as an
//! ordinary `Index`.
//!
//! Invariants: a list put together here matches the group hashes the sender sent, group for
//! group, or the item is left out of the batch. The sender answers only from its version with
//! the same content hash; when that version is gone, a newer one of the key has a higher seq
//! than the batch's `through` and reaches us in a later batch, so leaving the item out loses
//! nothing. Batches of one link reach the lanes in the order they arrived: every `Index`,
//! `IndexGrouped` and `Pong` of a protocol-5 link goes through one ordered intake
//! (`link::run`).

use crate::engine::node::Ctx;
use crate::engine::peer::Link;
use crate::item::{ChunkRef, Hash, Kind};
use crate::net::protocol::{
    ChunkGroup, GROUP_MAX, GROUPED_MIN, GroupedList, MAX_LIST_REPLY, WireItem, chunk_groups,
    group_hash,
};
use std::collections::HashMap;
use std::sync::Arc;

/// Cut the long chunk lists of a batch into groups: those items carry no chunks then, and the
/// returned lists name their groups. Inline files keep theirs (they are short).
pub fn group_items(items: &mut [WireItem]) -> Vec<GroupedList> {
    let mut out = Vec::new();
    for (i, w) in items.iter_mut().enumerate() {
        if w.inline.is_some() {
            continue;
        }
        let Some(m) = w.item.meta_mut() else { continue };
        if m.kind != Kind::File || m.chunks.len() < GROUPED_MIN {
            continue;
        }
        let groups = chunk_groups(&m.chunks)
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        m.chunks = Vec::new();
        out.push(GroupedList {
            item: i as u32,
            groups,
        });
    }
    out
}

/// Why a peer's `IndexGrouped` is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    #[error("grouped chunk list {0}")]
    Bad(&'static str),
    #[error("the link closed while asking for chunk lists")]
    Closed,
}

/// Check the shape of a peer's grouped lists before anything is allocated for them.
fn check(items: &[WireItem], lists: &[GroupedList]) -> Result<(), ListError> {
    let mut last = None;
    for l in lists {
        if last.is_some_and(|p| l.item <= p) {
            return Err(ListError::Bad("names items out of order"));
        }
        last = Some(l.item);
        let w = items
            .get(l.item as usize)
            .ok_or(ListError::Bad("names an item that is not in the batch"))?;
        let m = w
            .item
            .meta()
            .filter(|m| m.kind == Kind::File && m.chunks.is_empty() && w.inline.is_none())
            .ok_or(ListError::Bad(
                "names an item that is not a file without chunks",
            ))?;
        if l.groups.is_empty()
            || l.groups
                .iter()
                .any(|g| g.chunks == 0 || g.chunks as usize > GROUP_MAX)
        {
            return Err(ListError::Bad("has an empty or oversized group"));
        }
        // every chunk is at least a byte long
        let n: u64 = l.groups.iter().map(|g| g.chunks as u64).sum();
        if n > m.size {
            return Err(ListError::Bad("has more chunks than the file has bytes"));
        }
    }
    Ok(())
}

/// The groups of our own version of each key that we know, by group hash.
fn known_groups(ctx: &Ctx, group: &str, keys: &[Vec<u8>]) -> Vec<HashMap<Hash, Vec<ChunkRef>>> {
    keys.iter()
        .map(|k| {
            let Some(e) = ctx.store.get(group, k).ok().flatten() else {
                return HashMap::new();
            };
            let Some(m) = e.item.meta().filter(|m| m.kind == Kind::File) else {
                return HashMap::new();
            };
            chunk_groups(&m.chunks)
                .into_iter()
                .map(|(g, r)| (g.hash, m.chunks[r].to_vec()))
                .collect()
        })
        .collect()
}

/// Put the chunk lists of a peer's `IndexGrouped` together: from our own versions where we can,
/// from the peer otherwise. Items the peer can no longer describe are left out.
pub async fn expand(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    group: &str,
    mut items: Vec<WireItem>,
    lists: Vec<GroupedList>,
) -> Result<Vec<WireItem>, ListError> {
    check(&items, &lists)?;
    if lists.is_empty() {
        return Ok(items);
    }
    let keys: Vec<Vec<u8>> = lists
        .iter()
        .map(|l| items[l.item as usize].item.key.clone())
        .collect();
    let (c2, g2) = (ctx.clone(), group.to_string());
    let known = tokio::task::spawn_blocking(move || known_groups(&c2, &g2, &keys))
        .await
        .unwrap_or_default();
    // every item's missing groups at once: one round trip for the batch, not one an item
    let asks = lists.iter().zip(known).filter_map(|(l, known)| {
        let w = &items[l.item as usize];
        let hash = w.item.meta().map(|m| m.hash)?;
        let key = w.item.key.clone();
        Some(async move {
            let got = fill(link, group, &key, &hash, &l.groups, &known).await;
            (l.item as usize, got)
        })
    });
    let mut drop = Vec::new();
    for (i, got) in futures_util::future::join_all(asks).await {
        match got? {
            Some(chunks) => {
                if let Some(m) = items[i].item.meta_mut() {
                    m.chunks = chunks;
                }
            }
            None => {
                tracing::debug!(peer = %link.peer, group, "{}: the peer's version moved on; its newer one follows", items[i].item.show());
                drop.push(i);
            }
        }
    }
    if !drop.is_empty() {
        let mut i = 0;
        items.retain(|_| {
            i += 1;
            !drop.contains(&(i - 1))
        });
    }
    Ok(items)
}

/// One item's chunk list from `groups`: known ones from `known`, the rest asked of the peer
/// (in requests of at most [`MAX_LIST_REPLY`] refs). `None`: the peer could not answer, or
/// answered with refs that do not match the hashes.
async fn fill(
    link: &Arc<Link>,
    group: &str,
    key: &[u8],
    hash: &Hash,
    groups: &[ChunkGroup],
    known: &HashMap<Hash, Vec<ChunkRef>>,
) -> Result<Option<Vec<ChunkRef>>, ListError> {
    let missing: Vec<u32> = groups
        .iter()
        .enumerate()
        .filter(|(_, g)| !known.contains_key(&g.hash))
        .map(|(i, _)| i as u32)
        .collect();
    let mut fetched: HashMap<u32, Vec<ChunkRef>> = HashMap::new();
    let mut start = 0;
    while start < missing.len() {
        let mut end = start;
        let mut refs = 0usize;
        while end < missing.len()
            && (end == start
                || refs + groups[missing[end] as usize].chunks as usize <= MAX_LIST_REPLY)
        {
            refs += groups[missing[end] as usize].chunks as usize;
            end += 1;
        }
        let want = missing[start..end].to_vec();
        let rx = link
            .get_chunk_lists(group, key, hash, want.clone())
            .await
            .ok_or(ListError::Closed)?;
        let Some(got) = rx.await.map_err(|_| ListError::Closed)? else {
            return Ok(None);
        };
        if got.len() != want.len() {
            return Ok(None);
        }
        for (i, refs) in want.into_iter().zip(got) {
            let g = &groups[i as usize];
            if refs.len() != g.chunks as usize || group_hash(&refs) != g.hash {
                return Ok(None);
            }
            fetched.insert(i, refs);
        }
        start = end;
    }
    let mut out = Vec::with_capacity(groups.iter().map(|g| g.chunks as usize).sum());
    for (i, g) in groups.iter().enumerate() {
        match fetched
            .remove(&(i as u32))
            .or_else(|| known.get(&g.hash).cloned())
        {
            Some(refs) => out.extend(refs),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Answer a peer's `GetChunkLists` from our index: the refs of the asked groups of our version
/// of `key`, if its content hash is still `hash`.
pub fn serve(
    ctx: &Ctx,
    group: &str,
    key: &[u8],
    hash: &Hash,
    want: &[u32],
) -> Option<Vec<Vec<ChunkRef>>> {
    let e = ctx.store.get(group, key).ok()??;
    let m = e
        .item
        .meta()
        .filter(|m| m.kind == Kind::File && m.hash == *hash)?;
    let groups = chunk_groups(&m.chunks);
    let mut refs = 0usize;
    want.iter()
        .map(|&i| {
            let r = groups.get(i as usize)?.1.clone();
            refs += r.len();
            (refs <= MAX_LIST_REPLY).then(|| m.chunks[r].to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Body, Item, Meta, Owner, VersionVector};

    fn file(n: u32) -> WireItem {
        let chunks: Vec<ChunkRef> = (0..n)
            .map(|i| ChunkRef {
                hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                len: 100,
            })
            .collect();
        WireItem {
            item: Item {
                key: b"/d/f".to_vec(),
                version: VersionVector::default(),
                origin: "a".into(),
                body: Some(Body::Fs(Meta {
                    kind: Kind::File,
                    mode: 0o644,
                    mtime_s: 0,
                    mtime_ns: 0,
                    size: n as u64 * 100,
                    owner: Owner::default(),
                    hash: [1; 32],
                    target: None,
                    chunks,
                    xattrs: vec![],
                })),
                beat: vec![],
            },
            inline: None,
        }
    }

    #[test]
    fn long_lists_are_grouped_and_checked() {
        let mut items = vec![file(10), file(2000)];
        let full = items[1].item.meta().map(|m| m.chunks.clone()).unwrap();
        let lists = group_items(&mut items);
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].item, 1);
        assert!(items[1].item.meta().unwrap().chunks.is_empty());
        assert_eq!(items[0].item.meta().unwrap().chunks.len(), 10);
        let n: u32 = lists[0].groups.iter().map(|g| g.chunks).sum();
        assert_eq!(n as usize, full.len());
        check(&items, &lists).unwrap();
        // what a peer may not send
        let mut bad = lists.clone();
        bad[0].item = 0;
        assert!(check(&items, &bad).is_err());
        let mut bad = lists.clone();
        bad[0].item = 7;
        assert!(check(&items, &bad).is_err());
        let mut bad = lists.clone();
        bad[0].groups[0].chunks = GROUP_MAX as u32 + 1;
        assert!(check(&items, &bad).is_err());
        let twice = vec![lists[0].clone(), lists[0].clone()];
        assert!(check(&items, &twice).is_err());
    }
}
