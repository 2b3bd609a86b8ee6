//! File ownership across nodes: by name (default), by number, or ignored.
//!
//! A record carries the owner's uid/gid and, when they resolve on the sending node, the user
//! and group names. A receiver with `owners = "by-name"` maps the names to its own ids and
//! falls back to the numbers when a name does not exist locally. Lookups are cached for the
//! life of the process (accounts rarely change; a restart refreshes them).

use crate::config::Owners;
use crate::record::Owner;
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Cache {
    user_by_id: HashMap<u32, Option<String>>,
    group_by_id: HashMap<u32, Option<String>>,
    uid_by_name: HashMap<String, Option<u32>>,
    gid_by_name: HashMap<String, Option<u32>>,
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

    /// Describe local ids as an [`Owner`].
    pub fn describe(&self, uid: u32, gid: u32) -> Owner {
        self.with(|c| {
            let user = c
                .user_by_id
                .entry(uid)
                .or_insert_with(|| {
                    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                        .ok()
                        .flatten()
                        .map(|u| u.name)
                })
                .clone();
            let group = c
                .group_by_id
                .entry(gid)
                .or_insert_with(|| {
                    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                        .ok()
                        .flatten()
                        .map(|g| g.name)
                })
                .clone();
            Owner {
                uid,
                gid,
                user,
                group,
            }
        })
    }

    /// The local (uid, gid) for a record's owner under a policy; `None` to leave it alone.
    pub fn local_ids(&self, o: &Owner, policy: Owners) -> Option<(u32, u32)> {
        match policy {
            Owners::Ignore => None,
            Owners::Numeric => Some((o.uid, o.gid)),
            Owners::ByName => self.with(|c| {
                let uid = o
                    .user
                    .as_ref()
                    .and_then(|n| {
                        *c.uid_by_name.entry(n.clone()).or_insert_with(|| {
                            nix::unistd::User::from_name(n)
                                .ok()
                                .flatten()
                                .map(|u| u.uid.as_raw())
                        })
                    })
                    .unwrap_or(o.uid);
                let gid = o
                    .group
                    .as_ref()
                    .and_then(|n| {
                        *c.gid_by_name.entry(n.clone()).or_insert_with(|| {
                            nix::unistd::Group::from_name(n)
                                .ok()
                                .flatten()
                                .map(|g| g.gid.as_raw())
                        })
                    })
                    .unwrap_or(o.gid);
                Some((uid, gid))
            }),
        }
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
    }
}
