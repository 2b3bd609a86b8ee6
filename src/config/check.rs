//! From the file's shape ([`super::raw`]) to a checked [`Config`]: the values with their own
//! syntax, the required keys, and every rule that spans keys or sections (nodes named in a
//! group are defined, paths do not overlap across groups, ids are unique, ...). Each failure
//! is a [`ConfigError::Invalid`] at the line of the value (or of the table, for a missing key).
//! Only the first mistake is reported; the sections are checked in the order of
//! [`super::Config`]'s fields (cluster, nodes, groups, accounts, metrics).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::de::Source;
use super::raw::{
    RawAccounts, RawAction, RawCluster, RawConfig, RawGroup, RawMetrics, RawNode, Scalar, Strings,
};
use super::values::{
    check_pattern, inside, normalise_address, normalise_path, parse_duration, parse_limit,
    parse_rate, valid_name,
};
use super::*;

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A group path with its place, for the checks across groups.
struct PathSeen {
    group: String,
    path: String,
    span: Range<usize>,
}

pub(super) struct Checker<'s> {
    src: &'s Source<'s>,
}

impl<'s> Checker<'s> {
    pub fn new(src: &'s Source<'s>) -> Checker<'s> {
        Checker { src }
    }

    fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        self.src.err(span, key, message)
    }

    /// An error at the line where `key` was written (line 1 if it was not).
    fn err_at_key(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.src.file.to_path_buf(),
            line: self.line_of(key),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn line_of(&self, key: &str) -> usize {
        self.src.lines.borrow().get(key).copied().unwrap_or(1)
    }

    /// A required key is missing from table `table` (dotted; empty for the document).
    fn missing(&self, table: &str, name: &str, hint: &str) -> ConfigError {
        let place = if table.is_empty() {
            "the file".to_owned()
        } else {
            format!("[{table}]")
        };
        self.err_at_key(table, format!("{place} needs {name:?}: {hint}"))
            .with_key(&format!("{table}.{name}"))
    }

    pub fn config(&self, raw: RawConfig) -> Result<Config> {
        let (port, bwlimit, compress) = match &raw.cluster {
            Some(c) => self.cluster(c)?,
            None => (DEFAULT_PORT, None, Compress::Auto),
        };
        let verify_every = match raw.cluster.as_ref().and_then(|c| c.verify_every.as_ref()) {
            Some(v) => self.verify_every(v, "cluster.verify_every")?,
            None => Some(DEFAULT_VERIFY_EVERY),
        };
        let mut nodes = BTreeMap::new();
        for (name, n) in raw.nodes.map(|e| e.0).unwrap_or_default() {
            let node = self.node(&name, n, port)?;
            let key = format!("nodes.{name}");
            for other in nodes.values() {
                let other: &NodeConfig = other;
                if other.address == node.address {
                    return Err(self.err_at_key(
                        &format!("{key}.address"),
                        format!(
                            "node {:?} has the same address as node {:?} ({}); peers could not \
                             tell them apart: give each node its own address or port",
                            node.name, other.name, node.address
                        ),
                    ));
                }
                if node.id.is_some() && other.id == node.id {
                    return Err(self.err_at_key(
                        &format!("{key}.id"),
                        format!(
                            "node {:?} has the same id as node {:?}; each node needs its own key \
                             (run `clustersync init` on it and paste the id it prints)",
                            node.name, other.name
                        ),
                    ));
                }
            }
            nodes.insert(name, node);
        }
        if nodes.is_empty() {
            return Err(self.err_at_key(
                "nodes",
                "no nodes are defined: add a [nodes.NAME] section with an address for each server",
            ));
        }
        let mut groups = BTreeMap::new();
        let mut seen = Vec::new();
        for (name, g) in raw.groups.map(|e| e.0).unwrap_or_default() {
            let group = self.group(&name, g, &nodes, &mut seen, verify_every)?;
            groups.insert(name, group);
        }
        self.overlaps(seen)?;
        let accounts = match raw.accounts {
            Some(a) => Some(self.accounts(a, &nodes)?),
            None => None,
        };
        let metrics = match raw.metrics {
            Some(m) => Some(self.metrics(m, &nodes)?),
            None => None,
        };
        Ok(Config {
            file: self.src.file.to_path_buf(),
            port,
            bwlimit,
            compress,
            verify_every,
            nodes,
            groups,
            accounts,
            metrics,
            lines: self.src.lines.borrow().clone(),
        })
    }

    fn cluster(&self, c: &RawCluster) -> Result<(u16, Option<u64>, Compress)> {
        let port = match &c.port {
            None => DEFAULT_PORT,
            Some(p) if *p.get_ref() == 0 => {
                return Err(self.err(
                    &p.span(),
                    "cluster.port",
                    "port 0 is not a port; use 1 to 65535",
                ));
            }
            Some(p) => *p.get_ref(),
        };
        let bwlimit = match &c.bwlimit {
            None => None,
            Some(b) => self.rate(b, "cluster.bwlimit")?,
        };
        let compress = match &c.compress {
            None => Compress::Auto,
            Some(s) => match s.get_ref().as_str() {
                "auto" => Compress::Auto,
                "off" => Compress::Off,
                other => {
                    return Err(self.err(
                        &s.span(),
                        "cluster.compress",
                        format!("unknown compress mode {other:?}; valid: auto, off"),
                    ));
                }
            },
        };
        Ok((port, bwlimit, compress))
    }

    fn rate(&self, v: &Spanned<Scalar>, key: &str) -> Result<Option<u64>> {
        let parsed = match v.get_ref() {
            Scalar::Str(s) => parse_rate(s).map_err(|why| format!("bad rate {s:?}: {why}")),
            Scalar::Int(0) => Ok(None),
            other => Err(format!(
                "expected a rate such as \"20MiB/s\" (or \"0\" for no limit), found {}",
                other.describe()
            )),
        };
        parsed.map_err(|m| self.err(&v.span(), key, m))
    }

    fn check_name(&self, name: &str, key: &str, what: &str) -> Result<()> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(self.err_at_key(
                key,
                format!(
                    "bad {what} name {name:?}: use letters, digits, '-', '_' and '.', starting with a \
                     letter or digit"
                ),
            ))
        }
    }

    fn node(&self, name: &str, n: RawNode, cluster_port: u16) -> Result<NodeConfig> {
        let key = format!("nodes.{name}");
        self.check_name(name, &key, "node")?;
        let Some(a) = n.address else {
            return Err(self.missing(
                &key,
                "address",
                "where peers connect to it, e.g. \"10.0.0.1:7373\"",
            ));
        };
        let raw = a.get_ref();
        let address = normalise_address(raw, Some(cluster_port)).map_err(|why| {
            self.err(
                &a.span(),
                &format!("{key}.address"),
                format!("bad address {raw:?}: {why}"),
            )
        })?;
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(cluster_port);
        let listen = match n.listen {
            None => None,
            Some(l) => {
                let raw = l.get_ref();
                Some(normalise_address(raw, Some(port)).map_err(|why| {
                    self.err(
                        &l.span(),
                        &format!("{key}.listen"),
                        format!("bad listen address {raw:?}: {why}"),
                    )
                })?)
            }
        };
        let id = match n.id {
            None => None,
            Some(i) => {
                let raw = i.get_ref();
                if raw.starts_with(ID_PLACEHOLDER_PREFIX) {
                    return Err(self.err(
                        &i.span(),
                        &format!("{key}.id"),
                        format!(
                            "the id of node {name:?} is not filled in yet ({raw:?}): run \
                             `clustersync --node {name} init` on {name} and put the id it prints \
                             here (`clustersync id` prints it again)"
                        ),
                    ));
                }
                if raw.len() != 64 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.err(
                        &i.span(),
                        &format!("{key}.id"),
                        format!(
                            "bad id {raw:?}: a node id is 64 hex digits, as printed by \
                             `clustersync id` on that node"
                        ),
                    ));
                }
                Some(raw.to_ascii_lowercase())
            }
        };
        let root = match n.root {
            None => PathBuf::from("/"),
            Some(r) => {
                let raw = r.get_ref();
                PathBuf::from(normalise_path(raw).map_err(|why| {
                    self.err(
                        &r.span(),
                        &format!("{key}.root"),
                        format!("bad root {raw:?}: {why}"),
                    )
                })?)
            }
        };
        let key_file = match n.key {
            None => None,
            Some(k) => {
                let raw = k.get_ref();
                Some(PathBuf::from(normalise_path(raw).map_err(|why| {
                    self.err(
                        &k.span(),
                        &format!("{key}.key"),
                        format!("bad key file path {raw:?}: {why}"),
                    )
                })?))
            }
        };
        let metrics = match n.metrics {
            None => None,
            Some(m) => {
                let raw = m.get_ref();
                Some(normalise_address(raw, None).map_err(|why| {
                    self.err(
                        &m.span(),
                        &format!("{key}.metrics"),
                        format!("bad metrics address {raw:?}: {why}"),
                    )
                })?)
            }
        };
        let bwlimit = match &n.bwlimit {
            None => None,
            Some(b) => Some(self.rate(b, &format!("{key}.bwlimit"))?),
        };
        Ok(NodeConfig {
            name: name.to_owned(),
            address,
            listen,
            id,
            root,
            key: key_file,
            metrics,
            bwlimit,
        })
    }

    /// A list of node names, each defined under [nodes], none twice.
    fn node_list(
        &self,
        list: &Spanned<Strings>,
        key: &str,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<Vec<String>> {
        let items = &list.get_ref().0;
        for (i, n) in items.iter().enumerate() {
            let name = n.get_ref();
            if !nodes.contains_key(name) {
                return Err(self.err(
                    &n.span(),
                    key,
                    format!("node {name:?} is listed in {key} but not defined under [nodes]"),
                ));
            }
            if items[..i].iter().any(|m| m.get_ref() == name) {
                return Err(self.err(
                    &n.span(),
                    key,
                    format!("node {name:?} is listed twice in {key}"),
                ));
            }
        }
        Ok(items.iter().map(|s| s.get_ref().clone()).collect())
    }

    /// An array of gitignore-style globs, each checked by compiling it.
    fn patterns(&self, list: &Spanned<Strings>, key: &str) -> Result<Vec<String>> {
        for p in &list.get_ref().0 {
            check_pattern(p.get_ref()).map_err(|why| {
                self.err(
                    &p.span(),
                    key,
                    format!("bad pattern {:?}: {why}", p.get_ref()),
                )
            })?;
        }
        Ok(strings(list))
    }

    fn group(
        &self,
        name: &str,
        g: RawGroup,
        nodes: &BTreeMap<String, NodeConfig>,
        seen: &mut Vec<PathSeen>,
        cluster_verify_every: Option<Duration>,
    ) -> Result<GroupConfig> {
        let key = format!("groups.{name}");
        let k = |field: &str| format!("{key}.{field}");
        self.check_name(name, &key, "group")?;
        let full = match &g.nodes {
            Some(n) => self.node_list(n, &k("nodes"), nodes)?,
            None => Vec::new(),
        };
        if full.is_empty() {
            let message = format!(
                "group {name:?} has no nodes: list its full members, e.g. nodes = [\"web1\", \"web2\"]"
            );
            return Err(match &g.nodes {
                Some(n) => self.err(&n.span(), &k("nodes"), message),
                None => self.err_at_key(&key, message).with_key(&k("nodes")),
            });
        }
        let replicas = match &g.replicas {
            Some(r) => {
                let list = self.node_list(r, &k("replicas"), nodes)?;
                if let Some(both) = r.get_ref().0.iter().find(|n| full.contains(n.get_ref())) {
                    return Err(self.err(
                        &both.span(),
                        &k("replicas"),
                        format!(
                            "node {:?} is in both {key}.nodes and {key}.replicas; a node is either a \
                             full member or a replica",
                            both.get_ref()
                        ),
                    ));
                }
                list
            }
            None => Vec::new(),
        };

        let Some(p) = &g.paths else {
            return Err(self.missing(&key, "paths", "the absolute paths this group keeps in sync"));
        };
        if p.get_ref().0.is_empty() {
            return Err(self.err(
                &p.span(),
                &k("paths"),
                format!("group {name:?} has no paths: list the absolute paths it keeps in sync"),
            ));
        }
        let mut paths = Vec::new();
        for raw in &p.get_ref().0 {
            let path = normalise_path(raw.get_ref()).map_err(|why| {
                self.err(
                    &raw.span(),
                    &k("paths"),
                    format!("bad path {:?}: {why}", raw.get_ref()),
                )
            })?;
            seen.push(PathSeen {
                group: name.to_owned(),
                path: path.clone(),
                span: raw.span(),
            });
            paths.push(path);
        }

        let exclude = match &g.exclude {
            Some(x) => self.patterns(x, &k("exclude"))?,
            None => Vec::new(),
        };
        let include = match &g.include {
            Some(x) => self.patterns(x, &k("include"))?,
            None => Vec::new(),
        };
        let conflict = match &g.conflict {
            Some(c) => self.conflict(c, &k("conflict"), &full, nodes)?,
            None => ConflictPolicy::Newest,
        };
        let backup_generations = g
            .backup_generations
            .as_ref()
            .map_or(DEFAULT_BACKUP_GENERATIONS, |b| *b.get_ref());
        let owners = match &g.owners {
            Some(o) => match o.get_ref().as_str() {
                "by-name" => Owners::ByName,
                "numeric" => Owners::Numeric,
                "ignore" => Owners::Ignore,
                other => {
                    return Err(self.err(
                        &o.span(),
                        &k("owners"),
                        format!("unknown owners mode {other:?}; valid: by-name, numeric, ignore"),
                    ));
                }
            },
            None => Owners::ByName,
        };
        let xattrs = g.xattrs.as_ref().is_some_and(|x| *x.get_ref());
        let mut xattr_lists = Vec::new();
        for (field, list) in [
            ("xattrs_include", &g.xattrs_include),
            ("xattrs_exclude", &g.xattrs_exclude),
        ] {
            if let Some(list) = list {
                if !xattrs {
                    xattr_lists.push((self.line_of(&k(field)), field));
                }
                self.patterns(list, &k(field))?;
            }
        }
        if let Some((_, field)) = xattr_lists.iter().min() {
            return Err(self.err_at_key(
                &k(field),
                format!(
                    "{field} only applies with xattrs = true: set xattrs = true in [{key}] to sync \
                     extended attributes, or remove {field}"
                ),
            ));
        }
        let xattrs_include = g.xattrs_include.as_ref().map(strings).unwrap_or_default();
        let xattrs_exclude = match &g.xattrs_exclude {
            Some(list) => strings(list),
            None => DEFAULT_XATTRS_EXCLUDE
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        let on_drift = match &g.on_drift {
            Some(d) => match d.get_ref().as_str() {
                "revert" => OnDrift::Revert,
                "keep" => OnDrift::Keep,
                other => {
                    return Err(self.err(
                        &d.span(),
                        &k("on_drift"),
                        format!("unknown on_drift mode {other:?}; valid: revert, keep"),
                    ));
                }
            },
            None => OnDrift::Revert,
        };
        let watch = g.watch.as_ref().is_none_or(|w| *w.get_ref());
        let rescan = match &g.rescan {
            Some(r) => self.duration(
                r,
                &k("rescan"),
                true,
                "a duration string such as \"1h\" (or \"0\" to disable)",
                "\"500ms\", \"10s\", \"15m\", \"1h\", or \"0\" to disable",
            )?,
            None => Some(DEFAULT_RESCAN),
        };
        let verify_every = match &g.verify_every {
            Some(v) => self.verify_every(v, &k("verify_every"))?,
            None => cluster_verify_every,
        };
        let backup_max_bytes = match &g.backup_max_bytes {
            None => None,
            Some(b) => {
                let parsed = match b.get_ref() {
                    Scalar::Str(s) => {
                        parse_limit(s).map_err(|why| format!("bad size {s:?}: {why}"))
                    }
                    Scalar::Int(i) => u64::try_from(*i)
                        .map(|n| (n > 0).then_some(n))
                        .map_err(|_| format!("{i} is out of range (0 to {})", u64::MAX)),
                    other => Err(format!(
                        "expected a size such as \"10GiB\" or \"500MB\" (or \"0\" for no limit), \
                         found {}",
                        other.describe()
                    )),
                };
                parsed.map_err(|m| self.err(&b.span(), &k("backup_max_bytes"), m))?
            }
        };
        let actions = match &g.actions {
            Some(a) => a
                .get_ref()
                .0
                .iter()
                .enumerate()
                .map(|(i, action)| self.action(&format!("{key}.actions[{i}]"), action.get_ref()))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        Ok(GroupConfig {
            name: name.to_owned(),
            nodes: full,
            replicas,
            paths,
            exclude,
            include,
            conflict,
            backup_generations,
            backup_max_bytes,
            owners,
            xattrs,
            xattrs_include,
            xattrs_exclude,
            on_drift,
            on_drift_set: g.on_drift.is_some(),
            watch,
            rescan,
            verify_every,
            actions,
        })
    }

    /// `verify_every` (cluster or group): a duration, or "0" for off.
    fn verify_every(&self, v: &Spanned<Scalar>, key: &str) -> Result<Option<Duration>> {
        self.duration(
            v,
            key,
            true,
            "a duration string such as \"10m\" (or \"0\" to turn comparisons off)",
            "\"30s\", \"10m\", \"1h\", or \"0\" for off",
        )
    }

    /// A duration; `Ok(None)` for "0" when `zero_disables`.
    fn duration(
        &self,
        v: &Spanned<Scalar>,
        key: &str,
        zero_disables: bool,
        expected: &str,
        examples: &str,
    ) -> Result<Option<Duration>> {
        match v.get_ref() {
            Scalar::Str(s) => parse_duration(s, zero_disables).map_err(|why| {
                self.err(
                    &v.span(),
                    key,
                    format!("bad duration {s:?}: {why}; write e.g. {examples}"),
                )
            }),
            Scalar::Int(0) if zero_disables => Ok(None),
            other => Err(self.err(
                &v.span(),
                key,
                format!("expected {expected}, found {}", other.describe()),
            )),
        }
    }

    fn conflict(
        &self,
        c: &Spanned<String>,
        key: &str,
        full: &[String],
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<ConflictPolicy> {
        let raw = c.get_ref();
        Ok(match raw.as_str() {
            "newest" => ConflictPolicy::Newest,
            "oldest" => ConflictPolicy::Oldest,
            "largest" => ConflictPolicy::Largest,
            "smallest" => ConflictPolicy::Smallest,
            "manual" => ConflictPolicy::Manual,
            other => {
                let Some(node) = other.strip_prefix("prefer:") else {
                    return Err(self.err(
                        &c.span(),
                        key,
                        format!(
                            "unknown conflict policy {other:?}; valid: newest, oldest, largest, \
                             smallest, prefer:NODE, manual"
                        ),
                    ));
                };
                let node = node.trim();
                if !nodes.contains_key(node) {
                    return Err(self.err(
                        &c.span(),
                        key,
                        format!("node {node:?} is named in {key} but not defined under [nodes]"),
                    ));
                }
                if !full.iter().any(|n| n == node) {
                    return Err(self.err(
                        &c.span(),
                        key,
                        format!(
                            "{raw:?} names node {node:?}, which is not one of this group's nodes; \
                             prefer one of: {}",
                            full.join(", ")
                        ),
                    ));
                }
                ConflictPolicy::Prefer(node.to_owned())
            }
        })
    }

    fn action(&self, key: &str, a: &RawAction) -> Result<ActionConfig> {
        let k = |field: &str| format!("{key}.{field}");
        let Some(p) = &a.pattern else {
            return Err(self.missing(
                key,
                "pattern",
                "the globs of paths that trigger the command",
            ));
        };
        let pattern = self.patterns(p, &k("pattern"))?;
        if pattern.is_empty() {
            return Err(self.err(
                &p.span(),
                &k("pattern"),
                "no patterns: the action would never run",
            ));
        }
        let Some(r) = &a.run else {
            return Err(self.missing(
                key,
                "run",
                "the command to run, e.g. \"systemctl reload nginx\"",
            ));
        };
        let run = r.get_ref().clone();
        if run.trim().is_empty() {
            return Err(self.err(&r.span(), &k("run"), "the command is empty"));
        }
        let local = a.local.as_ref().is_some_and(|l| *l.get_ref());
        let timeout = match &a.timeout {
            Some(t) => self
                .duration(
                    t,
                    &k("timeout"),
                    false,
                    "a duration string such as \"60s\"",
                    "\"30s\", \"5m\"",
                )?
                .unwrap_or(DEFAULT_ACTION_TIMEOUT),
            None => DEFAULT_ACTION_TIMEOUT,
        };
        let logfile = match &a.logfile {
            None => None,
            Some(l) => {
                let raw = l.get_ref();
                Some(PathBuf::from(normalise_path(raw).map_err(|why| {
                    self.err(
                        &l.span(),
                        &k("logfile"),
                        format!("bad logfile path {raw:?}: {why}"),
                    )
                })?))
            }
        };
        Ok(ActionConfig {
            pattern,
            run,
            local,
            timeout,
            logfile,
        })
    }

    /// No path appears twice or lies inside another, within a group or across groups; the
    /// later one in the file is blamed.
    fn overlaps(&self, mut seen: Vec<PathSeen>) -> Result<()> {
        seen.sort_by_key(|p| p.span.start);
        for (j, later) in seen.iter().enumerate() {
            for earlier in &seen[..j] {
                if let Some(message) = overlap(earlier, later, self.src.line(&earlier.span)) {
                    return Err(self.err(
                        &later.span,
                        &format!("groups.{}.paths", later.group),
                        message,
                    ));
                }
            }
        }
        Ok(())
    }

    fn accounts(
        &self,
        a: RawAccounts,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<AccountsConfig> {
        let members = match &a.nodes {
            Some(n) => Some(self.node_list(n, "accounts.nodes", nodes)?),
            None => None,
        };
        let users = match &a.users {
            Some(u) => {
                let list = &u.get_ref().0;
                for (i, name) in list.iter().enumerate() {
                    let value = name.get_ref();
                    let bad = value.is_empty()
                        || value.starts_with('-')
                        || value
                            .chars()
                            .any(|c| c == ':' || c == ',' || c.is_whitespace() || c.is_control());
                    if bad {
                        return Err(self.err(
                            &name.span(),
                            "accounts.users",
                            format!("bad user name {value:?}"),
                        ));
                    }
                    if list[..i].iter().any(|m| m.get_ref() == value) {
                        return Err(self.err(
                            &name.span(),
                            "accounts.users",
                            format!("user {value:?} is listed twice"),
                        ));
                    }
                }
                strings(u)
            }
            None => Vec::new(),
        };
        let uid_range = match &a.uid_range {
            Some(r) => Some(self.uid_range(r)?),
            None => None,
        };
        if users.is_empty() && uid_range.is_none() {
            return Err(self.err_at_key(
                "accounts",
                "[accounts] manages no account: set users = [\"name\", ...] and/or uid_range = [LO, HI]",
            ));
        }
        let all: Vec<String> = match &members {
            Some(m) => m.clone(),
            None => nodes.keys().cloned().collect(),
        };
        let conflict = match &a.conflict {
            Some(c) => {
                let p = self.conflict(c, "accounts.conflict", &all, nodes)?;
                if matches!(p, ConflictPolicy::Largest | ConflictPolicy::Smallest) {
                    return Err(self.err(
                        &c.span(),
                        "accounts.conflict",
                        format!(
                            "{} does not apply to accounts; valid: newest, oldest, prefer:NODE, manual",
                            c.get_ref()
                        ),
                    ));
                }
                p
            }
            None => ConflictPolicy::Newest,
        };
        Ok(AccountsConfig {
            nodes: members,
            users,
            uid_range,
            passwords: a.passwords.as_ref().is_none_or(|p| *p.get_ref()),
            create_home: a.create_home.as_ref().is_none_or(|c| *c.get_ref()),
            conflict,
        })
    }

    fn uid_range(&self, r: &Spanned<super::raw::UidRange>) -> Result<(u32, u32)> {
        let expected = "two uids [LO, HI], e.g. [2000, 2999]";
        let key = "accounts.uid_range";
        let mut ends = Vec::new();
        for item in &r.get_ref().0 {
            let uid = match item.get_ref() {
                Scalar::Int(i) => u32::try_from(*i).ok(),
                _ => None,
            };
            match uid {
                Some(uid) => ends.push(uid),
                None => {
                    return Err(self.err(
                        &item.span(),
                        key,
                        format!(
                            "expected {expected}, found {} (uids are 0 to {})",
                            item.get_ref().describe(),
                            u32::MAX
                        ),
                    ));
                }
            }
        }
        match ends[..] {
            [lo, hi] if lo <= hi => Ok((lo, hi)),
            [lo, hi] => Err(self.err(
                &r.span(),
                key,
                format!("uid_range [{lo}, {hi}] is empty: the first uid must not be larger than the second"),
            )),
            _ => Err(self.err(
                &r.span(),
                key,
                format!("expected {expected}, found an array of {} numbers", ends.len()),
            )),
        }
    }

    /// `[metrics]`: `listen` is needed unless every node has a `metrics =` of its own.
    fn metrics(
        &self,
        m: RawMetrics,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<MetricsConfig> {
        let listen = match &m.listen {
            Some(l) => {
                let raw = l.get_ref();
                Some(normalise_address(raw, None).map_err(|why| {
                    self.err(
                        &l.span(),
                        "metrics.listen",
                        format!("bad listen address {raw:?}: {why}"),
                    )
                })?)
            }
            None => {
                let without: Vec<&str> = nodes
                    .values()
                    .filter(|n| n.metrics.is_none())
                    .map(|n| n.name.as_str())
                    .collect();
                if !without.is_empty() {
                    return Err(self.missing(
                        "metrics",
                        "listen",
                        &format!(
                            "the HTTP address to serve, e.g. \"127.0.0.1:9373\" (or give each node its own `metrics =`; {} {} none)",
                            without.join(", "),
                            if without.len() == 1 { "has" } else { "have" }
                        ),
                    ));
                }
                None
            }
        };
        let stale_after = match &m.stale_after {
            Some(s) => self
                .duration(
                    s,
                    "metrics.stale_after",
                    false,
                    "a duration string such as \"10s\"",
                    "\"5s\", \"30s\", \"1m\"",
                )?
                .unwrap_or(DEFAULT_STALE_AFTER),
            None => DEFAULT_STALE_AFTER,
        };
        Ok(MetricsConfig {
            listen,
            stale_after,
        })
    }
}

fn strings(list: &Spanned<Strings>) -> Vec<String> {
    list.get_ref()
        .0
        .iter()
        .map(|s| s.get_ref().clone())
        .collect()
}

impl ConfigError {
    /// The same error, naming another key.
    fn with_key(self, key: &str) -> ConfigError {
        match self {
            ConfigError::Invalid {
                file,
                line,
                message,
                ..
            } => ConfigError::Invalid {
                file,
                line,
                key: key.to_owned(),
                message,
            },
            other => other,
        }
    }
}

/// Whether two group paths collide: the message for the later one, if they do.
fn overlap(earlier: &PathSeen, later: &PathSeen, earlier_line: usize) -> Option<String> {
    let (e, l) = (&earlier.path, &later.path);
    let relation = if e == l {
        "is listed twice".to_owned()
    } else if inside(e, l) {
        format!("is inside {e:?}")
    } else if inside(l, e) {
        format!("contains {e:?}")
    } else {
        return None;
    };
    Some(if earlier.group == later.group {
        if e == l {
            format!("path {l:?} is listed twice in groups.{}.paths", later.group)
        } else {
            format!(
                "path {l:?} {relation}, which is already a path of this group (line {earlier_line}); \
                 paths of a group must not overlap"
            )
        }
    } else {
        let relation = if e == l {
            "is also".to_owned()
        } else {
            format!("{relation}, which is")
        };
        format!(
            "path {l:?} {relation} a path of group {:?} (line {earlier_line}); a path can belong \
             to one group only",
            earlier.group
        )
    })
}
