//! Relays a peer does not need are left out (SPEC §7: a change reaches each node once, and
//! the bytes of a change grow linearly with the number of nodes, announcements included).
//!
//! A node sends each version it made to every linked peer. A version it got from another
//! member `p` it used to relay to every other peer as well, so one change on N nodes cost
//! N × (N − 2) relays on top of the N − 1 sends. On a protocol-5 link the receiver `c` tells
//! us, in `Have` messages, which members it is linked with now and how far it applied each
//! one's index. A version we got from `p` is then **deferred** for `c` (left out of the batch)
//! while `c` says it is linked with `p` under the incarnation we got the version from: `p`
//! sends it to `c` itself. A deferral ends in one of two ways:
//!
//! - **confirmed**: `c` reports a position with `p` at or past ours when we deferred (`need`).
//!   `c` then applied `p`'s index through everything we had applied of it, so it holds the
//!   version or a newer one of that key, or `p` left it out for `c` too and holds the same duty
//!   itself;
//! - **owed**: `c` reports `p` unlinked, or another incarnation of `p`: the pump goes back to
//!   the earliest seq deferred for `p` and reads on from there, and with `p` gone from `c`'s
//!   view nothing of `p`'s is deferred: the relays go out as they did before.
//!
//! Invariants: a version is deferred only on behalf of the node we received it from, so the
//! chain of nodes relying on each other follows the path the version took back to the node
//! that made it, which never defers its own versions: the chain ends, and no cycle of nodes
//! can each leave a version to another. Our own versions, versions merged here and anything
//! on a link without `Have` (protocol 3 and 4) are sent as before. The lowest seq deferred on
//! a link is kept in the index (`Store::set_relay_floor`, written durably when deferring
//! starts, before a batch can move the peer's resume position past it), and a pump starts at
//! the floor when it is below the peer's resume position, so a restart or a cut link never
//! drops a duty: the versions are looked at again (and deferred again, or sent).

use crate::engine::node::Ctx;
use crate::net::protocol::HaveFrom;
use std::collections::{HashMap, VecDeque};

/// Positions in `Have` are sent again at most this often when only they moved (a member's
/// link coming or going is sent at once): a deferral waits at most about this long for its
/// confirmation, which costs nothing but a little memory.
pub const HAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Deferral records (runs of versions with the same `need`) per link, group and member at
/// most; beyond it versions are relayed as before.
const MAX_DEFERRED: usize = 100_000;

/// One run of versions deferred for the peer on behalf of one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// The member's incarnation the versions came from.
    inc: u64,
    /// Our position with the member when we deferred: the peer's position with it must reach
    /// this.
    need: u64,
    /// The lowest of our seqs deferred in this run.
    seq: u64,
}

/// What one link knows of the peer's holdings in one group, and what it left out for it.
#[derive(Debug, Default)]
pub struct GroupRelay {
    /// The peer's last report per member.
    view: HashMap<String, HaveFrom>,
    /// Deferred runs per member they came from, in the order deferred.
    deferred: HashMap<String, VecDeque<Run>>,
    /// The pump must read again from this seq (inclusive): a member the peer relied on went.
    rewind: Option<u64>,
    /// The pump is reading again from this seq (inclusive) after a rewind or a restart, up to
    /// where it had been.
    pub replay: Option<u64>,
    /// The floor last written to the index.
    pub saved: Option<u64>,
    /// A `Have` for this group arrived.
    pub seen: bool,
}

impl GroupRelay {
    /// May a version that came from `from` (its incarnation `inc`) be left out for the peer,
    /// and how far must the peer's position with `from` reach to confirm it? `None`: send it.
    /// `Some(None)`: the peer is past `need` already, nothing to record.
    pub fn deferral(&self, from: &str, inc: u64, need: u64) -> Option<Option<u64>> {
        let h = self.view.get(from)?;
        if !h.linked || h.inc != inc || inc == 0 {
            return None;
        }
        if self
            .deferred
            .get(from)
            .is_some_and(|q| q.len() >= MAX_DEFERRED)
        {
            return None;
        }
        Some((h.seq < need).then_some(need))
    }

    /// Record that our version at `seq`, from `from` (incarnation `inc`), was left out until
    /// the peer's position with `from` reaches `need`.
    pub fn defer(&mut self, from: &str, inc: u64, need: u64, seq: u64) {
        let q = self.deferred.entry(from.to_string()).or_default();
        match q.back_mut() {
            Some(r) if r.inc == inc && r.need == need => r.seq = r.seq.min(seq),
            _ => q.push_back(Run { inc, need, seq }),
        }
    }

