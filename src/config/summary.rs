//! The human summary `check-config` prints: the groups with their paths, members and policy,
//! then this node and its peers (or every node). Read by people, not parsed: its layout may
//! change between releases.

use std::fmt;
use std::path::Path;

use super::values::{format_rate, format_size};
use super::{Compress, Config, NodeConfig};

pub(super) fn summary(config: &Config, this_node: Option<&str>) -> String {
    use fmt::Write as _;
    let mut s = String::new();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(s, "config:    {}", config.file.display());
    let _ = writeln!(
        s,
        "cluster:   {}, {}, default port {}",
        plural(config.nodes.len(), "node"),
        plural(config.groups.len(), "group"),
        config.port
    );
    let mut transfer = Vec::new();
    if let Some(limit) = config.bwlimit {
        transfer.push(format!("bwlimit {} per peer", format_rate(Some(limit))));
    }
    if config.compress == Compress::Off {
        transfer.push("compression off".to_owned());
    }
    if !transfer.is_empty() {
        let _ = writeln!(s, "transfer:  {}", transfer.join(", "));
    }
    for g in config.groups.values() {
        let _ = writeln!(s);
        let member = match this_node {
            Some(n) if !g.has_node(n) => format!("  ({n} is not a member)"),
            _ => String::new(),
        };
        let _ = writeln!(s, "group {}{member}", g.name);
        let _ = writeln!(s, "  nodes:    {}", g.nodes.join(", "));
        if !g.replicas.is_empty() {
            let _ = writeln!(s, "  replicas: {}", g.replicas.join(", "));
        }
        for (i, p) in g.paths.iter().enumerate() {
            let label = if i == 0 { "paths:" } else { "" };
            let _ = writeln!(s, "  {label:<9} {p}");
        }
        if !g.exclude.is_empty() {
            let _ = writeln!(s, "  exclude:  {}", g.exclude.join(", "));
        }
        if !g.include.is_empty() {
            let _ = writeln!(s, "  include:  {}", g.include.join(", "));
        }
        let rescan = match g.rescan {
            Some(d) => humantime::format_duration(d).to_string(),
            None => "off".to_owned(),
        };
        let _ = write!(
            s,
            "  policy:   conflict {}, {} kept, owners {}, xattrs {}, watch {}, rescan {}",
            g.conflict,
            plural(g.backup_generations as usize, "backup"),
            g.owners,
            if g.xattrs { "on" } else { "off" },
            if g.watch { "on" } else { "off" },
            rescan
        );
        if !g.replicas.is_empty() {
            let _ = write!(s, ", on_drift {}", g.on_drift);
        }
        if let Some(max) = g.backup_max_bytes {
            let _ = write!(s, ", backups up to {}", format_size(max));
        }
        match g.verify_every {
            Some(d) => {
                let _ = write!(s, ", verify every {}", humantime::format_duration(d));
            }
            None => {
                let _ = write!(s, ", verify off");
            }
        }
        let _ = writeln!(s);
        if g.xattrs {
            let mut x = Vec::new();
            if !g.xattrs_include.is_empty() {
                x.push(format!("only {}", g.xattrs_include.join(", ")));
            }
            if !g.xattrs_exclude.is_empty() {
                x.push(format!("not {}", g.xattrs_exclude.join(", ")));
            }
            if !x.is_empty() {
                let _ = writeln!(s, "  xattrs:   {}", x.join("; "));
            }
        }
        for a in &g.actions {
            let local = if a.local { " (also locally)" } else { "" };
            let mut extra = format!(", timeout {}", humantime::format_duration(a.timeout));
            if let Some(log) = &a.logfile {
                let _ = write!(extra, ", output to {}", log.display());
            }
            let _ = writeln!(
                s,
                "  action:   {} => {}{local}{extra}",
                a.pattern.join(", "),
                a.run
            );
        }
    }
    if let Some(a) = &config.accounts {
        let _ = writeln!(s);
        let nodes = match &a.nodes {
            Some(n) => n.join(", "),
            None => "every node".to_owned(),
        };
        let mut what = Vec::new();
        if !a.users.is_empty() {
            what.push(format!("users {}", a.users.join(", ")));
        }
        if let Some((lo, hi)) = a.uid_range {
            what.push(format!("uids {lo}-{hi}"));
        }
        let _ = writeln!(s, "accounts:  {} on {nodes}", what.join(" and "));
    }
    // where /metrics is served: this node's own address over the cluster's, when asked
    // for one node; else the cluster's and every node's own
    let shared = config.metrics.as_ref().and_then(|m| m.listen.as_deref());
    let stale = config
        .metrics
        .as_ref()
        .map_or(super::DEFAULT_STALE_AFTER, |m| m.stale_after);
    let stale = humantime::format_duration(stale);
    let own: Vec<&NodeConfig> = config
        .nodes
        .values()
        .filter(|n| n.metrics.is_some())
        .collect();
    match this_node.and_then(|n| config.node(n)) {
        Some(n) => match (n.metrics.as_deref(), shared) {
            (Some(a), _) => {
                let _ = writeln!(
                    s,
                    "metrics:   {a} ([nodes.{}] metrics; stale after {stale})",
                    n.name
                );
            }
            (None, Some(a)) => {
                let _ = writeln!(s, "metrics:   {a} ([metrics] listen; stale after {stale})");
            }
            (None, None) if !own.is_empty() => {
                let _ = writeln!(
                    s,
                    "metrics:   none on this node (only nodes with their own `metrics =` serve it)"
                );
            }
            (None, None) => {}
        },
        None => {
            if let Some(a) = shared {
                let _ = writeln!(s, "metrics:   {a} (stale after {stale})");
            }
            for n in own {
                let _ = writeln!(
                    s,
                    "metrics:   {} on {}",
                    n.metrics.as_deref().unwrap_or_default(),
                    n.name
                );
            }
        }
    }
    let _ = writeln!(s);
    let describe = |n: &NodeConfig| {
        let mut d = n.address.clone();
        if n.root != Path::new("/") {
            let _ = write!(d, ", root {}", n.root.display());
        }
        if n.id.is_none() {
            d.push_str(", no id");
        }
        if let Some(limit) = n.bwlimit {
            let _ = write!(d, ", bwlimit {}", format_rate(limit));
        }
        d
    };
    match this_node.map(|name| (name, config.node(name))) {
        None => {
            let _ = writeln!(s, "nodes:");
            for n in config.nodes.values() {
                let _ = writeln!(s, "  {:<12} {}", n.name, describe(n));
            }
        }
        Some((name, None)) => {
            let _ = writeln!(s, "this node: {name} is NOT defined under [nodes]");
            let _ = writeln!(s, "nodes:");
            for n in config.nodes.values() {
                let _ = writeln!(s, "  {:<12} {}", n.name, describe(n));
            }
        }
        Some((name, Some(me))) => {
            let _ = writeln!(
                s,
                "this node: {name} ({}, listens on {})",
                describe(me),
                me.listen_addr()
            );
            let peers = config.peers_of(name);
            if peers.is_empty() {
                let _ = writeln!(
                    s,
                    "peers:     none ({name} shares no group with another node)"
                );
            } else {
                let _ = writeln!(s, "peers:");
                for p in peers {
                    let shared: Vec<&str> = config
                        .groups_of(name)
                        .filter(|g| g.has_node(&p.name))
                        .map(|g| g.name.as_str())
                        .collect();
                    let _ = writeln!(
                        s,
                        "  {:<12} {}  (groups: {})",
                        p.name,
                        describe(p),
                        shared.join(", ")
                    );
                }
            }
        }
    }
    s
}
