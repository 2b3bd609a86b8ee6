//! Relays a peer does not need are left out (SPEC §7: a change reaches each node once, and
//! the bytes of a change grow linearly with the number of nodes, announcements included).
//!
//! A node sends each version it made to every linked peer. A version it got from another
//! member `p` it used to relay to every other peer as well, so one change on N nodes cost
//! N × (N − 2) relays on top of the N − 1 sends. On a protocol-5 link the receiver `c` tells
//! us, in `Have` messages (at connect, and whenever one of its links comes or goes), which
//! members it is linked with now and how far it applied each one's index. A version we got
//! **from the node that made it** (`Entry::from` is its origin `p`) is left out for `c` while
//! `c` says it is linked with `p` under the incarnation we got the version from: `p` sends it
//! to `c` itself, and `p` never leaves out a version of its own. Nothing is recorded per
//! version: when `c` reports `p` unlinked (or another incarnation of `p`) with its position
//! `s` with `p`, everything of `p`'s past `s` may be missing there, and the pump goes back to
//! the first of our seqs that can hold such a version (a checkpoint kept per member, below) and
//! reads on from there; with `p` gone from `c`'s view nothing of `p`'s is left out, so the
//! relays go out as before. A version that reached us through a third node is always sent.
//!
//! **Checkpoints** (node-wide, per group and member): when a batch of `p`'s with `through` =
//! `t` arrives and we had `p`'s index up to `t0`, every version of `p`'s past `t0` that we will
//! hold is committed at one of our seqs above our `max_seq` now; so (`t0`, `max_seq`) is a
//! checkpoint, and for a peer at position `s` with `p` the pump reads again from the latest
//! checkpoint with `t0 ≤ s`. A link with `p` starts with (our saved position with `p`, our
//! `max_seq`). Old checkpoints are thinned (which only makes a rewind read more); with none
//! that fits (after a restart), the pump reads from the start.
//!
//! Invariants: the peer's position with `p` covers every version `p` made up to it (`p` sends
//! its own versions to every linked peer, skipping only what came from that peer), so a
//! version left out is either held by the peer or read again when the peer loses `p`; a `Have`
//! arrives before any batch on a link (the pump waits for it), and a restart or a cut link
//! needs no record: the peer's first `Have` on the new link names the members it lacks.

use crate::engine::node::Ctx;
use crate::net::protocol::HaveFrom;
use std::collections::HashMap;

/// Checkpoints kept per group and member (older ones are thinned out).
const MAX_CHECKPOINTS: usize = 1024;

/// What one link knows of the peer's holdings in one group.
#[derive(Debug, Default)]
pub struct GroupRelay {
    /// The peer's last report per member.
    view: HashMap<String, HaveFrom>,
    /// The pump must read again from this seq (exclusive: items after it).
    rewind: Option<u64>,
    /// A `Have` for this group arrived.
    pub seen: bool,
}

impl GroupRelay {
    /// May a version that came from its origin `from` (incarnation `inc`) be left out for the
    /// peer (it is linked with `from` under that incarnation)?
    pub fn leave_out(&self, from: &str, inc: u64) -> bool {
        self.view
            .get(from)
            .is_some_and(|h| h.linked && h.inc == inc && inc != 0)
    }

    /// Take in the peer's report. `ours(member)`: our own (incarnation, position) with the
    /// member; `back(member, position)`: where to read again from for a peer at that position.
    /// A member the peer no longer follows, and is behind us with, becomes a rewind.
    pub fn update(
        &mut self,
        from: Vec<HaveFrom>,
        ours: impl Fn(&str) -> (u64, u64),
        back: impl Fn(&str, u64) -> u64,
    ) {
        let first = !self.seen;
        self.seen = true;
        for h in from {
            let (our_inc, our_pos) = ours(&h.node);
            // versions of the member were left out for the peer on this link, or may have been
            // on an earlier one (before the first report)
            let was_followed = first || self.view.get(&h.node).is_some_and(|b| b.linked);
            let follows = h.linked && h.inc == our_inc;
            // nothing to send again when we hold nothing of it or the peer has all we have
            let behind = our_pos > 0 && (h.inc != our_inc || h.seq < our_pos);
            if was_followed && !follows && behind {
                let at = if h.inc == our_inc {
                    back(&h.node, h.seq)
                } else {
                    0
                };
                self.rewind = Some(self.rewind.map_or(at, |r| r.min(at)));
            }
            self.view.insert(h.node.clone(), h);
        }
    }

    /// Where the pump must read again from (items after this seq), once.
    pub fn take_rewind(&mut self) -> Option<u64> {
        self.rewind.take()
    }

