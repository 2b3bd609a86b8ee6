//! One live link with a peer: the `Hello` exchange (resume points, incarnations, and the
//! comparison of the settings both must agree on), a pump per shared group that streams our
//! items to the peer, a reader that hands the peer's batches to the groups' lanes, serves its
//! chunk requests and answers its pings, and a writer with two queues (control and index
//! messages go before bulk chunk data, so a large transfer never delays a small change).
//!
//! Invariants: a message is only acted on after `Hello` identified the peer (the transport
//! already checked its key) and only for groups that list both nodes and whose settings agree
//! (a group whose settings differ is paused with that peer, reported, and the other groups keep
//! syncing); every request from the peer is bounded (chunks per request, requests served at
//! once, batches queued for the lanes), and a violation closes this link only, with a logged
//! reason; at most [`MAX_UNACKED`] batches per group are in flight, so a slow receiver slows the
//! sender instead of growing memory; our items are not echoed back to the incarnation of the
//! peer they came from, and content travels inline only from the node that made the change
//! (relays send the item, and content is fetched where it is missing).

use crate::engine::node::Ctx;
use crate::item::Hash;
use crate::item::v3::RecordV3;
use crate::net::protocol::{
    GroupHello, INLINE_MAX, MAX_BATCH_INLINE, MAX_BATCH_ITEMS, MAX_CHUNKS_PER_REQUEST, MAX_GROUPS,
    MAX_UNACKED, Msg, WireItem,
};
use crate::net::transport::{HANDSHAKE_TIMEOUT, Link as Wire, LinkReader, TransportError};
use crate::net::v3::{self, Msg3};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

/// A link with no packet for this long is dead (SPEC §5.12: a vanished peer within 15 s).
pub const IDLE: Duration = Duration::from_secs(14);
/// Keep-alive interval.
pub const KEEPALIVE: Duration = Duration::from_secs(4);
/// Chunk requests served at once per link.
const MAX_SERVING: usize = 4;
/// Chunk bytes in one `Chunks` answer at most.
const MAX_CHUNKS_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Encoded bytes of items in one `Index` batch at most (well under the frame limit).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

type ChunkReply = Vec<Option<Vec<u8>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What our pump has sent and the peer has acknowledged, for one group.
#[derive(Debug, Default, Clone)]
pub struct PumpProgress {
    /// Our index has been read up to this seq (everything up to it was sent or skipped).
    pub scanned: u64,
    /// `through` of batches sent and not yet acknowledged.
    pub unacked: VecDeque<u64>,
    /// `through` of the last batch sent.
    pub last_sent: u64,
    /// Highest `through` the peer acknowledged.
    pub acked: u64,
    /// Items not sent because the peer's protocol cannot carry them.
    pub not_sendable: u64,
    /// What the peer could not take, for `status`.
    pub not_sendable_why: Option<String>,
}

/// What the peer has and we have applied, for one group.
#[derive(Debug, Default, Clone, Copy)]
pub struct RemoteProgress {
    /// The peer's head.
    pub head: u64,
    /// How far we applied its items.
    pub applied: u64,
    /// Items it said it held above our position at `Hello`, and items received since.
    pub expected: u64,
    pub received: u64,
    /// The same in bytes of file content.
    pub expected_bytes: u64,
    pub received_bytes: u64,
}

/// A shared group on this link.
#[derive(Debug, Clone)]
pub struct LinkGroup {
    /// The peer's incarnation of the group.
    pub peer_inc: u64,
    /// Why nothing of this group is exchanged with this peer (settings differ).
    pub paused: Option<String>,
}

/// A connected peer, shared by the link's tasks, the lanes and the fetcher.
pub struct Link {
    pub peer: String,
    pub conn: u64,
    /// The protocol version spoken.
    pub version: u32,
    pub groups: HashMap<String, LinkGroup>,
    hi: mpsc::Sender<Msg>,
    bulk: mpsc::Sender<Msg>,
    chunk_waiters: Mutex<HashMap<u64, oneshot::Sender<ChunkReply>>>,
    pong_waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_req: AtomicU64,
    pub pumps: Mutex<HashMap<String, PumpProgress>>,
    pub pump_notify: Notify,
    /// Index batches handed to lanes and not applied yet.
    pub queued: AtomicUsize,
    pub remote: Mutex<HashMap<String, RemoteProgress>>,
    closed: watch::Sender<bool>,
    pub since: Instant,
    /// Bytes of chunk data sent and received on this link.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// Our comparisons' requests waiting for the peer's answer (`engine::verify`).
    pub(crate) verify_waiters: Mutex<HashMap<u64, oneshot::Sender<Msg>>>,
}

