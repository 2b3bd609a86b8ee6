//! What every task of a running node shares ([`Ctx`]): its configuration and name, the
//! index, the audit log, the backup store, the owner cache, the links registry, metrics,
//! counters and the shutdown signal; with the small helpers every layer uses (audit lines,
//! reading a chunk or a small file for a peer, the group of a path).
//!
//! Invariants: immutable for the life of a node apart from the services' own interior state;
//! made in one step (nothing is filled in later), and it knows nothing of lanes, links' tasks
//! or the node: those receive it, it refers to none of them.

use crate::config::{Config, NodeConfig};
use crate::engine::group::GroupRt;
use crate::engine::peer::{Links, lock};
use crate::fs::backup::Backups;
use crate::identity::Identity;
use crate::item::{Hash, Item, name};
use crate::local::owners::OwnerMap;
use crate::ops::audit::{Audit, Rec};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Resolve once the flag is set, also when it was set before this was called.
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How to run a node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Opts {
    /// Accept connections (daemon) or not (in-process `sync`).
    pub listen: bool,
    /// Watch for changes live.
    pub watch: bool,
    /// Dial every peer (in-process `sync`) or only those after us (daemon).
    pub dial_all: bool,
    /// Print what would change instead of changing it.
    pub dry_run: bool,
}

/// Transfer counters of this process, for `status --json`, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    /// Chunk bytes received from peers.
    pub chunk_bytes_in: AtomicU64,
    /// Chunk bytes sent to peers.
    pub chunk_bytes_out: AtomicU64,
    /// Small-file content received inside index batches.
    pub inline_bytes_in: AtomicU64,
    /// Chunk bytes copied from files this node already had.
    pub reused_bytes: AtomicU64,
    /// Items received from and sent to peers.
    pub items_in: AtomicU64,
    pub items_out: AtomicU64,
}

/// Snapshot of [`Counters`].
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TransferStats {
    pub chunk_bytes_in: u64,
    pub chunk_bytes_out: u64,
    pub inline_bytes_in: u64,
    pub reused_bytes: u64,
    /// Items received from peers (`records_in` in the previous release).
    #[serde(alias = "records_in")]
    pub items_in: u64,
    /// Absent in 0.1's answers.
    #[serde(default)]
    pub items_out: u64,
}

impl Counters {
    pub fn snapshot(&self) -> TransferStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransferStats {
            chunk_bytes_in: g(&self.chunk_bytes_in),
            chunk_bytes_out: g(&self.chunk_bytes_out),
            inline_bytes_in: g(&self.inline_bytes_in),
            reused_bytes: g(&self.reused_bytes),
            items_in: g(&self.items_in),
            items_out: g(&self.items_out),
        }
    }
}

/// What a dry run found, by path: (what, the peers involved).
pub type DryRun = BTreeMap<Vec<u8>, (String, BTreeSet<String>)>;

/// Note in a dry run that `key` would be sent to `peer` (`send`) or received from it
/// (`receive`, `delete`, `conflict`). Each path is reported once: a conflict or a deletion
/// before a plain transfer, with every peer involved.
pub fn dry_note(d: &mut DryRun, what: &str, key: &[u8], peer: &str) {
    let rank = |w: &str| match w {
        "conflict" => 0,
        "delete" => 1,
        _ => 2,
    };
    let e = d
        .entry(key.to_vec())
        .or_insert_with(|| (what.to_string(), BTreeSet::new()));
    if rank(what) < rank(&e.0) {
        e.0 = what.to_string();
    }
    if !peer.is_empty() {
        e.1.insert(peer.to_string());
    }
}

/// A dry run's lines, by path: (what, `PATH  (to|from PEERS)`).
pub fn dry_lines(d: &DryRun) -> Vec<(String, String)> {
    d.iter()
        .map(|(k, (what, peers))| {
            let dir = if what == "send" { "to" } else { "from" };
            let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
            let path = if peers.is_empty() {
                name::show(k).into_owned()
            } else {
                format!("{}  ({dir} {})", name::show(k), peers.join(", "))
            };
            (what.clone(), path)
        })
        .collect()
}

