//! The configuration file, `clustersync.toml` (SPEC §2 and §3): reading it, checking it,
//! writing it, and the settings the rest of the program trusts.
//!
//! Reading happens in three steps, one module each: TOML's parser gives the spanned document
//! tree (a syntax error is reported with its line and column); [`de`] reads that tree into the
//! serde types of [`raw`], which carry the shape of the file (which tables exist, which keys
//! each accepts, the type of each value); [`check`] turns them into a [`Config`], parsing the
//! values with their own syntax ([`values`]) and applying the rules that span keys and
//! sections. Every mistake is reported as [`ConfigError::Invalid`] naming the file, the 1-based
//! line and the dotted key (`groups.www.paths`), with a message a system administrator can act
//! on (an unknown key gets a "did you mean"). Only the first mistake is reported.
//!
//! Writing ([`Config::to_toml`], in [`write`]) goes back through the same serde types, so that
//! what is written is what is read: `Config::parse(&c.to_toml(), &c.file)` equals `c`.
//!
//! Invariants of a [`Config`] returned by [`Config::parse`] / [`Config::load`]:
//!
//! - at least one node is defined; node and group names are non-empty, start with a letter or
//!   digit and hold only ASCII letters, digits, `-`, `_` and `.` (so they are safe in file
//!   names, on the command line and in `prefer:NODE`);
//! - every node has an `address` of the form `host:port` (the port filled in from
//!   `[cluster] port` when the file gives none; IPv6 literals in brackets, `[::1]:7373`);
//!   `listen`, when given, is `host:port` too (its port defaults to the port of `address`);
//!   `id`, when given, is 64 lowercase hex digits, and no two nodes share one (an id still
//!   holding the [`ID_PLACEHOLDER_PREFIX`] of an import is refused, saying how to fill it in);
//!   `root` is an absolute, normalised path; `key`, when given, is absolute;
//! - every node named in a group (`nodes`, `replicas`), in `prefer:NODE` or in
//!   `[accounts] nodes` is defined under `[nodes]`; a group has at least one full node, no node
//!   twice, and no node that is both a full node and a replica; `prefer:NODE` names one of the
//!   group's full nodes;
//! - group paths are absolute and normalised (no trailing slash except for `/` itself, no
//!   empty, `.` or `..` components), and a path belongs to exactly one group: no path appears
//!   twice or lies inside another path, in the same group or across groups;
//! - every exclude/include/action pattern and every `xattrs_include`/`xattrs_exclude` pattern
//!   compiles as a gitignore-style glob; `xattrs_include`/`xattrs_exclude` are only written
//!   in a group with `xattrs = true`;
//! - `rescan` and `verify_every` are `None` when disabled (`"0"`), otherwise a non-zero
//!   duration (a group's `verify_every` is resolved: its own, else the cluster's); an action's
//!   `timeout` and `[metrics] stale_after` are non-zero durations; an action's `logfile` is
//!   absolute;
//! - a rate (`bwlimit`) or size (`backup_max_bytes`) of `"0"` is stored as `None` (no limit),
//!   any other as `Some(bytes)`, never `Some(0)`.
//!
//! The keys beyond those of the first release, and their values:
//!
//! | key | value | default |
//! |---|---|---|
//! | `[cluster] bwlimit` | rate per peer link: `"0"` (none), `"20MiB/s"`, `"500KiB/s"`, `"10MB/s"`, `"1GiB/s"` | none |
//! | `[cluster] compress` | `"auto"` (zstd where it pays) or `"off"` | auto |
//! | `[cluster] verify_every` | how often summaries are compared with each peer (SPEC §5.14); `"0"`: off | `"10m"` |
//! | `[groups.NAME] verify_every` | the same for one group | the cluster's |
//! | `[nodes.NAME] bwlimit` | rate for links to that node, overriding `[cluster] bwlimit` (`"0"`: none) | the cluster's |
//! | `[groups.NAME] xattrs_include` | globs of attribute names (`user.*`); when set, only matching attributes are synced | all |
//! | `[groups.NAME] xattrs_exclude` | globs of attribute names never synced | `["security.selinux"]` |
//! | `[groups.NAME] backup_max_bytes` | size bound of the kept versions of the group: `"0"` (none), `"10GiB"`, `"500MB"` | none |
//! | `[[groups.NAME.actions]] timeout` | duration, then the command is killed | `"60s"` |
//! | `[[groups.NAME.actions]] logfile` | absolute path the command's output is appended to | none (the log) |
//! | `[metrics] stale_after` | how long remote changes may wait unapplied before `/health` says 503 | `"10s"` |
//! | `[metrics] listen` | optional when every node has `[nodes.NAME] metrics` | none |
//!
//! Sizes and rates take decimal units (kB, MB, GB, TB: powers of 1000) or binary ones (KiB,
//! MiB, GiB, TiB: powers of 1024); a rate ends in `/s`.
//!
//! Some settings are parsed and checked but not built yet: they are listed in [`UNSUPPORTED`],
//! and [`Config::refuse_unsupported`] rejects a configuration that uses one.

