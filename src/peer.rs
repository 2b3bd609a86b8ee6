//! One live link with a peer: the Hello exchange, the index pumps that stream our records to
//! the peer, and the reader that dispatches what the peer sends.
//!
//! Invariants: a message is only acted on after `Hello` has identified the peer (the key was
//! already checked by the transport) and only for groups that list both nodes; every request
//! from the peer is bounded (chunks per request, concurrent requests, unapplied batches), and a
//! violation closes this link only, with a logged reason; at most [`MAX_UNACKED`] index batches
//! per group are in flight, so a slow receiver slows the sender instead of growing memory.

use crate::node::{Shared, Work};
use crate::protocol::{
    GroupResume, INLINE_MAX, MAX_BATCH_INLINE, MAX_BATCH_RECORDS, MAX_CHUNKS_PER_REQUEST,
    MAX_UNACKED, Msg, PROTOCOL_VERSION, WireRecord,
};
use crate::record::{Hash, Kind};
use crate::transport::{Link, LinkReader};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

/// Idle time after which a link is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive interval.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
const MAX_SERVING: usize = 4;
/// Chunk bytes in one `Chunks` answer at most (well under the frame limit).
const MAX_CHUNKS_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// Encoded bytes of records in one `Index` batch at most (well under the frame limit).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What our pump has sent and the peer has acknowledged, for one group.
#[derive(Debug, Default, Clone)]
pub struct PumpProgress {
    /// Our index has been read up to this seq (everything up to it was sent).
    pub scanned: u64,
    /// `through` of batches sent and not yet acknowledged.
    pub unacked: VecDeque<u64>,
    /// `through` of the last batch sent.
    pub last_sent: u64,
    /// Highest `through` the peer acknowledged.
    pub acked: u64,
}

type ChunkReply = Vec<Option<Vec<u8>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A connected peer, shared by the link's tasks and the engine.
pub struct PeerHandle {
    pub name: String,
    pub conn: u64,
    pub remote_index_id: u64,
    out: mpsc::Sender<Msg>,
    chunk_waiters: Mutex<HashMap<u64, oneshot::Sender<ChunkReply>>>,
    pong_waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_req: AtomicU64,
    pub progress: Mutex<HashMap<String, PumpProgress>>,
    pub progress_notify: Notify,
    /// Index batches handed to the engine and not yet applied.
    pub queued_batches: AtomicUsize,
    /// Per group: (the peer's head, how far we applied its records).
    pub remote: Mutex<HashMap<String, (u64, u64)>>,
    closed: watch::Sender<bool>,
}

impl PeerHandle {
    /// Queue a message to the peer; false when the link is gone.
    pub async fn send(&self, m: Msg) -> bool {
        self.out.send(m).await.is_ok()
    }

    /// Ask the peer for chunks; the receiver yields `None` if the link drops.
    pub async fn get_chunks(
        &self,
        group: &str,
        hashes: Vec<Hash>,
    ) -> Option<oneshot::Receiver<ChunkReply>> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.chunk_waiters).insert(req, tx);
        if !self
            .send(Msg::GetChunks {
                req,
                group: group.to_string(),
                hashes,
            })
            .await
        {
            lock(&self.chunk_waiters).remove(&req);
            return None;
        }
        Some(rx)
    }

    /// Mark a point in the peer's stream; resolves once the peer has sent everything before it.
    pub async fn ping(&self) -> Option<oneshot::Receiver<()>> {
        let token = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pong_waiters).insert(token, tx);
        if !self.send(Msg::SyncPing { token }).await {
            return None;
        }
        Some(rx)
    }

    /// Close the link.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Progress of our pump for `group`.
    pub fn progress_of(&self, group: &str) -> PumpProgress {
        lock(&self.progress).get(group).cloned().unwrap_or_default()
    }
}

/// Keeps a link registered as the peer's current one while it lives.
struct Registered {
    shared: Arc<Shared>,
    handle: Arc<PeerHandle>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.handle.close();
        self.shared
            .unregister_peer(&self.handle.name, self.handle.conn);
    }
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("protocol violation by {peer}: {msg}")]
    Violation { peer: String, msg: String },
    #[error("peer {peer} said bye: {reason}")]
    Bye { peer: String, reason: String },
    #[error("idle for too long")]
    Idle,
}