/// Everything a running node's tasks share. Immutable apart from the services' own state.
pub struct Ctx {
    pub name: String,
    pub cfg: Config,
    pub me: NodeConfig,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub ident: Identity,
    pub store: Store,
    pub owners: OwnerMap,
    pub audit: Arc<Audit>,
    pub backups: Backups,
    pub groups: BTreeMap<String, Arc<GroupRt>>,
    /// The links to peers and what is known of every peer.
    pub links: Links,
    pub counters: Counters,
    /// The highest sequence number sent to any peer during this run (rollback detection).
    pub sent_seq: AtomicU64,
    /// Prometheus metrics (served when `[metrics] listen` is set).
    pub metrics: Arc<crate::ops::metrics::Metrics>,
    /// Commands run after synced changes (groups with actions).
    pub actions: Option<crate::ops::actions::ActionRunner>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub opts: Opts,
    pub started: Instant,
    /// `sync --dry-run`: what would change, by path: (what, the peers it would go to or come
    /// from).
    pub dry: Mutex<DryRun>,
    /// The last summary comparison with each peer, per group (`engine::verify`).
    pub verified: crate::engine::verify::Verified,
}

impl Ctx {
    pub fn group(&self, name: &str) -> Option<&Arc<GroupRt>> {
        self.groups.get(name)
    }

    /// Groups this node shares with `peer`.
    pub fn shared_groups(&self, peer: &str) -> Vec<&Arc<GroupRt>> {
        self.groups
            .values()
            .filter(|g| g.peers.iter().any(|p| p == peer))
            .collect()
    }

    /// How far `peer` acknowledged our items of `group`: the saved acknowledgement (what it
    /// was told and saved, kept for collecting tombstones) or, linked, what its live link
    /// acknowledged (versions left out for it count there before it is told of them).
    pub fn acked_by(&self, peer: &str, group: &str) -> u64 {
        let saved = self.store.acked(peer, group).unwrap_or(0);
        let live = self.links.get(peer).map_or(0, |l| l.pump(group).acked);
        saved.max(live)
    }

    /// Every peer of this node.
    pub fn all_peers(&self) -> BTreeSet<String> {
        self.groups
            .values()
            .flat_map(|g| g.peers.iter().cloned())
            .collect()
    }

