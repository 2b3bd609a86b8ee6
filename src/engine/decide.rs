//! What to do with a peer's version of a key, given ours: a pure function of the two items and
//! the group's policy ([`decide`]), property-tested for the properties the cluster depends on
//! (every node converges to one body, a write made after seeing everything is never lost, the
//! order of delivery does not change the outcome).
//!
//! Rules:
//! - theirs descends from ours → take it; ours descends from theirs (or is the same) → ignore;
//! - concurrent with **identical** bodies (every synced field, or both deleted) → the same
//!   change made twice: merge the vectors, no new version, nothing on disk;
//! - concurrent with different bodies (anything synced differs: content, mode, mtime, owner,
//!   attributes) → the group's policy picks a winner by a **strict total order** over the two
//!   items (policy key, then origin, then content hash, then the whole encoded body), and the
//!   winner's body, unchanged, is kept under the merged vector. Because the order is total and
//!   a winner is always one of the original versions, any node that merges any set of
//!   concurrent versions, in any order, ends with the greatest of them: **one merged vector
//!   names one body**. (The previous release merged bodies that differed only in mtime or mode
//!   without deciding, so two nodes could keep different bodies under one vector; that was
//!   the root cause of its "equal versions, different content" divergence.) No new counter is
//!   bumped: a later write on top of the settled version then descends from every node's
//!   settlement of the same conflict, so it is never lost to a late one;
//! - a live version always beats a deletion (a delete against a modify keeps the modify);
//! - `manual` leaves a conflict of content unsettled: each node keeps its own until `resolve`;
//! - equal vectors with different bodies cannot happen between nodes of this release; if they
//!   meet (an index restored from an old snapshot), they are settled like concurrent ones.

use crate::config::ConflictPolicy;
use crate::item::{Causality, Item};
use std::cmp::Ordering;

/// What the group decides with.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    pub conflict: &'a ConflictPolicy,
    /// Owners are synced (not `owners = "ignore"`).
    pub compare_owner: bool,
    /// This node's name.
    pub me: &'a str,
}

/// A conflict settled (or left open) here, for `conflicts` and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Origins of the competing versions, sorted.
    pub nodes: Vec<String>,
    /// The winner's origin; `None` while unresolved (`manual`).
    pub winner: Option<String>,
    /// The losing version was ours (we keep a backup of it when it is overwritten).
    pub we_lost: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Ignore,
    /// Put this item on disk (it descends from ours, or won a conflict). `conflict` is set
    /// when the content of ours lost.
    Take {
        item: Item,
        conflict: Option<Conflict>,
    },
    /// Ours stays on disk; the index takes this item (our body under the merged vector),
    /// which then travels.
    Keep {
        item: Item,
        conflict: Option<Conflict>,
    },
    /// `manual`: each node keeps its own version until `resolve`.
    Unresolved { conflict: Conflict },
}

/// The policy's view of which of two concurrent, different items wins: true when `remote`
/// does. A strict total order for items of different origins or bodies, the same on every
/// node.
pub fn remote_wins(policy: &ConflictPolicy, local: &Item, remote: &Item) -> bool {
    // a deletion loses against a live version
    match (&local.body, &remote.body) {
        (None, Some(_)) => return true,
        (Some(_), None) => return false,
        (None, None) => return tiebreak(local, remote) == Ordering::Greater,
        _ => {}
    }
    let (Some(l), Some(r)) = (local.meta(), remote.meta()) else {
        // accounts: no mtime or size; "newest" is the change made last by its origin's clock
        // (the origin's version counter, milliseconds), "oldest" the first
        let lt = local.version.get(&local.origin);
        let rt = remote.version.get(&remote.origin);
        let by = match policy {
            ConflictPolicy::Prefer(n) => (remote.origin == *n).cmp(&(local.origin == *n)),
            ConflictPolicy::Oldest => lt.cmp(&rt),
            _ => rt.cmp(&lt),
        };
        return match by {
            Ordering::Greater => true,
            Ordering::Less => false,
            Ordering::Equal => tiebreak(local, remote) == Ordering::Greater,
        };
    };
    let by = match policy {
        ConflictPolicy::Newest | ConflictPolicy::Manual => {
            (r.mtime_s, r.mtime_ns).cmp(&(l.mtime_s, l.mtime_ns))
        }
        ConflictPolicy::Oldest => (l.mtime_s, l.mtime_ns).cmp(&(r.mtime_s, r.mtime_ns)),
        ConflictPolicy::Largest => r.size.cmp(&l.size),
        ConflictPolicy::Smallest => l.size.cmp(&r.size),
        ConflictPolicy::Prefer(n) => (remote.origin == *n).cmp(&(local.origin == *n)),
    };
    match by {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => tiebreak(local, remote) == Ordering::Greater,
    }
}