fn violation(peer: &str, msg: impl Into<String>) -> LinkError {
    LinkError::Violation {
        peer: peer.to_string(),
        msg: msg.into(),
    }
}

/// Run an authenticated link with `peer` until it ends.
pub async fn run_link(shared: Arc<Shared>, link: Link, peer: String) -> Result<(), LinkError> {
    let Link {
        mut reader,
        mut writer,
        ..
    } = link;
    let (out_tx, mut out_rx) = mpsc::channel::<Msg>(64);
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let shared_groups: Vec<String> = shared
        .shared_groups(&peer)
        .iter()
        .map(|g| g.cfg.name.clone())
        .collect();

    // writer task
    let writer_closed = closed_tx.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if let Err(e) = writer.send(&m).await {
                tracing::debug!("write failed: {e}");
                break;
            }
            if matches!(m, Msg::Bye { .. }) {
                break;
            }
        }
        writer.shutdown().await;
        writer_closed.send_replace(true);
    });

    let mut resume = Vec::new();
    for g in &shared_groups {
        let (index_id, seq) = shared.index.peer_position(&peer, g).unwrap_or((0, 0));
        resume.push(GroupResume {
            group: g.clone(),
            index_id,
            seq,
            head: shared.index.group_head(g).unwrap_or(0),
        });
    }
    let hello = Msg::Hello {
        version: PROTOCOL_VERSION,
        node: shared.name.clone(),
        index_id: shared.index.index_id(),
        groups: resume,
    };
    let _ = out_tx.send(hello).await;
    let first = tokio::time::timeout(crate::transport::HANDSHAKE_TIMEOUT, reader.recv())
        .await
        .map_err(|_| LinkError::Idle)??;
    let (remote_index_id, their_resume) = match first {
        Msg::Hello {
            version,
            node,
            index_id,
            groups,
        } => {
            if version != PROTOCOL_VERSION {
                let _ = out_tx
                    .send(Msg::Bye {
                        reason: format!(
                            "protocol version {version} not supported (we speak {PROTOCOL_VERSION})"
                        ),
                    })
                    .await;
                return Err(violation(
                    &peer,
                    format!("speaks protocol version {version}"),
                ));
            }
            if node != peer {
                return Err(violation(&peer, format!("introduced itself as {node:?}")));
            }
            if groups.len() > 4096 {
                return Err(violation(&peer, "too many groups in Hello"));
            }
            (index_id, groups)
        }
        Msg::Bye { reason } => return Err(LinkError::Bye { peer, reason }),
        other => {
            return Err(violation(
                &peer,
                format!("sent {} before Hello", other.kind()),
            ));
        }
    };

    let conn = shared.next_conn();
    let handle = Arc::new(PeerHandle {
        name: peer.clone(),
        conn,
        remote_index_id,
        out: out_tx.clone(),
        chunk_waiters: Mutex::new(HashMap::new()),
        pong_waiters: Mutex::new(HashMap::new()),
        next_req: AtomicU64::new(1),
        progress: Mutex::new(HashMap::new()),
        progress_notify: Notify::new(),
        queued_batches: AtomicUsize::new(0),
        remote: Mutex::new(
            their_resume
                .iter()
                .filter(|r| shared_groups.contains(&r.group))
                .map(|r| {
                    let applied = shared
                        .index
                        .peer_position(&peer, &r.group)
                        .map(|p| p.1)
                        .unwrap_or(0);
                    (r.group.clone(), (r.head, applied))
                })
                .collect(),
        ),
        closed: closed_tx.clone(),
    });
    if let Some(old) = shared.register_peer(handle.clone()) {
        old.close();
    }
    // unregister however this function ends, a panic included
    let _registered = Registered {
        shared: shared.clone(),
        handle: handle.clone(),
    };
    tracing::info!(peer = %peer, "connected");

    // pumps
    let mut pumps = Vec::new();
    for g in &shared_groups {
        if shared.group(g).is_some_and(|g| g.replica) {
            // a replica only receives
            continue;
        }
        let start = their_resume
            .iter()
            .find(|r| &r.group == g)
            .filter(|r| r.index_id == shared.index.index_id())
            .map(|r| r.seq)
            .unwrap_or(0);
        pumps.push(tokio::spawn(pump(
            shared.clone(),
            handle.clone(),
            g.clone(),
            start,
        )));
    }

    let (mut in_rx, reader_task) = spawn_reader(reader);
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let mut shutdown = shared.shutdown_rx();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let result = loop {
        tokio::select! {
            _ = crate::node::until_set(&mut closed_rx) => break Ok(()),
            _ = crate::node::until_set(&mut shutdown) => {
                let _ = out_tx.try_send(Msg::Bye { reason: "shutting down".into() });
                break Ok(());
            }
            _ = keepalive.tick() => {
                let _ = out_tx.try_send(Msg::SyncPing { token: 0 });
            }
            m = in_rx.recv() => {
                let m = match m {
                    None => break Err(LinkError::Idle),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(m)) => m,
                };
                if let Err(e) = dispatch(&shared, &handle, &shared_groups, &serving, m).await {
                    break Err(e);
                }
            }
        }
    };
    if let Err(LinkError::Violation { msg, .. }) = &result {
        let _ = out_tx.try_send(Msg::Bye {
            reason: msg.clone(),
        });
        shared.audit_refused(&peer, msg);
    }
    handle.close();
    reader_task.abort();
    for p in pumps {
        p.abort();
    }
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    lock(&handle.chunk_waiters).clear();
    lock(&handle.pong_waiters).clear();
    tracing::info!(peer = %peer, "disconnected{}", match &result { Ok(()) => String::new(), Err(e) => format!(": {e}") });
    result
}