impl Link {
    /// Queue a control or index message; false when the link is gone.
    pub async fn send(&self, m: Msg) -> bool {
        self.hi.send(m).await.is_ok()
    }

    /// Is `group` exchanged on this link (shared and not paused)?
    pub fn active(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.paused.is_none())
    }

    /// The peer's incarnation of `group`.
    pub fn peer_inc(&self, group: &str) -> u64 {
        self.groups.get(group).map(|g| g.peer_inc).unwrap_or(0)
    }

    /// Ask the peer for chunks; the receiver yields an error if the link drops.
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
        if !self.send(Msg::Ping { token }).await {
            return None;
        }
        Some(rx)
    }

    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub fn closed_rx(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Progress of our pump for `group`.
    pub fn pump(&self, group: &str) -> PumpProgress {
        lock(&self.pumps).get(group).cloned().unwrap_or_default()
    }

    pub fn remote_of(&self, group: &str) -> RemoteProgress {
        lock(&self.remote).get(group).copied().unwrap_or_default()
    }

    /// Send a request whose answer names its `req` (`engine::verify`): `make` builds it from a
    /// fresh number; the receiver yields the answer, or an error if the link drops.
    pub(crate) async fn request(
        &self,
        make: impl FnOnce(u64) -> Msg,
    ) -> Option<oneshot::Receiver<Msg>> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.verify_waiters).insert(req, tx);
        if !self.send(make(req)).await {
            lock(&self.verify_waiters).remove(&req);
            return None;
        }
        Some(rx)
    }
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("protocol violation by {peer}: {msg}")]
    Violation { peer: String, msg: String },
    #[error("{peer} closed the link: {reason}")]
    Bye { peer: String, reason: String },
    #[error("no Hello from {0} in time")]
    NoHello(String),
}

fn violation(peer: &str, msg: impl Into<String>) -> LinkError {
    LinkError::Violation {
        peer: peer.to_string(),
        msg: msg.into(),
    }
}

/// Keeps a link registered as the peer's current one while it lives.
struct Registered {
    ctx: Arc<Ctx>,
    link: Arc<Link>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.link.close();
        self.ctx.links.unregister(&self.link.peer, self.link.conn);
    }
}

fn encode_for(version: u32, m: &Msg) -> Option<Vec<u8>> {
    if m.since() > version.max(4) {
        // the peer's release does not know this message (protocol 3 gets protocol 4's
        // messages translated by `v3::from_current`)
        None
    } else if version >= 4 {
        m.encode().ok()
    } else {
        v3::from_current(m).and_then(|m| m.encode().ok())
    }
}

/// How the writer of one link sends: compression and the bandwidth limit.
#[derive(Debug, Clone, Copy)]
struct Sending {
    version: u32,
    compress: bool,
    /// Bytes per second at most.
    rate: Option<u64>,
}

impl Sending {
    fn encode(&self, m: &Msg) -> Option<Vec<u8>> {
        let worth = matches!(m, Msg::Index { .. } | Msg::Chunks { .. });
        if self.version >= 4 && m.since() <= self.version && self.compress && worth {
            m.encode_compressed().ok()
        } else {
            encode_for(self.version, m)
        }
    }
}

fn decode_for(version: u32, frame: &[u8]) -> Result<Result<Msg, Msg3>, String> {
    if version >= 4 {
        Msg::decode(frame).map(Ok).map_err(|e| e.to_string())
    } else {
        Msg3::decode(frame)
            .map(v3::to_current)
            .map_err(|e| e.to_string())
    }
}

/// The peer's `Hello`, in either protocol.
struct PeerHello {
    node: String,
    groups: Vec<GroupHello>,
    /// Protocol 3 has no settings to compare.
    settings_known: bool,
}

