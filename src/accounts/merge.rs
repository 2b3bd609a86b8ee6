//! What to do with a peer's version of an account item, given ours (pure).
//!
//! Version vectors order the two versions, as for files:
//! - theirs descends from ours → take it; ours descends from theirs (or is the same) → ignore;
//! - the same vector (only unversioned copies: adopted by nodes that joined as new) → the
//!   same body is ignored; different bodies are settled by a deterministic order of the
//!   bodies, without a conflict (no change was made);
//! - concurrent:
//!   - **member sets** merge as observed-remove sets: a member stays when both have it, or
//!     when one has it with a dot (an add) the other has not seen; so concurrent adds both
//!     survive and a removal removes what its node had seen. Never a conflict;
//!   - **users and groups** with the same fields (the same change made on several nodes, as
//!     pssh does) merge without a conflict;
//!   - otherwise it is a conflict settled by the `[accounts] conflict` policy: `newest` (the
//!     default) keeps the change made last — by the time it was made (`made`; a deletion's
//!     time is its origin's counter, the time it was noticed) — `oldest` the first,
//!     `prefer:NODE` that node's version; ties go to the origin whose name sorts first. The
//!     winner's body is kept under the merged vector, so every node ends with the same item,
//!     whatever the order of arrival. `manual` leaves it unresolved: each node keeps its own
//!     until `resolve`.
//!
//! Invariants: the result is a function of the two items (and the policy) only, symmetric in
//! which is local; a merged item's vector is the union of both, its origin the smaller one; so
//! one merged vector names one body on every node.

use super::model::{Account, Dot, Member, Members};
use crate::config::ConflictPolicy;
use crate::item::{Body, Causality, Item, VersionVector};
use std::cmp::Ordering;

/// A conflict settled (or left open) by [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Origins of the competing versions, sorted.
    pub nodes: Vec<String>,
    /// The winner's origin; `None` while unresolved (`manual`).
    pub winner: Option<String>,
    /// The competing versions as they were (for `resolve --keep`): the local one, then the
    /// peer's.
    pub versions: Vec<Item>,
    /// The losing version was ours.
    pub we_lost: bool,
}

/// What to do with one peer item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Ignore,
    /// Put this item on disk and in the index.
    Take {
        item: Item,
        conflict: Option<Conflict>,
    },
    /// Our disk stays as it is; the index takes this item (our fields under the merged
    /// vector), which then travels.
    Keep {
        item: Item,
        conflict: Option<Conflict>,
    },
    /// `manual`: each node keeps its own version until `resolve`.
    Unresolved { conflict: Conflict },
}

/// The body of an account item.
fn account(i: &Item) -> Option<&Account> {
    match &i.body {
        Some(Body::Account(a)) => Some(a),
        _ => None,
    }
}

/// When the change was made: the body's `made`, or for a deletion its origin's counter.
pub fn made_of(i: &Item) -> i64 {
    match account(i) {
        Some(a) if !matches!(a, Account::Members(_)) => a.made(),
        _ => i64::try_from(i.version.get(&i.origin)).unwrap_or(i64::MAX),
    }
}

fn body_bytes(i: &Item) -> Vec<u8> {
    i.body
        .as_ref()
        .and_then(|b| postcard::to_allocvec(b).ok())
        .unwrap_or_default()
}

fn same_fields(a: &Item, b: &Item) -> bool {
    match (account(a), account(b)) {
        (Some(x), Some(y)) => x.same_fields(y),
        (None, None) => a.body.is_none() && b.body.is_none(),
        _ => false,
    }
}

/// A strict total order between two different versions, the same on every node: `Greater`
/// when `b` wins.
fn order(policy: &ConflictPolicy, a: &Item, b: &Item) -> Ordering {
    let by = match policy {
        ConflictPolicy::Prefer(n) => (b.origin == *n).cmp(&(a.origin == *n)),
        ConflictPolicy::Oldest => made_of(a).cmp(&made_of(b)),
        _ => Ordering::Equal,
    };
    by.then_with(|| match policy {
        ConflictPolicy::Oldest => Ordering::Equal,
        _ => made_of(b).cmp(&made_of(a)),
    })
    // ties: the origin whose name sorts first, then the encoding
    .then_with(|| a.origin.cmp(&b.origin))
    .then_with(|| body_bytes(a).cmp(&body_bytes(b)))
}

fn merged_beat(a: &Item, b: &Item, loser: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = a.beat.iter().chain(&b.beat).cloned().collect();
    if let Some(l) = loser {
        v.push(l.to_string());
    }
    v.sort();
    v.dedup();
    v
}

fn sorted(a: &str, b: &str) -> Vec<String> {
    let mut v = vec![a.to_string(), b.to_string()];
    v.sort();
    v.dedup();
    v
}

/// Decide what to do with `remote` given `local` (this node's item for the key, if any).
pub fn decide(local: Option<&Item>, remote: &Item, policy: &ConflictPolicy) -> Decision {
    let Some(local) = local else {
        return Decision::Take {
            item: remote.clone(),
            conflict: None,
        };
    };
    match remote.version.compare(&local.version) {
        Causality::Older => Decision::Ignore,
        Causality::Equal => {
            if local.body == remote.body && local.origin == remote.origin {
                // the same version; the lists of beaten nodes merge (they only grow)
                let beat = merged_beat(local, remote, None);
                if beat == local.beat {
                    return Decision::Ignore;
                }
                return Decision::Keep {
                    item: Item {
                        beat,
                        ..local.clone()
                    },
                    conflict: None,
                };
            }
            // unversioned copies of nodes that joined as new: a deterministic pick, no conflict
            if order(policy, local, remote) == Ordering::Greater {
                if same_fields(local, remote) {
                    Decision::Keep {
                        item: remote.clone(),
                        conflict: None,
                    }
                } else {
                    Decision::Take {
                        item: remote.clone(),
                        conflict: None,
                    }
                }
            } else {
                Decision::Ignore
            }
        }
        Causality::Newer => {
            // our version lost a conflict settled on another node: list it here too
            let conflict = (remote.beat.contains(&local.origin)
                && local.origin != remote.origin
                && !same_fields(local, remote))
            .then(|| Conflict {
                nodes: sorted(&local.origin, &remote.origin),
                winner: Some(remote.origin.clone()),
                versions: vec![local.clone(), remote.clone()],
                we_lost: true,
            });
            Decision::Take {
                item: remote.clone(),
                conflict,
            }
        }
        Causality::Concurrent => concurrent(local, remote, policy),
    }
}

