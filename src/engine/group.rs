//! One group as this node runs it: its checked config, compiled filters, its other members, and
//! the settings every member must agree on. Immutable for the life of a node.

use crate::config::{GroupConfig, Owners};
use crate::fs::xattr::XattrFilter;
use crate::local::filter::Filter;
use crate::net::protocol::SharedSettings;

/// A group as node `me` runs it.
pub struct GroupRt {
    pub cfg: GroupConfig,
    pub filter: Filter,
    /// The other members (full members and replicas).
    pub peers: Vec<String>,
    /// This node only receives in this group.
    pub replica: bool,
    /// Which extended attributes are synced (`xattrs = true`).
    pub xattrs: Option<XattrFilter>,
    /// What peers compare at connect (SPEC §5.11).
    pub settings: SharedSettings,
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
            filter: Filter::new(cfg)?,
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
            },
            cfg: cfg.clone(),
        })
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
