//! Which users and groups are managed, from `[accounts]` (SPEC §3).
//!
//! A user is managed when its name is in `users` or its uid is in `uid_range`. A group is
//! managed when its gid is in `uid_range`, its name is in `users`, or it is the private group
//! of a managed user (a group named like the user that is the user's primary group, as
//! `useradd` makes with `USERGROUPS_ENAB`). A shared primary group outside the range (`users`,
//! gid 100) is not managed: its lines are never written; only the membership of managed users
//! in it is (see [`super::model::Members`]). The same accounts give the same answer on every
//! node.
//!
//! Invariant: uid/gid 0 and 4294967295 (`(uid_t)-1`) are never managed, whatever the config
//! says, so `root` and the "no id" value can never be written by a peer.

use crate::config::AccountsConfig;
use std::collections::BTreeSet;

/// True for ids no account record may carry.
pub fn reserved_id(id: u32) -> bool {
    id == 0 || id == u32::MAX
}

/// The managed names and id range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagedSet {
    users: BTreeSet<String>,
    range: Option<(u32, u32)>,
}

impl ManagedSet {
    pub fn new<S: Into<String>>(
        users: impl IntoIterator<Item = S>,
        uid_range: Option<(u32, u32)>,
    ) -> Self {
        ManagedSet {
            users: users.into_iter().map(Into::into).collect(),
            range: uid_range,
        }
    }

    pub fn from_config(cfg: &AccountsConfig) -> Self {
        Self::new(cfg.users.iter().cloned(), cfg.uid_range)
    }

    /// `users` from the config.
    pub fn user_names(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(String::as_str)
    }

    pub fn uid_range(&self) -> Option<(u32, u32)> {
        self.range
    }

    /// Whether an id is in `uid_range` (and not reserved).
    pub fn in_range(&self, id: u32) -> bool {
        !reserved_id(id) && self.range.is_some_and(|(lo, hi)| lo <= id && id <= hi)
    }

    /// Whether the user `name` with `uid` is managed.
    pub fn user(&self, name: &str, uid: u32) -> bool {
        !reserved_id(uid) && (self.users.contains(name) || self.in_range(uid))
    }

    /// Whether the group `name` with `gid` is managed. `owner` is the user named like the
    /// group on this node, if any: its uid and primary gid.
    pub fn group(&self, name: &str, gid: u32, owner: Option<(u32, u32)>) -> bool {
        !reserved_id(gid)
            && (self.in_range(gid)
                || self.users.contains(name)
                || owner.is_some_and(|(uid, pgid)| pgid == gid && self.user(name, uid)))
    }

    /// One line for `check-config`, e.g. `users "niden", "beauty"; uids and gids 2000-2999`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.users.is_empty() {
            let names: Vec<String> = self.users.iter().map(|u| format!("{u:?}")).collect();
            parts.push(format!("users {}", names.join(", ")));
        }
        if let Some((lo, hi)) = self.range {
            parts.push(format!("uids and gids {lo}-{hi}"));
        }
        parts.push("their private groups".to_owned());
        parts.join("; ")
    }
}

/// The whole `[accounts]` policy an apply or read follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub set: ManagedSet,
    /// Sync password hashes (and the last-change day that goes with them).
    pub passwords: bool,
    /// Create missing home directories from `<root>/etc/skel`.
    pub create_home: bool,
}

impl Policy {
    pub fn from_config(cfg: &AccountsConfig) -> Self {
        Policy {
            set: ManagedSet::from_config(cfg),
            passwords: cfg.passwords,
            create_home: cfg.create_home,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(users: &[&str], range: Option<(u32, u32)>) -> AccountsConfig {
        AccountsConfig {
            nodes: None,
            users: users.iter().map(|s| s.to_string()).collect(),
            uid_range: range,
            passwords: true,
            create_home: true,
            conflict: crate::config::ConflictPolicy::Newest,
        }
    }

    #[test]
    fn users_by_name_or_range_never_root() {
        let s = ManagedSet::from_config(&cfg(&["niden", "root"], Some((0, 2999))));
        assert!(s.user("niden", 1001));
        assert!(s.user("anyone", 2000));
        assert!(!s.user("root", 0), "uid 0 is never managed");
        assert!(!s.user("anyone", 0));
        assert!(!s.user("nobody", 65534) || s.in_range(65534));
        let s = ManagedSet::from_config(&cfg(&[], Some((2000, 2999))));
        assert!(!s.user("www-data", 33));
        assert!(!s.user("x", 3000));
        assert!(!s.in_range(u32::MAX));
        let all = ManagedSet::new(Vec::<String>::new(), Some((1, u32::MAX)));
        assert!(!all.user("x", u32::MAX));
    }

    #[test]
    fn groups_by_range_own_name_or_private() {
        let s = ManagedSet::from_config(&cfg(&["niden"], Some((2000, 2999))));
        assert!(s.group("web", 2100, None));
        assert!(s.group("niden", 1001, None));
        assert!(
            !s.group("users", 100, None),
            "a shared primary group is not managed"
        );
        assert!(
            s.group("alice", 1500, Some((2005, 1500))),
            "private group of a managed user"
        );
        assert!(
            !s.group("alice", 1500, Some((2005, 1501))),
            "not its primary group"
        );
        assert!(
            !s.group("bob", 1500, Some((1500, 1500))),
            "bob is not managed"
        );
        assert!(!s.group("sudo", 27, None));
        assert!(!s.group("root", 0, None));
        assert_eq!(
            s.summary(),
            "users \"niden\"; uids and gids 2000-2999; their private groups"
        );
    }
}
