//! The configuration file, `clustersync.toml` (SPEC §2 and §3): reading it, checking it, and
//! the settings the rest of the program trusts.
//!
//! The file is parsed into TOML's spanned document tree and walked by hand, so that every
//! mistake (a TOML syntax error, an unknown key, a wrong type, a bad value, an inconsistency
//! between sections) is reported as [`ConfigError::Invalid`] naming the file, the 1-based line
//! and the dotted key (`groups.www.paths`), with a message a system administrator can act on.
//! Only the first mistake is reported.
//!
//! Invariants of a [`Config`] returned by [`Config::parse`] / [`Config::load`]:
//!
//! - at least one node is defined; node and group names are non-empty, start with a letter or
//!   digit and hold only ASCII letters, digits, `-`, `_` and `.` (so they are safe in file
//!   names, on the command line and in `prefer:NODE`);
//! - every node has an `address` of the form `host:port` (the port filled in from
//!   `[cluster] port` when the file gives none; IPv6 literals in brackets, `[::1]:7373`);
//!   `listen`, when given, is `host:port` too (its port defaults to the port of `address`);
//!   `id`, when given, is 64 lowercase hex digits, and no two nodes share one; `root` is an
//!   absolute, normalised path; `key`, when given, is absolute;
//! - every node named in a group (`nodes`, `replicas`), in `prefer:NODE` or in
//!   `[accounts] nodes` is defined under `[nodes]`; a group has at least one full node, no node
//!   twice, and no node that is both a full node and a replica; `prefer:NODE` names one of the
//!   group's full nodes;
//! - group paths are absolute and normalised (no trailing slash except for `/` itself, no
//!   empty, `.` or `..` components), and a path belongs to exactly one group: no path appears
//!   twice or lies inside another path, in the same group or across groups;
//! - every exclude/include/action pattern compiles as a gitignore-style glob;
//! - `rescan` is `None` when disabled (`"0"`), otherwise a non-zero duration.
//!
//! Some settings are parsed and checked but not built yet; [`Config::refuse_unsupported`]
//! rejects a configuration that uses them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Where the configuration file is read from unless `-c/--config` or `CLUSTERSYNC_CONFIG`
/// says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clustersync/clustersync.toml";
/// The port of a node whose address has none, unless `[cluster] port` says otherwise.
pub const DEFAULT_PORT: u16 = 7373;
/// Default of a group's `backup_generations`.
pub const DEFAULT_BACKUP_GENERATIONS: u32 = 3;
/// Default of a group's `rescan`.
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(3600);

/// The whole configuration, checked. Two configs are equal when their settings are, wherever
/// they are written in the file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path it was loaded from.
    pub file: PathBuf,
    /// `[cluster] port`: the port of nodes whose address has none (default 7373).
    pub port: u16,
    /// `[nodes.NAME]`, by name.
    pub nodes: BTreeMap<String, NodeConfig>,
    /// `[groups.NAME]`, by name.
    pub groups: BTreeMap<String, GroupConfig>,
    /// `[accounts]`, if present.
    pub accounts: Option<AccountsConfig>,
    /// `[metrics]`, if present.
    pub metrics: Option<MetricsConfig>,
    /// Line of every key seen, by dotted key (`groups.www.xattrs`), so that checks made after
    /// parsing can still point at the file.
    lines: HashMap<String, usize>,
}

/// One `[nodes.NAME]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The section's name; `--node NAME` (or the hostname) selects this node's own section.
    pub name: String,
    /// Where peers connect to this node: always `host:port` (`[v6addr]:port` for IPv6).
    pub address: String,
    /// Where this node binds, `host:port`, if the file says so; see [`NodeConfig::listen_addr`].
    pub listen: Option<String>,
    /// The node's public identity: 64 lowercase hex digits (a 32-byte X25519 public key).
    pub id: Option<String>,
    /// Prefix put before every synced path on this node; absolute, normalised; default `/`.
    pub root: PathBuf,
    /// This node's private key file, if not the default `<state-dir>/node.key`; absolute.
    pub key: Option<PathBuf>,
    /// This node's metrics listen address (`host:port`), overriding `[metrics] listen`.
    pub metrics: Option<String>,
}

/// How a conflict (concurrent changes to one path) is resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConflictPolicy {
    /// The version with the newest mtime wins.
    Newest,
    /// The version with the oldest mtime wins.
    Oldest,
    /// The largest version wins.
    Largest,
    /// The smallest version wins.
    Smallest,
    /// `prefer:NODE`: that node's version wins; NODE is one of the group's full nodes.
    Prefer(String),
    /// Nothing wins until `clustersync resolve` is run.
    Manual,
}

/// How file owner and group are synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owners {
    /// `by-name`: by user/group name, mapped to the local uid/gid.
    ByName,
    /// `numeric`: by uid/gid.
    Numeric,
    /// `ignore`: not synced.
    Ignore,
}

/// What a replica does with a local change (drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnDrift {
    /// Put the group's version back.
    Revert,
    /// Leave the path alone and report it.
    Keep,
}

/// One `[[groups.NAME.actions]]` block: a command run after synced changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionConfig {
    /// Gitignore-style globs matched against changed paths (as written in the config).
    pub pattern: Vec<String>,
    /// The command, run through `/bin/sh -c`.
    pub run: String,
    /// Also run on the node where the change was made.
    pub local: bool,
}

/// One `[groups.NAME]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The section's name.
    pub name: String,
    /// Full members, in the order written; never empty.
    pub nodes: Vec<String>,
    /// Receive-only members, in the order written; disjoint from `nodes`.
    pub replicas: Vec<String>,
    /// Absolute, normalised paths; never empty; none inside another.
    pub paths: Vec<String>,
    /// Gitignore-style globs, relative to each path.
    pub exclude: Vec<String>,
    /// Gitignore-style globs; when non-empty, only matching entries are synced.
    pub include: Vec<String>,
    /// Default [`ConflictPolicy::Newest`].
    pub conflict: ConflictPolicy,
    /// Previous versions kept per path; default 3; 0 keeps none.
    pub backup_generations: u32,
    /// Default [`Owners::ByName`].
    pub owners: Owners,
    /// Also sync extended attributes and POSIX ACLs; default false.
    pub xattrs: bool,
    /// Default [`OnDrift::Revert`].
    pub on_drift: OnDrift,
    /// Whether `on_drift` was written in the file.
    pub on_drift_set: bool,
    /// Watch for changes live; default true.
    pub watch: bool,
    /// Period of the safety-net full rescan; default 1 hour; `None` when disabled (`"0"`).
    pub rescan: Option<Duration>,
    /// `[[groups.NAME.actions]]`, in the order written.
    pub actions: Vec<ActionConfig>,
}