    /// Take in the peer's report: confirmed runs are dropped, runs whose member the peer no
    /// longer follows become a rewind of the pump.
    pub fn update(&mut self, from: Vec<HaveFrom>) {
        self.seen = true;
        for h in from {
            self.view.insert(h.node.clone(), h);
        }
        let mut rewind = self.rewind;
        let mut owe = |q: &VecDeque<Run>| {
            if let Some(low) = q.iter().map(|r| r.seq).min() {
                rewind = Some(rewind.map_or(low, |r| r.min(low)));
            }
        };
        let view = &self.view;
        self.deferred.retain(|member, q| match view.get(member) {
            Some(h) if h.linked => {
                while q.front().is_some_and(|r| r.inc == h.inc && r.need <= h.seq) {
                    q.pop_front();
                }
                if q.iter().any(|r| r.inc != h.inc) {
                    // another incarnation of the member: what came from the old one may never
                    // reach the peer from it
                    owe(q);
                    return false;
                }
                !q.is_empty()
            }
            _ => {
                owe(q);
                false
            }
        });
        self.rewind = rewind;
    }

    /// The seq the pump must read again from, once.
    pub fn take_rewind(&mut self) -> Option<u64> {
        self.rewind.take()
    }

    /// A rewind is waiting for the pump, or the pump is reading again.
    pub fn busy(&self) -> bool {
        self.rewind.is_some() || self.replay.is_some()
    }

    /// The lowest seq whose version the peer may still need from us: where a pump started
    /// after a restart must read from.
    pub fn floor(&self) -> Option<u64> {
        self.deferred
            .values()
            .flat_map(|q| q.iter().map(|r| r.seq))
            .chain(self.rewind)
            .chain(self.replay)
            .min()
    }
}

/// Per group, the relay state of one link.
#[derive(Debug, Default)]
pub struct LinkRelay {
    pub groups: HashMap<String, GroupRelay>,
}

impl LinkRelay {
    pub fn group(&mut self, group: &str) -> &mut GroupRelay {
        self.groups.entry(group.to_string()).or_default()
    }
}

/// What this node holds of `group` from each other member: for `Have`.
pub fn have(ctx: &Ctx, group: &str) -> Vec<HaveFrom> {
    let Some(g) = ctx.group(group) else {
        return Vec::new();
    };
    g.peers
        .iter()
        .map(|m| {
            let (pinc, seq) = ctx.store.peer_position(m, group).unwrap_or((0, 0));
            match ctx.links.get(m).filter(|l| l.active(group)) {
                Some(l) => {
                    let inc = l.peer_inc(group);
                    HaveFrom {
                        node: m.clone(),
                        inc,
                        seq: if pinc == inc { seq } else { 0 },
                        linked: true,
                    }
                }
                None => HaveFrom {
                    node: m.clone(),
                    inc: pinc,
                    seq,
                    linked: false,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(node: &str, inc: u64, seq: u64, linked: bool) -> HaveFrom {
        HaveFrom {
            node: node.into(),
            inc,
            seq,
            linked,
        }
    }

    #[test]
    fn defers_only_what_the_peer_follows_and_settles_by_position() {
        let mut g = GroupRelay::default();
        // nothing known of the peer: relay
        assert_eq!(g.deferral("p", 7, 100), None);
        g.update(vec![h("p", 7, 90, true), h("q", 3, 0, false)]);
        assert!(g.seen);
        // linked with p under that incarnation: defer until its position reaches ours
        assert_eq!(g.deferral("p", 7, 100), Some(Some(100)));
        assert_eq!(g.deferral("p", 7, 80), Some(None));
        // another incarnation of p, or q (unlinked): relay
        assert_eq!(g.deferral("p", 8, 100), None);
        assert_eq!(g.deferral("q", 3, 1), None);
        g.defer("p", 7, 100, 500);
        g.defer("p", 7, 100, 501);
        g.defer("p", 7, 120, 510);
        assert_eq!(g.floor(), Some(500));
        // the peer passes the first need: that run is settled
        g.update(vec![h("p", 7, 110, true)]);
        assert_eq!(g.floor(), Some(510));
        assert_eq!(g.take_rewind(), None);
        g.update(vec![h("p", 7, 120, true)]);
        assert_eq!(g.floor(), None);
    }

    #[test]
    fn a_member_the_peer_lost_turns_deferrals_into_a_rewind() {
        let mut g = GroupRelay::default();
        g.update(vec![h("p", 7, 0, true), h("q", 2, 0, true)]);
        g.defer("p", 7, 10, 40);
        g.defer("p", 7, 12, 44);
        g.defer("q", 2, 5, 42);
        // p went away from the peer before it got there
        g.update(vec![h("p", 7, 10, false)]);
        assert!(g.busy());
        assert_eq!(g.floor(), Some(40));
        assert_eq!(g.take_rewind(), Some(40));
        // q's run stays until it is confirmed
        assert_eq!(g.floor(), Some(42));
        // nothing more of p is deferred while the peer is not linked with it
        assert_eq!(g.deferral("p", 7, 11), None);
        // q comes back under a new incarnation: what came from the old one is owed
        g.update(vec![h("q", 3, 0, true)]);
        assert_eq!(g.take_rewind(), Some(42));
        assert_eq!(g.floor(), None);
    }
}
