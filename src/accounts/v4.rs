//! The previous release's account records (index schema 4, protocol 4: `Body::User` and
//! `Body::Group`), kept to read an index of that release once (`store::migrate::v4_to_v5`) and
//! to decode what a protocol-4 peer sends (which this release never applies: accounts are not
//! exchanged between the two releases, see `docs/accounts.md`).
//!
//! Postcard is not self-describing: the field order below is the format and must never change.
//! Conversion to this release's items is total ([`UserRecord::to_user`], [`memberships`]).

use super::model::{Aging, Group, Secret, User};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A managed user of the previous release: its fields and the groups it belongs to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Name of the primary group on the node that read the record.
    pub group: Option<String>,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Supplementary groups by name, sorted.
    pub groups: Vec<String>,
    pub password: Option<Secret>,
    pub aging: Aging,
}

/// A managed group of the previous release (no members: they were in the user records).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub gid: u32,
    pub password: Option<Secret>,
    pub admins: Vec<String>,
}

impl UserRecord {
    /// This release's user (its memberships go to [`memberships`]).
    pub fn to_user(&self) -> User {
        User {
            name: self.name.clone(),
            uid: self.uid,
            gid: self.gid,
            gecos: self.gecos.clone(),
            home: self.home.clone(),
            shell: self.shell.clone(),
            password: self.password.clone(),
            aging: self.aging.clone(),
        }
    }
}

impl GroupRecord {
    pub fn to_group(&self) -> Group {
        Group {
            name: self.name.clone(),
            gid: self.gid,
            password: self.password.clone(),
            admins: self.admins.clone(),
        }
    }
}

/// Group name → the users whose records list it, sorted: the member sets of a schema-4 index.
pub fn memberships<'a>(
    users: impl IntoIterator<Item = &'a UserRecord>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in users {
        for g in &u.groups {
            out.entry(g.clone()).or_default().push(u.name.clone());
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}