/// Build our `Hello` frame for `peer`.
fn our_hello(ctx: &Ctx, peer: &str, version: u32) -> Result<Vec<u8>, LinkError> {
    let mut groups = Vec::new();
    for g in ctx.shared_groups(peer) {
        let name = g.name().to_string();
        let (resume_inc, resume_seq) = ctx.store.peer_position(peer, &name).unwrap_or((0, 0));
        let head = ctx.store.group_head(&name).unwrap_or(0);
        let inc = ctx.store.incarnation(&name).unwrap_or(0);
        let (pending, pending_bytes) = if g.replica {
            (0, 0)
        } else {
            let acked = ctx.store.acked(peer, &name).unwrap_or(0);
            ctx.store.pending_since(&name, acked).unwrap_or((0, 0))
        };
        groups.push(GroupHello {
            group: name,
            inc,
            resume_inc,
            resume_seq,
            head,
            pending,
            pending_bytes,
            settings: g.settings.clone(),
        });
    }
    let frame = if version >= 4 {
        Msg::Hello {
            node: ctx.name.clone(),
            groups,
        }
        .encode()
    } else {
        Msg3::Hello {
            version: 3,
            node: ctx.name.clone(),
            index_id: ctx.store.index_id(),
            groups: groups
                .into_iter()
                .map(|g| v3::GroupResume {
                    group: g.group,
                    index_id: g.resume_inc,
                    seq: g.resume_seq,
                    head: g.head,
                })
                .collect(),
        }
        .encode()
    };
    frame.map_err(|e| violation(peer, e.to_string()))
}

fn parse_hello(peer: &str, version: u32, frame: &[u8]) -> Result<PeerHello, LinkError> {
    match decode_for(version, frame).map_err(|e| violation(peer, e))? {
        Ok(Msg::Hello { node, groups }) => Ok(PeerHello {
            node,
            groups,
            settings_known: true,
        }),
        Ok(Msg::Bye { reason }) => Err(LinkError::Bye {
            peer: peer.to_string(),
            reason,
        }),
        Ok(other) => Err(violation(
            peer,
            format!("sent {} before Hello", other.kind()),
        )),
        Err(Msg3::Hello {
            node,
            index_id,
            groups,
            ..
        }) => Ok(PeerHello {
            node,
            groups: groups
                .into_iter()
                .map(|g| GroupHello {
                    group: g.group,
                    inc: index_id,
                    resume_inc: g.index_id,
                    resume_seq: g.seq,
                    head: g.head,
                    pending: 0,
                    pending_bytes: 0,
                    settings: Default::default(),
                })
                .collect(),
            settings_known: false,
        }),
        Err(_) => Err(violation(peer, "unexpected message before Hello")),
    }
}

/// Compare the peer's view of each group with ours: the groups exchanged on this link, and for
/// each, whether it is paused (and why).
fn agree_groups(
    ctx: &Ctx,
    peer: &str,
    hello: &PeerHello,
) -> (HashMap<String, LinkGroup>, Vec<String>) {
    let mut out = HashMap::new();
    let mut problems = Vec::new();
    for g in ctx.shared_groups(peer) {
        let name = g.name();
        match hello.groups.iter().find(|h| h.group == name) {
            None => {
                let why = format!(
                    "config differs for group {name}: {peer} does not list this node in it (or has no group {name})"
                );
                problems.push(why.clone());
                out.insert(
                    name.to_string(),
                    LinkGroup {
                        peer_inc: 0,
                        paused: Some(why),
                    },
                );
            }
            Some(h) => {
                let paused = if hello.settings_known {
                    g.settings.diff(&h.settings).map(|(key, ours, theirs)| {
                        format!(
                            "config differs for group {name}: {key} is {ours} here and {theirs} on {peer}"
                        )
                    })
                } else {
                    None
                };
                if let Some(p) = &paused {
                    problems.push(p.clone());
                }
                out.insert(
                    name.to_string(),
                    LinkGroup {
                        peer_inc: h.inc,
                        paused,
                    },
                );
            }
        }
    }
    for h in &hello.groups {
        if !out.contains_key(&h.group) {
            problems.push(format!(
                "config differs for group {}: {peer} shares it with this node, this node's config does not",
                h.group
            ));
        }
    }
    (out, problems)
}

