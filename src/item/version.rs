//! Version vectors: the causal history of one path.
//!
//! A version vector maps a node name to the number of changes that node has made to the path
//! (as far as this copy knows). Ordering between two versions is decided only by comparing
//! vectors, never by wall clocks, so clock skew between servers cannot lose data.
//!
//! Invariants: counters only grow; a node bumps only its own counter; merging takes the
//! element-wise maximum, so a merged vector dominates both inputs.
//!
//! **Counters never repeat.** A node's key is its name, and a bump sets its counter to at least
//! the node's clock (milliseconds since the epoch, see [`clock_ms`]), not just one more than
//! before. So a node that lost its index (started over, or restored from a VM snapshot) and
//! changes a path again never produces a vector it produced before for other content: its new
//! counters are above every counter it gave out in the past (as long as its clock does not go
//! back by more than the time since). Wall clocks still never decide *ordering*: only the
//! comparison of vectors does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The outcome of comparing two version vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Both describe the same history.
    Equal,
    /// The left side has seen everything the right side has, and more.
    Newer,
    /// The right side has seen everything the left side has, and more.
    Older,
    /// Each side has a change the other has not seen: a conflict if the contents differ.
    Concurrent,
}

/// A version vector; absent entries count as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(pub BTreeMap<String, u64>);

impl VersionVector {
    /// The counter of `node`, zero when absent.
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Record one more change made by `node`, whose clock reads `clock` (see the module doc:
    /// the counter becomes at least `clock`, so a node that lost its index never reuses one).
    pub fn bump(&mut self, node: &str, clock: u64) {
        let c = self.0.entry(node.to_string()).or_insert(0);
        *c = c.saturating_add(1).max(clock);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No entry at all (an adopted, unversioned entry on a replica).
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|v| *v == 0)
    }

    /// Element-wise maximum with `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (k, v) in &other.0 {
            let c = self.0.entry(k.clone()).or_insert(0);
            if *v > *c {
                *c = *v;
            }
        }
    }

    /// Compare `self` with `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut greater = false;
        let mut less = false;
        for (k, v) in &self.0 {
            let o = other.get(k);
            if *v > o {
                greater = true;
            } else if *v < o {
                less = true;
            }
        }
        for (k, o) in &other.0 {
            if !self.0.contains_key(k) && *o > 0 {
                less = true;
            }
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Newer,
            (false, true) => Causality::Older,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Short human form, e.g. `a:3,b:1`.
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Milliseconds since the Unix epoch: the floor of a version counter.
pub fn clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn ordering() {
        assert_eq!(vv(&[("a", 1)]).compare(&vv(&[("a", 1)])), Causality::Equal);
        assert_eq!(vv(&[("a", 2)]).compare(&vv(&[("a", 1)])), Causality::Newer);
        assert_eq!(
            vv(&[("a", 1)]).compare(&vv(&[("a", 1), ("b", 1)])),
            Causality::Older
        );
        assert_eq!(
            vv(&[("a", 2)]).compare(&vv(&[("a", 1), ("b", 1)])),
            Causality::Concurrent
        );
        assert_eq!(vv(&[("a", 0)]).compare(&vv(&[])), Causality::Equal);
    }

    #[test]
    fn bump_takes_the_clock_as_floor() {
        let mut v = vv(&[("a", 5)]);
        v.bump("a", 3);
        assert_eq!(v.get("a"), 6);
        v.bump("a", 1000);
        assert_eq!(v.get("a"), 1000);
    }

    #[test]
    fn merge_dominates_both() {
        let x = vv(&[("a", 2), ("b", 1)]);
        let y = vv(&[("a", 1), ("c", 4)]);
        let mut m = x.clone();
        m.merge(&y);
        assert_eq!(m.compare(&x), Causality::Newer);
        assert_eq!(m.compare(&y), Causality::Newer);
        let mut b = x.clone();
        b.bump("b", 0);
        assert_eq!(b.get("b"), 2);
    }
}