fn concurrent(local: &Item, remote: &Item, policy: &ConflictPolicy) -> Decision {
    let mut version = local.version.clone();
    version.merge(&remote.version);
    let is_members = |i: &Item| {
        matches!(account(i), Some(Account::Members(_)))
            || (i.body.is_none() && i.key.starts_with(b"members/"))
    };
    if is_members(local) && is_members(remote) {
        let body = merge_members(local, remote);
        let origin = local.origin.clone().min(remote.origin.clone());
        let same = members_of(local).map(|m| &m.members) == body.as_ref().map(|m| &m.members);
        let item = Item {
            key: local.key.clone(),
            version,
            origin,
            body: body.map(|m| Body::Account(Account::Members(m))),
            beat: merged_beat(local, remote, None),
        };
        return if same {
            Decision::Keep {
                item,
                conflict: None,
            }
        } else {
            Decision::Take {
                item,
                conflict: None,
            }
        };
    }
    let remote_wins = order(policy, local, remote) == Ordering::Greater;
    let (winner, loser) = if remote_wins {
        (remote, local)
    } else {
        (local, remote)
    };
    if same_fields(local, remote) {
        // the same change made twice: no conflict; the greater of the two is kept, so every
        // node keeps the same item
        return Decision::Keep {
            item: Item {
                key: local.key.clone(),
                version,
                origin: winner.origin.clone(),
                body: winner.body.clone(),
                beat: merged_beat(local, remote, None),
            },
            conflict: None,
        };
    }
    let versions = vec![local.clone(), remote.clone()];
    let nodes = sorted(&local.origin, &remote.origin);
    if *policy == ConflictPolicy::Manual {
        return Decision::Unresolved {
            conflict: Conflict {
                nodes,
                winner: None,
                versions,
                we_lost: false,
            },
        };
    }
    let item = Item {
        key: local.key.clone(),
        version,
        origin: winner.origin.clone(),
        body: winner.body.clone(),
        beat: merged_beat(local, remote, Some(&loser.origin)),
    };
    let conflict = Some(Conflict {
        nodes,
        winner: Some(winner.origin.clone()),
        versions,
        we_lost: remote_wins,
    });
    if remote_wins {
        Decision::Take { item, conflict }
    } else {
        Decision::Keep { item, conflict }
    }
}

fn members_of(i: &Item) -> Option<&Members> {
    match account(i) {
        Some(Account::Members(m)) => Some(m),
        _ => None,
    }
}

fn covered(d: &Dot, vv: &VersionVector) -> bool {
    d.counter <= vv.get(&d.node)
}

/// The observed-remove merge of two concurrent member sets (a tombstone is an empty set);
/// `None` when the result is empty and both were tombstones.
pub fn merge_members(a: &Item, b: &Item) -> Option<Members> {
    let group = members_of(a)
        .or(members_of(b))
        .map(|m| m.group.clone())
        .or_else(|| {
            std::str::from_utf8(&a.key)
                .ok()
                .and_then(|k| k.strip_prefix("members/"))
                .map(String::from)
        })?;
    let empty = Vec::new();
    let am = members_of(a).map_or(&empty, |m| &m.members);
    let bm = members_of(b).map_or(&empty, |m| &m.members);
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < am.len() || j < bm.len() {
        let ord = match (am.get(i), bm.get(j)) {
            (Some(x), Some(y)) => x.user.cmp(&y.user),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Equal => {
                let (x, y) = (&am[i], &bm[j]);
                let mut dots: Vec<Dot> = x
                    .dots
                    .iter()
                    .filter(|d| y.dots.contains(d) || !covered(d, &b.version))
                    .chain(
                        y.dots
                            .iter()
                            .filter(|d| !x.dots.contains(d) && !covered(d, &a.version)),
                    )
                    .cloned()
                    .collect();
                dots.sort();
                dots.dedup();
                // in both: it stays unless each side removed the other's adds (an unversioned
                // member, of an adopted set, has no dots and stays)
                if !dots.is_empty() || (x.dots.is_empty() && y.dots.is_empty()) {
                    out.push(Member {
                        user: x.user.clone(),
                        dots,
                    });
                }
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                let x = &am[i];
                let dots: Vec<Dot> = x
                    .dots
                    .iter()
                    .filter(|d| !covered(d, &b.version))
                    .cloned()
                    .collect();
                if !dots.is_empty() {
                    out.push(Member {
                        user: x.user.clone(),
                        dots,
                    });
                }
                i += 1;
            }
            Ordering::Greater => {
                let y = &bm[j];
                let dots: Vec<Dot> = y
                    .dots
                    .iter()
                    .filter(|d| !covered(d, &a.version))
                    .cloned()
                    .collect();
                if !dots.is_empty() {
                    out.push(Member {
                        user: y.user.clone(),
                        dots,
                    });
                }
                j += 1;
            }
        }
    }
    if out.is_empty() && a.body.is_none() && b.body.is_none() {
        return None;
    }
    Some(Members {
        group,
        members: out,
    })
}