/// Run an authenticated link with `peer` until it ends.
pub async fn run(ctx: Arc<Ctx>, wire: Wire, peer: String) -> Result<(), LinkError> {
    let Wire {
        mut reader,
        mut writer,
        version,
        suite,
        ..
    } = wire;
    let hello = our_hello(&ctx, &peer, version)?;
    writer.send_frame(&hello).await?;
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.recv_frame(HANDSHAKE_TIMEOUT))
        .await
        .map_err(|_| LinkError::NoHello(peer.clone()))??;
    let hello = match parse_hello(&peer, version, &first).and_then(|h| {
        if h.node != peer {
            return Err(violation(
                &peer,
                format!("introduced itself as {:?}", h.node),
            ));
        }
        if h.groups.len() > MAX_GROUPS {
            return Err(violation(&peer, "too many groups in Hello"));
        }
        Ok(h)
    }) {
        Ok(h) => h,
        Err(e) => {
            if let LinkError::Violation { msg, .. } = &e {
                ctx.audit_refused(&peer, msg);
                tracing::warn!(peer = %peer, "refused link: {msg}");
                if let Some(frame) = encode_for(
                    version,
                    &Msg::Bye {
                        reason: msg.clone(),
                    },
                ) {
                    let _ = writer.send_frame(&frame).await;
                }
            }
            return Err(e);
        }
    };
    // an index restored from an old snapshot: the peer has seen more of us than this index
    // ever held (what it held when it was opened, and what we sent since)
    let known = ctx
        .store
        .opened_seq()
        .max(ctx.sent_seq.load(Ordering::Relaxed));
    for h in &hello.groups {
        if let Ok(inc) = ctx.store.incarnation(&h.group)
            && h.resume_inc == inc
            && ctx.shared_groups(&peer).iter().any(|g| g.name() == h.group)
        {
            let head = known;
            if h.resume_seq > head {
                tracing::warn!(
                    group = %h.group,
                    "{peer} has seen this node's changes up to {} but this node's index only goes to {head} (restored from an older snapshot?); starting the group's exchange over with every peer",
                    h.resume_seq
                );
                let _ = ctx.store.renew_incarnation(&h.group);
                ctx.links.close_all();
                return Err(LinkError::Bye {
                    peer,
                    reason: "index rollback detected; reconnecting".into(),
                });
            }
        }
    }
    let (groups, problems) = agree_groups(&ctx, &peer, &hello);
    ctx.links.set_config_problems(&peer, problems);

    let (hi_tx, hi_rx) = mpsc::channel::<Msg>(64);
    let (bulk_tx, bulk_rx) = mpsc::channel::<Msg>(8);
    let (closed_tx, mut closed_rx) = watch::channel(false);
    let remote: HashMap<String, RemoteProgress> = hello
        .groups
        .iter()
        .filter(|h| groups.get(&h.group).is_some_and(|g| g.paused.is_none()))
        .map(|h| {
            let applied = ctx
                .store
                .peer_position(&peer, &h.group)
                .map(|p| if p.0 == h.inc { p.1 } else { 0 })
                .unwrap_or(0);
            (
                h.group.clone(),
                RemoteProgress {
                    head: h.head,
                    applied,
                    expected: h.pending,
                    received: 0,
                    expected_bytes: h.pending_bytes,
                    received_bytes: 0,
                },
            )
        })
        .collect();
    let link = Arc::new(Link {
        peer: peer.clone(),
        conn: ctx.links.next_conn(),
        version,
        groups,
        hi: hi_tx.clone(),
        bulk: bulk_tx,
        chunk_waiters: Mutex::new(HashMap::new()),
        pong_waiters: Mutex::new(HashMap::new()),
        next_req: AtomicU64::new(1),
        pumps: Mutex::new(HashMap::new()),
        pump_notify: Notify::new(),
        queued: AtomicUsize::new(0),
        remote: Mutex::new(remote),
        closed: closed_tx,
        since: Instant::now(),
        bytes_out: AtomicU64::new(0),
        bytes_in: AtomicU64::new(0),
        verify_waiters: Mutex::new(HashMap::new()),
    });
    let how = Sending {
        version,
        compress: ctx.cfg.compress == crate::config::Compress::Auto,
        rate: ctx.cfg.bwlimit_to(&peer),
    };
    let writer_task = tokio::spawn(write_loop(
        writer,
        hi_rx,
        bulk_rx,
        how,
        link.clone(),
        ctx.metrics.clone(),
    ));
    ctx.links.register(link.clone());
    let _registered = Registered {
        ctx: ctx.clone(),
        link: link.clone(),
    };
    tracing::info!(peer = %peer, "connected (protocol {version}, {suite})");

    let mut pumps = Vec::new();
    for (g, lg) in &link.groups {
        if lg.paused.is_some() || ctx.group(g).is_none_or(|gr| gr.replica) {
            // a replica only receives
            continue;
        }
        let start = hello
            .groups
            .iter()
            .find(|h| &h.group == g)
            .filter(|h| {
                let ours = if version >= 4 {
                    ctx.store.incarnation(g).unwrap_or(0)
                } else {
                    ctx.store.index_id()
                };
                h.resume_inc == ours
            })
            .map(|h| h.resume_seq)
            .unwrap_or(0);
        pumps.push(tokio::spawn(pump(
            ctx.clone(),
            link.clone(),
            g.clone(),
            start,
        )));
    }

    let verifier = tokio::spawn(crate::engine::verify::background(ctx.clone(), link.clone()));
    let (mut in_rx, reader_task) = spawn_reader(reader, version, link.clone(), ctx.clone());
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let mut shutdown = ctx.shutdown_rx();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    let result = loop {
        tokio::select! {
            _ = crate::engine::node::until_set(&mut closed_rx) => break Ok(()),
            _ = crate::engine::node::until_set(&mut shutdown) => {
                let _ = hi_tx.try_send(Msg::Bye { reason: "shutting down".into() });
                break Ok(());
            }
            _ = keepalive.tick() => {
                let _ = hi_tx.try_send(Msg::Ping { token: 0 });
            }
            m = in_rx.recv() => {
                let m = match m {
                    None => break Err(LinkError::Transport(TransportError::Closed)),
                    Some(Err(e)) => break Err(e),
                    Some(Ok(m)) => m,
                };
                ctx.links.touch(&peer);
                if let Err(e) = dispatch(&ctx, &link, &serving, m).await {
                    break Err(e);
                }
            }
        }
    };
    if let Err(LinkError::Violation { msg, .. }) = &result {
        let _ = hi_tx.try_send(Msg::Bye {
            reason: msg.clone(),
        });
        ctx.audit_refused(&peer, msg);
    }
    link.close();
    reader_task.abort();
    verifier.abort();
    for p in pumps {
        p.abort();
    }
    drop(hi_tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
    lock(&link.chunk_waiters).clear();
    lock(&link.pong_waiters).clear();
    lock(&link.verify_waiters).clear();
    tracing::info!(peer = %peer, "disconnected{}", match &result { Ok(()) => String::new(), Err(e) => format!(": {e}") });
    result
}

