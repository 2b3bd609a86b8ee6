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

use crate::engine::lane::Lanes;
use crate::engine::node::{Ctx, Engine};
use crate::engine::peer::{Link, LinkGroup, RemoteProgress, lock};
use crate::item::Hash;
use crate::item::v3::RecordV3;
use crate::net::protocol::{
    GroupHello, INLINE_MAX, MAX_BATCH_INLINE, MAX_BATCH_ITEMS, MAX_CHUNKS_PER_REQUEST, MAX_GROUPS,
    MAX_UNACKED, Msg, WireItem,
};
use crate::net::transport::{HANDSHAKE_TIMEOUT, Link as Wire, LinkReader, TransportError};
use crate::net::v3::{self, Msg3};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

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
    /// The peer answered our `Hello` with `Bye`: it refuses this link (its reason says why,
    /// e.g. [`crate::net::protocol::BYE_UNKNOWN_KEY`]).
    #[error("{peer} refused the link: {reason}")]
    Refused { peer: String, reason: String },
    /// The peer closed the connection before its `Hello`: what a previous release does when
    /// it does not know our key.
    #[error("{0} closed the connection before its Hello")]
    ClosedBeforeHello(String),
}

impl LinkError {
    /// The link ended before the peer's `Hello`: it never came up (a failed dial, not a
    /// link that ended).
    pub fn before_hello(&self) -> bool {
        matches!(
            self,
            LinkError::NoHello(_) | LinkError::Refused { .. } | LinkError::ClosedBeforeHello(_)
        )
    }
}