/// The `[accounts]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    /// Member nodes; `None` means every node.
    pub nodes: Option<Vec<String>>,
    /// Managed users, by name.
    pub users: Vec<String>,
    /// Managed uids (and gids), inclusive; `lo <= hi`.
    pub uid_range: Option<(u32, u32)>,
    /// Also sync password hashes; default true.
    pub passwords: bool,
    /// Create home directories; default true.
    pub create_home: bool,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP listener.
    pub listen: String,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Dotted key, e.g. `groups.www.paths`; `TOML syntax` for a syntax error.
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Checks the configuration `text`; `file` is only used in errors and kept in
    /// [`Config::file`].
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Parser {
            text,
            file,
            lines: HashMap::new(),
        }
        .document()
    }

    /// Features that are parsed but not built yet: returns the first one used (the earliest
    /// in the file), as [`ConfigError::Invalid`] with the message `not supported yet: <what>`.
    pub fn refuse_unsupported(&self) -> Result<(), ConfigError> {
        let mut used: Vec<(String, &str)> = Vec::new();
        for g in self.groups.values() {
            let key = |k: &str| format!("groups.{}.{k}", g.name);
            if g.xattrs {
                used.push((key("xattrs"), "xattrs = true"));
            }
            if !g.actions.is_empty() {
                used.push((key("actions"), "actions"));
            }
        }
        if self.accounts.is_some() {
            used.push(("accounts".to_owned(), "[accounts] (account sync)"));
        }
        if self.metrics.is_some() {
            used.push(("metrics".to_owned(), "[metrics]"));
        }
        for n in self.nodes.values() {
            if n.metrics.is_some() {
                used.push((format!("nodes.{}.metrics", n.name), "metrics (per node)"));
            }
        }
        match used.into_iter().min_by_key(|(key, _)| self.line_of(key)) {
            None => Ok(()),
            Some((key, what)) => Err(ConfigError::Invalid {
                file: self.file.clone(),
                line: self.line_of(&key),
                key,
                message: format!("not supported yet: {what}"),
            }),
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.get(name)
    }

    /// The groups `node` is a member of (as a full node or a replica), by name.
    pub fn groups_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a GroupConfig> {
        self.groups.values().filter(move |g| g.has_node(node))
    }

    /// The other nodes that share at least one group with `node`, by name.
    pub fn peers_of(&self, node: &str) -> Vec<&NodeConfig> {
        let names: BTreeSet<&str> = self
            .groups_of(node)
            .flat_map(GroupConfig::members)
            .filter(|&m| m != node)
            .collect();
        names.into_iter().filter_map(|n| self.node(n)).collect()
    }

    /// A human summary for `check-config`: the groups with their paths, members and policy,
    /// then this node and its peers with their addresses (or every node, without `this_node`).
    pub fn summary(&self, this_node: Option<&str>) -> String {
        use fmt::Write as _;
        let mut s = String::new();
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let _ = writeln!(s, "config:    {}", self.file.display());
        let _ = writeln!(
            s,
            "cluster:   {}, {}, default port {}",
            plural(self.nodes.len(), "node"),
            plural(self.groups.len(), "group"),
            self.port
        );
        for g in self.groups.values() {
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
            let _ = writeln!(s);
            for a in &g.actions {
                let local = if a.local { " (also locally)" } else { "" };
                let _ = writeln!(
                    s,
                    "  action:   {} => {}{local}",
                    a.pattern.join(", "),
                    a.run
                );
            }
        }
        if let Some(a) = &self.accounts {
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
        if let Some(m) = &self.metrics {
            let _ = writeln!(s, "metrics:   {}", m.listen);
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
            d
        };
        match this_node.map(|name| (name, self.node(name))) {
            None => {
                let _ = writeln!(s, "nodes:");
                for n in self.nodes.values() {
                    let _ = writeln!(s, "  {:<12} {}", n.name, describe(n));
                }
            }
            Some((name, None)) => {
                let _ = writeln!(s, "this node: {name} is NOT defined under [nodes]");
                let _ = writeln!(s, "nodes:");
                for n in self.nodes.values() {
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
                let peers = self.peers_of(name);
                if peers.is_empty() {
                    let _ = writeln!(
                        s,
                        "peers:     none ({name} shares no group with another node)"
                    );
                } else {
                    let _ = writeln!(s, "peers:");
                    for p in peers {
                        let shared: Vec<&str> = self
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

    /// Line of a dotted key recorded while parsing (1 if it was not seen).
    fn line_of(&self, key: &str) -> usize {
        self.lines.get(key).copied().unwrap_or(1)
    }
}

impl PartialEq for Config {
    fn eq(&self, other: &Config) -> bool {
        // `lines` only says where things were written.
        self.file == other.file
            && self.port == other.port
            && self.nodes == other.nodes
            && self.groups == other.groups
            && self.accounts == other.accounts
            && self.metrics == other.metrics
    }
}

impl Eq for Config {}

impl NodeConfig {
    /// Where this node binds: `listen` if given, otherwise all interfaces on the port of
    /// `address` (`0.0.0.0:PORT`, or `[::]:PORT` when `address` is an IPv6 literal).
    pub fn listen_addr(&self) -> String {
        match &self.listen {
            Some(l) => l.clone(),
            None if self.address.starts_with('[') => format!("[::]:{}", self.port()),
            None => format!("0.0.0.0:{}", self.port()),
        }
    }

    /// The port of `address`.
    pub fn port(&self) -> u16 {
        self.address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(DEFAULT_PORT)
    }
}

impl GroupConfig {
    /// Every member: the full nodes, then the replicas.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().chain(&self.replicas).map(String::as_str)
    }

    /// Whether `n` is a member of this group (a full node or a replica).
    pub fn has_node(&self, n: &str) -> bool {
        self.members().any(|m| m == n)
    }
}

impl fmt::Display for ConflictPolicy {
    /// As written in the file: `newest`, `prefer:web1`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictPolicy::Newest => f.write_str("newest"),
            ConflictPolicy::Oldest => f.write_str("oldest"),
            ConflictPolicy::Largest => f.write_str("largest"),
            ConflictPolicy::Smallest => f.write_str("smallest"),
            ConflictPolicy::Prefer(n) => write!(f, "prefer:{n}"),
            ConflictPolicy::Manual => f.write_str("manual"),
        }
    }
}

impl fmt::Display for Owners {
    /// As written in the file: `by-name`, `numeric`, `ignore`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Owners::ByName => "by-name",
            Owners::Numeric => "numeric",
            Owners::Ignore => "ignore",
        })
    }
}

impl fmt::Display for OnDrift {
    /// As written in the file: `revert`, `keep`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnDrift::Revert => "revert",
            OnDrift::Keep => "keep",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: a walk over TOML's spanned document tree.

const ROOT_KEYS: &[&str] = &["cluster", "nodes", "groups", "accounts", "metrics"];
const CLUSTER_KEYS: &[&str] = &["port"];
const NODE_KEYS: &[&str] = &["address", "listen", "id", "root", "key", "metrics"];
const GROUP_KEYS: &[&str] = &[
    "nodes",
    "replicas",
    "paths",
    "exclude",
    "include",
    "conflict",
    "backup_generations",
    "owners",
    "xattrs",
    "on_drift",
    "watch",
    "rescan",
    "actions",
];
const ACTION_KEYS: &[&str] = &["pattern", "run", "local"];
const ACCOUNTS_KEYS: &[&str] = &["nodes", "users", "uid_range", "passwords", "create_home"];
const METRICS_KEYS: &[&str] = &["listen"];

type Item<'i> = Spanned<DeValue<'i>>;

/// One key of a table, with its dotted name and where it is.
struct Entry<'t, 'i> {
    name: &'t str,
    key: String,
    key_span: Range<usize>,
    item: &'t Item<'i>,
}

impl Entry<'_, '_> {
    fn value(&self) -> &DeValue<'_> {
        self.item.get_ref()
    }

    fn span(&self) -> Range<usize> {
        self.item.span()
    }
}

/// The keys of one table, in the order they appear in the file.
struct Fields<'t, 'i> {
    /// Dotted name of the table itself (`groups.www`); empty for the document.
    key: String,
    /// Where the table is named (its header), for "missing key" errors.
    span: Range<usize>,
    entries: Vec<Entry<'t, 'i>>,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn get(&self, name: &str) -> Option<&Entry<'t, 'i>> {
        self.entries.iter().find(|e| e.name == name)
    }

    fn child_key(&self, name: &str) -> String {
        if self.key.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.key)
        }
    }
}

/// A string value with its place.
struct Str {
    value: String,
    span: Range<usize>,
}

/// A group path with its place, for the checks across groups.
struct PathSeen {
    group: String,
    path: String,
    span: Range<usize>,
}