async fn write_loop(
    mut writer: crate::net::transport::LinkWriter,
    mut hi: mpsc::Receiver<Msg>,
    mut bulk: mpsc::Receiver<Msg>,
    how: Sending,
    link: Arc<Link>,
    metrics: Arc<crate::ops::metrics::Metrics>,
) {
    let version = how.version;
    let mut closed = link.closed_rx();
    // the bandwidth limit: the earliest time the next frame may start
    let mut next_at = tokio::time::Instant::now();
    loop {
        let m = tokio::select! {
            biased;
            m = hi.recv() => match m { Some(m) => m, None => break },
            m = bulk.recv() => match m { Some(m) => m, None => break },
            // the link holds the senders of these queues: its end must end the writer too
            _ = crate::engine::node::until_set(&mut closed) => {
                // say why, if a reason was queued last
                while let Ok(m) = hi.try_recv() {
                    if let Msg::Bye { .. } = &m
                        && let Some(frame) = encode_for(version, &m)
                    {
                        let _ = writer.send_frame(&frame).await;
                    }
                }
                break;
            }
        };
        let Some(frame) = how.encode(&m) else {
            tracing::debug!(peer = %link.peer, "cannot encode {}", m.kind());
            continue;
        };
        if let Some(rate) = how.rate {
            tokio::time::sleep_until(next_at).await;
            let took = Duration::from_secs_f64(frame.len() as f64 / rate.max(1) as f64);
            next_at = next_at.max(tokio::time::Instant::now()) + took;
        }
        link.bytes_out
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        metrics.add_peer_bytes(&link.peer, frame.len() as u64, 0);
        if let Err(e) = writer.send_frame(&frame).await {
            tracing::debug!(peer = %link.peer, "write failed: {e}");
            break;
        }
        if matches!(m, Msg::Bye { .. }) {
            break;
        }
    }
    writer.shutdown().await;
    link.close();
}