/// Ties: the origin whose name sorts first wins, then the smaller content hash, then the
/// smaller encoding of the whole body. `Greater` means `remote` wins.
fn tiebreak(local: &Item, remote: &Item) -> Ordering {
    local
        .origin
        .cmp(&remote.origin)
        .then_with(|| {
            let lh = local.meta().map(|m| m.hash);
            let rh = remote.meta().map(|m| m.hash);
            lh.cmp(&rh)
        })
        .then_with(|| body_bytes(local.body.as_ref()).cmp(&body_bytes(remote.body.as_ref())))
}

fn body_bytes(b: Option<&crate::item::Body>) -> Vec<u8> {
    b.and_then(|b| postcard::to_allocvec(b).ok())
        .unwrap_or_default()
}

fn same_data(a: &Item, b: &Item) -> bool {
    match (&a.body, &b.body) {
        (Some(crate::item::Body::Fs(x)), Some(crate::item::Body::Fs(y))) => x.same_data(y),
        (x, y) => x == y,
    }
}

/// Decide what to do with `remote` given `local` (this node's item for the key, if any).
pub fn decide(local: Option<&Item>, remote: &Item, p: &Policy) -> Decision {
    let Some(local) = local else {
        return Decision::Take {
            item: remote.clone(),
            conflict: None,
        };
    };
    let same = local.same_body(remote, p.compare_owner);
    match remote.version.compare(&local.version) {
        Causality::Older => Decision::Ignore,
        Causality::Equal if same => Decision::Ignore,
        Causality::Newer => {
            // our version lost a conflict settled on another node: list it here too
            let conflict = (remote.beat.contains(&local.origin)
                && local.origin != remote.origin
                && !same_data(local, remote))
            .then(|| Conflict {
                nodes: sorted(&local.origin, &remote.origin),
                winner: Some(remote.origin.clone()),
                we_lost: true,
            });
            Decision::Take {
                item: remote.clone(),
                conflict,
            }
        }
        Causality::Concurrent if same => {
            let mut item = local.clone();
            item.version.merge(&remote.version);
            // identical bodies: the origin is the one whose name sorts first, so every node
            // ends with the same item
            if remote.origin < local.origin {
                item.origin = remote.origin.clone();
            }
            for b in &remote.beat {
                if !item.beat.contains(b) {
                    item.beat.push(b.clone());
                }
            }
            item.beat.sort();
            Decision::Keep {
                item,
                conflict: None,
            }
        }
        Causality::Concurrent | Causality::Equal => {
            let content_differs = !same_data(local, remote);
            if content_differs && *p.conflict == ConflictPolicy::Manual {
                return Decision::Unresolved {
                    conflict: Conflict {
                        nodes: sorted(&local.origin, &remote.origin),
                        winner: None,
                        we_lost: false,
                    },
                };
            }
            let wins = remote_wins(p.conflict, local, remote);
            let (winner, loser) = if wins {
                (remote, local)
            } else {
                (local, remote)
            };
            let mut item = winner.clone();
            item.version = local.version.clone();
            item.version.merge(&remote.version);
            let conflict = content_differs.then(|| Conflict {
                nodes: sorted(&local.origin, &remote.origin),
                winner: Some(winner.origin.clone()),
                we_lost: wins,
            });
            if content_differs && !item.beat.contains(&loser.origin) {
                item.beat.push(loser.origin.clone());
                item.beat.sort();
            }
            if wins {
                Decision::Take { item, conflict }
            } else {
                Decision::Keep { item, conflict }
            }
        }
    }
}

