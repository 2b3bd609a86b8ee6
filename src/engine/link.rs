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
//! peer they came from, nor relayed to a protocol-5 peer linked with the node that made them
//! (`engine::relay`; deletions excepted), and content travels inline only from the node that
//! made the change (relays send the item, and content is fetched where it is missing). On a
//! protocol-5 link batches and `Pong`s pass one ordered intake before `dispatch`
//! (`engine::lists`).

use crate::engine::lane::Lanes;
use crate::engine::node::{Ctx, Engine};
use crate::engine::peer::{Link, LinkGroup, RemoteProgress, lock};
use crate::engine::relay::{self, LinkRelay};
use crate::item::Hash;
use crate::item::v3::RecordV3;
use crate::net::protocol::{
    GroupHello, HaveFrom, INLINE_MAX, MAX_BATCH_INLINE, MAX_BATCH_ITEMS, MAX_CHUNKS_PER_REQUEST,
    MAX_GROUPS, MAX_HAVE, MAX_LIST_REPLY, MAX_UNACKED, Msg, WireItem,
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

/// How long a link may pass no packet before it is dead: [`IDLE`]. The test knob
/// `CLUSTERSYNC_TEST_IDLE_SECS` lengthens it, so that a test can hold a link stalled (alive,
/// passing nothing) for as long as its steps take on a loaded machine; it never goes below
/// two keep-alives.
fn idle() -> Duration {
    static IDLE_SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *IDLE_SET.get_or_init(|| {
        std::env::var("CLUSTERSYNC_TEST_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .map_or(IDLE, |d| d.max(2 * KEEPALIVE))
    })
}
/// Chunk requests served at once per link.
const MAX_SERVING: usize = 4;
/// Chunk bytes in one `Chunks` answer at most.
const MAX_CHUNKS_REPLY_BYTES: usize = 4 * 1024 * 1024;
/// Encoded bytes of items in one `Index` batch at most (well under the frame limit).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// A pump whose batches were all left out (echoes, deferred relays) tells the peer its new
/// position after this long (or with its next batch), not at once: one change would otherwise
/// cost an empty `Index` and its `Ack` on every link of every node that received it.
const LAZY_THROUGH: Duration = Duration::from_secs(60);
/// On a protocol-5 link, a pump waits this long at most for the peer's first `Have` before
/// its first batch, so that relays the peer does not need are left out from the start.
const FIRST_HAVE: Duration = Duration::from_secs(1);

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

pub(crate) fn violation(peer: &str, msg: impl Into<String>) -> LinkError {
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
        list_waiters: Mutex::new(HashMap::new()),
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
        relay: Mutex::new(LinkRelay::default()),
        have_seen: Notify::new(),
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
    // what we hold from each member, before any batch: the peer leaves out what we get from
    // elsewhere (protocol 5)
    let mut have_sent = HaveSent::new();
    if version >= 5 {
        send_have(&ctx, &link, &mut have_sent).await;
    }
    let pumps = start_pumps(&ctx, &lanes, &link, &hello);
    let engine = Engine {
        ctx: ctx.clone(),
        lanes: lanes.clone(),
    };
    let verifier = tokio::spawn(crate::engine::verify::background(engine, link.clone()));
    let (in_rx, reader_task) = spawn_reader(reader, version, link.clone(), ctx.clone());
    let result = serve(&ctx, &lanes, &link, in_rx, closed_rx, &hi_tx, have_sent).await;
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
    lock(&link.list_waiters).clear();
    lock(&link.pong_waiters).clear();
    lock(&link.verify_waiters).clear();
    tracing::info!(peer = %peer, "disconnected{}", match &result { Ok(()) => String::new(), Err(e) => format!(": {e}") });
    result
}

/// What we last told the peer we hold, per group and member (`Have`).
type HaveSent = HashMap<String, HashMap<String, HaveFrom>>;

/// The link's main loop: the peer's messages, keep-alives and our `Have`s, until the link
/// closes, the node stops or the peer breaks the protocol.
async fn serve(
    ctx: &Arc<Ctx>,
    lanes: &Lanes,
    link: &Arc<Link>,
    mut in_rx: mpsc::Receiver<Result<Msg, LinkError>>,
    mut closed_rx: watch::Receiver<bool>,
    hi_tx: &mpsc::Sender<Msg>,
    mut have_sent: HaveSent,
) -> Result<(), LinkError> {
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let mut shutdown = ctx.shutdown_rx();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    // protocol 5: batches (and `Pong`s, which mark a point among them) pass one ordered intake
    // that puts grouped chunk lists together (`engine::lists`) before `dispatch` sees them
    let (intake, mut ordered_rx, intake_task) = if link.version >= 5 {
        let (i, o, t) = spawn_intake(ctx.clone(), link.clone());
        (Some(i), o, Some(t))
    } else {
        (None, mpsc::channel(1).1, None)
    };
    let _intake_task = AbortOnDrop(intake_task);
    let mut links_gen = ctx.links.generation();
    let mut had = first_checkpoints(ctx, link);
    let mut gen_alive = link.version >= 5;
    // a link of ours came or went: say so soon (links made together are said together)
    let mut have_due: Option<tokio::time::Instant> = None;
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
            r = links_gen.changed(), if gen_alive => {
                if r.is_err() {
                    gen_alive = false;
                } else if have_due.is_none() {
                    have_due = Some(tokio::time::Instant::now() + Duration::from_millis(20));
                }
            }
            _ = tokio::time::sleep_until(have_due.unwrap_or_else(tokio::time::Instant::now)), if have_due.is_some() => {
                have_due = None;
                links_gen.borrow_and_update();
                send_have(ctx, link, &mut have_sent).await;
            }
            m = ordered_rx.recv(), if intake.is_some() => {
                let m = match m {
                    None => return Err(LinkError::Transport(TransportError::Closed)),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(m)) => m,
                };
                dispatch(ctx, lanes, link, &serving, m).await?;
            }
            m = in_rx.recv() => {
                let m = match m {
                    None => return Err(LinkError::Transport(TransportError::Closed)),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(m)) => m,
                };
                ctx.links.touch(&link.peer);
                note_checkpoint(ctx, link, &mut had, &m);
                let m = match (&intake, m) {
                    (Some(i), m @ (Msg::Index { .. } | Msg::IndexGrouped { .. } | Msg::Pong { .. })) => {
                        // a peer within flow control never fills it
                        if i.try_send(m).is_err() {
                            return Err(violation(&link.peer, "ignored flow control"));
                        }
                        continue;
                    }
                    (_, m) => m,
                };
                dispatch(ctx, lanes, link, &serving, m).await?;
            }
        }
    }
}