    /// The node name whose configured id is `id`.
    pub fn node_by_id(&self, id: &str) -> Option<String> {
        self.cfg
            .nodes
            .values()
            .find(|n| n.id.as_deref().is_some_and(|i| i.eq_ignore_ascii_case(id)))
            .map(|n| n.name.clone())
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// One audit line about an item.
    pub fn audit_item(&self, group: &str, kind: &str, item: &Item, peer: Option<&str>) {
        self.audit_items(group, [(kind, item, peer)]);
    }

    /// Audit lines about items (kind, item, peer), written together.
    pub fn audit_items<'a>(
        &self,
        group: &str,
        items: impl IntoIterator<Item = (&'a str, &'a Item, Option<&'a str>)>,
    ) {
        let lines: Vec<_> = items
            .into_iter()
            .map(|(kind, item, peer)| (kind, item, peer, item.version.display()))
            .collect();
        self.audit
            .log_all(lines.iter().map(|(kind, item, peer, version)| Rec {
                group,
                path: &item.key,
                kind,
                origin: &item.origin,
                version,
                peer: *peer,
                detail: None,
            }));
    }

    pub fn audit_refused(&self, peer: &str, msg: &str) {
        self.audit.log(Rec {
            kind: "refused",
            peer: Some(peer),
            detail: Some(msg),
            ..Default::default()
        });
    }

    /// A peer's item refused: the group and path it was about, and why.
    pub fn audit_refused_item(&self, group: &str, key: &[u8], peer: &str, msg: &str) {
        self.audit.log(Rec {
            group,
            path: key,
            kind: "refused",
            peer: Some(peer),
            detail: Some(msg),
            ..Default::default()
        });
    }

    /// `sync --dry-run`: `key` would be sent (`send`) to `peer`, or received from it
    /// (`receive`, `delete`, `conflict`).
    pub fn dry_run_line(&self, what: &str, key: &[u8], peer: &str) {
        dry_note(&mut lock(&self.dry), what, key, peer);
    }

    /// The dry run's lines: (what, escaped path with its peers), by path.
    pub fn dry_run_lines(&self) -> Vec<(String, String)> {
        dry_lines(&lock(&self.dry))
    }

    /// A small file's content for an `Index` batch, verified.
    pub fn read_inline(
        &self,
        group: &str,
        key: &[u8],
        size: u64,
        hash: &Hash,
        dirs: &crate::fs::safefs::DirCache,
    ) -> Option<Vec<u8>> {
        let g = self.group(group)?;
        let gp = name::validate(key, &g.cfg.paths).ok()?;
        let data =
            crate::fs::safefs::read_at(&self.root, gp, key, 0, size as usize, Some(dirs)).ok()?;
        (crate::fs::chunk::hash(&data) == *hash).then_some(data)
    }

    /// A chunk of `group` by hash, from wherever this node has it in that group, verified.
    pub fn read_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        let loc = self.store.chunk_location(hash).ok()??;
        if loc.group != group || loc.len > crate::fs::chunk::MAX_CHUNK as u64 {
            return None;
        }
        let g = self.group(group)?;
        let gp = name::validate(&loc.key, &g.cfg.paths).ok()?;
        let data = crate::fs::safefs::read_at(
            &self.root,
            gp,
            &loc.key,
            loc.offset,
            loc.len as usize,
            None,
        )
        .ok()?;
        (crate::fs::chunk::hash(&data) == *hash).then_some(data)
    }

    /// A chunk from any of this node's own files (any group), verified.
    pub fn read_local_chunk(&self, group: &str, hash: &Hash) -> Option<Vec<u8>> {
        self.read_chunk(group, hash).or_else(|| {
            let loc = self.store.chunk_location(hash).ok()??;
            self.read_chunk(&loc.group, hash)
        })
    }

    /// Which group a path (logical, or real with this node's root prefix) belongs to.
    pub fn group_of_path(&self, p: &[u8]) -> Option<(String, Vec<u8>)> {
        group_of_path(&self.cfg, &self.name, &self.root, p)
    }

    /// Tell the actions runner that these keys of `group` changed (applied from a peer, or
    /// with `local`, made here).
    pub fn changed(&self, group: &str, keys: &[Vec<u8>], local: bool) {
        if keys.is_empty() {
            return;
        }
        if let Some(a) = &self.actions {
            a.notify(
                group,
                keys.iter().map(|k| name::show(k).into_owned()),
                local,
            );
        }
    }
}

/// Which of `node`'s groups a path (logical, or real with the root prefix) belongs to.
pub fn group_of_path(
    cfg: &Config,
    node: &str,
    root: &std::path::Path,
    p: &[u8],
) -> Option<(String, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let root = root.as_os_str().as_bytes();
    let root = if root.len() > 1 && root.ends_with(b"/") {
        &root[..root.len() - 1]
    } else {
        root
    };
    let mut cands = vec![p.to_vec()];
    if root != b"/"
        && let Some(r) = p.strip_prefix(root)
    {
        cands.push(r.to_vec());
    }
    for mut c in cands {
        while c.len() > 1 && c.ends_with(b"/") {
            c.pop();
        }
        for g in cfg.groups_of(node) {
            if name::validate(&c, &g.paths).is_ok() {
                return Some((g.name.clone(), c));
            }
        }
    }
    None
}
