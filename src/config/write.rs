//! Writing a [`Config`] as TOML, through the serde types of [`super::raw`], so that the text
//! is read back to an equal `Config` (the round trip is tested over the SPEC example, every
//! csync2 import and generated configs).
//!
//! The document is written section by section (`[cluster]`, each `[nodes.NAME]`, each
//! `[groups.NAME]` followed by its `[[groups.NAME.actions]]`, `[accounts]`, `[metrics]`), so
//! that [`Annotations`] can put comments before any of them. Values at their defaults are
//! left out, except `[cluster] port` and a group's `conflict` and `backup_generations`, which
//! a reader wants to see.

use std::collections::BTreeMap;
use std::path::Path;

use toml::Spanned;

use super::raw::{
    Blocks, Entries, RawAccounts, RawAction, RawCluster, RawConfig, RawGroup, RawMetrics, RawNode,
    Scalar, Strings, UidRange, unplaced,
};
use super::values::{format_duration, format_rate, format_size};
use super::*;

/// Comments and placeholders added to a written configuration (by an import).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    /// Comment lines at the top of the file, without the leading `# `.
    pub header: Vec<String>,
    /// Comment lines put before a section, by the section's dotted name: `cluster`,
    /// `nodes.NAME`, `groups.NAME`, `groups.NAME.actions[I]` (I counts from 0), `accounts`,
    /// `metrics`; without the leading `# `.
    pub before: BTreeMap<String, Vec<String>>,
    /// Write `id = "FILL-IN-NAME"` (see [`ID_PLACEHOLDER_PREFIX`]) for every node without an
    /// id. Such a file is refused by [`Config::parse`] until the ids are filled in.
    pub id_placeholders: bool,
}

impl Annotations {
    /// Adds a comment line before section `section`.
    pub fn note(&mut self, section: &str, line: impl Into<String>) {
        self.before
            .entry(section.to_owned())
            .or_default()
            .push(line.into());
    }
}

pub(super) fn to_toml(c: &Config, notes: &Annotations) -> String {
    let mut out = String::new();
    comment(&mut out, &notes.header);
    if !notes.header.is_empty() {
        out.push('\n');
    }
    let cluster = RawCluster {
        port: Some(unplaced(c.port)),
        bwlimit: c
            .bwlimit
            .map(|b| unplaced(Scalar::Str(format_rate(Some(b))))),
        compress: (c.compress != Compress::Auto).then(|| unplaced(c.compress.to_string())),
        verify_every: (c.verify_every != Some(DEFAULT_VERIFY_EVERY))
            .then(|| unplaced(Scalar::Str(period_text(c.verify_every)))),
    };
    section(
        &mut out,
        notes,
        "cluster",
        &RawConfig {
            cluster: Some(cluster),
            ..RawConfig::default()
        },
    );
    for n in c.nodes.values() {
        let mut node = raw_node(n);
        if node.id.is_none() && notes.id_placeholders {
            node.id = Some(unplaced(format!("{ID_PLACEHOLDER_PREFIX}{}", n.name)));
        }
        section(
            &mut out,
            notes,
            &format!("nodes.{}", n.name),
            &RawConfig {
                nodes: Some(Entries(vec![(n.name.clone(), node)])),
                ..RawConfig::default()
            },
        );
    }
    for g in c.groups.values() {
        section(
            &mut out,
            notes,
            &format!("groups.{}", g.name),
            &RawConfig {
                groups: Some(Entries(vec![(
                    g.name.clone(),
                    raw_group(g, c.verify_every),
                )])),
                ..RawConfig::default()
            },
        );
        for (i, a) in g.actions.iter().enumerate() {
            let only_actions = RawGroup {
                actions: Some(unplaced(Blocks(vec![unplaced(raw_action(a))]))),
                ..RawGroup::default()
            };
            section(
                &mut out,
                notes,
                &format!("groups.{}.actions[{i}]", g.name),
                &RawConfig {
                    groups: Some(Entries(vec![(g.name.clone(), only_actions)])),
                    ..RawConfig::default()
                },
            );
        }
    }
    if let Some(a) = &c.accounts {
        let accounts = RawAccounts {
            nodes: a.nodes.as_ref().map(|n| strings(n)),
            users: (!a.users.is_empty()).then(|| strings(&a.users)),
            uid_range: a.uid_range.map(|(lo, hi)| {
                unplaced(UidRange(vec![
                    unplaced(Scalar::Int(i64::from(lo))),
                    unplaced(Scalar::Int(i64::from(hi))),
                ]))
            }),
            passwords: (!a.passwords).then(|| unplaced(false)),
            create_home: (!a.create_home).then(|| unplaced(false)),
            conflict: (a.conflict != super::ConflictPolicy::Newest)
                .then(|| unplaced(a.conflict.to_string())),
        };
        section(
            &mut out,
            notes,
            "accounts",
            &RawConfig {
                accounts: Some(accounts),
                ..RawConfig::default()
            },
        );
    }
    if let Some(m) = &c.metrics {
        let metrics = RawMetrics {
            listen: m.listen.clone().map(unplaced),
            stale_after: (m.stale_after != DEFAULT_STALE_AFTER)
                .then(|| unplaced(Scalar::Str(format_duration(m.stale_after)))),
        };
        section(
            &mut out,
            notes,
            "metrics",
            &RawConfig {
                metrics: Some(metrics),
                ..RawConfig::default()
            },
        );
    }
    out
}