/// Aborts the task it holds when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Per group, how far we had the peer's index at connect (the start of its next batch's
/// checkpoint, `engine::relay`), each recorded as a checkpoint.
fn first_checkpoints(ctx: &Ctx, link: &Link) -> HashMap<String, u64> {
    link.groups
        .iter()
        .filter(|(_, lg)| lg.paused.is_none())
        .map(|(g, lg)| {
            let (inc, seq) = ctx.store.peer_position(&link.peer, g).unwrap_or((0, 0));
            let had = if inc == lg.peer_inc { seq } else { 0 };
            let ours = ctx.store.max_seq().unwrap_or(0);
            ctx.links
                .checkpoints
                .add(g, &link.peer, lg.peer_inc, had, ours);
            (g.clone(), had)
        })
        .collect()
}

/// A batch of the peer's arrived: versions of its past what we had land above our index now.
fn note_checkpoint(ctx: &Ctx, link: &Link, had: &mut HashMap<String, u64>, m: &Msg) {
    if let Msg::Index { group, through, .. } | Msg::IndexGrouped { group, through, .. } = m
        && let Some(had) = had.get_mut(group)
    {
        let ours = ctx.store.max_seq().unwrap_or(0);
        ctx.links
            .checkpoints
            .add(group, &link.peer, link.peer_inc(group), *had, ours);
        *had = (*had).max(*through);
    }
}

/// Tell the peer what we hold from each member of the groups we exchange, where it changed
/// since we last said (all of it the first time).
async fn send_have(ctx: &Arc<Ctx>, link: &Arc<Link>, sent: &mut HaveSent) {
    let groups: Vec<String> = link
        .groups
        .iter()
        .filter(|(_, lg)| lg.paused.is_none())
        .map(|(g, _)| g.clone())
        .collect();
    for g in groups {
        let (c2, g2) = (ctx.clone(), g.clone());
        let now = tokio::task::spawn_blocking(move || relay::have(&c2, &g2))
            .await
            .unwrap_or_default();
        let before = sent.entry(g.clone()).or_default();
        let first = before.is_empty();
        let changed: Vec<HaveFrom> = now
            .into_iter()
            .filter(|h| h.node != link.peer && before.get(&h.node) != Some(h))
            .collect();
        if changed.is_empty() && !first {
            continue;
        }
        for h in &changed {
            before.insert(h.node.clone(), h.clone());
        }
        if !link
            .send(Msg::Have {
                group: g,
                from: changed,
            })
            .await
        {
            return;
        }
    }
}

