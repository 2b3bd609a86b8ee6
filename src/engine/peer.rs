//! What this node knows of its peers, shared by the link tasks, the lanes, the fetcher and
//! `status`: the handle of one live link ([`Link`]: its queues, its groups, what our pump sent
//! and the peer acknowledged, what the peer has) and the registry of links and of what is known
//! of every peer ([`Links`]: why a dial failed, config problems, last seen).
//!
//! Invariants: at most one live link per peer is registered (a newer one replaces and closes
//! the older); a link's handle only queues messages and records progress (the link task in
//! `engine::link` does the I/O); refused connections are logged and audited at a bounded rate.
//! This module knows nothing of lanes or of the node: both use it, it uses neither.

use crate::item::Hash;
use crate::net::protocol::Msg;
use crate::ops::audit::{Audit, Rec};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub(crate) type ChunkReply = Vec<Option<Vec<u8>>>;
pub(crate) type ListReply = Option<Vec<Vec<crate::item::ChunkRef>>>;

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
    pub(crate) hi: mpsc::Sender<Msg>,
    pub(crate) bulk: mpsc::Sender<Msg>,
    pub(crate) chunk_waiters: Mutex<HashMap<u64, oneshot::Sender<ChunkReply>>>,
    pub(crate) list_waiters: Mutex<HashMap<u64, oneshot::Sender<ListReply>>>,
    pub(crate) pong_waiters: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    pub(crate) next_req: AtomicU64,
    pub pumps: Mutex<HashMap<String, PumpProgress>>,
    pub pump_notify: Notify,
    /// Index batches handed to lanes and not applied yet.
    pub queued: AtomicUsize,
    pub remote: Mutex<HashMap<String, RemoteProgress>>,
    pub(crate) closed: watch::Sender<bool>,
    pub since: Instant,
    /// Bytes of chunk data sent and received on this link.
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    /// What the peer told us it holds, and the relays left out for it (`engine::relay`).
    pub relay: Mutex<crate::engine::relay::LinkRelay>,
    /// A `Have` arrived.
    pub(crate) have_seen: Notify,
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

    /// Ask the peer for the chunk refs of some groups of its version of `key` (protocol 5).
    pub async fn get_chunk_lists(
        &self,
        group: &str,
        key: &[u8],
        hash: &Hash,
        groups: Vec<u32>,
    ) -> Option<oneshot::Receiver<ListReply>> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.list_waiters).insert(req, tx);
        let m = Msg::GetChunkLists {
            req,
            group: group.to_string(),
            key: key.to_vec(),
            hash: *hash,
            groups,
        };
        if !self.send(m).await {
            lock(&self.list_waiters).remove(&req);
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

/// What this node knows of one peer besides its link.
#[derive(Debug, Default, Clone)]
pub struct PeerState {
    /// Why the last dial failed, or the link was refused (cleared when a link is up).
    pub error: Option<String>,
    /// Settings that differ between the configs (set at connect).
    pub config: Vec<String>,
    pub last_seen: Option<SystemTime>,
    /// When the config problems were last logged.
    pub(crate) config_logged: Option<Instant>,
    /// A dial is in progress.
    pub(crate) dialing: bool,
    /// The cipher suite this peer took when it refused our preferred one (a protocol-3
    /// release): later dials start with it, so it does not refuse (and audit) every connect.
    pub(crate) suite: Option<crate::net::transport::Suite>,
}

/// The connected peers and what is known of the others.
#[derive(Default)]
pub struct Links {
    pub(crate) map: Mutex<HashMap<String, Arc<Link>>>,
    pub(crate) peers: Mutex<HashMap<String, PeerState>>,
    next_conn: AtomicU64,
    /// Refused connections not yet logged, and when the last log line was written.
    refused: Mutex<(u64, Option<Instant>)>,
    changed: tokio::sync::Notify,
    /// Counts links registered and gone, for whoever tells peers which links are up
    /// (`engine::relay`).
    generation: tokio::sync::watch::Sender<u64>,
    /// Where each member's versions start in our index (`engine::relay`).
    pub checkpoints: crate::engine::relay::Checkpoints,
}

impl Links {
    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The live link to `peer`.
    pub fn get(&self, peer: &str) -> Option<Arc<Link>> {
        lock(&self.map)
            .get(peer)
            .cloned()
            .filter(|l| !l.is_closed())
    }

    pub(crate) fn register(&self, l: Arc<Link>) {
        if let Some(old) = lock(&self.map).insert(l.peer.clone(), l.clone()) {
            old.close();
        }
        let mut p = lock(&self.peers);
        let st = p.entry(l.peer.clone()).or_default();
        st.error = None;
        st.last_seen = Some(SystemTime::now());
        drop(p);
        self.changed.notify_waiters();
        self.generation.send_modify(|g| *g += 1);
    }

    pub(crate) fn unregister(&self, peer: &str, conn: u64) {
        let mut m = lock(&self.map);
        if m.get(peer).is_some_and(|l| l.conn == conn) {
            m.remove(peer);
        }
        drop(m);
        self.changed.notify_waiters();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes whenever a link is registered or goes.
    pub fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn close_all(&self) {
        for l in lock(&self.map).values() {
            l.close();
        }
    }

    pub(crate) fn touch(&self, peer: &str) {
        lock(&self.peers)
            .entry(peer.to_string())
            .or_default()
            .last_seen = Some(SystemTime::now());
    }

    pub fn state(&self, peer: &str) -> PeerState {
        lock(&self.peers).get(peer).cloned().unwrap_or_default()
    }

    /// Remember why `peer` cannot be reached; logged when the reason changes.
    pub(crate) fn set_error(&self, peer: &str, err: String) {
        let mut p = lock(&self.peers);
        let st = p.entry(peer.to_string()).or_default();
        if st.error.as_deref() != Some(err.as_str()) {
            tracing::warn!(peer, "cannot reach peer: {err} (retrying)");
        } else {
            tracing::debug!(peer, "cannot reach peer: {err}");
        }
        st.error = Some(err);
        drop(p);
        self.changed.notify_waiters();
    }

    /// Config differences found at connect: logged at ERROR, at most once a minute.
    pub(crate) fn set_config_problems(&self, peer: &str, problems: Vec<String>) {
        let mut p = lock(&self.peers);
        let st = p.entry(peer.to_string()).or_default();
        let log = !problems.is_empty()
            && (st.config != problems
                || st
                    .config_logged
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60)));
        if log {
            for m in &problems {
                tracing::error!(
                    peer,
                    "{m}; nothing of that group is exchanged with {peer} until the configs agree"
                );
            }
            st.config_logged = Some(Instant::now());
        }
        st.config = problems;
    }

    /// A refused connection: logged and audited at most once a minute, with the count.
    pub(crate) fn refused(&self, audit: &Audit, from: &str, why: &str) {
        let mut r = lock(&self.refused);
        r.0 += 1;
        if r.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            let n = r.0;
            r.0 = 0;
            r.1 = Some(Instant::now());
            drop(r);
            let detail = if n > 1 {
                format!("{why} ({n} refused connections since the last report)")
            } else {
                why.to_string()
            };
            tracing::warn!("refused connection from {from}: {detail}");
            audit.log(Rec {
                kind: "refused",
                peer: Some(from),
                detail: Some(&detail),
                ..Default::default()
            });
        }
    }

    /// Wait until `peer` has a link or `deadline`; fails early with the dial error once one
    /// attempt has failed and `fail_fast` is set.
    pub async fn wait_for(
        &self,
        peer: &str,
        deadline: tokio::time::Instant,
        fail_fast: bool,
    ) -> Result<Arc<Link>, String> {
        loop {
            let changed = self.changed.notified();
            if let Some(l) = self.get(peer) {
                return Ok(l);
            }
            let st = self.state(peer);
            if fail_fast && let Some(e) = st.error.clone() {
                return Err(e);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(st.error.unwrap_or_else(|| "not connected".into()));
            }
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
                changed,
            )
            .await;
        }
    }
}