/// Read messages in a task of their own: a read must never be cancelled half-way through a
/// packet (the rest of the stream would be undecryptable), which a `select!` would do.
fn spawn_reader(
    mut reader: LinkReader,
) -> (
    mpsc::Receiver<Result<Msg, LinkError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        loop {
            let r = match tokio::time::timeout(IDLE_TIMEOUT, reader.recv()).await {
                Err(_) => Err(LinkError::Idle),
                Ok(Err(e)) => Err(e.into()),
                Ok(Ok(m)) => Ok(m),
            };
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    (rx, task)
}

async fn dispatch(
    shared: &Arc<Shared>,
    h: &Arc<PeerHandle>,
    groups: &[String],
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let peer = h.name.as_str();
    shared.touch_peer(peer);
    let check_group = |g: &str| -> Result<(), LinkError> {
        if groups.iter().any(|x| x == g) {
            Ok(())
        } else {
            Err(violation(
                peer,
                format!("named group {g:?}, which it does not share with us"),
            ))
        }
    };
    match m {
        Msg::Hello { .. } => return Err(violation(peer, "second Hello")),
        Msg::Bye { reason } => {
            return Err(LinkError::Bye {
                peer: peer.to_string(),
                reason,
            });
        }
        Msg::Index {
            group,
            records,
            through,
            head,
        } => {
            check_group(&group)?;
            {
                let mut r = lock(&h.remote);
                let e = r.entry(group.clone()).or_default();
                e.0 = e.0.max(head);
            }
            if shared.group(&group).is_some_and(|g| g.is_replica(peer)) {
                return Err(violation(
                    peer,
                    format!("is a replica of group {group} but sent changes"),
                ));
            }
            if records.len() > MAX_BATCH_RECORDS {
                return Err(violation(peer, "index batch too large"));
            }
            let q = h.queued_batches.fetch_add(1, Ordering::AcqRel);
            if q > MAX_UNACKED * groups.len().max(1) + 2 {
                return Err(violation(peer, "ignored flow control"));
            }
            shared.submit(Work::Remote {
                peer: h.clone(),
                group,
                records,
                through,
            });
        }
        Msg::Ack { group, through } => {
            check_group(&group)?;
            let acked = {
                let mut p = lock(&h.progress);
                let e = p.entry(group.clone()).or_default();
                if through > e.last_sent {
                    return Err(violation(peer, "acknowledged more than was sent"));
                }
                e.acked = e.acked.max(through);
                while e.unacked.front().is_some_and(|t| *t <= through) {
                    e.unacked.pop_front();
                }
                if e.unacked.is_empty() {
                    // what the pump read after the last batch was skipped (it came from
                    // this peer): the peer has it
                    e.acked = e.acked.max(e.scanned);
                }
                e.acked
            };
            let _ = shared.index.set_acked(peer, &group, acked);
            h.progress_notify.notify_waiters();
        }
        Msg::GetChunks { req, group, hashes } => {
            check_group(&group)?;
            if hashes.len() > MAX_CHUNKS_PER_REQUEST {
                return Err(violation(peer, "too many chunks requested"));
            }
            let Ok(permit) = serving.clone().acquire_owned().await else {
                return Ok(());
            };
            let shared = shared.clone();
            let h = h.clone();
            tokio::spawn(async move {
                let s2 = shared.clone();
                let g2 = group.clone();
                let data = tokio::task::spawn_blocking(move || {
                    // the answer must fit one message: past the budget, answer "not here"
                    // and the requester asks again
                    let mut budget = MAX_CHUNKS_REPLY_BYTES;
                    hashes
                        .iter()
                        .map(|hash| {
                            let d = s2.read_chunk(&g2, hash)?;
                            if d.len() > budget {
                                budget = 0;
                                return None;
                            }
                            budget -= d.len();
                            Some(d)
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                let n: usize = data.iter().flatten().map(|d| d.len()).sum();
                shared
                    .counters
                    .chunk_bytes_out
                    .fetch_add(n as u64, Ordering::Relaxed);
                let _ = h.send(Msg::Chunks { req, data }).await;
                drop(permit);
            });
        }
        Msg::Chunks { req, data } => {
            let w = lock(&h.chunk_waiters).remove(&req);
            match w {
                Some(tx) => {
                    let _ = tx.send(data);
                }
                None => return Err(violation(peer, "answered a request we did not make")),
            }
        }
        Msg::SyncPing { token } => {
            if token != 0 {
                let target = shared.index.max_seq().unwrap_or(0);
                let h = h.clone();
                // only groups we pump (a replica sends nothing)
                let groups: Vec<String> = groups
                    .iter()
                    .filter(|g| !shared.group(g).is_some_and(|x| x.replica))
                    .cloned()
                    .collect();
                tokio::spawn(async move {
                    // answer once every pump has read our index up to `target`
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                    loop {
                        let notified = h.progress_notify.notified();
                        let done = groups.iter().all(|g| h.progress_of(g).scanned >= target);
                        if done || h.is_closed() || tokio::time::Instant::now() > deadline {
                            break;
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
                    }
                    let _ = h.send(Msg::SyncPong { token }).await;
                });
            }
        }
        Msg::SyncPong { token } => {
            let w = lock(&h.pong_waiters).remove(&token);
            if let Some(tx) = w {
                // resolve once the engine has applied everything received before the pong
                shared.submit(Work::Marker { reply: tx });
            }
        }
    }
    Ok(())
}

/// Stream our records of `group` to the peer, starting after `start`.
async fn pump(shared: Arc<Shared>, h: Arc<PeerHandle>, group: String, start: u64) {
    let mut pos = start;
    let mut seq_rx = shared.seq_rx();
    {
        let mut p = lock(&h.progress);
        let e = p.entry(group.clone()).or_default();
        e.scanned = pos;
        e.last_sent = pos;
        e.acked = pos;
    }
    // the peer's Hello says it applied our records up to `pos`: that is an acknowledgement
    // (ours may have been lost in a crash, acks are stored without a sync)
    if shared.index.acked(&h.name, &group).unwrap_or(0) < pos {
        let _ = shared.index.set_acked(&h.name, &group, pos);
    }
    loop {
        // flow control
        loop {
            let notified = h.progress_notify.notified();
            if h.progress_of(&group).unacked.len() < MAX_UNACKED {
                break;
            }
            if h.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
        if h.is_closed() {
            return;
        }
        seq_rx.borrow_and_update();
        let s2 = shared.clone();
        let g2 = group.clone();
        let to = h.name.clone();
        let batch = tokio::task::spawn_blocking(move || s2.build_batch(&g2, pos, &to)).await;
        let (records, through, full, head) = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(group = %group, "reading index for peer {}: {e}", h.name);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        // nothing to send, but the peer should learn it is caught up (what we skipped came
        // from it): move its `through` with an empty batch
        let announce_empty = records.is_empty() && {
            let p = lock(&h.progress);
            let e = p.get(&group).cloned().unwrap_or_default();
            head > e.last_sent && through > e.last_sent
        };
        if !records.is_empty() || announce_empty {
            let n = records.len();
            for r in &records {
                shared.audit_sent(&group, &r.rec, &h.name);
            }
            {
                let mut p = lock(&h.progress);
                let e = p.entry(group.clone()).or_default();
                e.unacked.push_back(through);
                e.last_sent = through;
            }
            if !h
                .send(Msg::Index {
                    group: group.clone(),
                    records,
                    through,
                    head,
                })
                .await
            {
                return;
            }
            tracing::debug!(peer = %h.name, group = %group, "sent {n} records through {through}");
        }
        pos = through;
        let caught_up = {
            let mut p = lock(&h.progress);
            let e = p.entry(group.clone()).or_default();
            e.scanned = through;
            if e.unacked.is_empty() && e.acked < through {
                // nothing in flight: everything read was either acknowledged or skipped
                e.acked = through;
                Some(through)
            } else {
                None
            }
        };
        if let Some(t) = caught_up {
            let _ = shared.index.set_acked(&h.name, &group, t);
        }
        h.progress_notify.notify_waiters();
        if full {
            continue;
        }
        let mut closed = h.closed.subscribe();
        tokio::select! {
            r = seq_rx.changed() => if r.is_err() { return },
            _ = crate::node::until_set(&mut closed) => return,
        }
    }
}

impl Shared {
    /// Read our records of `group` after `pos` into a batch for peer `to`: (records, through,
    /// more-pending). Versions that came from `to` itself are skipped.
    pub fn build_batch(
        &self,
        group: &str,
        pos: u64,
        to: &str,
    ) -> Result<(Vec<WireRecord>, u64, bool, u64), crate::index::IndexError> {
        let snapshot = self.index.max_seq()?;
        let head = self.index.group_head(group)?;
        let entries = self.index.since(group, pos, MAX_BATCH_RECORDS)?;
        let full = entries.len() >= MAX_BATCH_RECORDS;
        let mut records = Vec::with_capacity(entries.len());
        let mut inline_bytes = 0usize;
        let mut cut = false;
        let mut last_seq = pos;
        let mut encoded = 0usize;
        for e in entries {
            if e.from.as_deref() == Some(to) {
                // it came from that peer as it is: do not echo it back
                last_seq = last_seq.max(e.seq);
                continue;
            }
            // rough encoded size: path, vector, chunk list
            let est = 128
                + e.rec.path.len()
                + e.rec.version.0.len() * 24
                + e.rec.meta.as_ref().map_or(0, |m| m.chunks.len() * 40);
            if encoded + est > MAX_BATCH_BYTES && !records.is_empty() {
                cut = true;
                break;
            }
            encoded += est;
            let mut inline = None;
            if let Some(m) = &e.rec.meta
                && m.kind == Kind::File
                && m.size <= INLINE_MAX
            {
                if inline_bytes + m.size as usize > MAX_BATCH_INLINE && !records.is_empty() {
                    cut = true;
                    break;
                }
                inline = self.read_inline(group, &e.rec.path, m.size, &m.hash);
                inline_bytes += inline.as_ref().map(|v| v.len()).unwrap_or(0);
            }
            last_seq = last_seq.max(e.seq);
            records.push(WireRecord { rec: e.rec, inline });
        }
        let more = full || cut;
        let through = if more {
            last_seq
        } else {
            snapshot.max(last_seq).max(pos)
        };
        Ok((records, through, more, head))
    }

    fn read_inline(&self, group: &str, path: &str, size: u64, hash: &Hash) -> Option<Vec<u8>> {
        let g = self.group(group)?;
        let gp = crate::paths::validate(path, &g.cfg.paths).ok()?;
        let data = crate::safefs::read_at(&self.root, gp, path, 0, size as usize).ok()?;
        (crate::chunk::hash(&data) == *hash).then_some(data)
    }

    /// Read a chunk of `group` by hash from wherever this node has it, verified.
    pub fn read_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        let loc = self.index.chunk_location(hash).ok()??;
        if loc.group != group || loc.len > crate::chunk::MAX_CHUNK as u64 {
            return None;
        }
        let g = self.group(group)?;
        let gp = crate::paths::validate(&loc.path, &g.cfg.paths).ok()?;
        let data =
            crate::safefs::read_at(&self.root, gp, &loc.path, loc.offset, loc.len as usize).ok()?;
        (crate::chunk::hash(&data) == *hash).then_some(data)
    }

    pub(crate) fn touch_peer(&self, peer: &str) {
        lock(&self.last_seen).insert(peer.to_string(), SystemTime::now());
    }
}
