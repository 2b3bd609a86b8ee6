//! Content that a lane needs from peers: chunks asked for by hash. A file's requests go in turn
//! to every connected peer of the group, the one that sent the item first (it has the
//! content), so a joining node reads from several peers at once; what another peer does not
//! have yet is asked of the sender again in one request, then chunk by chunk of anyone.
//! Shared by every lane; each request is bounded ([`MAX_CHUNKS_PER_REQUEST`] chunks,
//! [`REQUEST_BYTES`]), a few are in flight per file ([`WINDOW`]), and every chunk is checked
//! (length and BLAKE3) before it is handed over, in order.

use crate::engine::node::Ctx;
use crate::item::{ChunkRef, Hash};
use crate::net::protocol::MAX_CHUNKS_PER_REQUEST;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// Bytes per request at most.
pub const REQUEST_BYTES: u64 = 4 * 1024 * 1024;
/// Requests in flight per file.
pub const WINDOW: usize = 4;
/// How long one peer may take to answer one request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The peers to ask for `group`'s content, `prefer` first.
fn sources(ctx: &Ctx, group: &str, prefer: Option<&str>) -> Vec<Arc<crate::engine::peer::Link>> {
    let mut out = Vec::new();
    if let Some(p) = prefer
        && let Some(l) = ctx.links.get(p)
        && l.active(group)
    {
        out.push(l);
    }
    if let Some(g) = ctx.group(group) {
        for p in &g.peers {
            if Some(p.as_str()) == prefer || g.is_replica(p) && !g.replica {
                continue;
            }
            if let Some(l) = ctx.links.get(p)
                && l.active(group)
            {
                out.push(l);
            }
        }
    }
    out
}

fn valid(d: &[u8], c: &ChunkRef) -> bool {
    d.len() == c.len as usize && crate::fs::chunk::hash(d) == c.hash
}

/// Fetch one chunk from any peer, from a blocking thread (a local source turned out stale).
pub fn one_blocking(ctx: &Ctx, group: &str, c: &ChunkRef) -> Option<Vec<u8>> {
    let h = tokio::runtime::Handle::try_current().ok()?;
    let d = h.block_on(one_anywhere(ctx, group, c, 0))?;
    ctx.counters
        .chunk_bytes_in
        .fetch_add(d.len() as u64, Ordering::Relaxed);
    Some(d)
}

/// Ask one chunk of every source in turn.
async fn one_anywhere(ctx: &Ctx, group: &str, c: &ChunkRef, skip: usize) -> Option<Vec<u8>> {
    for l in sources(ctx, group, None).into_iter().skip(skip) {
        let Some(rx) = l.get_chunks(group, vec![c.hash]).await else {
            continue;
        };
        if let Ok(Ok(mut v)) = tokio::time::timeout(ANSWER_TIMEOUT, rx).await
            && let Some(Some(d)) = v.pop()
            && valid(&d, c)
        {
            return Some(d);
        }
    }
    None
}

/// Fetch `want` (in order) and send each chunk's data to `out`, in order; stops at the first
/// chunk no peer has (the receiver sees the channel close early).
pub async fn fetch(
    ctx: Arc<Ctx>,
    group: String,
    want: Vec<ChunkRef>,
    prefer: Option<String>,
    out: mpsc::Sender<Vec<u8>>,
) {
    // requests of up to MAX_CHUNKS_PER_REQUEST chunks / REQUEST_BYTES
    let mut requests: Vec<Vec<ChunkRef>> = Vec::new();
    let mut cur = 0u64;
    for c in want {
        let start = requests.last().is_none_or(|r| {
            r.len() >= MAX_CHUNKS_PER_REQUEST || cur + c.len as u64 > REQUEST_BYTES
        });
        if start {
            requests.push(Vec::new());
            cur = 0;
        }
        cur += c.len as u64;
        if let Some(r) = requests.last_mut() {
            r.push(c);
        }
    }
    type Pending = (
        Vec<ChunkRef>,
        Option<tokio::sync::oneshot::Receiver<Vec<Option<Vec<u8>>>>>,
        bool,
    );
    let mut inflight: VecDeque<Pending> = VecDeque::new();
    let mut next = requests.into_iter();
    let mut turn = 0usize;
    loop {
        while inflight.len() < WINDOW {
            let Some(r) = next.next() else { break };
            // round robin over the sources, the sender first (looked up for each request: a
            // joining node's links come up one after the other)
            let srcs = sources(&ctx, &group, prefer.as_deref());
            let at = turn % srcs.len().max(1);
            turn += 1;
            let rx = match srcs.get(at) {
                Some(l) => {
                    let hashes: Vec<Hash> = r.iter().map(|c| c.hash).collect();
                    l.get_chunks(&group, hashes).await
                }
                None => None,
            };
            inflight.push_back((r, rx, at == 0));
        }
        let Some((chunks, rx, from_first)) = inflight.pop_front() else {
            return;
        };
        let mut reply = match rx {
            Some(rx) => answer(rx).await,
            None => Vec::new(),
        };
        reply.resize(chunks.len(), None);
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|&i| !reply[i].as_deref().is_some_and(|d| valid(d, &chunks[i])))
            .collect();
        // another peer did not have all of it (yet): the sender has
        if !missing.is_empty()
            && !from_first
            && let Some(l) = sources(&ctx, &group, prefer.as_deref()).first()
            && let Some(rx) = l
                .get_chunks(&group, missing.iter().map(|&i| chunks[i].hash).collect())
                .await
        {
            for (&i, d) in missing.iter().zip(answer(rx).await) {
                reply[i] = d;
            }
        }
        for (c, d) in chunks.iter().zip(reply) {
            let mut d = d.filter(|d| valid(d, c));
            if d.is_none() {
                d = one_anywhere(&ctx, &group, c, 0).await;
            }
            let Some(d) = d else {
                return;
            };
            ctx.counters
                .chunk_bytes_in
                .fetch_add(d.len() as u64, Ordering::Relaxed);
            if out.send(d).await.is_err() {
                return;
            }
        }
    }
}

/// A peer's answer to a chunk request, or nothing after [`ANSWER_TIMEOUT`].
async fn answer(rx: tokio::sync::oneshot::Receiver<Vec<Option<Vec<u8>>>>) -> Vec<Option<Vec<u8>>> {
    tokio::time::timeout(ANSWER_TIMEOUT, rx)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default()
}
