//! Planning a batch: what to do with each of a peer's items, given what this node's index says
//! of its key once the disk was reconciled. Pure: no I/O, no clock (the time for conflict
//! records is passed in), the same for files and accounts.
//!
//! Per item: `decide` (version vectors, the group's policy) gives ignore, take, keep or leave
//! unresolved; a take becomes a [`Step`] for the domain to carry out, a keep an index-only
//! change (our body under the merged vector), and every conflict a record for `conflicts` plus
//! an audit line. Two refinements on top of `decide`:
//! - two group roots that nobody versioned yet and that differ: the policy picked one, the same
//!   on every node, and the taking or keeping node versions it, so a node joining later with a
//!   fresh directory of its own gives way to it;
//! - a version that descends from every competing version of an unresolved (`manual`)
//!   conflict ends that conflict.
//!
//! Invariant: every item of the batch ends in exactly one of `steps`, `keeps` or
//! `aside_remove` (ignored, unresolved, or kept-for-drift items are listed there so a set-aside
//! copy of an older version is dropped).

use crate::engine::decide::{Conflict, Decision, Policy, decide};
use crate::item::{Causality, Entry, Item, name};
use crate::net::protocol::WireItem;
use crate::store::{Change, ConflictInfo};

/// An item of a batch with where it came from: (the peer, its incarnation of the group) and
/// how often applying it failed before (0 for a peer's batch; set-aside retries count up).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub wire: WireItem,
    pub from: (String, u64),
    pub attempts: u32,
}

/// What this node's index holds for an incoming item's key, after the disk was reconciled.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub local: Option<Entry>,
    /// The key's unresolved conflict, if any.
    pub conflict: Option<ConflictInfo>,
    /// A replica with `on_drift = keep` has local drift here: the local version stays until
    /// the drift is resolved.
    pub keep_drift: bool,
}

/// An item to put in place.
#[derive(Debug, Clone)]
pub struct Step {
    pub item: Item,
    pub inline: Option<Vec<u8>>,
    pub local: Option<Entry>,
    /// The peer (and its incarnation) it came from.
    pub from: (String, u64),
    /// The item is exactly what that peer sent (not a merge): it is not echoed back there.
    pub as_sent: bool,
    pub attempts: u32,
    /// Applying it settles a conflict the key had (an account that collided with a local one):
    /// the record is dropped once it applies.
    pub had_conflict: bool,
    /// The index holds this item already (set aside as partly applied): apply it again, record
    /// nothing new.
    pub again: bool,
}

/// One audit line the plan asks for: (kind, item, detail).
pub type AuditLine = (&'static str, Item, Option<String>);

/// How a domain decides a batch's items (pure). Files use [`Generic`] (`decide` per item);
/// accounts merge by their own rules (`accounts::sync::plan`).
pub trait Planner: Send + Sync + std::fmt::Debug {
    fn plan(&self, pc: &PlanCtx, items: Vec<Incoming>, observed: Vec<Observed>) -> Plan;
}

/// The planner of files: [`plan`].
#[derive(Debug, Default)]
pub struct Generic;

impl Planner for Generic {
    fn plan(&self, pc: &PlanCtx, items: Vec<Incoming>, observed: Vec<Observed>) -> Plan {
        plan(pc, items, observed)
    }
}

/// What planning a batch produced.
#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Index-only changes (merged vectors, our version winning a conflict, replica drift).
    pub keeps: Vec<Change>,
    /// Conflicts to record (`Some`) or forget (`None`).
    pub conflicts: Vec<(Vec<u8>, Option<ConflictInfo>)>,
    /// Keys whose set-aside copy is obsolete.
    pub aside_remove: Vec<Vec<u8>>,
    pub audit: Vec<AuditLine>,
}