/// The ordered intake of a protocol-5 link: batches and `Pong`s in the order they arrived,
/// grouped chunk lists put together, out to the link's loop for `dispatch`.
#[allow(clippy::type_complexity)]
fn spawn_intake(
    ctx: Arc<Ctx>,
    link: Arc<Link>,
) -> (
    mpsc::Sender<Msg>,
    mpsc::Receiver<Result<Msg, LinkError>>,
    tokio::task::JoinHandle<()>,
) {
    // a sender within flow control has at most MAX_UNACKED batches per group unacknowledged
    let room = MAX_UNACKED * link.groups.len().max(1) + 16;
    let (in_tx, mut in_rx) = mpsc::channel::<Msg>(room);
    let (out_tx, out_rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        while let Some(m) = in_rx.recv().await {
            let out = match m {
                Msg::IndexGrouped {
                    group,
                    items,
                    lists,
                    through,
                    head,
                } => expand_grouped(&ctx, &link, group, items, lists, through, head).await,
                m => Ok(m),
            };
            let stop = out.is_err();
            if out_tx.send(out).await.is_err() || stop {
                return;
            }
        }
    });
    (in_tx, out_rx, task)
}

/// An `IndexGrouped` made an `Index`: its grouped chunk lists fetched and put together.
async fn expand_grouped(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    group: String,
    items: Vec<WireItem>,
    lists: Vec<crate::net::protocol::GroupedList>,
    through: u64,
    head: u64,
) -> Result<Msg, LinkError> {
    if !link.groups.contains_key(&group) {
        // dispatch names the violation
        return Ok(Msg::Index {
            group,
            items,
            through,
            head,
        });
    }
    match crate::engine::lists::expand(ctx, link, &group, items, lists).await {
        Ok(items) => Ok(Msg::Index {
            group,
            items,
            through,
            head,
        }),
        Err(e) => Err(violation(&link.peer, e.to_string())),
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
            let r = match reader.recv_frame(idle()).await {
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
pub(crate) fn check_group(link: &Link, g: &str) -> Result<bool, LinkError> {
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
        Msg::IndexGrouped { .. } => {
            // a protocol-5 link hands these to its intake (`serve`), which makes them `Index`
            return Err(violation(
                peer,
                format!("sent IndexGrouped on a protocol {} link", link.version),
            ));
        }
        Msg::GetChunkLists {
            req,
            group,
            key,
            hash,
            groups,
        } => on_get_chunk_lists(ctx, link, serving, req, group, key, hash, groups).await?,
        Msg::ChunkLists { req, lists } => {
            let w = lock(&link.list_waiters).remove(&req);
            match w {
                Some(tx) => {
                    let _ = tx.send(lists);
                }
                None => return Err(violation(peer, "unsolicited ChunkLists")),
            }
        }
        Msg::Have { group, from } => on_have(ctx, link, group, from)?,
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

/// Serve the chunk refs of some groups of our version of `key` (protocol 5, `engine::lists`).
#[allow(clippy::too_many_arguments)]
async fn on_get_chunk_lists(
    ctx: &Arc<Ctx>,
    link: &Arc<Link>,
    serving: &Arc<Semaphore>,
    req: u64,
    group: String,
    key: Vec<u8>,
    hash: Hash,
    groups: Vec<u32>,
) -> Result<(), LinkError> {
    if groups.len() > MAX_LIST_REPLY {
        return Err(violation(&link.peer, "too many chunk groups requested"));
    }
    if !check_group(link, &group)? {
        let _ = link.send(Msg::ChunkLists { req, lists: None }).await;
        return Ok(());
    }
    let Ok(permit) = serving.clone().acquire_owned().await else {
        return Ok(());
    };
    let (ctx, link) = (ctx.clone(), link.clone());
    tokio::spawn(async move {
        let c2 = ctx.clone();
        let lists = tokio::task::spawn_blocking(move || {
            crate::engine::lists::serve(&c2, &group, &key, &hash, &groups)
        })
        .await
        .unwrap_or_default();
        let _ = link.send(Msg::ChunkLists { req, lists }).await;
        drop(permit);
    });
    Ok(())
}

/// The peer says what it holds from each member (`engine::relay`): relays it gets elsewhere
/// are left out, and what it lost a member for is read again.
fn on_have(ctx: &Ctx, link: &Link, group: String, from: Vec<HaveFrom>) -> Result<(), LinkError> {
    if from.len() > MAX_HAVE {
        return Err(violation(&link.peer, "too many members in Have"));
    }
    if !check_group(link, &group)? {
        return Ok(());
    }
    let ours = |m: &str| ctx.store.peer_position(m, &group).unwrap_or((0, 0));
    let back = |m: &str, pos: u64| {
        let inc = ours(m).0;
        ctx.links.checkpoints.back(&group, m, inc, pos)
    };
    lock(&link.relay).group(&group).update(from, ours, back);
    link.have_seen.notify_waiters();
    link.pump_notify.notify_waiters();
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
        durable(e)
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
            // relays owed to the peer (`engine::relay`) are part of "everything"
            let done = targets.iter().all(|(g, t)| {
                link.pump(g).scanned >= *t
                    && !lock(&link.relay).groups.get(g).is_some_and(|r| r.busy())
            });
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

/// Where a pump stands between batches.
struct PumpState {
    /// Our index was read up to here.
    pos: u64,
    /// Reading again (versions left out for the peer that it may lack now), up to here.
    replay_until: Option<u64>,
    /// A position the peer learns later (`LAZY_THROUGH`).
    lazy: Option<tokio::time::Instant>,
    /// The lazy position is due now.
    tell: bool,
    /// The highest head of ours the peer heard of (in `Hello`, read before this, or with a
    /// batch): while it is above what we sent, the peer counts itself behind us, so it must
    /// hear of a new position at once.
    head_told: u64,
}

/// Stream our items of `group` to the peer from `start` on, then new ones as they come.
async fn pump(
    ctx: Arc<Ctx>,
    mut head_rx: watch::Receiver<u64>,
    link: Arc<Link>,
    group: String,
    start: u64,
) {
    let mut closed = link.closed_rx();
    {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.clone()).or_default();
        e.scanned = start;
        e.acked = start;
        e.last_sent = start;
    }
    // the position the peer says it saved is the truth about it now, also when it is lower
    // than what it acknowledged before (its state restored from an older copy): tombstones
    // above it wait for it again
    if ctx.store.acked(&link.peer, &group).unwrap_or(0) != start {
        let _ = ctx.store.set_acked(&link.peer, &group, start);
    }
    let peer_inc = link.peer_inc(&group);
    if link.version >= 5 {
        wait_first_have(&link, &group).await;
    }
    let mut st = PumpState {
        pos: start,
        replay_until: None,
        lazy: None,
        tell: false,
        head_told: ctx.store.group_head(&group).unwrap_or(u64::MAX),
    };
    loop {
        if !flow_control(&link, &group).await {
            return;
        }
        rewind_if_asked(&link, &group, &mut st);
        head_rx.borrow_and_update();
        let (c2, g2, l2, pos) = (ctx.clone(), group.clone(), link.clone(), st.pos);
        let batch =
            tokio::task::spawn_blocking(move || build_batch(&c2, &g2, pos, &l2, peer_inc)).await;
        let b = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(group = %group, "reading the index for {}: {e}", link.peer);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        let (through, more) = (b.through, b.more);
        if !send_batch(&ctx, &link, &group, b, &mut st).await {
            return;
        }
        st.pos = through;
        caught_up(&ctx, &link, &group, through);
        if more || st.replay_until.is_some() {
            continue;
        }
        // registered before the check, so a `Have` between the two still wakes us
        let notified = link.have_seen.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if lock(&link.relay)
            .groups
            .get(&group)
            .is_some_and(|g| g.busy())
        {
            continue;
        }
        tokio::select! {
            r = head_rx.changed() => if r.is_err() { return },
            _ = crate::engine::node::until_set(&mut closed) => return,
            // a `Have` may have asked for a rewind
            _ = notified => {}
            _ = tokio::time::sleep_until(st.lazy.unwrap_or_else(tokio::time::Instant::now)), if st.lazy.is_some() => {
                st.lazy = None;
                st.tell = true;
            }
        }
    }
}

/// What the peer holds decides which relays it needs: wait (briefly) for its first `Have`.
async fn wait_first_have(link: &Link, group: &str) {
    let deadline = Instant::now() + FIRST_HAVE;
    loop {
        let notified = link.have_seen.notified();
        let seen = lock(&link.relay).groups.get(group).is_some_and(|g| g.seen);
        if seen || link.is_closed() || Instant::now() >= deadline {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
}

/// Wait until fewer than [`MAX_UNACKED`] batches are in flight; false when the link is gone.
async fn flow_control(link: &Link, group: &str) -> bool {
    loop {
        let notified = link.pump_notify.notified();
        if link.pump(group).unacked.len() < MAX_UNACKED {
            break;
        }
        if link.is_closed() {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
    }
    !link.is_closed()
}

/// The peer lacks a member it was to get versions from: read them again.
fn rewind_if_asked(link: &Link, group: &str, st: &mut PumpState) {
    let rewind = lock(&link.relay).group(group).take_rewind();
    if let Some(r) = rewind
        && r < st.pos
    {
        tracing::debug!(peer = %link.peer, group = %group, "reading again from {r} (was at {}): the peer lacks versions it was to get elsewhere", st.pos);
        st.replay_until = Some(st.replay_until.map_or(st.pos, |u| u.max(st.pos)));
        st.pos = r;
        let mut p = lock(&link.pumps);
        let e = p.entry(group.to_string()).or_default();
        e.scanned = e.scanned.min(r);
    }
}

/// Send one batch (or an empty one that moves the peer's position); false when the link is
/// gone.
async fn send_batch(ctx: &Ctx, link: &Link, group: &str, b: Batch, st: &mut PumpState) -> bool {
    if st.replay_until.is_some_and(|u| b.through >= u) {
        st.replay_until = None;
    }
    // nothing to send, but the peer should learn it is caught up: move its `through`; when
    // all that was read are versions it has or gets elsewhere, later (`LAZY_THROUGH`)
    if b.tell {
        st.tell = true;
    }
    let announce_empty = b.items.is_empty() && {
        let e = link.pump(group);
        let quiet = (b.lazy || st.lazy.is_some()) && !st.tell && st.head_told <= e.last_sent;
        b.head > e.last_sent && b.through > e.last_sent && !quiet
    };
    st.tell = false;
    if b.items.is_empty() && b.lazy && !announce_empty && st.lazy.is_none() {
        st.lazy = Some(tokio::time::Instant::now() + LAZY_THROUGH);
    }
    if b.not_sendable > 0 {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.to_string()).or_default();
        e.not_sendable += b.not_sendable;
        e.not_sendable_why = b.why_not.clone();
    }
    if b.items.is_empty() && !announce_empty {
        return true;
    }
    st.lazy = None;
    let n = b.items.len();
    ctx.audit_items(
        group,
        b.items
            .iter()
            .map(|w| ("sent", &w.item, Some(link.peer.as_str()))),
    );
    // reading again, `through` stays where it was: what the peer holds up to there is
    // unchanged, the versions it may lack come in this batch
    let through = {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.to_string()).or_default();
        let through = b.through.max(e.last_sent);
        e.unacked.push_back(through);
        e.last_sent = through;
        through
    };
    ctx.sent_seq.fetch_max(through, Ordering::Relaxed);
    ctx.counters
        .items_out
        .fetch_add(n as u64, Ordering::Relaxed);
    ctx.metrics.changes_sent(group, n as u64);
    // reading again, our head may be past `through` by versions left out (never announced):
    // a head above `through` would have the peer count itself behind us until the next batch
    let head = if through > b.through {
        b.head.min(through)
    } else {
        b.head
    };
    st.head_told = st.head_told.max(head);
    let group = group.to_string();
    let m = if b.lists.is_empty() {
        Msg::Index {
            group: group.clone(),
            items: b.items,
            through,
            head,
        }
    } else {
        Msg::IndexGrouped {
            group: group.clone(),
            items: b.items,
            lists: b.lists,
            through,
            head,
        }
    };
    if !link.send(m).await {
        return false;
    }
    tracing::debug!(peer = %link.peer, group = %group, "sent {n} items through {through}");
    true
}

/// What of a pump's acknowledged position is kept for collecting tombstones: no more than
/// the peer was told (`last_sent`) and so saved. What was left out past it (echoes, relays it
/// gets elsewhere) counts as acknowledged for `status`, but a position the peer never saved
/// would, once tombstones up to it were collected, make its next link look like a state dir
/// restored from an older copy (`resume_point`: the whole index sent again).
fn durable(e: &crate::engine::peer::PumpProgress) -> u64 {
    e.acked.min(e.last_sent)
}

/// Our index was read up to `through`: with nothing in flight, the peer has all of it.
fn caught_up(ctx: &Ctx, link: &Link, group: &str, through: u64) {
    let caught_up = {
        let mut p = lock(&link.pumps);
        let e = p.entry(group.to_string()).or_default();
        e.scanned = through;
        if e.unacked.is_empty() && e.acked < through {
            e.acked = through;
            Some(durable(e))
        } else {
            None
        }
    };
    if let Some(t) = caught_up
        && durable_acks(link)
    {
        let _ = ctx.store.set_acked(&link.peer, group, t);
    }
    link.pump_notify.notify_waiters();
}

/// One batch for a peer.
struct Batch {
    items: Vec<WireItem>,
    /// Long chunk lists of `items` sent as group hashes (protocol 5).
    lists: Vec<crate::net::protocol::GroupedList>,
    through: u64,
    more: bool,
    head: u64,
    not_sendable: u64,
    why_not: Option<String>,
    /// Versions were read and every one left out as held by the peer or due from elsewhere
    /// (echoes, deferred relays): the peer need not hear of the new position at once.
    lazy: bool,
    /// A deletion was left out: the peer hears of the new position at once all the same.
    tell: bool,
}

/// Why an entry of our index is not sent to a peer.
enum Skip {
    /// Ours alone (unversioned).
    Own,
    /// The peer has it or gets it from elsewhere (an echo, a relay left out).
    Held,
    /// The peer's release cannot take it.
    NotSendable(String),
}

/// Is a version (that came `from`, made by `origin`) held back from `link`'s peer
/// (incarnation `to_inc`) because the peer has it or gets it from its maker?
fn held(
    link: &Link,
    group: &str,
    from: Option<&(String, u64)>,
    origin: &str,
    deleted: bool,
    to_inc: u64,
) -> bool {
    if from.is_some_and(|(p, inc)| *p == link.peer && *inc == to_inc) {
        // it came from that peer as it is: do not echo it back
        return true;
    }
    from_its_maker(link, group, from, origin, deleted)
}

/// Does `link`'s peer get a version (that came `from`, made by `origin`) from its maker rather
/// than from us? A version we got from the node that made it, and the peer is linked with that
/// node: it gets it from there (`engine::relay`). Deletions are always relayed: they are
/// small, and a tombstone collected here must not depend on another node.
pub(crate) fn from_its_maker(
    link: &Link,
    group: &str,
    from: Option<&(String, u64)>,
    origin: &str,
    deleted: bool,
) -> bool {
    link.version >= 5
        && !deleted
        && from.is_some_and(|(p, inc)| {
            p == origin && lock(&link.relay).group(group).leave_out(p, *inc)
        })
}

/// Is `e` left out of a batch for `link`'s peer (incarnation `to_inc`), and why?
fn skip(
    link: &Link,
    group: &str,
    e: &crate::item::Entry,
    to_inc: u64,
    accounts: bool,
    is_root: bool,
) -> Option<Skip> {
    let (to, version) = (link.peer.as_str(), link.version);
    if accounts && version < 5 {
        // account items of this release would be misread by the previous ones
        return Some(Skip::NotSendable(format!(
            "{to} runs an older release (protocol {version}): accounts are not exchanged with it until it is upgraded"
        )));
    }
    // an account adopted by a node that joined as new is sent unversioned: any versioned
    // change wins over it; protocol 3 refuses an unversioned group root
    if e.item.version.is_empty() && (!is_root || version < 4) && !accounts {
        // adopted without a version (a replica's files): ours alone, never sent. A group
        // path directory nobody changed yet is sent unversioned: it gives way to any
        // versioned one, and between unversioned ones the conflict policy picks the
        // same on every node, so fresh nodes agree on its mode and mtime. Protocol 3
        // refuses any item without a version (and drops the link): a new or reset node
        // keeps its unversioned root to itself there, as a replica keeps its files
        return Some(Skip::Own);
    }
    if held(
        link,
        group,
        e.from.as_ref(),
        &e.item.origin,
        e.item.is_deleted(),
        to_inc,
    ) {
        return Some(Skip::Held);
    }
    if version < 4
        && let Err(why) = RecordV3::try_from(&e.item)
    {
        return Some(Skip::NotSendable(format!(
            "{to} runs the previous release (protocol 3) and cannot take {why}"
        )));
    }
    None
}

/// Read our items of `group` after `pos` into a batch for `link`'s peer. Versions that came
/// from the peer's current incarnation (`to_inc`) are skipped; so are items its release cannot
/// take, and relays it gets from the member they came from (`engine::relay`).
fn build_batch(
    ctx: &Ctx,
    group: &str,
    pos: u64,
    link: &Link,
    to_inc: u64,
) -> Result<Batch, crate::store::StoreError> {
    let snapshot = ctx.store.max_seq()?;
    let head = ctx.store.group_head(group)?;
    let rt = ctx.group(group);
    let accounts = rt.is_some_and(|g| g.is_accounts());
    // read no more than a batch can carry (items are cut at MAX_BATCH_BYTES below anyway),
    // and leave out without decoding what `skip` would leave out as held by the peer
    // a deletion left out (an echo of the peer's own) is told at once, not lazily: until the
    // peer saved a position past it, its tombstone is not collected here (`durable`)
    let held_deletion = std::cell::Cell::new(false);
    let leave = |h: &crate::store::Head| -> bool {
        if (accounts && link.version < 5) || (h.unversioned && !accounts) || link.version < 4 {
            return false; // decided by `skip` on the decoded entry
        }
        let left = held(link, group, h.from.as_ref(), &h.origin, h.deleted, to_inc);
        if left && h.deleted {
            held_deletion.set(true);
        }
        left
    };
    let since = ctx
        .store
        .since_within(group, pos, MAX_BATCH_ITEMS, MAX_BATCH_BYTES, &leave)?;
    let entries = since.entries;
    let full = since.over || entries.len() + since.left.len() >= MAX_BATCH_ITEMS;
    let mut items = Vec::with_capacity(entries.len());
    let mut inline_bytes = 0usize;
    let mut cut = false;
    let mut last_seq = pos;
    let mut encoded = 0usize;
    let mut not_sendable = 0u64;
    let mut why_not = None;
    let (mut left_out, mut other_skips) = (0usize, 0usize);
    // the first entry that did not fit: entries left out after it are not passed over either
    let mut cut_at = None;
    let dirs = crate::fs::safefs::DirCache::default();
    let is_root = |key: &[u8]| {
        rt.is_some_and(|g| !g.replica && g.cfg.paths.iter().any(|p| p.as_bytes() == key))
    };
    for e in entries {
        match skip(link, group, &e, to_inc, accounts, is_root(&e.item.key)) {
            None => {}
            Some(why) => {
                match why {
                    Skip::Own => other_skips += 1,
                    Skip::Held => {
                        left_out += 1;
                        if e.item.is_deleted() {
                            held_deletion.set(true);
                        }
                    }
                    Skip::NotSendable(w) => {
                        not_sendable += 1;
                        other_skips += 1;
                        why_not = Some(w);
                    }
                }
                last_seq = last_seq.max(e.seq);
                continue;
            }
        }
        let est = estimate(&e.item);
        if encoded + est > MAX_BATCH_BYTES && !items.is_empty() {
            cut = true;
            cut_at = Some(e.seq);
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
                cut_at = Some(e.seq);
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
    for &seq in since.left.iter().filter(|&&s| cut_at.is_none_or(|c| s < c)) {
        left_out += 1;
        last_seq = last_seq.max(seq);
    }
    let more = full || cut;
    let through = if more {
        last_seq
    } else {
        snapshot.max(last_seq).max(pos)
    };
    let lists = if link.version >= 5 {
        crate::engine::lists::group_items(&mut items)
    } else {
        Vec::new()
    };
    Ok(Batch {
        items,
        lists,
        through,
        more,
        head,
        not_sendable,
        why_not,
        lazy: left_out > 0 && other_skips == 0,
        tell: held_deletion.get(),
    })
}

/// Rough encoded size of an item: key, vector, chunk list, attributes.
fn estimate(item: &crate::item::Item) -> usize {
    128 + item.key.len()
        + item.version.len() * 24
        + item.meta().map_or(0, |m| {
            m.chunks.len() * 40 + m.xattrs.iter().map(|x| x.name.len() + 64).sum::<usize>()
        })
        + match &item.body {
            Some(crate::item::Body::Account(a)) => a.size_hint(),
            _ => 0,
        }
}