mod check;
mod de;
mod raw;
mod summary;
mod values;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use values::{check_host, check_pattern, normalise_path, valid_name};

/// Every key of the file, by table (`cluster`, `nodes.NAME`, `groups.NAME`,
/// `groups.NAME.actions`, `accounts`, `metrics`): what the manual page must describe.
pub fn keys() -> Vec<(&'static str, Vec<&'static str>)> {
    use de::fields_of;
    use raw::*;
    vec![
        ("cluster", fields_of::<RawCluster>()),
        ("nodes.NAME", fields_of::<RawNode>()),
        ("groups.NAME", fields_of::<RawGroup>()),
        ("groups.NAME.actions", fields_of::<RawAction>()),
        ("accounts", fields_of::<RawAccounts>()),
        ("metrics", fields_of::<RawMetrics>()),
    ]
}
pub use write::Annotations;

/// Where the configuration file is read from unless `-c/--config` or `CLUSTERSYNC_CONFIG`
/// says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/clustersync/clustersync.toml";
/// The port of a node whose address has none, unless `[cluster] port` says otherwise.
pub const DEFAULT_PORT: u16 = 7373;
/// Default of a group's `backup_generations`.
pub const DEFAULT_BACKUP_GENERATIONS: u32 = 3;
/// Default of a group's `rescan`.
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(3600);
/// Default of `verify_every` (cluster and group).
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(600);
/// Default of an action's `timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of `[metrics] stale_after`.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);
/// Default of a group's `xattrs_exclude`.
pub const DEFAULT_XATTRS_EXCLUDE: &[&str] = &["security.selinux"];
/// How a node id that is still to be filled in starts (`id = "FILL-IN-web1"`, as written by
/// `import-csync2`); such a config is refused with a message saying how to get the id.
pub const ID_PLACEHOLDER_PREFIX: &str = "FILL-IN-";

/// The whole configuration, checked. Two configs are equal when their settings are, wherever
/// they are written in the file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path it was loaded from.
    pub file: PathBuf,
    /// `[cluster] port`: the port of nodes whose address has none (default 7373).
    pub port: u16,
    /// `[cluster] bwlimit`: bytes per second sent on each peer link; `None`: no limit.
    pub bwlimit: Option<u64>,
    /// `[cluster] compress`.
    pub compress: Compress,
    /// `[cluster] verify_every`: how often each group's summary is compared with each peer,
    /// unless the group says otherwise; default 10 minutes; `None` when off (`"0"`).
    pub verify_every: Option<Duration>,
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
    /// `bwlimit` of this section: `None` when not written (the cluster's applies),
    /// `Some(None)` for `"0"` (no limit on links to this node), `Some(Some(bytes per second))`.
    /// See [`Config::bwlimit_to`].
    pub bwlimit: Option<Option<u64>>,
}

/// `[cluster] compress`: whether data sent to peers is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compress {
    /// With zstd, where it pays.
    #[default]
    Auto,
    /// Never.
    Off,
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
    /// How long the command may run before it is killed; default 60 s; never zero.
    pub timeout: Duration,
    /// File the command's output is appended to (besides the log); absolute.
    pub logfile: Option<PathBuf>,
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
    /// Bound of the bytes kept as previous versions of this group's paths; `None`: no bound.
    pub backup_max_bytes: Option<u64>,
    /// Default [`Owners::ByName`].
    pub owners: Owners,
    /// Also sync extended attributes and POSIX ACLs; default false.
    pub xattrs: bool,
    /// Globs of extended attribute names; when non-empty, only matching attributes are synced.
    /// Empty unless `xattrs`.
    pub xattrs_include: Vec<String>,
    /// Globs of extended attribute names never synced; default [`DEFAULT_XATTRS_EXCLUDE`].
    pub xattrs_exclude: Vec<String>,
    /// Default [`OnDrift::Revert`].
    pub on_drift: OnDrift,
    /// Whether `on_drift` was written in the file.
    pub on_drift_set: bool,
    /// Watch for changes live; default true.
    pub watch: bool,
    /// Period of the safety-net full rescan; default 1 hour; `None` when disabled (`"0"`).
    pub rescan: Option<Duration>,
    /// How often the group's summary is compared with each peer (SPEC §5.14): the group's
    /// `verify_every`, else `[cluster] verify_every`, else 10 minutes; `None` when off.
    pub verify_every: Option<Duration>,
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
    /// Concurrent changes of one account: newest (default), oldest, prefer:NODE or manual.
    pub conflict: ConflictPolicy,
}