/// What planning needs to know of the group and this node.
pub struct PlanCtx<'a> {
    pub policy: Policy<'a>,
    /// The group's root paths (for unversioned roots).
    pub roots: &'a [String],
    /// Where a losing version of ours is kept, for the conflict record (`None`: not kept).
    pub kept_as: &'a dyn Fn(&[u8]) -> Option<String>,
    /// Seconds since the epoch, for conflict records.
    pub now: i64,
    /// This node only receives in this group (it never makes a version).
    pub replica: bool,
    /// The items are what a comparison of index summaries found (`engine::verify`), not a
    /// peer's batch.
    pub compared: bool,
}

fn resolved_info(c: &Conflict, kept: Option<String>, now: i64) -> ConflictInfo {
    ConflictInfo {
        nodes: c.nodes.clone(),
        resolved: c.winner.is_some(),
        winner: c.winner.clone().unwrap_or_default(),
        kept_as: kept,
        time: now,
        versions: vec![],
    }
}

/// Plan a batch: `observed[i]` is what the index holds for `items[i]`'s key.
pub fn plan(pc: &PlanCtx, items: Vec<Incoming>, observed: Vec<Observed>) -> Plan {
    let mut out = Plan::default();
    for (inc, obs) in items.into_iter().zip(observed) {
        plan_one(pc, inc, obs, &mut out);
    }
    out
}

fn plan_one(pc: &PlanCtx, inc: Incoming, obs: Observed, out: &mut Plan) {
    let Incoming {
        wire,
        from,
        attempts,
    } = inc;
    let key = wire.item.key.clone();
    if obs.keep_drift {
        // on_drift = keep: the local file stays until the drift is resolved, but the index
        // learns the group's version, which `resolve` then puts back
        let newer = obs
            .local
            .as_ref()
            .is_none_or(|l| wire.item.version.compare(&l.item.version) == Causality::Newer);
        if newer {
            out.keeps.push(Change {
                entry: Entry::new(wire.item),
                announce: true,
            });
        } else {
            out.aside_remove.push(key);
        }
        return;
    }
    if let Some(c) = adopt_vector(pc, &wire.item, obs.local.as_ref()) {
        out.keeps.push(c);
        return;
    }
    let local = obs.local;
    let mut d = decide(local.as_ref().map(|e| &e.item), &wire.item, &pc.policy);
    version_fresh_root(pc, &wire.item, local.as_ref(), &mut d);
    let had_conflict = obs.conflict.is_some();
    if let Some(mut c) = obs.conflict.clone()
        && matches!(d, Decision::Take { .. })
        && c.versions
            .iter()
            .all(|v| wire.item.version.compare(&v.version) == Causality::Newer)
    {
        // a version that descends from every competing one ends the unresolved conflict
        c.resolved = true;
        c.winner = wire.item.origin.clone();
        c.versions.clear();
        out.conflicts.push((key.clone(), Some(c)));
    }
    match d {
        // the set-aside copy of an item the index has (or has newer) is no longer needed; a copy
        // from a link leaves what is set aside as it is (it may be newer than this copy)
        Decision::Ignore if attempts > 0 => out.aside_remove.push(key),
        Decision::Ignore => {}
        Decision::Take { item, conflict } => {
            if let Some(c) = &conflict {
                note_conflict(pc, &key, c, &item, out);
            }
            let as_sent = item.version == wire.item.version;
            out.steps.push(Step {
                item,
                inline: wire.inline,
                local,
                from,
                as_sent,
                attempts,
                had_conflict,
                again: false,
            });
        }
        Decision::Keep { item, conflict } => {
            if let Some(c) = &conflict {
                note_conflict(pc, &key, c, &item, out);
            }
            if let Some(mut e) = local {
                e.item = item;
                e.from = None;
                out.keeps.push(Change {
                    entry: e,
                    announce: true,
                });
            }
            out.aside_remove.push(key);
        }
        Decision::Unresolved { conflict } => {
            unresolved(pc, &wire.item, obs.conflict, &conflict, out);
            out.aside_remove.push(key);
        }
    }
}

