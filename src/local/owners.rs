//! File ownership across nodes: by name (default), by number, or ignored.
//!
//! An item carries the owner's uid/gid and, when they resolve on the sending node, the user
//! and group names. A receiver with `owners = "by-name"` maps the names to its own ids and
//! falls back to the numbers when a name does not exist locally.
//!
//! Lookups are cached. A name or id that resolves is remembered until [`OwnerMap::invalidate`]
//! (called when the account files change, e.g. by account sync); one that does not resolve is
//! remembered for [`NEGATIVE_TTL`] only, so a file that arrived before its user gets the right
//! owner once the user exists.

use crate::config::Owners;
use crate::item::Owner;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name or id that did not resolve is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);

struct Cached<T> {
    value: Option<T>,
    at: Instant,
}

impl<T: Clone> Cached<T> {
    fn fresh(&self) -> bool {
        self.value.is_some() || self.at.elapsed() < NEGATIVE_TTL
    }
}

#[derive(Default)]
struct Cache {
    user_by_id: HashMap<u32, Cached<String>>,
    group_by_id: HashMap<u32, Cached<String>>,
    uid_by_name: HashMap<String, Cached<u32>>,
    gid_by_name: HashMap<String, Cached<u32>>,
}

fn lookup<K: std::hash::Hash + Eq + Clone, T: Clone>(
    map: &mut HashMap<K, Cached<T>>,
    k: &K,
    f: impl FnOnce() -> Option<T>,
) -> Option<T> {
    if let Some(c) = map.get(k)
        && c.fresh()
    {
        return c.value.clone();
    }
    let value = f();
    map.insert(
        k.clone(),
        Cached {
            value: value.clone(),
            at: Instant::now(),
        },
    );
    value
}

/// Name/id lookups with a cache.
#[derive(Default)]
pub struct OwnerMap {
    cache: Mutex<Cache>,
}

impl OwnerMap {
    fn with<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> R {
        let mut g = match self.cache.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Forget everything (the account files changed).
    pub fn invalidate(&self) {
        self.with(|c| *c = Cache::default());
    }

    /// The user name of a local uid.
    pub fn user_name(&self, uid: u32) -> Option<String> {
        self.with(|c| {
            lookup(&mut c.user_by_id, &uid, || {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
        })
    }

    /// The group name of a local gid.
    pub fn group_name(&self, gid: u32) -> Option<String> {
        self.with(|c| {
            lookup(&mut c.group_by_id, &gid, || {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
        })
    }

    /// The local uid of a user name.
    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.with(|c| {
            lookup(&mut c.uid_by_name, &name.to_string(), || {
                nix::unistd::User::from_name(name)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            })
        })
    }

    /// The local gid of a group name.
    pub fn gid_of(&self, name: &str) -> Option<u32> {
        self.with(|c| {
            lookup(&mut c.gid_by_name, &name.to_string(), || {
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .map(|g| g.gid.as_raw())
            })
        })
    }

    /// Describe local ids as an [`Owner`].
    pub fn describe(&self, uid: u32, gid: u32) -> Owner {
        Owner {
            uid,
            gid,
            user: self.user_name(uid),
            group: self.group_name(gid),
        }
    }

    /// The local (uid, gid) for an item's owner under a policy; `None` to leave it alone.
    pub fn local_ids(&self, o: &Owner, policy: Owners) -> Option<(u32, u32)> {
        match policy {
            Owners::Ignore => None,
            Owners::Numeric => Some((o.uid, o.gid)),
            Owners::ByName => {
                let uid = o
                    .user
                    .as_deref()
                    .and_then(|n| self.uid_of(n))
                    .unwrap_or(o.uid);
                let gid = o
                    .group
                    .as_deref()
                    .and_then(|n| self.gid_of(n))
                    .unwrap_or(o.gid);
                Some((uid, gid))
            }
        }
    }

    /// Would `o` map by name to ids that differ from its numbers on this node, or not resolve
    /// at all (so it may need fixing once the accounts exist)?
    pub fn unresolved(&self, o: &Owner) -> bool {
        o.user.as_deref().is_some_and(|n| self.uid_of(n).is_none())
            || o.group.as_deref().is_some_and(|n| self.gid_of(n).is_none())
    }
}

impl crate::fs::xattr::Accounts for OwnerMap {
    fn user_name(&self, uid: u32) -> Option<String> {
        OwnerMap::user_name(self, uid)
    }
    fn group_name(&self, gid: u32) -> Option<String> {
        OwnerMap::group_name(self, gid)
    }
    fn uid_of(&self, name: &str) -> Option<u32> {
        OwnerMap::uid_of(self, name)
    }
    fn gid_of(&self, name: &str) -> Option<u32> {
        OwnerMap::gid_of(self, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_maps_by_name_and_number() {
        let m = OwnerMap::default();
        let o = m.describe(0, 0);
        assert_eq!(o.user.as_deref(), Some("root"));
        assert_eq!(m.local_ids(&o, Owners::ByName), Some((0, 0)));
        let stranger = Owner {
            uid: 4242,
            gid: 4343,
            user: Some("no-such-user-here".into()),
            group: None,
        };
        assert_eq!(m.local_ids(&stranger, Owners::ByName), Some((4242, 4343)));
        assert_eq!(m.local_ids(&stranger, Owners::Ignore), None);
        assert!(m.unresolved(&stranger));
    }
}