/// The `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `host:port` of the HTTP listener of every node without a `metrics =` of its own;
    /// `None` when every node has one (then `[metrics]` only holds `stale_after`).
    pub listen: Option<String>,
    /// How long remote changes may be known but not applied before `/health` answers 503;
    /// default 10 s; never zero.
    pub stale_after: Duration,
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

/// A setting that is parsed and checked but whose behaviour is not built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// `xattrs = true` in a group, and the `xattrs_include`/`xattrs_exclude` keys.
    Xattrs,
    /// `[[groups.NAME.actions]]`.
    Actions,
    /// `[accounts]`.
    Accounts,
    /// `[metrics]`, and `[nodes.NAME] metrics`.
    Metrics,
    /// A non-zero `bwlimit`, in `[cluster]` or for a node.
    Bwlimit,
    /// A non-zero `backup_max_bytes`.
    BackupMaxBytes,
}

/// The features [`Config::refuse_unsupported`] refuses. When a feature is built, delete its
/// line here.
pub const UNSUPPORTED: &[Feature] = &[];

impl Feature {
    /// Where `config` uses this feature: the dotted keys, each with the words of the
    /// "not supported yet: <what>" message.
    fn uses(self, config: &Config) -> Vec<(String, &'static str)> {
        let mut used = Vec::new();
        match self {
            Feature::Xattrs => {
                for g in config.groups.values() {
                    let key = |k: &str| format!("groups.{}.{k}", g.name);
                    if g.xattrs {
                        used.push((key("xattrs"), "xattrs = true"));
                    }
                    for k in ["xattrs_include", "xattrs_exclude"] {
                        if config.lines.contains_key(&key(k)) {
                            used.push((key(k), k));
                        }
                    }
                }
            }
            Feature::Actions => {
                for g in config.groups.values() {
                    if !g.actions.is_empty() {
                        used.push((format!("groups.{}.actions", g.name), "actions"));
                    }
                }
            }
            Feature::Accounts => {
                if config.accounts.is_some() {
                    used.push(("accounts".to_owned(), "[accounts] (account sync)"));
                }
            }
            Feature::Metrics => {
                if config.metrics.is_some() {
                    used.push(("metrics".to_owned(), "[metrics]"));
                }
                for n in config.nodes.values() {
                    if n.metrics.is_some() {
                        used.push((format!("nodes.{}.metrics", n.name), "metrics (per node)"));
                    }
                }
            }
            Feature::Bwlimit => {
                if config.bwlimit.is_some() {
                    used.push(("cluster.bwlimit".to_owned(), "bwlimit"));
                }
                for n in config.nodes.values() {
                    if matches!(n.bwlimit, Some(Some(_))) {
                        used.push((format!("nodes.{}.bwlimit", n.name), "bwlimit (per node)"));
                    }
                }
            }
            Feature::BackupMaxBytes => {
                for g in config.groups.values() {
                    if g.backup_max_bytes.is_some() {
                        used.push((
                            format!("groups.{}.backup_max_bytes", g.name),
                            "backup_max_bytes",
                        ));
                    }
                }
            }
        }
        used
    }
}