/// On a replica, for an item a comparison found: a member's item with the same body as ours
/// but another vector, where ours names this replica (an older release versioned a group path
/// directory on replicas too, and that counter stayed in its vector, which no member has),
/// takes the member's vector in the index (not announced: a replica sends nothing).
fn adopt_vector(pc: &PlanCtx, remote: &Item, local: Option<&Entry>) -> Option<Change> {
    let l = local?;
    let adopt = pc.replica
        && pc.compared
        && l.item.version.get(pc.policy.me) > 0
        && l.item.version != remote.version
        && l.item.same_body(remote, pc.policy.compare_owner);
    if !adopt {
        return None;
    }
    let mut e = l.clone();
    e.item.version = remote.version.clone();
    e.item.origin = remote.origin.clone();
    e.item.beat = remote.beat.clone();
    Some(Change {
        entry: e,
        announce: false,
    })
}

/// Two group path directories that nobody versioned yet and that differ: the policy picked
/// one, the same on every node; it gets a version here so that a node joining later with its
/// own fresh directory gives way to it (not on a replica, which never makes a version: its
/// counter would stay in its vector, which no member has).
fn version_fresh_root(pc: &PlanCtx, remote: &Item, local: Option<&Entry>, d: &mut Decision) {
    if !pc.replica
        && remote.version.is_empty()
        && local.is_some_and(|l| l.item.version.is_empty())
        && pc.roots.iter().any(|r| r.as_bytes() == remote.key)
        && let Decision::Take { item, .. } | Decision::Keep { item, .. } = d
    {
        item.version
            .bump(pc.policy.me, crate::item::version::clock_ms());
        item.origin = pc.policy.me.to_string();
    }
}

fn note_conflict(pc: &PlanCtx, key: &[u8], c: &Conflict, winner: &Item, out: &mut Plan) {
    let kept = if c.we_lost { (pc.kept_as)(key) } else { None };
    tracing::warn!(
        "conflict on {}: versions from {}; {} wins under policy {}{}",
        name::show(key),
        c.nodes.join(" and "),
        c.winner.as_deref().unwrap_or("?"),
        pc.policy.conflict,
        if kept.is_some() {
            " (this node's version is kept as a backup)"
        } else {
            ""
        }
    );
    out.audit.push(("conflict", winner.clone(), None));
    out.conflicts
        .push((key.to_vec(), Some(resolved_info(c, kept, pc.now))));
}

/// `manual`: each node keeps its own version; the competing ones are recorded until `resolve`.
fn unresolved(
    pc: &PlanCtx,
    remote: &Item,
    existing: Option<ConflictInfo>,
    conflict: &Conflict,
    out: &mut Plan,
) {
    let first = existing.is_none();
    let mut info = existing.unwrap_or_else(|| ConflictInfo {
        nodes: vec![],
        resolved: false,
        winner: String::new(),
        kept_as: None,
        time: pc.now,
        versions: vec![],
    });
    for n in &conflict.nodes {
        if !info.nodes.contains(n) {
            info.nodes.push(n.clone());
        }
    }
    info.nodes.sort();
    info.add_version(remote);
    if first {
        tracing::warn!(
            "conflict on {}: versions from {}; left unresolved (policy manual): run `clustersync resolve {} --keep NODE`",
            name::show(&remote.key),
            conflict.nodes.join(" and "),
            name::show(&remote.key)
        );
        out.audit.push(("conflict", remote.clone(), None));
    }
    out.conflicts.push((remote.key.clone(), Some(info)));
}