/// Refuse an authenticated connection before `Hello`: tell the peer why in a `Bye` (in its
/// protocol version), then close.
pub(crate) async fn refuse(wire: Wire, reason: &str) {
    let Wire {
        mut writer,
        version,
        ..
    } = wire;
    let bye = Msg::Bye {
        reason: reason.to_string(),
    };
    if let Some(frame) = encode_for(version, &bye) {
        let _ = writer.send_frame(&frame).await;
    }
    writer.shutdown().await;
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
        Ok(Msg::Bye { reason }) => Err(LinkError::Refused {
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

/// Settings of this release that a peer of an older one (protocol before 5) cannot honour
/// pause their group on this link, named like a config difference (SPEC §5.15): an exclude
/// anchored at one group path (0.3) matches nothing there, so that peer would send what this
/// node refuses.
fn newer_settings(
    ctx: &Ctx,
    peer: &str,
    version: u32,
    groups: &mut HashMap<String, LinkGroup>,
    problems: &mut Vec<String>,
) {
    if version >= 5 {
        return;
    }
    for (name, lg) in groups.iter_mut().filter(|(_, lg)| lg.paused.is_none()) {
        let Some(g) = ctx.group(name) else { continue };
        let anchored = crate::local::filter::anchored(&g.cfg);
        if let Some(p) = anchored.first() {
            let why = format!(
                "group {name}: exclude {p:?} (anchored at one path, since 0.3) is not understood by {peer}, which runs an older release (protocol {version}); nothing of the group is exchanged with {peer} until it is upgraded"
            );
            problems.push(why.clone());
            lg.paused = Some(why);
        }
    }
}

/// Exchange `Hello`s: ours first, then the peer's, checked (it names the node its key belongs
/// to, and a bounded number of groups). A refusal is audited and said to the peer.
async fn exchange_hello(
    ctx: &Ctx,
    peer: &str,
    version: u32,
    reader: &mut LinkReader,
    writer: &mut crate::net::transport::LinkWriter,
) -> Result<PeerHello, LinkError> {
    let hello = our_hello(ctx, peer, version)?;
    // a peer that closes at once (before or after our Hello reached it) refused the link
    let closed = |e: TransportError| match e {
        TransportError::Closed | TransportError::Io(_) => {
            LinkError::ClosedBeforeHello(peer.to_string())
        }
        e => LinkError::Transport(e),
    };
    writer.send_frame(&hello).await.map_err(closed)?;
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.recv_frame(HANDSHAKE_TIMEOUT))
        .await
        .map_err(|_| LinkError::NoHello(peer.to_string()))?
        .map_err(closed)?;
    let checked = parse_hello(peer, version, &first).and_then(|h| {
        if h.node != peer {
            return Err(violation(
                peer,
                format!("introduced itself as {:?}", h.node),
            ));
        }
        if h.groups.len() > MAX_GROUPS {
            return Err(violation(peer, "too many groups in Hello"));
        }
        Ok(h)
    });
    if let Err(LinkError::Violation { msg, .. }) = &checked {
        ctx.audit_refused(peer, msg);
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
    checked
}

/// An index restored from an old snapshot: the peer has seen more of us than this index ever
/// held (what it held when it was opened, and what we sent since). The group gets a new
/// incarnation and every link is closed, so all peers send and receive everything again.
fn detect_rollback(ctx: &Ctx, peer: &str, hello: &PeerHello) -> Result<(), LinkError> {
    let known = ctx
        .store
        .opened_seq()
        .max(ctx.sent_seq.load(Ordering::Relaxed));
    for h in &hello.groups {
        if let Ok(inc) = ctx.store.incarnation(&h.group)
            && h.resume_inc == inc
            && ctx.shared_groups(peer).iter().any(|g| g.name() == h.group)
            && h.resume_seq > known
        {
            tracing::warn!(
                group = %h.group,
                "{peer} has seen this node's changes up to {} but this node's index only goes to {known} (restored from an older snapshot?); starting the group's exchange over with every peer",
                h.resume_seq
            );
            let _ = ctx.store.renew_incarnation(&h.group);
            ctx.links.close_all();
            return Err(LinkError::Bye {
                peer: peer.to_string(),
                reason: "index rollback detected; reconnecting".into(),
            });
        }
    }
    Ok(())
}

/// What the peer has of each group it exchanges with us, from its `Hello` (for progress).
fn remote_progress(
    ctx: &Ctx,
    peer: &str,
    hello: &PeerHello,
    groups: &HashMap<String, LinkGroup>,
) -> HashMap<String, RemoteProgress> {
    hello
        .groups
        .iter()
        .filter(|h| groups.get(&h.group).is_some_and(|g| g.paused.is_none()))
        .map(|h| {
            let applied = ctx
                .store
                .peer_position(peer, &h.group)
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
        .collect()
}

/// Start one pump per group we send to this peer, each from where the peer says it is.
fn start_pumps(
    ctx: &Arc<Ctx>,
    lanes: &Lanes,
    link: &Arc<Link>,
    hello: &PeerHello,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut pumps = Vec::new();
    for (g, lg) in &link.groups {
        if lg.paused.is_some() || ctx.group(g).is_none_or(|gr| gr.replica) || ctx.opts.dry_run {
            // a replica only receives; a dry run sends nothing
            continue;
        }
        let ours = if link.version >= 4 {
            ctx.store.incarnation(g).unwrap_or(0)
        } else {
            ctx.store.index_id()
        };
        let start = hello
            .groups
            .iter()
            .find(|h| &h.group == g && h.resume_inc == ours)
            .map(|h| h.resume_seq)
            .unwrap_or(0);
        let start = resume_point(ctx, &link.peer, g, start);
        let Some(head_rx) = lanes.get(g).map(|l| l.head_rx()) else {
            continue;
        };
        pumps.push(tokio::spawn(pump(
            ctx.clone(),
            head_rx,
            link.clone(),
            g.clone(),
            start,
        )));
    }
    pumps
}

/// Run an authenticated link with `peer` until it ends.
pub async fn run(ctx: Arc<Ctx>, lanes: Lanes, wire: Wire, peer: String) -> Result<(), LinkError> {
    let Wire {
        mut reader,
        mut writer,
        version,
        suite,
        ..
    } = wire;
    let hello = exchange_hello(&ctx, &peer, version, &mut reader, &mut writer).await?;
    detect_rollback(&ctx, &peer, &hello)?;
    let (mut groups, mut problems) = agree_groups(&ctx, &peer, &hello);
    newer_settings(&ctx, &peer, version, &mut groups, &mut problems);
    ctx.links.set_config_problems(&peer, problems);
    let (hi_tx, hi_rx) = mpsc::channel::<Msg>(64);
    let (bulk_tx, bulk_rx) = mpsc::channel::<Msg>(8);
    let (closed_tx, closed_rx) = watch::channel(false);
    let remote = remote_progress(&ctx, &peer, &hello, &groups);
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
    let pumps = start_pumps(&ctx, &lanes, &link, &hello);
    let engine = Engine {
        ctx: ctx.clone(),
        lanes: lanes.clone(),
    };
    let verifier = tokio::spawn(crate::engine::verify::background(engine, link.clone()));
    let (in_rx, reader_task) = spawn_reader(reader, version, link.clone(), ctx.clone());
    let result = serve(&ctx, &lanes, &link, in_rx, closed_rx, &hi_tx).await;
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

/// The link's main loop: the peer's messages, keep-alives, until the link closes, the node
/// stops or the peer breaks the protocol.
async fn serve(
    ctx: &Arc<Ctx>,
    lanes: &Lanes,
    link: &Arc<Link>,
    mut in_rx: mpsc::Receiver<Result<Msg, LinkError>>,
    mut closed_rx: watch::Receiver<bool>,
    hi_tx: &mpsc::Sender<Msg>,
) -> Result<(), LinkError> {
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let mut shutdown = ctx.shutdown_rx();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    loop {
        tokio::select! {
            _ = crate::engine::node::until_set(&mut closed_rx) => return Ok(()),
            _ = crate::engine::node::until_set(&mut shutdown) => {
                let _ = hi_tx.try_send(Msg::Bye { reason: "shutting down".into() });
                return Ok(());
            }
            _ = keepalive.tick() => {
                let _ = hi_tx.try_send(Msg::Ping { token: 0 });
            }
            m = in_rx.recv() => {
                let m = match m {
                    None => return Err(LinkError::Transport(TransportError::Closed)),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(m)) => m,
                };
                ctx.links.touch(&link.peer);
                dispatch(ctx, lanes, link, &serving, m).await?;
            }
        }
    }
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

/// Is `g` shared with the peer (else a violation), and exchanged (settings agree)?
fn check_group(link: &Link, g: &str) -> Result<bool, LinkError> {
    match link.groups.get(g) {
        None => Err(violation(
            &link.peer,
            format!("named group {g:?}, which it does not share with us"),
        )),
        // settings differ: nothing of it is exchanged (the peer knows it too)
        Some(lg) => Ok(lg.paused.is_none()),
    }
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    lanes: &Lanes,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    m: Msg,
) -> Result<(), LinkError> {
    let peer = link.peer.as_str();
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
        } => on_index(ctx, lanes, link, group, items, through, head).await?,
        Msg::Ack { group, through } => on_ack(ctx, link, group, through)?,
        Msg::GetChunks { req, group, hashes } => {
            on_get_chunks(ctx, link, serving, req, group, hashes).await?
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
        Msg::Ping { token } => on_ping(ctx, link, token),
        Msg::Pong { token } => {
            if let Some(tx) = lock(&link.pong_waiters).remove(&token) {
                let _ = tx.send(());
            }
        }
        m @ (Msg::Compare { .. } | Msg::Differ { .. }) => {
            let e = Engine {
                ctx: ctx.clone(),
                lanes: lanes.clone(),
            };
            crate::engine::verify::serve(&e, link, serving, m).await?;
        }
        m @ (Msg::Rows { .. } | Msg::DifferItems { .. }) => {
            crate::engine::verify::answered(link, m)?;
        }
    }
    Ok(())
}

/// A peer's batch: checked for the link's rules, then handed to the group's lane.
async fn on_index(
    ctx: &Ctx,
    lanes: &Lanes,
    link: &Arc<Link>,
    group: String,
    items: Vec<WireItem>,
    through: u64,
    head: u64,
) -> Result<(), LinkError> {
    let peer = link.peer.as_str();
    if !check_group(link, &group)? {
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
    if let Some(lane) = lanes.get(&group) {
        lane.remote(link.clone(), items, through).await;
    }
    Ok(())
}

/// The peer applied and saved our items up to `through`.
fn on_ack(ctx: &Ctx, link: &Link, group: String, through: u64) -> Result<(), LinkError> {
    if !check_group(link, &group)? {
        return Ok(());
    }
    let acked = {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.clone()).or_default();
        if through > e.last_sent {
            return Err(violation(&link.peer, "acknowledged more than was sent"));
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
    if durable_acks(link) {
        let _ = ctx.store.set_acked(&link.peer, &group, acked);
    }
    link.pump_notify.notify_waiters();
    Ok(())
}

/// Serve chunks of `group` by hash (on the blocking pool, a bounded number at once, the
/// answer capped in bytes).
async fn on_get_chunks(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    req: u64,
    group: String,
    hashes: Vec<Hash>,
) -> Result<(), LinkError> {
    if !check_group(link, &group)? {
        let data = vec![None; hashes.len()];
        let _ = link.bulk.send(Msg::Chunks { req, data }).await;
        return Ok(());
    }
    if hashes.len() > MAX_CHUNKS_PER_REQUEST {
        return Err(violation(&link.peer, "too many chunks requested"));
    }
    let Ok(permit) = serving.clone().acquire_owned().await else {
        return Ok(());
    };
    let (ctx, link) = (ctx.clone(), link.clone());
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
    Ok(())
}

/// A marked point (`sync`): answered once our pumps to this peer have read everything indexed
/// before now. Token 0 is a keep-alive.
fn on_ping(ctx: &Ctx, link: &Arc<Link>, token: u64) {
    if token == 0 {
        return;
    }
    let targets: Vec<(String, u64)> = link
        .groups
        .iter()
        .filter(|(g, lg)| lg.paused.is_none() && ctx.group(g).is_some_and(|gr| !gr.replica))
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

/// Do this peer's acknowledgements mean "applied and saved" (SPEC §5.13)? Protocol 5 on; the
/// previous releases also acknowledged batches they never saved (a stopped group, a failed
/// commit), so only the positions they send in `Hello` (saved with what they applied) count
/// for collecting tombstones. `status` still counts their live acknowledgements.
fn durable_acks(link: &Link) -> bool {
    link.version >= 5
}

/// Where our feed of `group` to `peer` starts: the position it says it applied, unless
/// tombstones above that position were collected here meanwhile (its state was restored from
/// an old copy): then everything is sent again, and the gap is said, not left silent.
fn resume_point(ctx: &Ctx, peer: &str, group: &str, pos: u64) -> u64 {
    let floor = ctx.store.collected_floor(group).unwrap_or(0);
    if pos == 0 || pos >= floor {
        return pos;
    }
    let msg = format!(
        "{peer} resumes group {group} from position {pos}, but deletions up to {floor} were already collected here (its state dir restored from an older copy?); sending it the whole index instead of what came after its position"
    );
    tracing::warn!(peer, group, "{msg}");
    ctx.audit.log(crate::ops::audit::Rec {
        group,
        kind: "resend-all",
        peer: Some(peer),
        detail: Some(&msg),
        ..Default::default()
    });
    0
}

/// Stream our items of `group` to the peer from `pos` on, then new ones as they come.
async fn pump(
    ctx: Arc<Ctx>,
    mut head_rx: watch::Receiver<u64>,
    link: Arc<Link>,
    group: String,
    mut pos: u64,
) {
    let mut closed = link.closed_rx();
    {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.clone()).or_default();
        e.scanned = pos;
        e.acked = pos;
        e.last_sent = pos;
    }
    // the position the peer says it saved is the truth about it now, also when it is lower
    // than what it acknowledged before (its state restored from an older copy): tombstones
    // above it wait for it again
    if ctx.store.acked(&link.peer, &group).unwrap_or(0) != pos {
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
        if let Some(t) = caught_up
            && durable_acks(&link)
        {
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
    let accounts = rt.is_some_and(|g| g.is_accounts());
    for e in entries {
        if accounts && version < 5 {
            // account items of this release would be misread by the previous ones
            not_sendable += 1;
            why_not = Some(format!(
                "{to} runs an older release (protocol {version}): accounts are not exchanged with it until it is upgraded"
            ));
            last_seq = last_seq.max(e.seq);
            continue;
        }
        // an account adopted by a node that joined as new is sent unversioned: any versioned
        // change wins over it; protocol 3 refuses an unversioned group root
        if e.item.version.is_empty() && (!is_root(&e.item.key) || version < 4) && !accounts {
            // adopted without a version (a replica's files): ours alone, never sent. A group
            // path directory nobody changed yet is sent unversioned: it gives way to any
            // versioned one, and between unversioned ones the conflict policy picks the
            // same on every node, so fresh nodes agree on its mode and mtime. Protocol 3
            // refuses any item without a version (and drops the link): a new or reset node
            // keeps its unversioned root to itself there, as a replica keeps its files
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
            })
            + match &e.item.body {
                Some(crate::item::Body::Account(a)) => a.size_hint(),
                _ => 0,
            };
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