struct Parser<'a> {
    text: &'a str,
    file: &'a Path,
    lines: HashMap<String, usize>,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl<'a> Parser<'a> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// An error at a key already recorded in `lines`.
    fn err_at_key(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.lines.get(key).copied().unwrap_or(1),
            key: key.to_owned(),
            message,
        }
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let start = span.start.min(self.text.len());
        let line_start = self.text.as_bytes()[..start]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = self
            .text
            .get(line_start..start)
            .map_or(1, |s| s.chars().count() + 1);
        let mut message = e.message().to_owned();
        if let Some(what) = self.text.get(span.clone())
            && message == "duplicate key"
            && !what.is_empty()
        {
            message = format!("duplicate key {what:?} (a key or table is defined twice)");
        }
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(&span),
            key: "TOML syntax".to_owned(),
            message: format!("{message} (column {column})"),
        }
    }

    /// The keys of `table` (named `key` and written at `span`), checked against `allowed`
    /// (`None`: any key), in file order; records each key's line.
    fn fields<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        key: &str,
        span: Range<usize>,
        allowed: Option<&[&str]>,
    ) -> Result<Fields<'t, 'i>> {
        let mut fields = Fields {
            key: key.to_owned(),
            span,
            entries: Vec::new(),
        };
        for (k, item) in table.iter() {
            let name: &str = k.get_ref();
            fields.entries.push(Entry {
                name,
                key: fields.child_key(name),
                key_span: k.span(),
                item,
            });
        }
        fields.entries.sort_by_key(|e| e.key_span.start);
        for e in &fields.entries {
            if let Some(allowed) = allowed
                && !allowed.contains(&e.name)
            {
                return Err(self.unknown_key(e, key, allowed));
            }
            let line = self.line(&e.key_span);
            self.lines.insert(e.key.clone(), line);
        }
        Ok(fields)
    }

    fn unknown_key(&self, e: &Entry<'_, '_>, table: &str, allowed: &[&str]) -> ConfigError {
        let place = if table.is_empty() {
            "at the top level".to_owned()
        } else if let Some((array, _)) = table.split_once('[') {
            format!("in a [[{array}]] block")
        } else {
            format!("in [{table}]")
        };
        let mut message = format!("unknown key {:?} {place}", e.name);
        if let Some(best) = closest(e.name, allowed) {
            message.push_str(&format!(" (did you mean {best:?}?)"));
        }
        message.push_str(&format!("; valid keys: {}", allowed.join(", ")));
        self.err(&e.key_span, &e.key, message)
    }

    fn missing(&self, fields: &Fields<'_, '_>, name: &str, hint: &str) -> ConfigError {
        let place = if fields.key.is_empty() {
            "the file".to_owned()
        } else {
            format!("[{}]", fields.key)
        };
        self.err(
            &fields.span,
            &fields.child_key(name),
            format!("{place} needs {name:?}: {hint}"),
        )
    }

    fn type_error(&self, e: &Entry<'_, '_>, expected: &str) -> ConfigError {
        self.err(
            &e.span(),
            &e.key,
            format!("expected {expected}, found {}", describe(e.value())),
        )
    }

    fn table<'t, 'i>(
        &mut self,
        e: &Entry<'t, 'i>,
        allowed: Option<&[&str]>,
    ) -> Result<Fields<'t, 'i>> {
        match e.item.get_ref() {
            DeValue::Table(t) => self.fields(t, &e.key, e.key_span.clone(), allowed),
            _ => Err(self.type_error(e, &format!("a table ([{}])", e.key))),
        }
    }

    fn string(&self, e: &Entry<'_, '_>) -> Result<String> {
        match e.value() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.type_error(e, "a string")),
        }
    }

    fn boolean(&self, e: &Entry<'_, '_>) -> Result<bool> {
        match e.value() {
            DeValue::Boolean(b) => Ok(*b),
            _ => Err(self.type_error(e, "true or false")),
        }
    }

    /// A non-negative integer of type `T`.
    fn unsigned<T: TryFrom<i128> + fmt::Display + Bounded>(&self, e: &Entry<'_, '_>) -> Result<T> {
        match e.value() {
            DeValue::Integer(i) => {
                int_value(i)
                    .and_then(|v| T::try_from(v).ok())
                    .ok_or_else(|| {
                        self.err(
                            &e.span(),
                            &e.key,
                            format!("{} is out of range (0 to {})", i, T::MAX_TEXT),
                        )
                    })
            }
            _ => Err(self.type_error(e, "a whole number")),
        }
    }

    /// An array of strings, each with its place.
    fn strings(&self, e: &Entry<'_, '_>) -> Result<Vec<Str>> {
        let expected = "an array of strings, e.g. [\"a\", \"b\"]";
        let DeValue::Array(items) = e.value() else {
            return Err(self.type_error(e, expected));
        };
        items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(s) => Ok(Str {
                    value: s.to_string(),
                    span: item.span(),
                }),
                other => Err(self.err(
                    &item.span(),
                    &e.key,
                    format!(
                        "expected {expected}, found {} in the array",
                        describe(other)
                    ),
                )),
            })
            .collect()
    }

    /// A list of node names, each defined under [nodes], none twice.
    fn node_list(
        &self,
        e: &Entry<'_, '_>,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<Vec<Str>> {
        let list = self.strings(e)?;
        for (i, n) in list.iter().enumerate() {
            if !nodes.contains_key(&n.value) {
                return Err(self.err(
                    &n.span,
                    &e.key,
                    format!(
                        "node {:?} is listed in {} but not defined under [nodes]",
                        n.value, e.key
                    ),
                ));
            }
            if list[..i].iter().any(|m| m.value == n.value) {
                return Err(self.err(
                    &n.span,
                    &e.key,
                    format!("node {:?} is listed twice in {}", n.value, e.key),
                ));
            }
        }
        Ok(list)
    }

    fn check_name(&self, e: &Entry<'_, '_>, what: &str) -> Result<()> {
        if valid_name(e.name) {
            Ok(())
        } else {
            Err(self.err(
                &e.key_span,
                &e.key,
                format!(
                    "bad {what} name {:?}: use letters, digits, '-', '_' and '.', starting with a \
                     letter or digit",
                    e.name
                ),
            ))
        }
    }

    fn document(mut self) -> Result<Config> {
        let doc = DeTable::parse(self.text).map_err(|e| self.syntax_error(&e))?;
        let root = self.fields(doc.get_ref(), "", 0..0, Some(ROOT_KEYS))?;

        let port = match root.get("cluster") {
            Some(e) => self.cluster(e)?,
            None => DEFAULT_PORT,
        };
        let nodes = match root.get("nodes") {
            Some(e) => self.nodes(e, port)?,
            None => BTreeMap::new(),
        };
        if nodes.is_empty() {
            let span = root.get("nodes").map_or(0..0, |e| e.key_span.clone());
            return Err(self.err(
                &span,
                "nodes",
                "no nodes are defined: add a [nodes.NAME] section with an address for each server",
            ));
        }
        let groups = match root.get("groups") {
            Some(e) => self.groups(e, &nodes)?,
            None => BTreeMap::new(),
        };
        let accounts = match root.get("accounts") {
            Some(e) => Some(self.accounts(e, &nodes)?),
            None => None,
        };
        let metrics = match root.get("metrics") {
            Some(e) => Some(self.metrics(e)?),
            None => None,
        };
        Ok(Config {
            file: self.file.to_path_buf(),
            port,
            nodes,
            groups,
            accounts,
            metrics,
            lines: self.lines,
        })
    }

    fn cluster(&mut self, e: &Entry<'_, '_>) -> Result<u16> {
        let f = self.table(e, Some(CLUSTER_KEYS))?;
        match f.get("port") {
            None => Ok(DEFAULT_PORT),
            Some(p) => match self.unsigned::<u16>(p)? {
                0 => Err(self.err(&p.span(), &p.key, "port 0 is not a port; use 1 to 65535")),
                port => Ok(port),
            },
        }
    }

    fn nodes(&mut self, e: &Entry<'_, '_>, port: u16) -> Result<BTreeMap<String, NodeConfig>> {
        let f = self.table(e, None)?;
        let mut nodes: BTreeMap<String, NodeConfig> = BTreeMap::new();
        for ne in &f.entries {
            self.check_name(ne, "node")?;
            let node = self.node(ne, port)?;
            for other in nodes.values() {
                if other.address == node.address {
                    return Err(self.err_at_key(
                        &format!("{}.address", ne.key),
                        format!(
                            "node {:?} has the same address as node {:?} ({}); peers could not \
                             tell them apart: give each node its own address or port",
                            node.name, other.name, node.address
                        ),
                    ));
                }
                if node.id.is_some() && other.id == node.id {
                    return Err(self.err_at_key(
                        &format!("{}.id", ne.key),
                        format!(
                            "node {:?} has the same id as node {:?}; each node needs its own key \
                             (run `clustersync init` on it and paste the id it prints)",
                            node.name, other.name
                        ),
                    ));
                }
            }
            nodes.insert(node.name.clone(), node);
        }
        Ok(nodes)
    }

    fn node(&mut self, e: &Entry<'_, '_>, cluster_port: u16) -> Result<NodeConfig> {
        let f = self.table(e, Some(NODE_KEYS))?;
        let Some(a) = f.get("address") else {
            return Err(self.missing(
                &f,
                "address",
                "where peers connect to it, e.g. \"10.0.0.1:7373\"",
            ));
        };
        let raw = self.string(a)?;
        let address = normalise_address(&raw, Some(cluster_port))
            .map_err(|why| self.err(&a.span(), &a.key, format!("bad address {raw:?}: {why}")))?;
        let port = address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(cluster_port);
        let listen = match f.get("listen") {
            None => None,
            Some(l) => {
                let raw = self.string(l)?;
                Some(normalise_address(&raw, Some(port)).map_err(|why| {
                    self.err(
                        &l.span(),
                        &l.key,
                        format!("bad listen address {raw:?}: {why}"),
                    )
                })?)
            }
        };
        let id = match f.get("id") {
            None => None,
            Some(i) => {
                let raw = self.string(i)?;
                if raw.len() != 64 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.err(
                        &i.span(),
                        &i.key,
                        format!(
                            "bad id {raw:?}: a node id is 64 hex digits, as printed by \
                             `clustersync id` on that node"
                        ),
                    ));
                }
                Some(raw.to_ascii_lowercase())
            }
        };
        let root = match f.get("root") {
            None => PathBuf::from("/"),
            Some(r) => {
                let raw = self.string(r)?;
                PathBuf::from(normalise_path(&raw).map_err(|why| {
                    self.err(&r.span(), &r.key, format!("bad root {raw:?}: {why}"))
                })?)
            }
        };
        let key = match f.get("key") {
            None => None,
            Some(k) => {
                let raw = self.string(k)?;
                Some(PathBuf::from(normalise_path(&raw).map_err(|why| {
                    self.err(
                        &k.span(),
                        &k.key,
                        format!("bad key file path {raw:?}: {why}"),
                    )
                })?))
            }
        };
        let metrics = match f.get("metrics") {
            None => None,
            Some(m) => {
                let raw = self.string(m)?;
                Some(normalise_address(&raw, None).map_err(|why| {
                    self.err(
                        &m.span(),
                        &m.key,
                        format!("bad metrics address {raw:?}: {why}"),
                    )
                })?)
            }
        };
        Ok(NodeConfig {
            name: e.name.to_owned(),
            address,
            listen,
            id,
            root,
            key,
            metrics,
        })
    }

    fn groups(
        &mut self,
        e: &Entry<'_, '_>,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<BTreeMap<String, GroupConfig>> {
        let f = self.table(e, None)?;
        let mut groups = BTreeMap::new();
        let mut seen: Vec<PathSeen> = Vec::new();
        for ge in &f.entries {
            self.check_name(ge, "group")?;
            let group = self.group(ge, nodes, &mut seen)?;
            groups.insert(group.name.clone(), group);
        }
        seen.sort_by_key(|p| p.span.start);
        for (j, later) in seen.iter().enumerate() {
            for earlier in &seen[..j] {
                if let Some(message) = overlap(earlier, later, self.line(&earlier.span)) {
                    return Err(self.err(
                        &later.span,
                        &format!("groups.{}.paths", later.group),
                        message,
                    ));
                }
            }
        }
        Ok(groups)
    }

    fn group(
        &mut self,
        e: &Entry<'_, '_>,
        nodes: &BTreeMap<String, NodeConfig>,
        seen: &mut Vec<PathSeen>,
    ) -> Result<GroupConfig> {
        let f = self.table(e, Some(GROUP_KEYS))?;
        let full = match f.get("nodes") {
            Some(n) => self.node_list(n, nodes)?,
            None => Vec::new(),
        };
        if full.is_empty() {
            let span = f.get("nodes").map_or(f.span.clone(), Entry::span);
            return Err(self.err(
                &span,
                &f.child_key("nodes"),
                format!(
                    "group {:?} has no nodes: list its full members, e.g. nodes = [\"web1\", \"web2\"]",
                    e.name
                ),
            ));
        }
        let replicas = match f.get("replicas") {
            Some(r) => {
                let list = self.node_list(r, nodes)?;
                if let Some(both) = list
                    .iter()
                    .find(|n| full.iter().any(|m| m.value == n.value))
                {
                    return Err(self.err(
                        &both.span,
                        &r.key,
                        format!(
                            "node {:?} is in both {}.nodes and {}.replicas; a node is either a \
                             full member or a replica",
                            both.value, f.key, f.key
                        ),
                    ));
                }
                list
            }
            None => Vec::new(),
        };

        let Some(p) = f.get("paths") else {
            return Err(self.missing(&f, "paths", "the absolute paths this group keeps in sync"));
        };
        let raw_paths = self.strings(p)?;
        if raw_paths.is_empty() {
            return Err(self.err(
                &p.span(),
                &p.key,
                format!(
                    "group {:?} has no paths: list the absolute paths it keeps in sync",
                    e.name
                ),
            ));
        }
        let mut paths = Vec::new();
        for raw in raw_paths {
            let path = normalise_path(&raw.value).map_err(|why| {
                self.err(
                    &raw.span,
                    &p.key,
                    format!("bad path {:?}: {why}", raw.value),
                )
            })?;
            seen.push(PathSeen {
                group: e.name.to_owned(),
                path: path.clone(),
                span: raw.span,
            });
            paths.push(path);
        }

        let exclude = match f.get("exclude") {
            Some(x) => self.patterns(x)?,
            None => Vec::new(),
        };
        let include = match f.get("include") {
            Some(x) => self.patterns(x)?,
            None => Vec::new(),
        };
        let conflict = match f.get("conflict") {
            Some(c) => self.conflict(c, &full, nodes)?,
            None => ConflictPolicy::Newest,
        };
        let backup_generations = match f.get("backup_generations") {
            Some(b) => self.unsigned::<u32>(b)?,
            None => DEFAULT_BACKUP_GENERATIONS,
        };
        let owners = match f.get("owners") {
            Some(o) => match self.string(o)?.as_str() {
                "by-name" => Owners::ByName,
                "numeric" => Owners::Numeric,
                "ignore" => Owners::Ignore,
                other => {
                    return Err(self.err(
                        &o.span(),
                        &o.key,
                        format!("unknown owners mode {other:?}; valid: by-name, numeric, ignore"),
                    ));
                }
            },
            None => Owners::ByName,
        };
        let xattrs = match f.get("xattrs") {
            Some(x) => self.boolean(x)?,
            None => false,
        };
        let on_drift = match f.get("on_drift") {
            Some(d) => match self.string(d)?.as_str() {
                "revert" => OnDrift::Revert,
                "keep" => OnDrift::Keep,
                other => {
                    return Err(self.err(
                        &d.span(),
                        &d.key,
                        format!("unknown on_drift mode {other:?}; valid: revert, keep"),
                    ));
                }
            },
            None => OnDrift::Revert,
        };
        let watch = match f.get("watch") {
            Some(w) => self.boolean(w)?,
            None => true,
        };
        let rescan = match f.get("rescan") {
            Some(r) => self.rescan(r)?,
            None => Some(DEFAULT_RESCAN),
        };
        let actions = match f.get("actions") {
            Some(a) => self.actions(a)?,
            None => Vec::new(),
        };
        Ok(GroupConfig {
            name: e.name.to_owned(),
            nodes: full.into_iter().map(|s| s.value).collect(),
            replicas: replicas.into_iter().map(|s| s.value).collect(),
            paths,
            exclude,
            include,
            conflict,
            backup_generations,
            owners,
            xattrs,
            on_drift,
            on_drift_set: f.get("on_drift").is_some(),
            watch,
            rescan,
            actions,
        })
    }

    /// An array of gitignore-style globs, each checked by compiling it.
    fn patterns(&self, e: &Entry<'_, '_>) -> Result<Vec<String>> {
        let list = self.strings(e)?;
        for p in &list {
            check_pattern(&p.value).map_err(|why| {
                self.err(&p.span, &e.key, format!("bad pattern {:?}: {why}", p.value))
            })?;
        }
        Ok(list.into_iter().map(|p| p.value).collect())
    }

    fn conflict(
        &self,
        e: &Entry<'_, '_>,
        full: &[Str],
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<ConflictPolicy> {
        let raw = self.string(e)?;
        Ok(match raw.as_str() {
            "newest" => ConflictPolicy::Newest,
            "oldest" => ConflictPolicy::Oldest,
            "largest" => ConflictPolicy::Largest,
            "smallest" => ConflictPolicy::Smallest,
            "manual" => ConflictPolicy::Manual,
            other => {
                let Some(node) = other.strip_prefix("prefer:") else {
                    return Err(self.err(
                        &e.span(),
                        &e.key,
                        format!(
                            "unknown conflict policy {other:?}; valid: newest, oldest, largest, \
                             smallest, prefer:NODE, manual"
                        ),
                    ));
                };
                let node = node.trim();
                if !nodes.contains_key(node) {
                    return Err(self.err(
                        &e.span(),
                        &e.key,
                        format!(
                            "node {node:?} is named in {} but not defined under [nodes]",
                            e.key
                        ),
                    ));
                }
                if !full.iter().any(|n| n.value == node) {
                    return Err(self.err(
                        &e.span(),
                        &e.key,
                        format!(
                            "{raw:?} names node {node:?}, which is not one of this group's nodes; \
                             prefer one of: {}",
                            full.iter()
                                .map(|n| n.value.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                ConflictPolicy::Prefer(node.to_owned())
            }
        })
    }

    fn rescan(&self, e: &Entry<'_, '_>) -> Result<Option<Duration>> {
        let raw = match e.value() {
            DeValue::String(s) => s.to_string(),
            DeValue::Integer(i) if int_value(i) == Some(0) => return Ok(None),
            _ => {
                return Err(
                    self.type_error(e, "a duration string such as \"1h\" (or \"0\" to disable)")
                );
            }
        };
        if raw.trim() == "0" {
            return Ok(None);
        }
        match humantime::parse_duration(raw.trim()) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) => Ok(Some(d)),
            Err(why) => Err(self.err(
                &e.span(),
                &e.key,
                format!(
                    "bad duration {raw:?}: {why}; write e.g. \"500ms\", \"10s\", \"15m\", \"1h\", \
                     or \"0\" to disable"
                ),
            )),
        }
    }

    fn actions(&mut self, e: &Entry<'_, '_>) -> Result<Vec<ActionConfig>> {
        let DeValue::Array(items) = e.value() else {
            return Err(self.type_error(e, &format!("[[{}]] blocks", e.key)));
        };
        let mut actions = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let key = format!("{}[{i}]", e.key);
            let DeValue::Table(t) = item.get_ref() else {
                return Err(self.err(
                    &item.span(),
                    &e.key,
                    format!(
                        "expected [[{}]] blocks, found {}",
                        e.key,
                        describe(item.get_ref())
                    ),
                ));
            };
            let line = self.line(&item.span());
            self.lines.entry(key.clone()).or_insert(line);
            let f = self.fields(t, &key, item.span(), Some(ACTION_KEYS))?;
            let Some(p) = f.get("pattern") else {
                return Err(self.missing(
                    &f,
                    "pattern",
                    "the globs of paths that trigger the command",
                ));
            };
            let pattern = self.patterns(p)?;
            if pattern.is_empty() {
                return Err(self.err(&p.span(), &p.key, "no patterns: the action would never run"));
            }
            let Some(r) = f.get("run") else {
                return Err(self.missing(
                    &f,
                    "run",
                    "the command to run, e.g. \"systemctl reload nginx\"",
                ));
            };
            let run = self.string(r)?;
            if run.trim().is_empty() {
                return Err(self.err(&r.span(), &r.key, "the command is empty"));
            }
            let local = match f.get("local") {
                Some(l) => self.boolean(l)?,
                None => false,
            };
            actions.push(ActionConfig {
                pattern,
                run,
                local,
            });
        }
        Ok(actions)
    }

    fn accounts(
        &mut self,
        e: &Entry<'_, '_>,
        nodes: &BTreeMap<String, NodeConfig>,
    ) -> Result<AccountsConfig> {
        let f = self.table(e, Some(ACCOUNTS_KEYS))?;
        let members = match f.get("nodes") {
            Some(n) => Some(
                self.node_list(n, nodes)?
                    .into_iter()
                    .map(|s| s.value)
                    .collect(),
            ),
            None => None,
        };
        let users = match f.get("users") {
            Some(u) => {
                let list = self.strings(u)?;
                for (i, name) in list.iter().enumerate() {
                    let bad = name.value.is_empty()
                        || name.value.starts_with('-')
                        || name
                            .value
                            .chars()
                            .any(|c| c == ':' || c == ',' || c.is_whitespace() || c.is_control());
                    if bad {
                        return Err(self.err(
                            &name.span,
                            &u.key,
                            format!("bad user name {:?}", name.value),
                        ));
                    }
                    if list[..i].iter().any(|m| m.value == name.value) {
                        return Err(self.err(
                            &name.span,
                            &u.key,
                            format!("user {:?} is listed twice", name.value),
                        ));
                    }
                }
                list.into_iter().map(|s| s.value).collect()
            }
            None => Vec::new(),
        };
        let uid_range = match f.get("uid_range") {
            Some(r) => Some(self.uid_range(r)?),
            None => None,
        };
        if users.is_empty() && uid_range.is_none() {
            return Err(self.err(
                &f.span,
                "accounts",
                "[accounts] manages no account: set users = [\"name\", ...] and/or uid_range = [LO, HI]",
            ));
        }
        let passwords = match f.get("passwords") {
            Some(p) => self.boolean(p)?,
            None => true,
        };
        let create_home = match f.get("create_home") {
            Some(c) => self.boolean(c)?,
            None => true,
        };
        Ok(AccountsConfig {
            nodes: members,
            users,
            uid_range,
            passwords,
            create_home,
        })
    }

    fn uid_range(&self, e: &Entry<'_, '_>) -> Result<(u32, u32)> {
        let expected = "two uids [LO, HI], e.g. [2000, 2999]";
        let DeValue::Array(items) = e.value() else {
            return Err(self.type_error(e, expected));
        };
        let mut ends = Vec::new();
        for item in items.iter() {
            let value = match item.get_ref() {
                DeValue::Integer(i) => int_value(i).and_then(|v| u32::try_from(v).ok()),
                _ => None,
            };
            match value {
                Some(v) => ends.push(v),
                None => {
                    return Err(self.err(
                        &item.span(),
                        &e.key,
                        format!(
                            "expected {expected}, found {} (uids are 0 to {})",
                            describe(item.get_ref()),
                            u32::MAX
                        ),
                    ));
                }
            }
        }
        match ends[..] {
            [lo, hi] if lo <= hi => Ok((lo, hi)),
            [lo, hi] => Err(self.err(
                &e.span(),
                &e.key,
                format!("uid_range [{lo}, {hi}] is empty: the first uid must not be larger than the second"),
            )),
            _ => Err(self.err(
                &e.span(),
                &e.key,
                format!("expected {expected}, found an array of {} numbers", ends.len()),
            )),
        }
    }

    fn metrics(&mut self, e: &Entry<'_, '_>) -> Result<MetricsConfig> {
        let f = self.table(e, Some(METRICS_KEYS))?;
        let Some(l) = f.get("listen") else {
            return Err(self.missing(
                &f,
                "listen",
                "the HTTP address to serve, e.g. \"127.0.0.1:9373\"",
            ));
        };
        let raw = self.string(l)?;
        let listen = normalise_address(&raw, None).map_err(|why| {
            self.err(
                &l.span(),
                &l.key,
                format!("bad listen address {raw:?}: {why}"),
            )
        })?;
        Ok(MetricsConfig { listen })
    }
}

/// Upper bound of an integer type, for messages.
trait Bounded {
    const MAX_TEXT: &'static str;
}

impl Bounded for u16 {
    const MAX_TEXT: &'static str = "65535";
}

impl Bounded for u32 {
    const MAX_TEXT: &'static str = "4294967295";
}

fn int_value(i: &toml::de::DeInteger<'_>) -> Option<i128> {
    i128::from_str_radix(i.as_str(), i.radix()).ok()
}

/// A value as a sysadmin would call it, for "expected X, found Y".
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(x) => format!("the number {x}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// The valid key nearest to a misspelt one, if it is near enough to be a likely typo.
fn closest<'k>(key: &str, valid: &[&'k str]) -> Option<&'k str> {
    valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .filter(|(d, v)| *d <= (v.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Optimal string alignment distance (Levenshtein with adjacent transpositions).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An absolute path without trailing slash, `.`, or empty components; `..` is refused
/// (it cannot be resolved without looking at the filesystem).
fn normalise_path(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if !raw.starts_with('/') {
        return Err("not an absolute path (it must start with /)".to_owned());
    }
    if raw.contains('\0') {
        return Err("the path contains a NUL character".to_owned());
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err("\"..\" is not allowed in a path; write the path without it".to_owned());
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `host:port` from `host`, `host:port`, `ip4`, `ip4:port`, `ip6`, `[ip6]`, `[ip6]:port`.
/// Without `default_port`, the port must be given.
fn normalise_address(raw: &str, default_port: Option<u16>) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the address is empty".to_owned());
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace".to_owned());
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".to_owned());
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(parse_port(p)?),
                None => {
                    return Err(format!(
                        "unexpected {after:?} after ']' (write [ADDR]:PORT)"
                    ));
                }
            },
        };
        (format!("[{inside}]"), port)
    } else if raw.parse::<Ipv6Addr>().is_ok() {
        (format!("[{raw}]"), None)
    } else {
        let (host, port) = match raw.rsplit_once(':') {
            Some((host, p)) => (host, Some(parse_port(p)?)),
            None => (raw, None),
        };
        if host.contains(':') {
            return Err("write an IPv6 address with a port as [ADDR]:PORT".to_owned());
        }
        check_host(host)?;
        (host.to_owned(), port)
    };
    match port.or(default_port) {
        Some(port) => Ok(format!("{host}:{port}")),
        None => Err("it needs a port, e.g. 127.0.0.1:9373".to_owned()),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!(
            "bad port {p:?} (a port is a number from 1 to 65535)"
        )),
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{host:?} is not an IPv4 address")),
        };
    }
    let ok = host.split('.').all(|label| {
        !label.is_empty()
            && !label.starts_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid host name or IP address"))
    }
}

/// Compiles a gitignore-style glob; the reason it is bad, if it is.
fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("the pattern is empty".to_owned());
    }
    if pattern.starts_with('#') {
        return Err(
            "a pattern starting with '#' is a comment in gitignore syntax; write \\# to match a \
                    literal '#'"
                .to_owned(),
        );
    }
    let mut builder = ignore::gitignore::GitignoreBuilder::new("/");
    // Git takes an unclosed '[' literally; in a config file it is far more likely a typo, so
    // it is refused here (`\[` matches a literal '[').
    builder.allow_unclosed_class(false);
    match builder.add_line(None, pattern) {
        Ok(_) => {}
        Err(ignore::Error::Glob { err, .. }) => return Err(err),
        Err(other) => return Err(other.to_string()),
    }
    builder.build().map(|_| ()).map_err(|e| e.to_string())
}