    /// A rewind is waiting for the pump.
    pub fn busy(&self) -> bool {
        self.rewind.is_some()
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

/// The checkpoints of one member in one group: its incarnation, and (its position before a
/// batch, our `max_seq` when the batch arrived), in order.
type Log = (u64, Vec<(u64, u64)>);

/// Node-wide checkpoints, per (group, member).
#[derive(Debug, Default)]
pub struct Checkpoints {
    map: std::sync::Mutex<HashMap<(String, String), Log>>,
}

impl Checkpoints {
    /// A batch of `member`'s arrived: we had its index (incarnation `inc`) up to `had`, and
    /// our index is at `ours`.
    pub fn add(&self, group: &str, member: &str, inc: u64, had: u64, ours: u64) {
        let mut m = crate::engine::peer::lock(&self.map);
        let e = m
            .entry((group.to_string(), member.to_string()))
            .or_insert((inc, Vec::new()));
        if e.0 != inc {
            *e = (inc, Vec::new());
        }
        let v = &mut e.1;
        if v.last().is_some_and(|&(t, _)| t >= had) {
            return;
        }
        v.push((had, ours));
        if v.len() > MAX_CHECKPOINTS {
            // keep the first and every other one of the older half: a rewind then reads a
            // little more
            let half = v.len() / 2;
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                i == 1 || i > half || i % 2 == 0
            });
        }
    }

    /// Our seq to read again from for a peer that applied `member`'s index (incarnation `inc`)
    /// up to `pos`: versions of `member`'s past `pos` are all above it. 0 when unknown.
    pub fn back(&self, group: &str, member: &str, inc: u64, pos: u64) -> u64 {
        let m = crate::engine::peer::lock(&self.map);
        let Some((i, v)) = m.get(&(group.to_string(), member.to_string())) else {
            return 0;
        };
        if *i != inc {
            return 0;
        }
        v.iter()
            .rev()
            .find(|(had, _)| *had <= pos)
            .map_or(0, |&(_, ours)| ours)
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
    fn leaves_out_only_what_the_peer_follows() {
        let mut g = GroupRelay::default();
        // nothing known of the peer: relay
        assert!(!g.leave_out("p", 7));
        let ours = |m: &str| if m == "p" { (7, 90) } else { (3, 50) };
        g.update(
            vec![h("p", 7, 90, true), h("q", 3, 50, false)],
            ours,
            |_, _| 0,
        );
        // the peer has all we have of q: nothing to send again
        assert!(!g.busy());
        assert!(g.seen);
        assert!(g.leave_out("p", 7));
        // another incarnation of p, or q (unlinked): relay
        assert!(!g.leave_out("p", 8));
        assert!(!g.leave_out("q", 3));
    }

    #[test]
    fn a_member_the_peer_lost_is_read_again_from_its_checkpoint() {
        let cp = Checkpoints::default();
        cp.add("g", "p", 7, 0, 1000);
        cp.add("g", "p", 7, 40, 1100);
        cp.add("g", "p", 7, 80, 1200);
        assert_eq!(cp.back("g", "p", 7, 50), 1100);
        assert_eq!(cp.back("g", "p", 7, 80), 1200);
        assert_eq!(cp.back("g", "p", 8, 80), 0);
        assert_eq!(cp.back("g", "q", 7, 80), 0);
        let ours = |_: &str| (7, 100);
        let back = |m: &str, s: u64| cp.back("g", m, 7, s);
        let mut g = GroupRelay::default();
        g.update(vec![h("p", 7, 60, true)], ours, back);
        assert!(!g.busy());
        // p went away from the peer at 60, we have p up to 100: read again from 1100
        g.update(vec![h("p", 7, 60, false)], ours, back);
        assert_eq!(g.take_rewind(), Some(1100));
        assert!(!g.leave_out("p", 7));
        // a peer that has all we have of p needs nothing again
        let mut g = GroupRelay::default();
        g.update(vec![h("p", 7, 100, true)], ours, back);
        g.update(vec![h("p", 7, 100, false)], ours, back);
        assert_eq!(g.take_rewind(), None);
        // the first report on a link names a member the peer lacks: read again (an earlier
        // link, or a run before a restart, may have left versions out)
        let mut g = GroupRelay::default();
        g.update(vec![h("p", 7, 30, false)], ours, back);
        assert_eq!(g.take_rewind(), Some(1000));
        // another incarnation while followed: from the start
        let mut g = GroupRelay::default();
        g.update(vec![h("p", 7, 100, true)], ours, back);
        g.update(vec![h("p", 9, 0, true)], ours, back);
        assert_eq!(g.take_rewind(), Some(0));
    }

    #[test]
    fn checkpoints_are_thinned_not_lost() {
        let cp = Checkpoints::default();
        for i in 0..5000u64 {
            cp.add("g", "p", 1, i * 10, 100_000 + i);
        }
        // the newest stay exact, older ones fall back to an earlier (lower) seq
        assert_eq!(cp.back("g", "p", 1, 49_990), 104_999);
        let old = cp.back("g", "p", 1, 5_000);
        assert!((100_000..=100_500).contains(&old), "{old}");
        // a new incarnation starts over
        cp.add("g", "p", 2, 0, 200_000);
        assert_eq!(cp.back("g", "p", 1, 49_990), 0);
        assert_eq!(cp.back("g", "p", 2, 5), 200_000);
    }
}
