//! What a kind of item needs from the lane: the one pipeline (`lane::core` and its executor)
//! is generic over a [`Domain`], with two implementations: files (`lane::files`) and accounts
//! (`lane::accounts`). The core decides; the domain checks items, reads and reconciles the
//! index for their keys, carries out the steps the core planned, and scans for local changes.
//!
//! Invariants every implementation keeps: `check` and `observe` change nothing on disk;
//! `observe` returns one entry per key, in order; `apply` returns one outcome per step, in
//! order, and an outcome of `Done` only for a step that is on disk now; nothing a domain does
//! acknowledges anything (only the core, after a saved commit, does).

use super::core::{Outcome, ScanReport, Source};
use super::plan::{Observed, Planner, Step};
use crate::net::protocol::WireItem;
use crate::store::Change;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

/// A kind of item the lane replicates.
pub trait Domain: Send + Sync + 'static {
    /// Check a peer's items before anything uses them (no I/O but audit lines; may hash
    /// inline content).
    fn check(&self, items: &[WireItem], source: &Source) -> Checked;

    /// How this domain decides a batch's items (pure).
    fn planner(&self) -> std::sync::Arc<dyn Planner>;

    /// What the index holds for `keys` (blocking). Unless `dry`, the disk is reconciled first:
    /// a local change nobody reported yet is committed as a local version, so a peer's item is
    /// never decided against a stale entry.
    fn observe(&self, keys: &[Vec<u8>], dry: bool) -> Result<Vec<Observed>, ObserveError>;

    /// Carry out the steps (fetching content from peers, `prefer` first): each step with its
    /// outcome, in order; steps lost to a panicked task are only counted.
    fn apply(
        self: Arc<Self>,
        steps: Vec<Step>,
        prefer: Option<String>,
    ) -> impl Future<Output = Applied> + Send;

    /// `clustersync resolve KEY --keep NODE` for this domain.
    fn resolve(
        self: Arc<Self>,
        key: Vec<u8>,
        keep: String,
    ) -> impl Future<Output = Result<String, String>> + Send;

    /// Put the group's version back over drift (replicas with `on_drift = revert`).
    fn revert(self: Arc<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// File owners given by name may resolve now (blocking).
    fn owners_changed(&self) {}

    /// `verify --deep --repair`: the content on disk of `keys` differs from the index although
    /// their stat did not change; forget what lets a scan trust the stored content (blocking),
    /// so the next scan of them reads and hashes them again.
    fn forget_content(&self, _keys: &[Vec<u8>]) {}

    /// Scan for local changes and commit them (blocking). `targets` are (path, recursive);
    /// `whole`: every path of the group.
    fn scan(&self, req: &ScanRequest) -> ScanReport;

    /// What a scan would record now, without recording it (dry runs): (`send`/`delete`, key).
    fn dry_scan(&self) -> Vec<(&'static str, Vec<u8>)>;

    /// Just before a commit of applied steps (blocking): files put back directory mtimes.
    fn before_commit(&self, _touched: &BTreeSet<Vec<u8>>, _changes: &mut Vec<Change>) {}

    /// After a commit of applied steps.
    fn after_commit(&self, _applied: &[Vec<u8>]) {}

    /// A commit of applied steps failed (accounts forget what they wrote meanwhile).
    fn commit_failed(&self) {}

    /// Look for changes no event reported (blocking; accounts: the files' stat): true when a
    /// scan is due.
    fn poll(&self) -> bool {
        false
    }
}

/// What checking a peer's batch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Every item may be used.
    All,
    /// Only the items marked true (the others were audited and are dropped: an account record
    /// this node refuses never closes the link).
    Some(Vec<bool>),
    /// The peer sent what it must not: the batch is refused and its link closed.
    Refused(Vec<u8>, String),
    /// The batch cannot be taken now (accounts from an older release): it is neither applied
    /// nor acknowledged, and the link stays up.
    Held(String),
}

/// Why the index could not be read for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveError {
    /// A group path is missing, or empty while the index knows files there (an unmounted
    /// disk): the group stops, and nothing is written where the disk is not.
    Stopped(String),
    /// Anything else (an index error): the batch is received again later.
    Failed(String),
}

/// What carrying out a batch's steps gave.
#[derive(Debug, Default)]
pub struct Applied {
    pub results: Vec<(Step, Outcome)>,
    /// Steps whose task panicked with them (their outcome is unknown).
    pub lost: usize,
}

/// A scan the core asked for.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub targets: Vec<(Vec<u8>, bool)>,
    pub whole: bool,
    pub deletes_ok: bool,
    pub was_stopped: bool,
    pub adopt: bool,
}