/// Read messages in a task of their own: a read must never be cancelled half-way through a
/// packet (the rest of the stream would be undecryptable), which a `select!` would do.
fn spawn_reader(
    mut reader: LinkReader,
    version: u32,
    link: Arc<Link>,
    ctx: Arc<Ctx>,
) -> (
    mpsc::Receiver<Result<Msg, LinkError>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        let peer = link.peer.clone();
        loop {
            let r = match reader.recv_frame(IDLE).await {
                Err(e) => Err(LinkError::Transport(e)),
                Ok(frame) => {
                    link.bytes_in
                        .fetch_add(frame.len() as u64, Ordering::Relaxed);
                    ctx.metrics.add_peer_bytes(&peer, 0, frame.len() as u64);
                    match decode_for(version, &frame) {
                        Ok(Ok(m)) => Ok(m),
                        Ok(Err(_)) => Err(violation(&peer, "second Hello")),
                        Err(e) => Err(violation(&peer, e)),
                    }
                }
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
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let peer = link.peer.as_str();
    let check_group = |g: &str| -> Result<bool, LinkError> {
        match link.groups.get(g) {
            None => Err(violation(
                peer,
                format!("named group {g:?}, which it does not share with us"),
            )),
            // settings differ: nothing of it is exchanged (the peer knows it too)
            Some(lg) => Ok(lg.paused.is_none()),
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
            items,
            through,
            head,
        } => {
            if !check_group(&group)? {
                return Ok(());
            }
            if ctx.group(&group).is_some_and(|g| g.is_replica(peer)) {
                return Err(violation(
                    peer,
                    format!("is a replica of group {group} but sent changes"),
                ));
            }
            if items.len() > MAX_BATCH_ITEMS {
                return Err(violation(peer, "index batch too large"));
            }
            {
                let mut r = lock(&link.remote);
                let e = r.entry(group.clone()).or_default();
                e.head = e.head.max(head);
                e.received += items.len() as u64;
                e.received_bytes += items.iter().map(|w| w.item.size()).sum::<u64>();
            }
            let q = link.queued.fetch_add(1, Ordering::AcqRel);
            if q > MAX_UNACKED * link.groups.len().max(1) + 2 {
                return Err(violation(peer, "ignored flow control"));
            }
            let Some(lane) = ctx.lane(&group) else {
                return Ok(());
            };
            lane.remote(link.clone(), items, through, head).await;
        }
        Msg::Ack { group, through } => {
            if !check_group(&group)? {
                return Ok(());
            }
            let acked = {
                let mut p = lock(&link.pumps);
                let e = p.entry(group.clone()).or_default();
                if through > e.last_sent {
                    return Err(violation(peer, "acknowledged more than was sent"));
                }
                e.acked = e.acked.max(through);
                while e.unacked.front().is_some_and(|t| *t <= through) {
                    e.unacked.pop_front();
                }
                if e.unacked.is_empty() {
                    // nothing in flight: what we skipped counts as acknowledged too
                    e.acked = e.acked.max(e.scanned);
                }
                e.acked
            };
            let _ = ctx.store.set_acked(peer, &group, acked);
            link.pump_notify.notify_waiters();
        }
        Msg::GetChunks { req, group, hashes } => {
            if !check_group(&group)? {
                let _ = link
                    .bulk
                    .send(Msg::Chunks {
                        req,
                        data: vec![None; hashes.len()],
                    })
                    .await;
                return Ok(());
            }
            if hashes.len() > MAX_CHUNKS_PER_REQUEST {
                return Err(violation(peer, "too many chunks requested"));
            }
            let Ok(permit) = serving.clone().acquire_owned().await else {
                return Ok(());
            };
            let ctx = ctx.clone();
            let link = link.clone();
            // with a bandwidth limit, one answer takes at most about two seconds to send, so
            // keep-alives and small changes never wait long behind it
            let cap = match ctx.cfg.bwlimit_to(&link.peer) {
                Some(rate) => (rate as usize * 2).clamp(256 * 1024, MAX_CHUNKS_REPLY_BYTES),
                None => MAX_CHUNKS_REPLY_BYTES,
            };
            tokio::spawn(async move {
                let c2 = ctx.clone();
                let data = tokio::task::spawn_blocking(move || {
                    let mut total = 0usize;
                    hashes
                        .iter()
                        .map(|h| {
                            if total >= cap {
                                return None;
                            }
                            let d = c2.read_chunk(&group, h);
                            total += d.as_ref().map_or(0, |d| d.len());
                            d
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                let n: u64 = data.iter().flatten().map(|d| d.len() as u64).sum();
                ctx.counters.chunk_bytes_out.fetch_add(n, Ordering::Relaxed);
                let _ = link.bulk.send(Msg::Chunks { req, data }).await;
                drop(permit);
            });
        }
        Msg::Chunks { req, data } => {
            let w = lock(&link.chunk_waiters).remove(&req);
            match w {
                Some(tx) => {
                    let _ = tx.send(data);
                }
                None => return Err(violation(peer, "unsolicited Chunks")),
            }
        }
        Msg::Ping { token } => {
            if token != 0 {
                // answer once our pumps to this peer have read everything indexed before now
                let targets: Vec<(String, u64)> = link
                    .groups
                    .iter()
                    .filter(|(g, lg)| {
                        lg.paused.is_none() && ctx.group(g).is_some_and(|gr| !gr.replica)
                    })
                    .map(|(g, _)| (g.clone(), ctx.store.group_head(g).unwrap_or(0)))
                    .collect();
                let link = link.clone();
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(3600);
                    while Instant::now() < deadline && !link.is_closed() {
                        let notified = link.pump_notify.notified();
                        let done = targets.iter().all(|(g, t)| link.pump(g).scanned >= *t);
                        if done {
                            break;
                        }
                        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
                    }
                    let _ = link.send(Msg::Pong { token }).await;
                });
            }
        }
        Msg::Pong { token } => {
            if let Some(tx) = lock(&link.pong_waiters).remove(&token) {
                let _ = tx.send(());
            }
        }
        m @ (Msg::Compare { .. } | Msg::Differ { .. }) => {
            crate::engine::verify::serve(ctx, link, serving, m).await?;
        }
        m @ (Msg::Rows { .. } | Msg::DifferItems { .. }) => {
            crate::engine::verify::answered(link, m)?;
        }
    }
    Ok(())
}

/// Stream our items of `group` to the peer from `pos` on, then new ones as they come.
async fn pump(ctx: Arc<Ctx>, link: Arc<Link>, group: String, mut pos: u64) {
    let Some(lane) = ctx.lane(&group) else { return };
    let mut head_rx = lane.head_rx();
    let mut closed = link.closed_rx();
    {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.clone()).or_default();
        e.scanned = pos;
        e.acked = pos;
        e.last_sent = pos;
    }
    if ctx.store.acked(&link.peer, &group).unwrap_or(0) < pos {
        let _ = ctx.store.set_acked(&link.peer, &group, pos);
    }
    let peer_inc = link.peer_inc(&group);
    loop {
        // flow control
        loop {
            let notified = link.pump_notify.notified();
            if link.pump(&group).unacked.len() < MAX_UNACKED {
                break;
            }
            if link.is_closed() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
        if link.is_closed() {
            return;
        }
        head_rx.borrow_and_update();
        let c2 = ctx.clone();
        let g2 = group.clone();
        let to = link.peer.clone();
        let v = link.version;
        let batch =
            tokio::task::spawn_blocking(move || build_batch(&c2, &g2, pos, &to, peer_inc, v)).await;
        let b = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(group = %group, "reading the index for {}: {e}", link.peer);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        // nothing to send, but the peer should learn it is caught up: move its `through`
        let announce_empty = b.items.is_empty() && {
            let e = link.pump(&group);
            b.head > e.last_sent && b.through > e.last_sent
        };
        if b.not_sendable > 0 {
            let mut p = lock(&link.pumps);
            let e = p.entry(group.clone()).or_default();
            e.not_sendable += b.not_sendable;
            e.not_sendable_why = b.why_not.clone();
        }
        if !b.items.is_empty() || announce_empty {
            let n = b.items.len();
            ctx.audit_items(
                &group,
                b.items
                    .iter()
                    .map(|w| ("sent", &w.item, Some(link.peer.as_str()))),
            );
            {
                let mut p = lock(&link.pumps);
                let e = p.entry(group.clone()).or_default();
                e.unacked.push_back(b.through);
                e.last_sent = b.through;
            }
            ctx.sent_seq.fetch_max(b.through, Ordering::Relaxed);
            ctx.counters
                .items_out
                .fetch_add(n as u64, Ordering::Relaxed);
            ctx.metrics.changes_sent(&group, n as u64);
            if !link
                .send(Msg::Index {
                    group: group.clone(),
                    items: b.items,
                    through: b.through,
                    head: b.head,
                })
                .await
            {
                return;
            }
            tracing::debug!(peer = %link.peer, group = %group, "sent {n} items through {}", b.through);
        }
        pos = b.through;
        let caught_up = {
            let mut p = lock(&link.pumps);
            let e = p.entry(group.clone()).or_default();
            e.scanned = b.through;
            if e.unacked.is_empty() && e.acked < b.through {
                e.acked = b.through;
                Some(b.through)
            } else {
                None
            }
        };
        if let Some(t) = caught_up {
            let _ = ctx.store.set_acked(&link.peer, &group, t);
        }
        link.pump_notify.notify_waiters();
        if b.more {
            continue;
        }
        tokio::select! {
            r = head_rx.changed() => if r.is_err() { return },
            _ = crate::engine::node::until_set(&mut closed) => return,
        }
    }
}

/// One batch for a peer.
struct Batch {
    items: Vec<WireItem>,
    through: u64,
    more: bool,
    head: u64,
    not_sendable: u64,
    why_not: Option<String>,
}

/// Read our items of `group` after `pos` into a batch for `to`. Versions that came from `to`'s
/// current incarnation are skipped; so are items a protocol-3 peer cannot take.
fn build_batch(
    ctx: &Ctx,
    group: &str,
    pos: u64,
    to: &str,
    to_inc: u64,
    version: u32,
) -> Result<Batch, crate::store::StoreError> {
    let snapshot = ctx.store.max_seq()?;
    let head = ctx.store.group_head(group)?;
    let entries = ctx.store.since(group, pos, MAX_BATCH_ITEMS)?;
    let full = entries.len() >= MAX_BATCH_ITEMS;
    let mut items = Vec::with_capacity(entries.len());
    let mut inline_bytes = 0usize;
    let mut cut = false;
    let mut last_seq = pos;
    let mut encoded = 0usize;
    let mut not_sendable = 0u64;
    let mut why_not = None;
    let rt = ctx.group(group);
    let dirs = crate::fs::safefs::DirCache::default();
    let is_root = |key: &[u8]| {
        rt.is_some_and(|g| !g.replica && g.cfg.paths.iter().any(|p| p.as_bytes() == key))
    };
    for e in entries {
        if e.item.version.is_empty() && !is_root(&e.item.key) {
            // adopted without a version (a replica's files): ours alone, never sent. A group
            // path directory nobody changed yet is sent unversioned: it gives way to any
            // versioned one, and between unversioned ones the conflict policy picks the
            // same on every node, so fresh nodes agree on its mode and mtime
            last_seq = last_seq.max(e.seq);
            continue;
        }
        if e.from
            .as_ref()
            .is_some_and(|(p, inc)| p == to && *inc == to_inc)
        {
            // it came from that peer as it is: do not echo it back
            last_seq = last_seq.max(e.seq);
            continue;
        }
        if version < 4
            && let Err(why) = RecordV3::try_from(&e.item)
        {
            not_sendable += 1;
            why_not = Some(format!(
                "{to} runs the previous release (protocol 3) and cannot take {why}"
            ));
            last_seq = last_seq.max(e.seq);
            continue;
        }
        // rough encoded size: key, vector, chunk list, attributes
        let est = 128
            + e.item.key.len()
            + e.item.version.len() * 24
            + e.item.meta().map_or(0, |m| {
                m.chunks.len() * 40 + m.xattrs.iter().map(|x| x.name.len() + 64).sum::<usize>()
            });
        if encoded + est > MAX_BATCH_BYTES && !items.is_empty() {
            cut = true;
            break;
        }
        encoded += est;
        let mut inline = None;
        if let Some(m) = e.item.meta()
            && m.kind == crate::item::Kind::File
            && m.size <= INLINE_MAX
            && m.size > 0
            && e.item.origin == ctx.name
            && e.from.is_none()
            && e.fresh
        {
            if inline_bytes + m.size as usize > MAX_BATCH_INLINE && !items.is_empty() {
                cut = true;
                break;
            }
            inline = ctx.read_inline(group, &e.item.key, m.size, &m.hash, &dirs);
            inline_bytes += inline.as_ref().map(|v| v.len()).unwrap_or(0);
        }
        last_seq = last_seq.max(e.seq);
        items.push(WireItem {
            item: e.item,
            inline,
        });
    }
    let more = full || cut;
    let through = if more {
        last_seq
    } else {
        snapshot.max(last_seq).max(pos)
    };
    Ok(Batch {
        items,
        through,
        more,
        head,
        not_sendable,
        why_not,
    })
}