impl Config {
    /// A configuration with no node or group, to be filled in by a program (an import) and
    /// then checked with [`Config::check`]; it does not hold the invariants until then.
    pub fn new(file: impl Into<PathBuf>) -> Config {
        Config {
            file: file.into(),
            port: DEFAULT_PORT,
            bwlimit: None,
            compress: Compress::Auto,
            verify_every: Some(DEFAULT_VERIFY_EVERY),
            nodes: BTreeMap::new(),
            groups: BTreeMap::new(),
            accounts: None,
            metrics: None,
            lines: HashMap::new(),
        }
    }

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
        let src = de::Source::new(text, file);
        let doc = toml::de::DeTable::parse(text).map_err(|e| src.syntax_error(&e))?;
        let raw: raw::RawConfig = src.read(&doc)?;
        check::Checker::new(&src).config(raw)
    }

    /// Checks a configuration built by a program: writes it and reads it back, so it holds
    /// exactly what a file would (errors point at lines of [`Config::to_toml`]'s text).
    pub fn check(&self) -> Result<Config, ConfigError> {
        Config::parse(&self.to_toml(), &self.file)
    }

    /// This configuration as a TOML document that [`Config::parse`] reads back to an equal
    /// configuration. Defaults are left out, except a group's `conflict` and
    /// `backup_generations`, which are always written.
    pub fn to_toml(&self) -> String {
        write::to_toml(self, &Annotations::default())
    }

    /// Like [`Config::to_toml`], with comments and id placeholders added (see
    /// [`Annotations`]).
    pub fn to_toml_annotated(&self, notes: &Annotations) -> String {
        write::to_toml(self, notes)
    }

    /// Refuses the features of [`UNSUPPORTED`]: returns the first use (the earliest in the
    /// file), as [`ConfigError::Invalid`] with the message `not supported yet: <what>`.
    pub fn refuse_unsupported(&self) -> Result<(), ConfigError> {
        let used = UNSUPPORTED.iter().flat_map(|f| f.uses(self));
        match used.min_by_key(|(key, _)| self.line_of(key)) {
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

    /// The send limit of the link to node `peer`, bytes per second: its own `bwlimit` if its
    /// section has one, else `[cluster] bwlimit`; `None` is no limit.
    pub fn bwlimit_to(&self, peer: &str) -> Option<u64> {
        match self.node(peer).and_then(|n| n.bwlimit) {
            Some(own) => own,
            None => self.bwlimit,
        }
    }

    /// A human summary for `check-config`: the groups with their paths, members and policy,
    /// then this node and its peers with their addresses (or every node, without `this_node`).
    pub fn summary(&self, this_node: Option<&str>) -> String {
        summary::summary(self, this_node)
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
            && self.bwlimit == other.bwlimit
            && self.compress == other.compress
            && self.verify_every == other.verify_every
            && self.nodes == other.nodes
            && self.groups == other.groups
            && self.accounts == other.accounts
            && self.metrics == other.metrics
    }
}

impl Eq for Config {}

impl NodeConfig {
    /// A node reached at `address` (`host:port`), with every optional setting left out.
    pub fn new(name: &str, address: &str) -> NodeConfig {
        NodeConfig {
            name: name.to_owned(),
            address: address.to_owned(),
            listen: None,
            id: None,
            root: PathBuf::from("/"),
            key: None,
            metrics: None,
            bwlimit: None,
        }
    }

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
    /// A group with every setting at its default, no member and no path.
    pub fn new(name: &str) -> GroupConfig {
        GroupConfig {
            name: name.to_owned(),
            nodes: Vec::new(),
            replicas: Vec::new(),
            paths: Vec::new(),
            exclude: Vec::new(),
            include: Vec::new(),
            conflict: ConflictPolicy::Newest,
            backup_generations: DEFAULT_BACKUP_GENERATIONS,
            backup_max_bytes: None,
            owners: Owners::ByName,
            xattrs: false,
            xattrs_include: Vec::new(),
            xattrs_exclude: DEFAULT_XATTRS_EXCLUDE
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            on_drift: OnDrift::Revert,
            on_drift_set: false,
            watch: true,
            rescan: Some(DEFAULT_RESCAN),
            verify_every: Some(DEFAULT_VERIFY_EVERY),
            actions: Vec::new(),
        }
    }

    /// Every member: the full nodes, then the replicas.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().chain(&self.replicas).map(String::as_str)
    }

    /// Whether `n` is a member of this group (a full node or a replica).
    pub fn has_node(&self, n: &str) -> bool {
        self.members().any(|m| m == n)
    }
}

impl ActionConfig {
    /// An action running `run` when a path matching `pattern` changed, with the defaults.
    pub fn new(pattern: Vec<String>, run: &str) -> ActionConfig {
        ActionConfig {
            pattern,
            run: run.to_owned(),
            local: false,
            timeout: DEFAULT_ACTION_TIMEOUT,
            logfile: None,
        }
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

impl fmt::Display for Compress {
    /// As written in the file: `auto`, `off`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compress::Auto => "auto",
            Compress::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests;