/// Whether two group paths collide: the message for the later one, if they do.
fn overlap(earlier: &PathSeen, later: &PathSeen, earlier_line: usize) -> Option<String> {
    let inside = |parent: &str, child: &str| {
        parent == "/"
            || child == parent
            || (child.starts_with(parent) && child.as_bytes().get(parent.len()) == Some(&b'/'))
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const ID1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const ID2: &str = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

    /// The example of SPEC §3, with real ids and the web3 node it mentions defined.
    fn spec_example() -> String {
        format!(
            r#"[cluster]
port = 7373                      # default port for nodes whose address has none

[nodes.web1]
address = "10.0.0.1:7373"        # where peers connect to this node
listen = "0.0.0.0:7373"          # optional: where this node binds (default: all interfaces,
                                 # the port of `address`); differs from `address` behind NAT/proxies
id = "{ID1}"                         # this node's public identity, printed by `clustersync id`
root = "/"                       # optional prefix put before every synced path on this node
                                 # (csync2's "prefix"; lets several nodes share one machine)

[nodes.web2]
address = "10.0.0.2"
id = "{ID2}"

[nodes.web3]
address = "web3.example.com"

[groups.www]
nodes = ["web1", "web2"]         # full members: their changes are sent to all others
replicas = ["web3"]              # optional receive-only members (see 5.5)
paths = ["/var/www/shared", "/etc/nginx/sites-enabled", "/etc/hosts"]   # absolute; dirs are recursive
exclude = ["*.tmp", "cache/", ".git/"]     # gitignore-style globs, relative to each path
include = []                     # optional: if set, only matching entries are synced
conflict = "newest"              # newest | oldest | largest | smallest | prefer:NODE | manual
backup_generations = 3           # previous versions kept per path before overwrite/delete (0 = none)
owners = "by-name"               # by-name | numeric | ignore   (file owner and group)
xattrs = false                   # also sync extended attributes and POSIX ACLs
on_drift = "revert"              # revert | keep   (replicas only, see 5.5)
watch = true                     # false: no live watching; changes are picked up by `sync`/rescans
rescan = "1h"                    # periodic full rescan as a safety net ("0" disables)

[[groups.www.actions]]           # commands run after synced changes (see 5.8)
pattern = ["/etc/nginx/**"]
run = "systemctl reload nginx"
local = false                    # also run on the node where the change was made

[accounts]                       # user and group account sync (see 5.7); optional
nodes = ["web1", "web2", "web3"] # default: every node
users = ["niden", "beauty"]      # names, and/or
uid_range = [2000, 2999]         # every user whose uid is in this range, and groups whose gid is
passwords = true                 # also sync password hashes (shadow)
create_home = true

[metrics]
listen = "127.0.0.1:9373"        # optional HTTP: /metrics (Prometheus) and /health;
                                 # `[nodes.NAME] metrics = "ADDR"` overrides it for one node
"#
        )
    }

    /// Three nodes, lines 1-6; tests append their own sections.
    const NODES: &str = r#"[nodes.web1]
address = "10.0.0.1"
[nodes.web2]
address = "10.0.0.2"
[nodes.web3]
address = "10.0.0.3"
"#;

    fn with_nodes(rest: &str) -> String {
        format!("{NODES}{rest}")
    }

    fn parse(text: &str) -> Config {
        match Config::parse(text, Path::new("/etc/cs.toml")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}\n--- config:\n{text}"),
        }
    }

    fn invalid(text: &str) -> (usize, String, String) {
        match Config::parse(text, Path::new("/etc/cs.toml")) {
            Ok(c) => panic!("expected an error, got {c:#?}\n--- config:\n{text}"),
            Err(ConfigError::Invalid {
                file,
                line,
                key,
                message,
            }) => {
                assert_eq!(file, Path::new("/etc/cs.toml"));
                (line, key, message)
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    /// Asserts the error's line, key, and that its message contains `fragment`.
    #[track_caller]
    fn assert_invalid(text: &str, line: usize, key: &str, fragment: &str) {
        let (l, k, m) = invalid(text);
        assert_eq!(
            (l, k.as_str()),
            (line, key),
            "message: {m}\n--- config:\n{text}"
        );
        assert!(m.contains(fragment), "message {m:?} lacks {fragment:?}");
    }

    /// 1-based line of the first occurrence of `needle` in `text`.
    fn line_of(text: &str, needle: &str) -> usize {
        let at = text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in text"));
        text[..at].matches('\n').count() + 1
    }

    #[test]
    fn spec_example_parses() {
        let c = parse(&spec_example());
        assert_eq!(c.file, Path::new("/etc/cs.toml"));
        assert_eq!(c.port, 7373);
        assert_eq!(c.nodes.len(), 3);
        let web1 = c.node("web1").unwrap();
        assert_eq!(web1.name, "web1");
        assert_eq!(web1.address, "10.0.0.1:7373");
        assert_eq!(web1.listen.as_deref(), Some("0.0.0.0:7373"));
        assert_eq!(web1.id.as_deref(), Some(ID1));
        assert_eq!(web1.root, Path::new("/"));
        let web2 = c.node("web2").unwrap();
        assert_eq!(web2.address, "10.0.0.2:7373");
        assert_eq!(web2.id.as_deref(), Some(ID2.to_ascii_lowercase().as_str()));
        assert_eq!(web2.listen_addr(), "0.0.0.0:7373");
        assert_eq!(c.node("web3").unwrap().address, "web3.example.com:7373");
        assert!(c.node("web4").is_none());

        let g = &c.groups["www"];
        assert_eq!(g.name, "www");
        assert_eq!(g.nodes, ["web1", "web2"]);
        assert_eq!(g.replicas, ["web3"]);
        assert_eq!(
            g.paths,
            ["/var/www/shared", "/etc/nginx/sites-enabled", "/etc/hosts"]
        );
        assert_eq!(g.exclude, ["*.tmp", "cache/", ".git/"]);
        assert!(g.include.is_empty());
        assert_eq!(g.conflict, ConflictPolicy::Newest);
        assert_eq!(g.backup_generations, 3);
        assert_eq!(g.owners, Owners::ByName);
        assert!(!g.xattrs);
        assert_eq!(g.on_drift, OnDrift::Revert);
        assert!(g.on_drift_set);
        assert!(g.watch);
        assert_eq!(g.rescan, Some(Duration::from_secs(3600)));
        assert_eq!(
            g.actions,
            [ActionConfig {
                pattern: vec!["/etc/nginx/**".to_owned()],
                run: "systemctl reload nginx".to_owned(),
                local: false,
            }]
        );
        assert_eq!(g.members().collect::<Vec<_>>(), ["web1", "web2", "web3"]);
        assert!(g.has_node("web3") && g.has_node("web1") && !g.has_node("web4"));

        assert_eq!(
            c.accounts,
            Some(AccountsConfig {
                nodes: Some(vec!["web1".into(), "web2".into(), "web3".into()]),
                users: vec!["niden".into(), "beauty".into()],
                uid_range: Some((2000, 2999)),
                passwords: true,
                create_home: true,
            })
        );
        assert_eq!(
            c.metrics,
            Some(MetricsConfig {
                listen: "127.0.0.1:9373".into()
            })
        );
        assert_eq!(c.groups_of("web3").count(), 1);
        assert_eq!(c.groups_of("nobody").count(), 0);
        let peers: Vec<&str> = c.peers_of("web1").iter().map(|n| n.name.as_str()).collect();
        assert_eq!(peers, ["web2", "web3"]);
    }

    #[test]
    fn spec_example_refused_until_built() {
        let text = spec_example();
        let c = parse(&text);
        let Err(ConfigError::Invalid {
            line, key, message, ..
        }) = c.refuse_unsupported()
        else {
            panic!("the SPEC example uses unsupported features");
        };
        // The earliest unsupported feature in the file is the actions block.
        assert_eq!(
            (line, key.as_str()),
            (
                line_of(&text, "[[groups.www.actions]]"),
                "groups.www.actions"
            )
        );
        assert_eq!(message, "not supported yet: actions");
    }

    #[test]
    fn defaults() {
        let c = parse(&with_nodes(
            "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/srv\"]\n",
        ));
        assert_eq!(c.port, DEFAULT_PORT);
        let n = c.node("web1").unwrap();
        assert_eq!(n.address, "10.0.0.1:7373");
        assert_eq!(n.listen, None);
        assert_eq!(n.listen_addr(), "0.0.0.0:7373");
        assert_eq!(n.id, None);
        assert_eq!(n.root, Path::new("/"));
        assert_eq!(n.key, None);
        assert_eq!(n.metrics, None);
        let g = &c.groups["g"];
        assert!(g.replicas.is_empty());
        assert!(g.exclude.is_empty() && g.include.is_empty());
        assert_eq!(g.conflict, ConflictPolicy::Newest);
        assert_eq!(g.backup_generations, 3);
        assert_eq!(g.owners, Owners::ByName);
        assert!(!g.xattrs);
        assert_eq!(g.on_drift, OnDrift::Revert);
        assert!(!g.on_drift_set);
        assert!(g.watch);
        assert_eq!(g.rescan, Some(Duration::from_secs(3600)));
        assert!(g.actions.is_empty());
        assert_eq!(c.accounts, None);
        assert_eq!(c.metrics, None);
        assert!(c.refuse_unsupported().is_ok());
        let peers = c.peers_of("web1");
        assert!(peers.is_empty());
    }

    #[test]
    fn nodes_only_is_valid() {
        let c = parse(NODES);
        assert!(c.groups.is_empty());
        assert!(c.refuse_unsupported().is_ok());
    }

    #[test]
    fn cluster_port_fills_addresses() {
        let c = parse(&format!("[cluster]\nport = 7000\n{NODES}"));
        assert_eq!(c.port, 7000);
        assert_eq!(c.node("web2").unwrap().address, "10.0.0.2:7000");
        assert_eq!(c.node("web2").unwrap().listen_addr(), "0.0.0.0:7000");
    }

    #[test]
    fn addresses() {
        let cases = [
            ("10.0.0.2", "10.0.0.2:7373", "0.0.0.0:7373"),
            ("10.0.0.2:7000", "10.0.0.2:7000", "0.0.0.0:7000"),
            ("[::1]:7000", "[::1]:7000", "[::]:7000"),
            ("[::1]", "[::1]:7373", "[::]:7373"),
            ("::1", "[::1]:7373", "[::]:7373"),
            ("fe80::1:2", "[fe80::1:2]:7373", "[::]:7373"),
            ("web2.example.com", "web2.example.com:7373", "0.0.0.0:7373"),
            ("web2:8000", "web2:8000", "0.0.0.0:8000"),
            ("localhost", "localhost:7373", "0.0.0.0:7373"),
        ];
        for (raw, address, listen) in cases {
            let c = parse(&format!("[nodes.a]\naddress = \"{raw}\"\n"));
            let n = c.node("a").unwrap();
            assert_eq!(n.address, address, "{raw}");
            assert_eq!(n.listen_addr(), listen, "{raw}");
        }
    }

    #[test]
    fn listen_port_defaults_to_address_port() {
        let c = parse("[nodes.a]\naddress = \"1.2.3.4:9000\"\nlisten = \"10.0.0.1\"\n");
        assert_eq!(
            c.node("a").unwrap().listen.as_deref(),
            Some("10.0.0.1:9000")
        );
        let c = parse("[nodes.a]\naddress = \"1.2.3.4:9000\"\nlisten = \"[::]:9100\"\n");
        assert_eq!(c.node("a").unwrap().listen_addr(), "[::]:9100");
    }

    #[test]
    fn bad_addresses() {
        for raw in [
            "",
            "10.0.0.2:",
            "10.0.0.2:abc",
            "10.0.0.2:0",
            "10.0.0.2:70000",
            "10.0.0.2:+80",
            "[::1",
            "[::1]7000",
            "[nothost]:7000",
            "1:2:3",
            "10.0.0.256",
            "web 2",
            ":7000",
            "-web",
            "a..b",
        ] {
            let text = format!("[nodes.web3]\n\naddress = \"{raw}\"\n");
            let (line, key, message) = invalid(&text);
            assert_eq!(
                (line, key.as_str()),
                (3, "nodes.web3.address"),
                "{raw}: {message}"
            );
            assert!(message.starts_with("bad address"), "{message}");
        }
        let (_, _, message) = invalid("[nodes.a]\naddress = \"h:abc\"\n");
        assert!(message.contains("bad port \"abc\""), "{message}");
        assert_invalid(
            "[nodes.a]\naddress = \"h\"\nlisten = \"0.0.0.0:x\"\n",
            3,
            "nodes.a.listen",
            "bad listen address",
        );
    }

    #[test]
    fn address_required_and_typed() {
        assert_invalid(
            "[nodes.a]\nroot = \"/\"\n",
            1,
            "nodes.a.address",
            "[nodes.a] needs \"address\"",
        );
        assert_invalid(
            "[nodes.a]\naddress = 7373\n",
            2,
            "nodes.a.address",
            "expected a string, found the number 7373",
        );
        assert_invalid(
            "[nodes]\na = \"10.0.0.1\"\n",
            2,
            "nodes.a",
            "expected a table ([nodes.a])",
        );
    }

    #[test]
    fn node_ids() {
        let c = parse(&format!("[nodes.a]\naddress = \"h\"\nid = \"{ID2}\"\n"));
        assert_eq!(
            c.node("a").unwrap().id.as_deref(),
            Some(ID2.to_ascii_lowercase().as_str())
        );
        for bad in [
            "abc",
            &ID1[1..],
            &format!("{ID1}0"),
            &format!("g{}", &ID1[1..]),
        ] {
            assert_invalid(
                &format!("[nodes.a]\naddress = \"h\"\nid = \"{bad}\"\n"),
                3,
                "nodes.a.id",
                "64 hex digits",
            );
        }
        let text = format!(
            "[nodes.a]\naddress = \"h\"\nid = \"{ID1}\"\n[nodes.b]\naddress = \"i\"\nid = \"{ID1}\"\n"
        );
        assert_invalid(&text, 6, "nodes.b.id", "same id as node \"a\"");
        let text = "[nodes.a]\naddress = \"h\"\n[nodes.b]\naddress = \"h:7373\"\n";
        assert_invalid(
            text,
            4,
            "nodes.b.address",
            "same address as node \"a\" (h:7373)",
        );
        // The same host on another port is another node (several nodes on one machine).
        parse("[nodes.a]\naddress = \"h\"\n[nodes.b]\naddress = \"h:7374\"\n");
    }

    #[test]
    fn node_root_key_metrics() {
        let c = parse(
            "[nodes.a]\naddress = \"h\"\nroot = \"/srv/a/\"\nkey = \"/etc/cs/a.key\"\nmetrics = \"127.0.0.1:9400\"\n",
        );
        let a = c.node("a").unwrap();
        assert_eq!(a.root, Path::new("/srv/a"));
        assert_eq!(a.key.as_deref(), Some(Path::new("/etc/cs/a.key")));
        assert_eq!(a.metrics.as_deref(), Some("127.0.0.1:9400"));
        assert_invalid(
            "[nodes.a]\naddress = \"h\"\nroot = \"srv/a\"\n",
            3,
            "nodes.a.root",
            "not an absolute path",
        );
        assert_invalid(
            "[nodes.a]\naddress = \"h\"\nroot = \"\"\n",
            3,
            "nodes.a.root",
            "empty",
        );
        assert_invalid(
            "[nodes.a]\naddress = \"h\"\nkey = \"a.key\"\n",
            3,
            "nodes.a.key",
            "not an absolute path",
        );
        assert_invalid(
            "[nodes.a]\naddress = \"h\"\nmetrics = \"127.0.0.1\"\n",
            3,
            "nodes.a.metrics",
            "needs a port",
        );
    }

    #[test]
    fn bad_names() {
        assert_invalid(
            "[nodes.\"web 1\"]\naddress = \"h\"\n",
            1,
            "nodes.web 1",
            "bad node name",
        );
        assert_invalid(
            &with_nodes("[groups.\"../x\"]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n"),
            7,
            "groups.../x",
            "bad group name",
        );
    }

    #[test]
    fn no_nodes() {
        assert_invalid("", 1, "nodes", "no nodes are defined");
        assert_invalid(
            "[cluster]\nport = 1\n\n[nodes]\n",
            4,
            "nodes",
            "no nodes are defined",
        );
    }

    #[test]
    fn cluster_port() {
        assert_invalid(
            &format!("[cluster]\nport = 0\n{NODES}"),
            2,
            "cluster.port",
            "port 0",
        );
        assert_invalid(
            &format!("[cluster]\nport = 70000\n{NODES}"),
            2,
            "cluster.port",
            "out of range",
        );
        assert_invalid(
            &format!("[cluster]\nport = -1\n{NODES}"),
            2,
            "cluster.port",
            "out of range",
        );
        assert_invalid(
            &format!("[cluster]\nport = \"7373\"\n{NODES}"),
            2,
            "cluster.port",
            "whole number",
        );
        assert_invalid("cluster = 5\n", 1, "cluster", "expected a table");
    }

    #[test]
    fn unknown_keys() {
        let text = with_nodes(
            "[groups.www]\nnodes = [\"web1\"]\npaths = [\"/a\"]\nconflcit = \"newest\"\n",
        );
        let (line, key, message) = invalid(&text);
        assert_eq!((line, key.as_str()), (10, "groups.www.conflcit"));
        assert_eq!(
            message,
            "unknown key \"conflcit\" in [groups.www] (did you mean \"conflict\"?); valid keys: nodes, \
             replicas, paths, exclude, include, conflict, backup_generations, owners, xattrs, \
             on_drift, watch, rescan, actions"
        );
        assert_invalid(
            "[clutser]\nport = 1\n",
            1,
            "clutser",
            "at the top level (did you mean \"cluster\"?)",
        );
        assert_invalid(
            "[cluster]\nprot = 1\n",
            2,
            "cluster.prot",
            "unknown key \"prot\" in [cluster]",
        );
        assert_invalid(
            &format!("{NODES}adress = \"x\"\n"),
            7,
            "nodes.web3.adress",
            "did you mean \"address\"",
        );
        assert_invalid(
            &with_nodes(
                "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n[[groups.g.actions]]\npattern = [\"*\"]\nrun = \"x\"\nlcoal = true\n",
            ),
            13,
            "groups.g.actions[0].lcoal",
            "in a [[groups.g.actions]] block",
        );
        assert_invalid(
            &format!("{NODES}[accounts]\nuser = [\"a\"]\n"),
            8,
            "accounts.user",
            "did you mean \"users\"",
        );
        assert_invalid(
            &format!("{NODES}[metrics]\naddress = \"a:1\"\n"),
            8,
            "metrics.address",
            "valid keys: listen",
        );
        // Inline and dotted keys are checked too.
        assert_invalid(
            &format!("groups.g = {{ nodes = [\"web1\"], paths = [\"/a\"], bogus = 1 }}\n{NODES}"),
            1,
            "groups.g.bogus",
            "unknown key \"bogus\"",
        );
        // An unrelated key gets no suggestion.
        let (_, _, message) = invalid("[cluster]\nzzzzzzzz = 1\n");
        assert!(!message.contains("did you mean"), "{message}");
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        assert_invalid(&format!("{NODES}[groups.www\n"), 7, "TOML syntax", "column");
        assert_invalid(
            &format!("{NODES}address = \"x\"\n"),
            7,
            "TOML syntax",
            "duplicate key \"address\"",
        );
        assert_invalid(
            "[nodes.a]\naddress = \"unterminated\n",
            2,
            "TOML syntax",
            "column 24",
        );
        let (_, _, message) = invalid("[nodes.a]\naddress = \"x\"\n[nodes.a]\naddress = \"y\"\n");
        assert!(message.contains("duplicate key"), "{message}");
    }

    #[test]
    fn group_nodes_must_be_defined() {
        let text = with_nodes("[groups.www]\nnodes = [\"web1\",\n  \"web9\"]\npaths = [\"/a\"]\n");
        let (line, key, message) = invalid(&text);
        assert_eq!((line, key.as_str()), (9, "groups.www.nodes"));
        assert_eq!(
            message,
            "node \"web9\" is listed in groups.www.nodes but not defined under [nodes]"
        );
        assert_invalid(
            &with_nodes(
                "[groups.www]\nnodes = [\"web1\"]\nreplicas = [\"web7\"]\npaths = [\"/a\"]\n",
            ),
            9,
            "groups.www.replicas",
            "node \"web7\" is listed in groups.www.replicas but not defined under [nodes]",
        );
        assert_invalid(
            &format!("{NODES}[accounts]\nusers = [\"a\"]\nnodes = [\"web1\", \"db1\"]\n"),
            9,
            "accounts.nodes",
            "node \"db1\" is listed in accounts.nodes but not defined under [nodes]",
        );
        assert_invalid(
            &with_nodes("[groups.www]\nnodes = [\"web1\", 2]\npaths = [\"/a\"]\n"),
            8,
            "groups.www.nodes",
            "found the number 2",
        );
    }

    #[test]
    fn group_membership_rules() {
        assert_invalid(
            &with_nodes(
                "[groups.www]\nnodes = [\"web1\", \"web2\"]\nreplicas = [\"web3\", \"web2\"]\npaths = [\"/a\"]\n",
            ),
            9,
            "groups.www.replicas",
            "node \"web2\" is in both groups.www.nodes and groups.www.replicas",
        );
        assert_invalid(
            &with_nodes("[groups.www]\nnodes = [\"web1\", \"web1\"]\npaths = [\"/a\"]\n"),
            8,
            "groups.www.nodes",
            "listed twice",
        );
        assert_invalid(
            &with_nodes("[groups.www]\npaths = [\"/a\"]\n"),
            7,
            "groups.www.nodes",
            "has no nodes",
        );
        assert_invalid(
            &with_nodes("[groups.www]\nnodes = []\npaths = [\"/a\"]\n"),
            8,
            "groups.www.nodes",
            "has no nodes",
        );
    }

    #[test]
    fn group_paths() {
        let c = parse(&with_nodes(
            "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/var/www/\", \"//etc/./nginx//\"]\n",
        ));
        assert_eq!(c.groups["g"].paths, ["/var/www", "/etc/nginx"]);
        let c = parse(&with_nodes(
            "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/\"]\n",
        ));
        assert_eq!(c.groups["g"].paths, ["/"]);

        assert_invalid(
            &with_nodes(
                "[groups.g]\nnodes = [\"web1\"]\npaths = [\n  \"/a\",\n  \"var/www\",\n]\n",
            ),
            11,
            "groups.g.paths",
            "bad path \"var/www\": not an absolute path",
        );
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a/../b\"]\n"),
            9,
            "groups.g.paths",
            "\"..\" is not allowed",
        );
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = []\n"),
            9,
            "groups.g.paths",
            "has no paths",
        );
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\n"),
            7,
            "groups.g.paths",
            "needs \"paths\"",
        );
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = \"/a\"\n"),
            9,
            "groups.g.paths",
            "expected an array of strings",
        );
    }

    #[test]
    fn overlapping_paths() {
        // The same path in two groups: reported at the later one.
        let text = with_nodes(
            "[groups.a]\nnodes = [\"web1\"]\npaths = [\"/etc/hosts\"]\n\n[groups.b]\nnodes = [\"web2\"]\npaths = [\"/srv\", \"/etc/hosts/\"]\n",
        );
        let (line, key, message) = invalid(&text);
        assert_eq!((line, key.as_str()), (13, "groups.b.paths"));
        assert_eq!(
            message,
            "path \"/etc/hosts\" is also a path of group \"a\" (line 9); a path can belong to one group only"
        );
        // Nested across groups, either way round; the later one in the file is blamed.
        assert_invalid(
            &with_nodes(
                "[groups.z]\nnodes = [\"web1\"]\npaths = [\"/var/www\"]\n[groups.a]\nnodes = [\"web2\"]\npaths = [\"/var/www/uploads\"]\n",
            ),
            12,
            "groups.a.paths",
            "is inside \"/var/www\", which is a path of group \"z\"",
        );
        assert_invalid(
            &with_nodes(
                "[groups.a]\nnodes = [\"web1\"]\npaths = [\"/var/www/uploads\"]\n[groups.b]\nnodes = [\"web2\"]\npaths = [\"/var\"]\n",
            ),
            12,
            "groups.b.paths",
            "contains \"/var/www/uploads\", which is a path of group \"a\"",
        );
        assert_invalid(
            &with_nodes(
                "[groups.a]\nnodes = [\"web1\"]\npaths = [\"/srv\"]\n[groups.b]\nnodes = [\"web2\"]\npaths = [\"/\"]\n",
            ),
            12,
            "groups.b.paths",
            "contains \"/srv\"",
        );
        // Within one group.
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = [\"/etc\", \"/etc/nginx\"]\n"),
            9,
            "groups.g.paths",
            "\"/etc/nginx\" is inside \"/etc\", which is already a path of this group",
        );
        assert_invalid(
            &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = [\"/etc\", \"/etc/\"]\n"),
            9,
            "groups.g.paths",
            "listed twice",
        );
        // Siblings with a common prefix do not overlap.
        let c = parse(&with_nodes(
            "[groups.a]\nnodes = [\"web1\"]\npaths = [\"/var/www\"]\n[groups.b]\nnodes = [\"web2\"]\npaths = [\"/var/www2\", \"/var/ww\"]\n",
        ));
        assert_eq!(c.groups.len(), 2);
    }

    #[test]
    fn patterns() {
        let c = parse(&with_nodes(
            "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\nexclude = [\"*.tmp\", \"cache/\", \"!keep.tmp\", \"/x/**\", \"\\\\#x\"]\ninclude = [\"*.php\"]\n",
        ));
        assert_eq!(c.groups["g"].include, ["*.php"]);
        for (k, bad, why) in [
            ("exclude", "a[", "unclosed character class"),
            ("exclude", "{a,b", "unclosed alternate group"),
            ("include", "", "empty"),
            ("include", "#x", "comment"),
        ] {
            let text = with_nodes(&format!(
                "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n{k} = [\"ok\",\n \"{bad}\"]\n"
            ));
            let (line, key, message) = invalid(&text);
            assert_eq!(
                (line, key.as_str()),
                (11, format!("groups.g.{k}").as_str()),
                "{message}"
            );
            assert!(
                message.contains(&format!("bad pattern {bad:?}")),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn conflict_policies() {
        let group = |c: &str| {
            with_nodes(&format!(
                "[groups.g]\nnodes = [\"web1\", \"web2\"]\nreplicas = [\"web3\"]\npaths = [\"/a\"]\nconflict = \"{c}\"\n"
            ))
        };
        for (raw, policy) in [
            ("newest", ConflictPolicy::Newest),
            ("oldest", ConflictPolicy::Oldest),
            ("largest", ConflictPolicy::Largest),
            ("smallest", ConflictPolicy::Smallest),
            ("manual", ConflictPolicy::Manual),
            ("prefer:web2", ConflictPolicy::Prefer("web2".into())),
        ] {
            let c = parse(&group(raw));
            assert_eq!(c.groups["g"].conflict, policy);
            assert_eq!(policy.to_string(), raw);
        }
        assert_invalid(
            &group("newer"),
            11,
            "groups.g.conflict",
            "unknown conflict policy \"newer\"; valid:",
        );
        assert_invalid(
            &group("prefer"),
            11,
            "groups.g.conflict",
            "unknown conflict policy",
        );
        assert_invalid(
            &group("prefer:web9"),
            11,
            "groups.g.conflict",
            "node \"web9\" is named in groups.g.conflict but not defined under [nodes]",
        );
        assert_invalid(
            &group("prefer:web3"),
            11,
            "groups.g.conflict",
            "not one of this group's nodes",
        );
    }

    #[test]
    fn group_scalars() {
        let c = parse(&with_nodes(
            "[groups.g]\nnodes = [\"web1\", \"web2\"]\nreplicas = [\"web3\"]\npaths = [\"/a\"]\nbackup_generations = 0\nowners = \"numeric\"\nxattrs = true\non_drift = \"keep\"\nwatch = false\nrescan = \"0\"\n",
        ));
        let g = &c.groups["g"];
        assert_eq!(g.backup_generations, 0);
        assert_eq!(g.owners, Owners::Numeric);
        assert!(g.xattrs);
        assert_eq!(g.on_drift, OnDrift::Keep);
        assert!(g.on_drift_set);
        assert!(!g.watch);
        assert_eq!(g.rescan, None);
        let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
        let one = |line: &str| with_nodes(&format!("{head}{line}\n"));
        assert_eq!(
            parse(&one("owners = \"ignore\"")).groups["g"].owners,
            Owners::Ignore
        );
        assert_eq!(
            parse(&one("rescan = \"10m\"")).groups["g"].rescan,
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse(&one("rescan = \"500ms\"")).groups["g"].rescan,
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse(&one("rescan = 0")).groups["g"].rescan, None);
        assert_eq!(parse(&one("rescan = \"0s\"")).groups["g"].rescan, None);
        assert_invalid(
            &one("owners = \"byname\""),
            10,
            "groups.g.owners",
            "valid: by-name, numeric, ignore",
        );
        assert_invalid(
            &one("on_drift = \"ignore\""),
            10,
            "groups.g.on_drift",
            "valid: revert, keep",
        );
        assert_invalid(
            &one("xattrs = \"yes\""),
            10,
            "groups.g.xattrs",
            "expected true or false, found the string \"yes\"",
        );
        assert_invalid(
            &one("watch = 1"),
            10,
            "groups.g.watch",
            "expected true or false",
        );
        assert_invalid(
            &one("backup_generations = -1"),
            10,
            "groups.g.backup_generations",
            "out of range",
        );
        assert_invalid(
            &one("backup_generations = 1.5"),
            10,
            "groups.g.backup_generations",
            "whole number",
        );
        assert_invalid(
            &one("rescan = \"1 fortnight\""),
            10,
            "groups.g.rescan",
            "bad duration \"1 fortnight\"",
        );
        assert_invalid(
            &one("rescan = \"10\""),
            10,
            "groups.g.rescan",
            "bad duration",
        );
        assert_invalid(
            &one("rescan = 3600"),
            10,
            "groups.g.rescan",
            "duration string",
        );
    }

    #[test]
    fn actions() {
        let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/etc\"]\n";
        let c = parse(&with_nodes(&format!(
            "{head}[[groups.g.actions]]\npattern = [\"/etc/nginx/**\"]\nrun = \"systemctl reload nginx\"\n[[groups.g.actions]]\npattern = [\"*.conf\", \"/etc/x\"]\nrun = \"true\"\nlocal = true\n"
        )));
        let a = &c.groups["g"].actions;
        assert_eq!(a.len(), 2);
        assert!(!a[0].local && a[1].local);
        assert_eq!(a[1].pattern, ["*.conf", "/etc/x"]);
        let act = |body: &str| with_nodes(&format!("{head}[[groups.g.actions]]\n{body}"));
        assert_invalid(
            &act("run = \"x\"\n"),
            10,
            "groups.g.actions[0].pattern",
            "needs \"pattern\"",
        );
        assert_invalid(
            &act("pattern = [\"*\"]\n"),
            10,
            "groups.g.actions[0].run",
            "needs \"run\"",
        );
        assert_invalid(
            &act("pattern = []\nrun = \"x\"\n"),
            11,
            "groups.g.actions[0].pattern",
            "no patterns",
        );
        assert_invalid(
            &act("pattern = [\"/etc/[\"]\nrun = \"x\"\n"),
            11,
            "groups.g.actions[0].pattern",
            "bad pattern",
        );
        assert_invalid(
            &act("pattern = [\"*\"]\nrun = \" \"\n"),
            12,
            "groups.g.actions[0].run",
            "empty",
        );
        assert_invalid(
            &with_nodes(&format!("{head}actions = \"x\"\n")),
            10,
            "groups.g.actions",
            "expected [[groups.g.actions]] blocks",
        );
        assert_invalid(
            &with_nodes(&format!("{head}actions = [1]\n")),
            10,
            "groups.g.actions",
            "expected [[groups.g.actions]] blocks, found the number 1",
        );
    }

    #[test]
    fn accounts() {
        let c = parse(&format!(
            "{NODES}[accounts]\nuid_range = [2000, 2000]\npasswords = false\ncreate_home = false\n"
        ));
        assert_eq!(
            c.accounts,
            Some(AccountsConfig {
                nodes: None,
                users: vec![],
                uid_range: Some((2000, 2000)),
                passwords: false,
                create_home: false,
            })
        );
        let acc = |body: &str| format!("{NODES}[accounts]\n{body}");
        assert_invalid(
            &acc("uid_range = [2999, 2000]\n"),
            8,
            "accounts.uid_range",
            "the first uid must not be larger",
        );
        assert_invalid(
            &acc("uid_range = [2000]\n"),
            8,
            "accounts.uid_range",
            "two uids",
        );
        assert_invalid(
            &acc("uid_range = [1, 2, 3]\n"),
            8,
            "accounts.uid_range",
            "two uids",
        );
        assert_invalid(
            &acc("uid_range = [-1, 2]\n"),
            8,
            "accounts.uid_range",
            "found the number -1",
        );
        assert_invalid(&acc("uid_range = 5\n"), 8, "accounts.uid_range", "two uids");
        assert_invalid(
            &acc("users = [\"a:b\"]\n"),
            8,
            "accounts.users",
            "bad user name",
        );
        assert_invalid(
            &acc("users = [\"a\", \"a\"]\n"),
            8,
            "accounts.users",
            "listed twice",
        );
        assert_invalid(
            &acc("passwords = \"yes\"\nusers = [\"a\"]\n"),
            8,
            "accounts.passwords",
            "true or false",
        );
        assert_invalid(
            &acc("create_home = true\n"),
            7,
            "accounts",
            "manages no account",
        );
    }

    #[test]
    fn metrics() {
        let c = parse(&format!("{NODES}[metrics]\nlisten = \"[::1]:9373\"\n"));
        assert_eq!(c.metrics.unwrap().listen, "[::1]:9373");
        assert_invalid(
            &format!("{NODES}[metrics]\n"),
            7,
            "metrics.listen",
            "needs \"listen\"",
        );
        assert_invalid(
            &format!("{NODES}[metrics]\nlisten = \"x\"\n"),
            8,
            "metrics.listen",
            "needs a port",
        );
    }

    #[test]
    fn refuse_unsupported_each_feature() {
        let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
        let cases = [
            (
                format!("{head}xattrs = true\n"),
                10,
                "groups.g.xattrs",
                "xattrs = true",
            ),
            (
                format!("{head}[[groups.g.actions]]\npattern = [\"*\"]\nrun = \"x\"\n"),
                10,
                "groups.g.actions",
                "actions",
            ),
            (
                "[accounts]\nusers = [\"a\"]\n".to_owned(),
                7,
                "accounts",
                "[accounts] (account sync)",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:9\"\n".to_owned(),
                7,
                "metrics",
                "[metrics]",
            ),
        ];
        for (rest, want_line, want_key, what) in cases {
            let c = parse(&with_nodes(&rest));
            let Err(ConfigError::Invalid {
                file,
                line,
                key,
                message,
            }) = c.refuse_unsupported()
            else {
                panic!("{want_key} should be refused");
            };
            assert_eq!(file, Path::new("/etc/cs.toml"));
            assert_eq!((line, key.as_str()), (want_line, want_key));
            assert_eq!(message, format!("not supported yet: {what}"));
        }
        // A node's metrics key, pointing at its line.
        let text = "[nodes.a]\naddress = \"h\"\nmetrics = \"127.0.0.1:9\"\n";
        let Err(ConfigError::Invalid { line, key, .. }) = parse(text).refuse_unsupported() else {
            panic!("node metrics should be refused");
        };
        assert_eq!((line, key.as_str()), (3, "nodes.a.metrics"));
        // Supported settings written explicitly are fine.
        let c = parse(&with_nodes(&format!(
            "{head}xattrs = false\nconflict = \"prefer:web1\"\nowners = \"numeric\"\nrescan = \"0\"\nwatch = false\nexclude = [\"*.tmp\"]\ninclude = [\"*\"]\nbackup_generations = 9\n"
        )));
        assert!(c.refuse_unsupported().is_ok());
    }

    #[test]
    fn refuse_reports_the_earliest_in_the_file() {
        let text = with_nodes(
            "[metrics]\nlisten = \"127.0.0.1:9\"\n[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\nxattrs = true\n",
        );
        let Err(ConfigError::Invalid { line, key, .. }) = parse(&text).refuse_unsupported() else {
            panic!("should be refused");
        };
        assert_eq!((line, key.as_str()), (7, "metrics"));
    }

    #[test]
    fn error_display() {
        let e = Config::parse(
            "[cluster]\nprot = 1\n",
            Path::new("/etc/clustersync/clustersync.toml"),
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(
                "/etc/clustersync/clustersync.toml:2: cluster.prot: unknown key \"prot\""
            ),
            "{shown}"
        );
        let e = Config::load(Path::new("/nonexistent/clustersync.toml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("cannot read config file /nonexistent/clustersync.toml: "),
            "{e}"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir =
            std::env::temp_dir().join(format!("clustersync-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clustersync.toml");
        std::fs::write(&path, spec_example()).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.file, path);
        assert_eq!(c.groups.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_mentions_groups_paths_and_peers() {
        let c = parse(&spec_example());
        let s = c.summary(Some("web1"));
        for want in [
            "group www",
            "/var/www/shared",
            "/etc/nginx/sites-enabled",
            "web1, web2",
            "replicas: web3",
            "conflict newest",
            "this node: web1",
            "listens on 0.0.0.0:7373",
            "web2         10.0.0.2:7373",
            "web3.example.com:7373",
            "metrics:   127.0.0.1:9373",
        ] {
            assert!(s.contains(want), "summary lacks {want:?}:\n{s}");
        }
        let s = c.summary(None);
        assert!(
            s.contains("nodes:") && s.contains("web1") && s.contains("10.0.0.1:7373"),
            "{s}"
        );
        let s = c.summary(Some("web9"));
        assert!(s.contains("web9 is NOT defined"), "{s}");
        assert!(s.contains("(web9 is not a member)"), "{s}");
        let lone = parse(NODES);
        assert!(lone.summary(Some("web1")).contains("peers:     none"));
    }

    #[test]
    fn equality_ignores_layout() {
        let a = parse(NODES);
        let b = parse(&format!("# comment\n\n{NODES}"));
        assert_eq!(a, b);
        assert_ne!(a, parse(&format!("[cluster]\nport = 1\n{NODES}")));
    }

    #[test]
    fn helpers() {
        assert_eq!(edit_distance("conflcit", "conflict"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(closest("nodse", GROUP_KEYS), Some("nodes"));
        assert_eq!(closest("qqqq", GROUP_KEYS), None);
        assert!(
            valid_name("web1.example.com")
                && valid_name("db_2")
                && !valid_name(".x")
                && !valid_name("")
        );
    }
}