/// How a dry run would describe an item: `receive`, `delete`, `conflict`, or nothing.
pub fn dry_word(pc: &PlanCtx, local: Option<&Item>, remote: &Item) -> Option<&'static str> {
    match decide(local, remote, &pc.policy) {
        Decision::Take { ref item, .. } if item.is_deleted() => Some("delete"),
        Decision::Take {
            conflict: Some(_), ..
        }
        | Decision::Keep {
            conflict: Some(_), ..
        }
        | Decision::Unresolved { .. } => Some("conflict"),
        Decision::Take { .. } => Some("receive"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Body, Kind, Meta, Owner, VersionVector};

    fn dir(key: &str, version: &[(&str, u64)], mode: u32) -> Item {
        let mut v = VersionVector::default();
        for (n, c) in version {
            v.0.insert(n.to_string(), *c);
        }
        Item {
            key: key.as_bytes().to_vec(),
            version: v,
            origin: version
                .first()
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
            body: Some(Body::Fs(Meta {
                kind: Kind::Dir,
                mode,
                mtime_s: 1,
                mtime_ns: 0,
                size: 0,
                owner: Owner::default(),
                hash: [0; 32],
                target: None,
                chunks: vec![],
                xattrs: vec![],
            })),
            beat: vec![],
        }
    }

    fn plan_for(replica: bool, compared: bool, local: Item, remote: Item) -> Plan {
        plan_tried(replica, compared, local, remote, 0)
    }

    /// `attempts`: 0 for a peer's batch, more for a set-aside item loaded for a retry.
    fn plan_tried(replica: bool, compared: bool, local: Item, remote: Item, attempts: u32) -> Plan {
        let kept_as = |_: &[u8]| None;
        let pc = PlanCtx {
            policy: Policy {
                conflict: &crate::config::ConflictPolicy::Newest,
                compare_owner: true,
                me: "r",
            },
            roots: &[],
            kept_as: &kept_as,
            now: 0,
            replica,
            compared,
        };
        let inc = Incoming {
            wire: WireItem {
                item: remote,
                inline: None,
            },
            from: ("a".into(), 1),
            attempts,
        };
        let obs = Observed {
            local: Some(Entry::new(local)),
            ..Default::default()
        };
        plan(&pc, vec![inc], vec![obs])
    }

    #[test]
    fn a_replica_takes_a_members_vector_for_the_same_body_when_a_comparison_meets_it() {
        // an older release versioned the directory on the replica: its counter stays forever
        let local = dir("/srv/www", &[("r", 3)], 0o755);
        let remote = dir("/srv/www", &[("a", 2)], 0o755);
        let p = plan_for(true, true, local.clone(), remote.clone());
        assert!(p.steps.is_empty());
        assert_eq!(p.keeps.len(), 1);
        assert_eq!(p.keeps[0].entry.item.version, remote.version);
        assert_eq!(p.keeps[0].entry.item.origin, "a");
        assert!(!p.keeps[0].announce, "a replica announces nothing");
        // not for a peer's batch, not on a full member, not for another body
        for (replica, compared, mode) in [
            (true, false, 0o755),
            (false, true, 0o755),
            (true, true, 0o700),
        ] {
            let p = plan_for(
                replica,
                compared,
                local.clone(),
                dir("/srv/www", &[("a", 2)], mode),
            );
            assert!(
                p.keeps
                    .iter()
                    .all(|k| k.entry.item.version != remote.version || k.announce),
                "{replica} {compared} {mode:o}: {p:?}"
            );
        }
    }

    /// An item older than the index's (or the same) is ignored; only its own set-aside copy,
    /// loaded for a retry, is taken off the set-aside list: a copy from a link may be older
    /// than what is set aside for that path.
    #[test]
    fn an_ignored_copy_from_a_link_leaves_the_set_aside_list_alone() {
        let local = dir("/srv/www/d", &[("a", 3)], 0o755);
        let old = dir("/srv/www/d", &[("a", 2)], 0o755);
        let p = plan_tried(false, false, local.clone(), old.clone(), 0);
        assert!(p.steps.is_empty() && p.aside_remove.is_empty(), "{p:?}");
        let p = plan_tried(false, false, local, old, 1);
        assert!(p.steps.is_empty(), "{p:?}");
        assert_eq!(p.aside_remove, vec![b"/srv/www/d".to_vec()]);
    }
}