fn comment(out: &mut String, lines: &[String]) {
    for line in lines {
        if line.is_empty() {
            out.push_str("#\n");
        }
        for l in line.lines() {
            if l.is_empty() {
                out.push_str("#\n");
            } else {
                out.push_str("# ");
                out.push_str(l);
                out.push('\n');
            }
        }
    }
}

/// Appends one section: its comments, then its TOML.
fn section(out: &mut String, notes: &Annotations, name: &str, doc: &RawConfig) {
    if let Some(lines) = notes.before.get(name) {
        comment(out, lines);
    }
    // The serde types hold only strings, numbers, booleans, arrays and tables with string
    // keys, which TOML can always represent.
    match toml::to_string(doc) {
        Ok(text) => out.push_str(&text),
        Err(e) => out.push_str(&format!("# cannot write [{name}]: {e}\n")),
    }
    out.push('\n');
}

fn strings(list: &[String]) -> Spanned<Strings> {
    unplaced(Strings(list.iter().cloned().map(unplaced).collect()))
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn raw_node(n: &NodeConfig) -> RawNode {
    RawNode {
        address: Some(unplaced(n.address.clone())),
        listen: n.listen.clone().map(unplaced),
        id: n.id.clone().map(unplaced),
        root: (n.root != Path::new("/")).then(|| unplaced(path_text(&n.root))),
        key: n.key.as_deref().map(|k| unplaced(path_text(k))),
        metrics: n.metrics.clone().map(unplaced),
        bwlimit: n.bwlimit.map(|b| unplaced(Scalar::Str(format_rate(b)))),
    }
}

/// A period as written in the file: a duration, or "0" for off.
fn period_text(p: Option<std::time::Duration>) -> String {
    match p {
        Some(d) => format_duration(d),
        None => "0".to_owned(),
    }
}

/// A group's section; `verify_every` is written when it is not the cluster's.
fn raw_group(g: &GroupConfig, cluster_verify_every: Option<std::time::Duration>) -> RawGroup {
    let listed = |v: &Vec<String>| (!v.is_empty()).then(|| strings(v));
    let default_xattrs_exclude = g
        .xattrs_exclude
        .iter()
        .map(String::as_str)
        .eq(DEFAULT_XATTRS_EXCLUDE.iter().copied());
    RawGroup {
        nodes: Some(strings(&g.nodes)),
        replicas: listed(&g.replicas),
        paths: Some(strings(&g.paths)),
        exclude: listed(&g.exclude),
        include: listed(&g.include),
        conflict: Some(unplaced(g.conflict.to_string())),
        backup_generations: Some(unplaced(g.backup_generations)),
        owners: (g.owners != Owners::ByName).then(|| unplaced(g.owners.to_string())),
        xattrs: g.xattrs.then(|| unplaced(true)),
        on_drift: g.on_drift_set.then(|| unplaced(g.on_drift.to_string())),
        watch: (!g.watch).then(|| unplaced(false)),
        rescan: (g.rescan != Some(DEFAULT_RESCAN)).then(|| {
            unplaced(Scalar::Str(match g.rescan {
                Some(d) => format_duration(d),
                None => "0".to_owned(),
            }))
        }),
        actions: None,
        xattrs_include: if g.xattrs {
            listed(&g.xattrs_include)
        } else {
            None
        },
        xattrs_exclude: (g.xattrs && !default_xattrs_exclude).then(|| strings(&g.xattrs_exclude)),
        verify_every: (g.verify_every != cluster_verify_every)
            .then(|| unplaced(Scalar::Str(period_text(g.verify_every)))),
        backup_max_bytes: g
            .backup_max_bytes
            .map(|b| unplaced(Scalar::Str(format_size(b)))),
    }
}

fn raw_action(a: &ActionConfig) -> RawAction {
    RawAction {
        pattern: Some(strings(&a.pattern)),
        run: Some(unplaced(a.run.clone())),
        local: a.local.then(|| unplaced(true)),
        timeout: (a.timeout != DEFAULT_ACTION_TIMEOUT)
            .then(|| unplaced(Scalar::Str(format_duration(a.timeout)))),
        logfile: a.logfile.as_deref().map(|l| unplaced(path_text(l))),
    }
}