fn sorted(a: &str, b: &str) -> Vec<String> {
    let mut v = vec![a.to_string(), b.to_string()];
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{Body, Kind, Meta, Owner, VersionVector};
    use proptest::prelude::*;

    fn body(content: u8, mtime: i64, mode: u32) -> Option<Body> {
        Some(Body::Fs(Meta {
            kind: Kind::File,
            mode,
            mtime_s: mtime,
            mtime_ns: 0,
            size: content as u64,
            owner: Owner::default(),
            hash: [content; 32],
            target: None,
            chunks: vec![],
            xattrs: vec![],
        }))
    }

    /// A simulated node holding one key.
    #[derive(Clone, Debug)]
    struct Sim {
        name: String,
        item: Option<Item>,
        clock: u64,
    }

    impl Sim {
        fn write(&mut self, b: Option<Body>) {
            self.clock += 1;
            let mut version = self
                .item
                .as_ref()
                .map(|i| i.version.clone())
                .unwrap_or_default();
            version.bump(&self.name, self.clock);
            self.item = Some(Item {
                key: b"/k".to_vec(),
                version,
                origin: self.name.clone(),
                body: b,
                beat: vec![],
            });
        }

        /// Receive `remote`; true when something changed here.
        fn receive(&mut self, remote: &Item, policy: &ConflictPolicy) -> bool {
            self.clock += 1;
            let p = Policy {
                conflict: policy,
                compare_owner: true,
                me: &self.name,
            };
            match decide(self.item.as_ref(), remote, &p) {
                Decision::Ignore | Decision::Unresolved { .. } => false,
                Decision::Take { item, .. } | Decision::Keep { item, .. } => {
                    let changed = self.item.as_ref() != Some(&item);
                    self.item = Some(item);
                    changed
                }
            }
        }
    }

    fn sims(n: usize) -> Vec<Sim> {
        (0..n)
            .map(|i| Sim {
                name: format!("n{i}"),
                item: None,
                clock: 0,
            })
            .collect()
    }

    /// Deliver everyone's item to everyone until nothing changes; the number of rounds.
    fn settle(s: &mut [Sim], policy: &ConflictPolicy) -> usize {
        for round in 0..50 {
            let mut changed = false;
            for i in 0..s.len() {
                for j in 0..s.len() {
                    if i == j {
                        continue;
                    }
                    if let Some(it) = s[i].item.clone() {
                        changed |= s[j].receive(&it, policy);
                    }
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("no convergence after 50 rounds");
    }

    fn policies() -> impl Strategy<Value = ConflictPolicy> {
        prop_oneof![
            Just(ConflictPolicy::Newest),
            Just(ConflictPolicy::Oldest),
            Just(ConflictPolicy::Largest),
            Just(ConflictPolicy::Smallest),
            Just(ConflictPolicy::Prefer("n1".into())),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write {
            node: usize,
            content: u8,
            mtime: i64,
            mode: u32,
        },
        Delete {
            node: usize,
        },
        Deliver {
            from: usize,
            to: usize,
        },
    }

    fn ops(n: usize) -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                (
                    0..n,
                    0u8..4,
                    0i64..3,
                    prop_oneof![Just(0o644u32), Just(0o600)]
                )
                    .prop_map(|(node, content, mtime, mode)| Op::Write {
                        node,
                        content,
                        mtime,
                        mode
                    }),
                (0..n).prop_map(|node| Op::Delete { node }),
                (0..n, 0..n).prop_map(|(from, to)| Op::Deliver { from, to }),
            ],
            1..60,
        )
    }

    fn run(s: &mut [Sim], ops: &[Op], policy: &ConflictPolicy, written: &mut Vec<Option<Body>>) {
        for op in ops {
            match *op {
                Op::Write {
                    node,
                    content,
                    mtime,
                    mode,
                } => {
                    let b = body(content, mtime, mode);
                    written.push(b.clone());
                    s[node].write(b);
                }
                Op::Delete { node } => {
                    if s[node].item.as_ref().is_some_and(|i| !i.is_deleted()) {
                        written.push(None);
                        s[node].write(None);
                    }
                }
                Op::Deliver { from, to } => {
                    if from != to
                        && let Some(it) = s[from].item.clone()
                    {
                        s[to].receive(&it, policy);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Every node ends with the same body, one that some node wrote, and with one vector
        /// naming one body.
        #[test]
        fn converges_to_a_written_body(n in 2usize..6, ops in ops(5), policy in policies()) {
            let mut s = sims(n);
            let ops: Vec<Op> = ops.into_iter().filter(|o| match o {
                Op::Write { node, .. } | Op::Delete { node } => *node < n,
                Op::Deliver { from, to } => *from < n && *to < n,
            }).collect();
            let mut written = Vec::new();
            run(&mut s, &ops, &policy, &mut written);
            settle(&mut s, &policy);
            let first = s[0].item.clone();
            for x in &s {
                prop_assert_eq!(x.item.as_ref().map(|i| &i.body), first.as_ref().map(|i| &i.body));
                prop_assert_eq!(x.item.as_ref().map(|i| &i.version), first.as_ref().map(|i| &i.version));
            }
            if let Some(f) = first {
                prop_assert!(written.contains(&f.body), "invented body {:?}", f.body);
            }
        }

        /// A write made after seeing every other node's version is what everyone ends with.
        #[test]
        fn no_lost_final_write(n in 2usize..6, ops in ops(5), policy in policies(), last in 0usize..5) {
            let last = last % n;
            let mut s = sims(n);
            let ops: Vec<Op> = ops.into_iter().filter(|o| match o {
                Op::Write { node, .. } | Op::Delete { node } => *node < n,
                Op::Deliver { from, to } => *from < n && *to < n,
            }).collect();
            let mut written = Vec::new();
            run(&mut s, &ops, &policy, &mut written);
            // `last` hears from everyone, then writes
            for i in 0..n {
                if i != last && let Some(it) = s[i].item.clone() {
                    s[last].receive(&it, &policy);
                }
            }
            let fin = body(9, 5, 0o640);
            s[last].write(fin.clone());
            settle(&mut s, &policy);
            for x in &s {
                prop_assert_eq!(x.item.as_ref().map(|i| &i.body), Some(&fin));
            }
        }

        /// Delivering the same concurrent versions in any order ends with the same body.
        #[test]
        fn order_independent(n in 2usize..6, contents in prop::collection::vec((0u8..4, 0i64..3), 2..6), policy in policies(), seed in any::<u64>()) {
            let n = n.min(contents.len());
            let mut base = sims(n);
            for (i, (c, m)) in contents.iter().take(n).enumerate() {
                base[i].write(body(*c, *m, 0o644));
            }
            let mut a = base.clone();
            settle(&mut a, &policy);
            // the same versions delivered in a shuffled order
            let mut b = base.clone();
            let mut x = seed | 1;
            for _ in 0..200 {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let from = (x % n as u64) as usize;
                let to = ((x >> 8) % n as u64) as usize;
                if from != to && let Some(it) = b[from].item.clone() {
                    b[to].receive(&it, &policy);
                }
            }
            settle(&mut b, &policy);
            prop_assert_eq!(a[0].item.as_ref().map(|i| &i.body), b[0].item.as_ref().map(|i| &i.body));
        }
    }

    #[test]
    fn same_body_merges_without_a_new_version() {
        let mut s = sims(2);
        s[0].write(body(1, 1, 0o644));
        s[1].write(body(1, 1, 0o644));
        let p = Policy {
            conflict: &ConflictPolicy::Newest,
            compare_owner: true,
            me: "n0",
        };
        let r = s[1].item.clone().unwrap();
        match decide(s[0].item.as_ref(), &r, &p) {
            Decision::Keep { item, conflict } => {
                assert!(conflict.is_none());
                let mut want = VersionVector::default();
                want.merge(&s[0].item.as_ref().unwrap().version);
                want.merge(&r.version);
                assert_eq!(item.version, want);
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn same_content_different_mode_is_settled_not_ignored() {
        // the case that diverged for good before: same origin and hash, different mode
        let mut s = sims(2);
        s[0].write(body(1, 1, 0o644));
        let shared = s[0].item.clone().unwrap();
        s[1].item = Some(shared);
        s[0].write(body(1, 1, 0o600));
        s[1].write(body(1, 1, 0o640));
        settle(&mut s, &ConflictPolicy::Largest);
        assert_eq!(s[0].item, s[1].item);
    }

    #[test]
    fn live_beats_delete_and_manual_stays_open() {
        let mut s = sims(2);
        s[0].write(body(1, 1, 0o644));
        let shared = s[0].item.clone().unwrap();
        s[1].item = Some(shared);
        s[0].write(None);
        s[1].write(body(2, 2, 0o644));
        settle(&mut s, &ConflictPolicy::Newest);
        assert_eq!(s[0].item.as_ref().unwrap().body, body(2, 2, 0o644));
        let mut s = sims(2);
        s[0].write(body(1, 1, 0o644));
        s[1].write(body(2, 1, 0o644));
        let p = Policy {
            conflict: &ConflictPolicy::Manual,
            compare_owner: true,
            me: "n0",
        };
        assert!(matches!(
            decide(s[0].item.as_ref(), s[1].item.as_ref().unwrap(), &p),
            Decision::Unresolved { .. }
        ));
    }
}
