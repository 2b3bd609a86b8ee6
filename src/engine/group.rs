//! One group as this node runs it: its checked config, compiled filters, its other members, and
//! the settings every member must agree on. Immutable for the life of a node.

use crate::config::{GroupConfig, Owners};
use crate::fs::xattr::XattrFilter;
use crate::local::filter::Filter;
use crate::net::protocol::SharedSettings;

/// The name of the accounts pseudo-group in the index and on the wire (a config group name
/// cannot start with `@`).
pub const ACCOUNTS: &str = "@accounts";

/// A group as node `me` runs it.
pub struct GroupRt {
    pub cfg: GroupConfig,
    pub filter: std::sync::Arc<Filter>,
    /// The other members (full members and replicas).
    pub peers: Vec<String>,
    /// This node only receives in this group.
    pub replica: bool,
    /// Which extended attributes are synced (`xattrs = true`).
    pub xattrs: Option<XattrFilter>,
    /// What peers compare at connect (SPEC §5.11).
    pub settings: SharedSettings,
    /// For the accounts pseudo-group: which accounts are managed and how.
    pub accounts: Option<crate::accounts::Policy>,
}

impl GroupRt {
    pub fn new(cfg: &GroupConfig, me: &str) -> Result<GroupRt, String> {
        let xattrs = if cfg.xattrs {
            let f = XattrFilter::new(&cfg.xattrs_include, &cfg.xattrs_exclude)
                .map_err(|e| e.to_string())?;
            Some(f.privileged(rustix::process::geteuid().is_root()))
        } else {
            None
        };
        let mut nodes = cfg.nodes.clone();
        nodes.sort();
        let mut replicas = cfg.replicas.clone();
        replicas.sort();
        Ok(GroupRt {
            filter: std::sync::Arc::new(Filter::new(cfg)?),
            peers: cfg
                .members()
                .filter(|m| *m != me)
                .map(String::from)
                .collect(),
            replica: cfg.replicas.iter().any(|r| r == me),
            xattrs,
            settings: SharedSettings {
                nodes,
                replicas,
                paths: cfg.paths.clone(),
                exclude: cfg.exclude.clone(),
                include: cfg.include.clone(),
                conflict: cfg.conflict.to_string(),
                owners: cfg.owners.to_string(),
                xattrs: cfg.xattrs,
                xattrs_include: cfg.xattrs_include.clone(),
                xattrs_exclude: cfg.xattrs_exclude.clone(),
                other: Vec::new(),
            },
            accounts: None,
            cfg: cfg.clone(),
        })
    }

    /// The accounts pseudo-group (SPEC §5.7): its members are `[accounts] nodes` (every node by
    /// default); it has no paths; concurrent changes of one account are settled by
    /// `[accounts] conflict` (default `newest`).
    pub fn accounts(
        ac: &crate::config::AccountsConfig,
        cfg: &crate::config::Config,
        me: &str,
    ) -> Option<GroupRt> {
        let members: Vec<String> = match &ac.nodes {
            Some(n) => n.clone(),
            None => cfg.nodes.keys().cloned().collect(),
        };
        if !members.iter().any(|m| m == me) {
            return None;
        }
        let mut gc = GroupConfig::new(ACCOUNTS);
        gc.nodes = members.clone();
        gc.watch = false;
        gc.verify_every = cfg.verify_every;
        gc.conflict = ac.conflict.clone();
        let policy = crate::accounts::Policy::from_config(ac);
        let mut nodes = members;
        nodes.sort();
        let users = {
            let mut u = ac.users.clone();
            u.sort();
            u
        };
        let other = vec![
            ("users".to_string(), format!("{users:?}")),
            (
                "uid_range".to_string(),
                ac.uid_range
                    .map(|(a, b)| format!("{a}-{b}"))
                    .unwrap_or_else(|| "none".into()),
            ),
            ("passwords".to_string(), ac.passwords.to_string()),
            ("create_home".to_string(), ac.create_home.to_string()),
        ];
        Some(GroupRt {
            filter: std::sync::Arc::new(Filter::new(&gc).ok()?),
            peers: gc.nodes.iter().filter(|m| *m != me).cloned().collect(),
            replica: false,
            xattrs: None,
            settings: SharedSettings {
                nodes,
                conflict: gc.conflict.to_string(),
                owners: gc.owners.to_string(),
                other,
                ..Default::default()
            },
            accounts: Some(policy),
            cfg: gc,
        })
    }

    /// The accounts pseudo-group.
    pub fn is_accounts(&self) -> bool {
        self.accounts.is_some()
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Does `node` only receive in this group?
    pub fn is_replica(&self, node: &str) -> bool {
        self.cfg.replicas.iter().any(|r| r == node)
    }

    /// Ownership is synced.
    pub fn compare_owner(&self) -> bool {
        self.cfg.owners != Owners::Ignore
    }
}
