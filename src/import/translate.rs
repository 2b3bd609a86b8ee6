//! From a csync2 configuration ([`Csync2Config`]) to a clustersync [`Config`], with a
//! [`Note`] for everything that is not carried over or behaves differently.
//!
//! The mapping, and the csync2 behaviour it rests on (csync2 2.0: `cfgfile_parser.y`,
//! `groups.c`, `action.c`, `update.c`, `prefixsubst.c`, and its documentation):
//!
//! - **Hosts.** Every host of every group carried over becomes a `[nodes.NAME]` (the csync2
//!   host name, lower-cased as csync2 does) with `address = "HOST:7373"`, HOST being the name
//!   after `@` if the host is written `name@interface`, else the name. Node ids cannot be
//!   known: they are written as the placeholder `"FILL-IN-NAME"`
//!   ([`crate::config::ID_PLACEHOLDER_PREFIX`]), which `check-config` refuses with the command
//!   that prints the id, until it is replaced (`sed -i "s/FILL-IN-web1/$(ssh web1 clustersync
//!   id)/"` does it from a script).
//! - **Slaves.** Hosts in parentheses are slaves: csync2 refuses their changes and lets the
//!   other side win their conflicts. They become the group's `replicas` (receive-only). A
//!   group with no other host has nothing to sync from and is not carried over.
//! - **Include and exclude.** csync2 decides with two lists, each last-match-wins: *path
//!   patterns* (starting with `/` or `%prefix%`), matched with fnmatch against the full path
//!   and every directory above it (`FNM_LEADING_DIR`; `*` stops at `/` unless the pattern holds
//!   `**`, which makes every `*` cross `/`), default excluded; and *basename patterns*
//!   (anything else), matched against the file name alone, default included. A file is synced
//!   when both say so. Hence: literal `include` paths become `paths` (normalised, an include
//!   inside another one collapsed into it, an include that covers earlier excludes cancelling
//!   them, as in csync2); a path `exclude` becomes an exclude relative to the group path it
//!   falls in (`exclude /var/www/cache` with path `/var/www` → `/cache`, anchored, which as a
//!   directory excludes everything below, like `FNM_LEADING_DIR`), written with that path in
//!   front when the group has several paths (`/var/www/cache`: it then applies below that path
//!   only, as in csync2, not below the others); a basename `exclude` becomes
//!   a gitignore name pattern (matched at any depth, like csync2's basename match), and a
//!   basename `include` after one becomes its negation (`!name`). Name patterns come first and
//!   path excludes last, so that a path exclude always wins, as in csync2. An `include` with
//!   wildcards becomes its literal leading directory plus an `include` filter, when it is the
//!   group's only kind of path. `compare` patterns serve csync2's compare mode only.
//! - **Prefixes.** `%NAME%` is replaced by the prefix's path when it is the same on every host
//!   of the groups using it. When the paths differ by a leading part (`/srv/a/home` and
//!   `/home`), the common tail becomes the path (`/home`) and each host gets the leading part
//!   as its `root` (`/srv/a`) — only if that root is consistent over every group of the host
//!   and every path of those groups comes from such a prefix (a node's root applies to all of
//!   its paths). Otherwise the path most hosts use is taken and a note says which hosts differ.
//! - **Conflicts.** `auto younger` → `newest`, `older` → `oldest`, `bigger` → `largest`,
//!   `smaller` → `smallest`, `none` or no `auto` (csync2's default) → `manual`. `left` and
//!   `right` let the host further left (right) in the host list win every conflict, which is
//!   `prefer:` the first (last) full host listed. `first` lets whichever host runs csync2 first
//!   win, a race clustersync does not reproduce: it becomes `prefer:` the first full host.
//! - **Actions.** Each `exec` of an `action` becomes one `[[groups.NAME.actions]]` with the
//!   action's `pattern`s (an action without patterns ran for every file of the group: `/**`),
//!   `logfile` (unless `/dev/null`, csync2's default), and `local = true` for `do-local`.
//!   `do-local-only` (run only where the change was made) has no equivalent: `local = true`
//!   plus a note. `%%` (csync2's list of changed files, joined by spaces, as they are on the
//!   host: with its prefix) becomes the paths of `$CLUSTERSYNC_REAL_PATHS` (the changed paths
//!   with the node's `root`, so a node with a root acts on its own files), one argument each:
//!   `printf '%s\n' "$CLUSTERSYNC_REAL_PATHS" | xargs -d '\n' CMD` when `%%` ends a plain
//!   command, else `xargs -d '\n' sh -c 'BEFORE "$@" AFTER' sh`.
//! - **Backups.** `backup-generations N` → `backup_generations = N`; without it, csync2's
//!   default of 3. csync2 keeps backups only with a `backup-directory`; clustersync always
//!   keeps them in its state dir, so the directory is not carried over (noted), and a group
//!   without one gets a note that clustersync will keep versions where csync2 kept none.
//! - **Global settings.** `ignore uid gid;` → `owners = "ignore"` in every group (only one of
//!   them, or `mod`, cannot be said: noted). Per-group `key`s, `nossl`, `database`, `tempdir`,
//!   `lock-timeout`, `no-cygwin-lowercase` and unknown statements have no equivalent (nodes
//!   authenticate with their own key pairs, traffic is always encrypted, state lives in the
//!   state dir): noted.
//! - **Paths in several groups.** csync2 lets a file belong to several groups; clustersync
//!   gives each path one group: a path already in an earlier group is left out of a later one
//!   (noted), and a group left without paths is not carried over.

use super::csync2::{Action, Auto, Csync2Config, Group, Loc, PatternKind};
use super::{ImportError, Imported, Note};
use crate::config::{
    ActionConfig, Annotations, Config, ConflictPolicy, DEFAULT_BACKUP_GENERATIONS,
    DEFAULT_CONFIG_PATH, DEFAULT_PORT, GroupConfig, NodeConfig, Owners, check_host, check_pattern,
    normalise_path, valid_name,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Translates a parsed csync2 configuration.
pub fn translate(src: &Csync2Config) -> Result<Imported, ImportError> {
    let mut t = Translation {
        src,
        notes: Vec::new(),
        prefixes: HashMap::new(),
        roots: HashMap::new(),
    };
    let hosts = t.hosts();
    t.prefixes(&hosts);
    let owners = t.globals();
    let mut config = Config::new(DEFAULT_CONFIG_PATH);
    let mut taken: Vec<(String, String)> = Vec::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut action_notes: Vec<(String, Vec<String>)> = Vec::new();
    for g in &src.groups {
        if let Some((group, notes)) = t.group(g, owners, &hosts, &mut taken, &mut names) {
            action_notes.extend(notes);
            config.groups.insert(group.name.clone(), group);
        }
    }
    if config.groups.is_empty() {
        return Err(ImportError::Empty {
            file: src.file.clone(),
            message: "no group with hosts and include paths could be carried over; nothing to \
                      import"
                .to_owned(),
        });
    }
    // The nodes of the groups carried over, in the order csync2 lists them.
    for g in &src.groups {
        for h in &g.hosts {
            let Some(info) = hosts.get(&h.name) else {
                continue;
            };
            let used = config.groups.values().any(|cg| cg.has_node(&info.name));
            if used && !config.nodes.contains_key(&info.name) {
                let mut node = NodeConfig::new(&info.name, &info.address);
                if let Some(root) = t.roots.get(&info.name) {
                    node.root = root.into();
                }
                config.nodes.insert(info.name.clone(), node);
            }
        }
    }
    for info in hosts.values() {
        if config.nodes.contains_key(&info.name) {
            for (_, loc, text) in &info.notes {
                t.note(loc, Some(format!("nodes.{}", info.name)), text.clone());
            }
        }
    }
    let config = config
        .check()
        .map_err(|source| ImportError::Untranslatable {
            file: src.file.clone(),
            source,
        })?;
    let mut annotations = Annotations {
        header: header(src),
        id_placeholders: true,
        ..Annotations::default()
    };
    let mut sources = vec![src.file.clone()];
    sources.extend(src.included.iter().cloned());
    let order = |file: &std::path::Path| sources.iter().position(|s| s == file).unwrap_or(0);
    t.notes.sort_by_key(|n| (order(&n.file), n.line));
    for n in &t.notes {
        let line = format!("csync2 {}:{}: {}", n.file.display(), n.line, n.text);
        match &n.section {
            Some(s) => {
                for l in wrap(&line) {
                    annotations.note(s, l);
                }
            }
            None => annotations.header.extend(wrap(&line)),
        }
    }
    for (section, lines) in action_notes {
        for l in lines {
            for w in wrap(&l) {
                annotations.note(&section, w);
            }
        }
    }
    Ok(Imported {
        config,
        annotations,
        notes: t.notes,
        sources,
    })
}

fn header(src: &Csync2Config) -> Vec<String> {
    vec![
        format!(
            "clustersync configuration translated from {} by `clustersync import-csync2`.",
            src.file.display()
        ),
        String::new(),
        "Before using it:".to_owned(),
        "1. on each node, run `clustersync --node NAME init` and put the id it prints in place of"
            .to_owned(),
        "   \"FILL-IN-NAME\" below (`clustersync id` prints it again);".to_owned(),
        "2. check each node's address (the csync2 host name, port 7373);".to_owned(),
        "3. put this file at /etc/clustersync/clustersync.toml on every node and run".to_owned(),
        "   `clustersync check-config` there.".to_owned(),
        "Comments starting with \"csync2\" say what was not carried over, or differs, and why."
            .to_owned(),
        String::new(),
    ]
}

/// Splits a comment into lines of at most about 96 characters, at spaces.
fn wrap(text: &str) -> Vec<String> {
    const WIDTH: usize = 96;
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.len() + 1 + word.len() > WIDTH {
            lines.push(std::mem::take(&mut line));
            line.push_str("  ");
        } else if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
}

/// A csync2 host as a clustersync node.
struct HostInfo {
    name: String,
    address: String,
    /// The host name it is reached at, as csync2 wrote it (after `@`, or the name).
    reach: String,
    /// Where it is first listed.
    loc: Loc,
    /// (the other name it is reached at, or empty; where; the note).
    notes: Vec<(String, Loc, String)>,
}

/// How a `%prefix%` is replaced.
#[derive(Debug, Clone)]
enum PrefixMap {
    /// By this path.
    Path(String),
    /// Cannot be: the reason.
    Unresolved(String),
}

struct Translation<'a> {
    src: &'a Csync2Config,
    notes: Vec<Note>,
    prefixes: HashMap<String, PrefixMap>,
    /// Node roots coming from prefixes that differ between hosts.
    roots: HashMap<String, String>,
}

impl Translation<'_> {
    fn note(&mut self, loc: &Loc, section: Option<String>, text: impl Into<String>) {
        self.notes.push(Note {
            file: loc.file.to_path_buf(),
            line: loc.line,
            section,
            text: text.into(),
        });
    }

    /// The nodes, by csync2 host name.
    fn hosts(&mut self) -> BTreeMap<String, HostInfo> {
        let mut hosts: BTreeMap<String, HostInfo> = BTreeMap::new();
        let mut addresses: BTreeMap<String, String> = BTreeMap::new();
        for g in &self.src.groups {
            for h in &g.hosts {
                if let Some(known) = hosts.get_mut(&h.name) {
                    let reach = h.peer.as_deref().unwrap_or(&h.name);
                    let note = format!(
                        "host {} is reached as {reach} in group {}, but as {} where it is first \
                         listed ({}); a clustersync node has one address: {} is used",
                        h.name, g.name, known.reach, known.loc, known.address
                    );
                    if reach != known.reach && !known.notes.iter().any(|n| n.0 == reach) {
                        known.notes.push((reach.to_owned(), h.loc.clone(), note));
                    }
                    continue;
                }
                let mut notes = Vec::new();
                let name = node_name(&h.name);
                let here = |text: String| (String::new(), h.loc.clone(), text);
                if name != h.name {
                    notes.push(here(format!(
                        "host {:?} is named {name:?}: clustersync names hold letters, digits, '-', \
                         '_' and '.', starting with a letter or digit",
                        h.name
                    )));
                }
                let reach = h.peer.clone().unwrap_or_else(|| h.name.clone());
                let host = if check_host(&reach).is_ok() {
                    reach.clone()
                } else {
                    notes.push(here(format!(
                        "{reach:?} is not a host name clustersync can connect to; the address \
                         {name}:{DEFAULT_PORT} is a guess: correct it"
                    )));
                    name.clone()
                };
                let mut port = DEFAULT_PORT;
                let mut address = format!("{host}:{port}");
                while let Some(other) = addresses.get(&address) {
                    let other = other.clone();
                    port += 1;
                    address = format!("{host}:{port}");
                    notes.push(here(format!(
                        "host {name} is reached at the same host as {other} ({host}); clustersync \
                         needs each node at its own address or port, so it is given port {port}: \
                         correct it"
                    )));
                }
                addresses.insert(address.clone(), name.clone());
                hosts.insert(
                    h.name.clone(),
                    HostInfo {
                        name,
                        address,
                        reach,
                        loc: h.loc.clone(),
                        notes,
                    },
                );
            }
        }
        hosts
    }

    /// Decides how each `%prefix%` used by a group is replaced, and the node roots.
    fn prefixes(&mut self, hosts: &BTreeMap<String, HostInfo>) {
        // Which hosts use which prefix, and where it is first used.
        let mut used: BTreeMap<String, (BTreeSet<String>, Loc)> = BTreeMap::new();
        for g in &self.src.groups {
            let texts = g.patterns.iter().map(|p| (p.text.as_str(), &p.loc)).chain(
                g.actions
                    .iter()
                    .flat_map(|a| a.patterns.iter().map(|p| (p.value.as_str(), &p.loc))),
            );
            for (text, loc) in texts {
                if let Some(name) = prefix_name(text) {
                    let entry = used
                        .entry(name.to_owned())
                        .or_insert_with(|| (BTreeSet::new(), loc.clone()));
                    entry.0.extend(g.hosts.iter().map(|h| h.name.clone()));
                }
            }
        }
        // Candidates for roots: prefix -> (common tail, root by host).
        let mut rooted: BTreeMap<String, (String, BTreeMap<String, String>)> = BTreeMap::new();
        let mut values_of: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (name, (users, loc)) in &used {
            let mut values: BTreeMap<String, String> = BTreeMap::new();
            let mut missing = Vec::new();
            for host in users {
                match self.prefix_value(name, host) {
                    Some(v) => {
                        values.insert(host.clone(), v);
                    }
                    None => missing.push(host.clone()),
                }
            }
            if !missing.is_empty() {
                self.note(
                    loc,
                    None,
                    format!(
                        "prefix %{name}% has no entry for host {} (csync2 stops there with \"Prefix \
                         '{name}' is not defined\"); those hosts are left out of the decision \
                         about it",
                        missing.join(", ")
                    ),
                );
            }
            let distinct: BTreeSet<&String> = values.values().collect();
            match distinct.len() {
                0 => {
                    let why = if self.src.prefixes.iter().any(|p| &p.name == name) {
                        format!("prefix %{name}% has no entry for any host of the groups using it")
                    } else {
                        format!("prefix %{name}% is not defined")
                    };
                    self.prefixes
                        .insert(name.clone(), PrefixMap::Unresolved(why));
                }
                1 => {
                    let v = values.values().next().cloned().unwrap_or_default();
                    self.prefixes.insert(name.clone(), PrefixMap::Path(v));
                }
                _ => {
                    let tail = common_tail(values.values());
                    let roots = values
                        .iter()
                        .map(|(h, v)| (h.clone(), strip_tail(v, &tail)))
                        .collect();
                    rooted.insert(name.clone(), (tail, roots));
                }
            }
            values_of.insert(name.clone(), values);
        }
        if rooted.is_empty() {
            return;
        }
        match self.check_roots(&rooted) {
            Ok(roots) => {
                for (name, (tail, _)) in &rooted {
                    let (_, loc) = &used[name];
                    let values = &values_of[name];
                    let shown = values
                        .iter()
                        .map(|(h, v)| format!("{h}: {v}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.note(
                        loc,
                        None,
                        format!(
                            "prefix %{name}% differs between hosts ({shown}); it is written as \
                             {tail} and each node's `root` holds the part before it"
                        ),
                    );
                    self.prefixes
                        .insert(name.clone(), PrefixMap::Path(tail.clone()));
                }
                for (host, root) in roots {
                    if let Some(info) = hosts.get(&host)
                        && root != "/"
                    {
                        self.roots.insert(info.name.clone(), root);
                    }
                }
            }
            Err(why) => {
                for name in rooted.keys() {
                    let (_, loc) = &used[name];
                    let values = &values_of[name];
                    let chosen = majority(values);
                    let on: Vec<&str> = values
                        .iter()
                        .filter(|(_, v)| **v == chosen)
                        .map(|(h, _)| h.as_str())
                        .collect();
                    let others: Vec<String> = values
                        .iter()
                        .filter(|(_, v)| **v != chosen)
                        .map(|(h, v)| format!("{h} ({v})"))
                        .collect();
                    self.note(
                        loc,
                        None,
                        format!(
                            "prefix %{name}% differs between hosts and cannot become a node root \
                             ({why}); its path on {} ({chosen}) is used, while {} use another \
                             directory: make that path the same there, or adjust by hand",
                            on.join(", "),
                            others.join(", ")
                        ),
                    );
                    self.prefixes.insert(name.clone(), PrefixMap::Path(chosen));
                }
            }
        }
    }

    /// The path of prefix `name` on `host`, as csync2 picks it: the first entry whose host
    /// pattern matches (in the last `prefix` block of that name that has one).
    fn prefix_value(&self, name: &str, host: &str) -> Option<String> {
        self.src
            .prefixes
            .iter()
            .rev()
            .filter(|p| p.name == name)
            .find_map(|p| {
                p.entries
                    .iter()
                    .find(|(pattern, _)| fnmatch(pattern, host, false))
                    .map(|(_, path)| path.value.clone())
            })
    }

    /// The node roots implied by the differing prefixes, if they are consistent.
    fn check_roots(
        &self,
        rooted: &BTreeMap<String, (String, BTreeMap<String, String>)>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut roots: BTreeMap<String, (String, &str)> = BTreeMap::new();
        for (name, (_, by_host)) in rooted {
            for (host, root) in by_host {
                match roots.get(host) {
                    Some((other, other_name)) if other != root => {
                        return Err(format!(
                            "on host {host}, %{other_name}% would need root {other} and %{name}% \
                             root {root}"
                        ));
                    }
                    _ => {
                        roots.insert(host.clone(), (root.clone(), name));
                    }
                }
            }
        }
        for g in &self.src.groups {
            for h in &g.hosts {
                let Some((root, _)) = roots.get(&h.name) else {
                    continue;
                };
                if root == "/" {
                    continue;
                }
                for p in &g.patterns {
                    if p.kind != PatternKind::Include {
                        continue;
                    }
                    let ok = prefix_name(&p.text).is_some_and(|n| rooted.contains_key(n));
                    if !ok {
                        return Err(format!(
                            "host {} would get root {root}, which would also move {} of group {}",
                            h.name, p.text, g.name
                        ));
                    }
                }
            }
        }
        Ok(roots.into_iter().map(|(h, (r, _))| (h, r)).collect())
    }

    /// `ignore` and the other top-level statements: the owners mode for every group.
    fn globals(&mut self) -> Owners {
        let mut uid = false;
        let mut gid = false;
        let mut first_ignore: Option<Loc> = None;
        for s in &self.src.globals {
            let what = format!("{} {}", s.keyword, s.args.join(" "));
            let what = what.trim_end();
            let why = match s.keyword.as_str() {
                "ignore" => {
                    for a in &s.args {
                        match a.as_str() {
                            "uid" => uid = true,
                            "gid" => gid = true,
                            _ => {}
                        }
                    }
                    first_ignore.get_or_insert_with(|| s.loc.clone());
                    if s.args.iter().any(|a| a == "mod") {
                        self.note(
                            &s.loc,
                            None,
                            "ignore mod not carried over: clustersync always syncs permission bits"
                                .to_owned(),
                        );
                    }
                    continue;
                }
                "nossl" => "clustersync always encrypts and authenticates traffic between nodes \
                            (Noise, per-node keys); there is no unencrypted mode"
                    .to_owned(),
                "database" => {
                    "clustersync keeps its index in its state dir (--state-dir)".to_owned()
                }
                "tempdir" => "clustersync writes temporary files next to their targets, so that \
                              renames are atomic"
                    .to_owned(),
                "lock-timeout" => "clustersync has no database lock to wait for".to_owned(),
                "no-cygwin-lowercase" => "clustersync runs on Linux only".to_owned(),
                _ => format!(
                    "{:?} is not a csync2 statement clustersync knows (from a csync2 fork?)",
                    s.keyword
                ),
            };
            let shown = if s.block {
                format!("{} {{ ... }}", s.keyword)
            } else {
                format!("{what};")
            };
            self.note(&s.loc, None, format!("{shown} not carried over: {why}"));
        }
        match (uid, gid) {
            (true, true) => Owners::Ignore,
            (false, false) => Owners::ByName,
            (u, _) => {
                if let Some(loc) = first_ignore {
                    let (ignored, kept) = if u {
                        ("uid", "group")
                    } else {
                        ("gid", "owner")
                    };
                    self.note(
                        &loc,
                        None,
                        format!(
                            "ignore {ignored} not carried over: clustersync syncs owner and group \
                             together or not at all (owners = \"ignore\"); the file {kept} would \
                             be ignored too, so both are synced"
                        ),
                    );
                }
                Owners::ByName
            }
        }
    }

    /// One group, or `None` when it cannot be carried over (noted). Also returns the comment
    /// lines of its actions, by section.
    #[allow(clippy::type_complexity)]
    fn group(
        &mut self,
        g: &Group,
        owners: Owners,
        hosts: &BTreeMap<String, HostInfo>,
        taken: &mut Vec<(String, String)>,
        names: &mut BTreeSet<String>,
    ) -> Option<(GroupConfig, Vec<(String, Vec<String>)>)> {
        let mut name = node_name(&g.name);
        while names.contains(&name) {
            name = format!("{name}-2");
        }
        let section = format!("groups.{name}");
        let sec = || Some(section.clone());
        if name != g.name {
            self.note(
                &g.loc,
                sec(),
                format!("group {:?} is named {name:?} (names must be unique and hold letters, digits, '-', '_' and '.')", g.name),
            );
        }
        names.insert(name.clone());
        let mut group = GroupConfig::new(&name);
        group.owners = owners;
        for h in &g.hosts {
            let Some(info) = hosts.get(&h.name) else {
                continue;
            };
            if group.has_node(&info.name) {
                self.note(
                    &h.loc,
                    sec(),
                    format!(
                        "host {} is listed twice in group {}; the first listing counts",
                        h.name, g.name
                    ),
                );
                continue;
            }
            if h.slave {
                group.replicas.push(info.name.clone());
            } else {
                group.nodes.push(info.name.clone());
            }
        }
        if group.nodes.is_empty() {
            let why = if group.replicas.is_empty() {
                "it has no hosts"
            } else {
                "all its hosts are slaves (in parentheses), so no host could change anything"
            };
            self.note(
                &g.loc,
                None,
                format!("group {} not carried over: {why}", g.name),
            );
            return None;
        }

        self.patterns(g, &mut group, &section);
        // A path belongs to one group.
        let mut kept = Vec::new();
        for p in std::mem::take(&mut group.paths) {
            let clash = taken.iter().find(|(q, _)| inside(q, &p) || inside(&p, q));
            match clash {
                Some((q, other)) => {
                    let loc = g.patterns.first().map_or(&g.loc, |p| &p.loc).clone();
                    self.note(
                        &loc,
                        sec(),
                        format!(
                            "path {p} left out of group {name}: it overlaps {q} of group {other}, \
                             and clustersync keeps each path in one group (csync2 allowed a file \
                             in several)"
                        ),
                    );
                }
                None => kept.push(p),
            }
        }
        if kept.is_empty() {
            self.note(
                &g.loc,
                None,
                format!(
                    "group {} not carried over: it has no path left to sync",
                    g.name
                ),
            );
            return None;
        }
        for p in &kept {
            taken.push((p.clone(), name.clone()));
        }
        group.paths = kept;

        group.conflict = match g.auto.as_ref().map(|a| a.value) {
            None | Some(Auto::None) => ConflictPolicy::Manual,
            Some(Auto::Younger) => ConflictPolicy::Newest,
            Some(Auto::Older) => ConflictPolicy::Oldest,
            Some(Auto::Bigger) => ConflictPolicy::Largest,
            Some(Auto::Smaller) => ConflictPolicy::Smallest,
            Some(Auto::Left) => ConflictPolicy::Prefer(group.nodes[0].clone()),
            Some(Auto::Right) => ConflictPolicy::Prefer(group.nodes[group.nodes.len() - 1].clone()),
            Some(Auto::First) => {
                if let Some(a) = &g.auto {
                    self.note(
                        &a.loc,
                        sec(),
                        format!(
                            "auto first: csync2 lets whichever host runs csync2 first win a \
                             conflict; clustersync has no such race, so the first host listed \
                             ({}) is preferred",
                            group.nodes[0]
                        ),
                    );
                }
                ConflictPolicy::Prefer(group.nodes[0].clone())
            }
        };

        group.backup_generations = g
            .backup_generations
            .as_ref()
            .map_or(DEFAULT_BACKUP_GENERATIONS, |b| b.value);
        match &g.backup_directory {
            Some(d) => self.note(
                &d.loc,
                sec(),
                format!(
                    "backup-directory {} not carried over: clustersync keeps previous versions in \
                     its state dir (`clustersync backups PATH` lists them, `restore` puts one back)",
                    d.value
                ),
            ),
            None if group.backup_generations > 0 => self.note(
                &g.loc,
                sec(),
                format!(
                    "csync2 kept no backups for group {} (it has no backup-directory); clustersync \
                     keeps {} previous versions per path (backup_generations = 0 keeps none)",
                    g.name, group.backup_generations
                ),
            ),
            None => {}
        }
        for k in &g.keys {
            self.note(
                &k.loc,
                sec(),
                format!(
                    "key {} not carried over: clustersync authenticates each node by its own key \
                     pair (made by `clustersync init`), not by a key per group",
                    k.value
                ),
            );
        }
        for s in &g.unknown {
            self.note(
                &s.loc,
                sec(),
                format!(
                    "{:?} is not a csync2 group statement clustersync knows; not carried over",
                    s.keyword
                ),
            );
        }
        let mut action_notes = Vec::new();
        for a in &g.actions {
            let first = format!("{section}.actions[{}]", group.actions.len());
            for (action, lines) in self.action(a, &group, &section, &first) {
                let i = group.actions.len();
                action_notes.push((format!("{section}.actions[{i}]"), lines));
                group.actions.push(action);
            }
        }
        Some((group, action_notes))
    }

    /// A `%prefix%...` or plain path with the prefix replaced, or why it cannot be.
    fn resolve(&self, text: &str) -> Result<String, String> {
        let Some(name) = prefix_name(text) else {
            return Ok(text.to_owned());
        };
        let rest = &text[name.len() + 2..];
        match self.prefixes.get(name) {
            Some(PrefixMap::Path(p)) => Ok(if p == "/" && rest.starts_with('/') {
                rest.to_owned()
            } else {
                format!("{p}{rest}")
            }),
            Some(PrefixMap::Unresolved(why)) => Err(why.clone()),
            None => Err(format!("prefix %{name}% is not defined")),
        }
    }

    /// The include/exclude/compare patterns of a group: its paths, excludes and includes.
    fn patterns(&mut self, g: &Group, group: &mut GroupConfig, section: &str) {
        let sec = || Some(section.to_owned());
        let mut paths: Vec<String> = Vec::new();
        // Path excludes still in effect: (absolute pattern, where).
        let mut excludes: Vec<(String, Loc)> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut wildcards: Vec<(String, String, Loc)> = Vec::new();
        for p in &g.patterns {
            if p.kind == PatternKind::Compare {
                self.note(
                    &p.loc,
                    sec(),
                    format!(
                        "compare {} not carried over: it only serves csync2's compare mode (-o)",
                        p.text
                    ),
                );
                continue;
            }
            let include = p.kind == PatternKind::Include;
            let word = if include { "include" } else { "exclude" };
            let is_path = p.text.starts_with('/') || p.text.starts_with('%');
            if !is_path {
                if p.text.contains('/') {
                    self.note(
                        &p.loc,
                        sec(),
                        format!(
                            "{word} {} not carried over: without a leading '/', csync2 matches it \
                             against file names, which hold no '/', so it never matched",
                            p.text
                        ),
                    );
                    continue;
                }
                let pattern = escape_name(&p.text);
                if include {
                    if names.is_empty() {
                        // The default for file names is to include: no effect.
                        continue;
                    }
                    names.push(format!("!{pattern}"));
                } else {
                    names.push(pattern);
                }
                continue;
            }
            let path = match self.resolve(&p.text) {
                Ok(path) => path,
                Err(why) => {
                    self.note(
                        &p.loc,
                        sec(),
                        format!("{word} {} not carried over: {why}", p.text),
                    );
                    continue;
                }
            };
            if include {
                if has_glob(&path) {
                    let (base, rest) = split_glob(&path);
                    wildcards.push((base, rest, p.loc.clone()));
                    continue;
                }
                let path = match normalise_path(&path) {
                    Ok(path) => path,
                    Err(why) => {
                        self.note(
                            &p.loc,
                            sec(),
                            format!("include {} not carried over: {why}", p.text),
                        );
                        continue;
                    }
                };
                // A later include wins over the earlier excludes it covers.
                excludes.retain(|(e, _)| !inside(&path, &literal_prefix(e)));
                if paths.iter().any(|q| inside(q, &path)) {
                    let takes_back = |e: &String| {
                        fnmatch_leading(e, &path) || relative_pattern(e, &path).is_some()
                    };
                    if let Some((e, _)) = excludes.iter().find(|(e, _)| takes_back(e)) {
                        self.note(
                            &p.loc,
                            sec(),
                            format!(
                                "include {} not carried over: it takes back part of what exclude \
                                 {e} left out, which clustersync's excludes cannot express (an \
                                 excluded directory is not looked into); sync it in a group of its \
                                 own if needed",
                                p.text
                            ),
                        );
                    }
                    continue;
                }
                paths.retain(|q| !inside(&path, q));
                paths.push(path);
            } else {
                let before = paths.len();
                paths.retain(|q| !fnmatch_leading(&path, q));
                if paths.len() == before {
                    excludes.push((path, p.loc.clone()));
                }
            }
        }

        if !wildcards.is_empty() {
            let base = wildcards[0].0.clone();
            if paths.is_empty() && wildcards.iter().all(|(b, _, _)| *b == base) {
                paths.push(base);
                group.include = wildcards.iter().map(|(_, rest, _)| rest.clone()).collect();
            } else {
                for (base, rest, loc) in &wildcards {
                    self.note(
                        loc,
                        sec(),
                        format!(
                            "include {base}{rest} not carried over: clustersync paths are \
                             directories or files, not patterns, and the group has other paths; \
                             list what it matches in `paths` by hand"
                        ),
                    );
                }
            }
        }

        let mut path_excludes = Vec::new();
        for (e, loc) in excludes {
            // below each group path it falls in, and there only: with several paths, the
            // exclude is written with its path in front, which anchors it at that path
            let hits: Vec<(&String, String)> = paths
                .iter()
                .filter_map(|p| relative_pattern(&e, p).map(|r| (p, r)))
                .collect();
            for (p, rel) in hits {
                let (rel, exact) = gitignore_stars(&rel);
                if !exact {
                    self.note(
                        &loc,
                        sec(),
                        format!(
                            "exclude {e}: in csync2 a pattern with '**' lets every '*' match '/'; \
                             written as {rel}, where a single '*' stays within one directory"
                        ),
                    );
                }
                if let Err(why) = check_pattern(&rel) {
                    self.note(&loc, sec(), format!("exclude {e} not carried over: {why}"));
                    continue;
                }
                if paths.len() == 1 {
                    path_excludes.push(rel);
                } else if p != "/" {
                    path_excludes.push(format!("{p}{rel}"));
                } else {
                    self.note(
                        &loc,
                        sec(),
                        format!(
                            "exclude {e} is written {rel}, relative to each path of the group: \
                             clustersync applies it under every path of the group, csync2 only \
                             below /"
                        ),
                    );
                    path_excludes.push(rel);
                }
            }
        }
        let mut exclude = Vec::new();
        for n in names {
            match check_pattern(&n) {
                Ok(()) => exclude.push(n),
                Err(why) => self.note(
                    &g.loc,
                    sec(),
                    format!("exclude {n} not carried over: {why}"),
                ),
            }
        }
        exclude.extend(path_excludes);
        group.exclude = exclude;
        group.paths = paths;
        if group.paths.is_empty() && !g.patterns.iter().any(|p| p.kind == PatternKind::Include) {
            self.note(&g.loc, sec(), format!("group {} has no include", g.name));
        }
    }

    /// The clustersync actions of one csync2 action (one per `exec`), each with its comment.
    /// Notes about the action go before its first clustersync action (`first`), or before the
    /// group (`section`) when nothing is carried over.
    fn action(
        &mut self,
        a: &Action,
        group: &GroupConfig,
        section: &str,
        first: &str,
    ) -> Vec<(ActionConfig, Vec<String>)> {
        if a.execs.is_empty() {
            self.note(
                &a.loc,
                Some(section.to_owned()),
                "action without exec not carried over: it runs nothing".to_owned(),
            );
            return Vec::new();
        }
        let sec = || Some(first.to_owned());
        let mut patterns = Vec::new();
        for p in &a.patterns {
            let text = match self.resolve(&p.value) {
                Ok(t) => t,
                Err(why) => {
                    self.note(
                        &p.loc,
                        sec(),
                        format!("action pattern {} not carried over: {why}", p.value),
                    );
                    continue;
                }
            };
            if !text.starts_with('/') {
                self.note(
                    &p.loc,
                    sec(),
                    format!(
                        "action pattern {text}: csync2 matched it against full paths, where a \
                         pattern without a leading '/' never matches; clustersync matches it \
                         against file names at any depth, so this action will run for them"
                    ),
                );
            }
            let (text, exact) = gitignore_stars(&text);
            if !exact {
                self.note(
                    &p.loc,
                    sec(),
                    format!(
                        "action pattern {}: in csync2 a pattern with '**' lets every '*' match \
                         '/'; written as {text}, where a single '*' stays within one directory",
                        p.value
                    ),
                );
            }
            match check_pattern(&text) {
                Ok(()) => patterns.push(text),
                Err(why) => self.note(
                    &p.loc,
                    sec(),
                    format!("action pattern {} not carried over: {why}", p.value),
                ),
            }
        }
        let mut comments_all = Vec::new();
        if patterns.is_empty() {
            if !a.patterns.is_empty() {
                // Its notes say why each pattern was left out; they belong to the group now.
                for n in self
                    .notes
                    .iter_mut()
                    .filter(|n| n.section.as_deref() == Some(first))
                {
                    n.section = Some(section.to_owned());
                }
                self.note(
                    &a.loc,
                    Some(section.to_owned()),
                    "action not carried over: none of its patterns could be".to_owned(),
                );
                return Vec::new();
            }
            patterns.push("/**".to_owned());
            comments_all.push(format!(
                "csync2 {}: the action has no pattern, so it runs for every change in group {}",
                a.loc, group.name
            ));
        }
        if a.do_local_only {
            self.note(
                &a.loc,
                sec(),
                "do-local-only: clustersync has no action that runs only where the change was \
                 made; local = true runs it there and on the receiving nodes too"
                    .to_owned(),
            );
        }
        for s in &a.unknown {
            self.note(&s.loc, sec(), format!("{:?} in an action is not a csync2 statement clustersync knows; not carried over", s.keyword));
        }
        let logfile = match &a.logfile {
            None => None,
            Some(l) if l.value == "/dev/null" => None,
            Some(l) => match normalise_path(&l.value) {
                Ok(p) => Some(p.into()),
                Err(why) => {
                    self.note(
                        &l.loc,
                        sec(),
                        format!("logfile {} not carried over: {why}", l.value),
                    );
                    None
                }
            },
        };
        a.execs
            .iter()
            .map(|e| {
                let run = translate_exec(&e.value);
                let mut comments = comments_all.clone();
                if run != e.value {
                    comments.push(format!("csync2 {}: exec \"{}\"", e.loc, e.value));
                    comments.push(
                        "(%% was csync2's list of changed files; here they come from \
                         $CLUSTERSYNC_REAL_PATHS, one per line, with this node's root)"
                            .to_owned(),
                    );
                }
                let mut action = ActionConfig::new(patterns.clone(), &run);
                action.local = a.do_local;
                action.logfile.clone_from(&logfile);
                (action, comments)
            })
            .collect()
    }
}

/// The name of the `%NAME%` prefix a pattern starts with.
fn prefix_name(text: &str) -> Option<&str> {
    let rest = text.strip_prefix('%')?;
    let end = rest.find('%')?;
    Some(&rest[..end])
}

/// A csync2 host or group name as a clustersync name.
fn node_name(raw: &str) -> String {
    if valid_name(raw) {
        return raw.to_owned();
    }
    let mapped: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name: String = trimmed.chars().take(253).collect();
    if name.is_empty() {
        name = "unnamed".to_owned();
    }
    name
}

/// The value most hosts give a prefix; on a tie, the one of the first host by name.
fn majority(values: &BTreeMap<String, String>) -> String {
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for v in values.values() {
        *counts.entry(v).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    values
        .values()
        .find(|v| counts.get(v) == Some(&best))
        .cloned()
        .unwrap_or_else(|| "/".to_owned())
}

/// The longest run of trailing path components shared by all `paths` (`/` if none).
fn common_tail<'a>(paths: impl Iterator<Item = &'a String>) -> String {
    let split: Vec<Vec<&str>> = paths
        .map(|p| p.split('/').filter(|c| !c.is_empty()).collect())
        .collect();
    let Some(first) = split.first() else {
        return "/".to_owned();
    };
    let shortest = split.iter().map(Vec::len).min().unwrap_or(0);
    let mut n = 0;
    while n < shortest {
        let c = first[first.len() - 1 - n];
        if split.iter().all(|s| s[s.len() - 1 - n] == c) {
            n += 1;
        } else {
            break;
        }
    }
    format!("/{}", first[first.len() - n..].join("/"))
}

/// `path` without its trailing part `tail` (as given by [`common_tail`]); `/` if nothing is left.
fn strip_tail(path: &str, tail: &str) -> String {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let n = tail.split('/').filter(|c| !c.is_empty()).count();
    format!("/{}", comps[..comps.len().saturating_sub(n)].join("/"))
}

/// Whether normalised path `child` is `parent` or lies inside it.
fn inside(parent: &str, child: &str) -> bool {
    parent == "/"
        || child == parent
        || (child.starts_with(parent) && child.as_bytes().get(parent.len()) == Some(&b'/'))
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The leading directories of a pattern that hold no wildcard (`/var/*/x` → `/var`).
fn literal_prefix(pattern: &str) -> String {
    split_glob(pattern).0
}

/// A pattern as its literal leading directories and the rest (`/` + the rest), e.g.
/// `/home/*/public_html` → (`/home`, `/*/public_html`).
fn split_glob(pattern: &str) -> (String, String) {
    let comps: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let n = comps.iter().take_while(|c| !has_glob(c)).count();
    let base = format!("/{}", comps[..n].join("/"));
    let rest = format!("/{}", comps[n..].join("/"));
    (base, rest)
}

/// Exclude pattern `e` (absolute) relative to group path `p`, if it falls inside `p`.
fn relative_pattern(e: &str, p: &str) -> Option<String> {
    let e_comps: Vec<&str> = e.split('/').filter(|c| !c.is_empty()).collect();
    let p_comps: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    if e_comps.len() <= p_comps.len() || (e.contains("**") && !inside(p, &literal_prefix(e))) {
        return None;
    }
    // Each leading component of the pattern must match the path's (wildcards allowed).
    let leading_match = p_comps
        .iter()
        .zip(&e_comps)
        .all(|(pc, ec)| fnmatch(ec, pc, true));
    if !leading_match {
        return None;
    }
    Some(format!("/{}", e_comps[p_comps.len()..].join("/")))
}

/// A csync2 path pattern in gitignore terms, and whether it means the same: with `**`
/// anywhere, csync2 lets every `*` match `/`, gitignore only a `**` that is a whole component.
fn gitignore_stars(pattern: &str) -> (String, bool) {
    if !pattern.contains("**") {
        return (pattern.to_owned(), true);
    }
    let exact = pattern.split('/').all(|c| c == "**" || !c.contains('*'));
    (pattern.to_owned(), exact)
}

/// A csync2 basename pattern as a gitignore pattern: a leading `!` or `#` and trailing
/// spaces would mean something else there.
fn escape_name(p: &str) -> String {
    let mut s = String::new();
    if p.starts_with('!') || p.starts_with('#') {
        s.push('\\');
    }
    let trimmed = p.trim_end_matches(' ');
    s.push_str(trimmed);
    for _ in trimmed.len()..p.len() {
        s.push_str("\\ ");
    }
    s
}

/// fnmatch(3): `*`, `?`, `[...]` (with `!`/`^` negation and ranges) and `\\` escapes; with
/// `pathname` (`FNM_PATHNAME`), wildcards do not match `/`. Linear in the product of the
/// lengths (no backtracking blow-up on patterns with many stars).
pub fn fnmatch(pattern: &str, text: &str, pathname: bool) -> bool {
    let tokens = glob_tokens(pattern);
    let t: Vec<char> = text.chars().collect();
    let one = |c: char| !(pathname && c == '/');
    // dp[j]: tokens[i..] match t[j..], for the current i, computed from the end.
    let mut dp = vec![false; t.len() + 1];
    dp[t.len()] = true;
    for tok in tokens.iter().rev() {
        let mut next = vec![false; t.len() + 1];
        for j in (0..=t.len()).rev() {
            next[j] = match tok {
                GlobToken::Star => dp[j] || (j < t.len() && one(t[j]) && next[j + 1]),
                GlobToken::Any => j < t.len() && one(t[j]) && dp[j + 1],
                GlobToken::Set(negate, ranges) => {
                    j < t.len()
                        && one(t[j])
                        && ranges.iter().any(|&(lo, hi)| lo <= t[j] && t[j] <= hi) != *negate
                        && dp[j + 1]
                }
                GlobToken::Lit(c) => j < t.len() && t[j] == *c && dp[j + 1],
            };
        }
        dp = next;
    }
    dp[0]
}

enum GlobToken {
    Star,
    Any,
    /// Negated, and the ranges of characters (a single character is a range of one).
    Set(bool, Vec<(char, char)>),
    Lit(char),
}

fn glob_tokens(pattern: &str) -> Vec<GlobToken> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                out.push(GlobToken::Star);
                i += 1;
            }
            '?' => {
                out.push(GlobToken::Any);
                i += 1;
            }
            '\\' if i + 1 < p.len() => {
                out.push(GlobToken::Lit(p[i + 1]));
                i += 2;
            }
            '[' => match bracket(&p[i..]) {
                Some((len, set)) => {
                    out.push(set);
                    i += len;
                }
                None => {
                    out.push(GlobToken::Lit('['));
                    i += 1;
                }
            },
            c => {
                out.push(GlobToken::Lit(c));
                i += 1;
            }
        }
    }
    out
}

/// A bracket expression at the start of `p`: its length and its set, or `None` if unclosed.
fn bracket(p: &[char]) -> Option<(usize, GlobToken)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    let start = i;
    loop {
        let c = *p.get(i)?;
        if c == ']' && i > start {
            break;
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            ranges.push((c, p[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    Some((i + 1, GlobToken::Set(negate, ranges)))
}

/// csync2's path match: `pattern` matches `path` or a directory above it (`FNM_LEADING_DIR`),
/// with `*` stopping at `/` unless the pattern holds `**`.
fn fnmatch_leading(pattern: &str, path: &str) -> bool {
    let pathname = !pattern.contains("**");
    if fnmatch(pattern, path, pathname) {
        return true;
    }
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i > 0)
        .any(|(i, _)| fnmatch(pattern, &path[..i], pathname))
}

/// A csync2 `exec` with its first `%%` (the changed files, joined by spaces; csync2 leaves any
/// later `%%` as it is) turned into the paths of `$CLUSTERSYNC_REAL_PATHS` (one per line, with
/// the node's root prefix, where the files are on that machine), passed as one argument each.
pub fn translate_exec(cmd: &str) -> String {
    if !cmd.contains("%%") {
        return cmd.to_owned();
    }
    let feed = "printf '%s\\n' \"$CLUSTERSYNC_REAL_PATHS\" | xargs -d '\\n'";
    // csync2 replaces the first `%%` only.
    let parts: Vec<&str> = cmd.splitn(2, "%%").collect();
    let before = parts[0].trim();
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || " /._-=,:+@".contains(c))
    };
    if parts.len() == 2 && parts[1].trim().is_empty() && plain(before) {
        return format!("{feed} {before}");
    }
    let script = parts.join("\"$@\"");
    format!("{feed} sh -c {} sh", sh_quote(script.trim()))
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::csync2;
    use std::path::Path;

    fn import(text: &str) -> Imported {
        let parsed = match csync2::parse(text, Path::new("/etc/csync2.cfg")) {
            Ok(p) => p,
            Err(e) => panic!("parse error: {e}\n--- input:\n{text}"),
        };
        match translate(&parsed) {
            Ok(i) => {
                assert_round_trips(&i);
                i
            }
            Err(e) => panic!("translation error: {e}\n--- input:\n{text}"),
        }
    }

    /// The config writes and reads back equal; the annotated text does too once ids are in.
    #[track_caller]
    fn assert_round_trips(i: &Imported) {
        let c = &i.config;
        assert_eq!(&Config::parse(&c.to_toml(), &c.file).unwrap(), c);
        let mut text = i.to_toml();
        for (k, name) in c.nodes.keys().enumerate() {
            let id = format!("{:064x}", k + 1);
            text = text.replace(&format!("\"FILL-IN-{name}\""), &format!("\"{id}\""));
        }
        let mut back = match Config::parse(&text, &c.file) {
            Ok(b) => b,
            Err(e) => panic!("{e}\n--- text:\n{text}"),
        };
        for n in back.nodes.values_mut() {
            assert!(n.id.is_some());
            n.id = None;
        }
        assert_eq!(&back, c);
    }

    fn notes(i: &Imported) -> String {
        i.notes.iter().map(|n| format!("{n}\n")).collect()
    }

    #[track_caller]
    fn assert_noted(i: &Imported, line: usize, fragment: &str) {
        assert!(
            i.notes
                .iter()
                .any(|n| n.line == line && n.text.contains(fragment)),
            "no note at line {line} with {fragment:?}:\n{}",
            notes(i)
        );
    }

    const HOSTS: &str = "host a b (c);\n";

    fn group(body: &str) -> String {
        format!("group g {{\n{HOSTS}{body}}}\n")
    }

    #[test]
    fn hosts_become_nodes_and_replicas() {
        let i = import(
            "group g {\n host Web1 web2@web2-sync (web3 web4@web4-int);\n include /srv;\n}\n",
        );
        let c = &i.config;
        assert_eq!(c.nodes["web1"].address, "web1:7373");
        assert_eq!(c.nodes["web2"].address, "web2-sync:7373");
        assert_eq!(c.nodes["web4"].address, "web4-int:7373");
        let g = &c.groups["g"];
        assert_eq!(g.nodes, ["web1", "web2"]);
        assert_eq!(g.replicas, ["web3", "web4"]);
        assert!(c.nodes.values().all(|n| n.id.is_none()));
        assert!(i.to_toml().contains("id = \"FILL-IN-web1\""));
    }

    #[test]
    fn conflict_methods() {
        for (auto, want) in [
            ("", ConflictPolicy::Manual),
            ("auto none;", ConflictPolicy::Manual),
            ("auto younger;", ConflictPolicy::Newest),
            ("auto older;", ConflictPolicy::Oldest),
            ("auto bigger;", ConflictPolicy::Largest),
            ("auto smaller;", ConflictPolicy::Smallest),
            ("auto left;", ConflictPolicy::Prefer("a".into())),
            ("auto right;", ConflictPolicy::Prefer("b".into())),
            ("auto first;", ConflictPolicy::Prefer("a".into())),
        ] {
            let i = import(&group(&format!("include /srv;\n{auto}\n")));
            assert_eq!(i.config.groups["g"].conflict, want, "{auto}");
        }
        let i = import(&group("include /srv;\nauto first;\n"));
        assert_noted(&i, 4, "whichever host runs csync2 first");
    }

    #[test]
    fn include_and_exclude() {
        let i = import(&group(
            "include /var/www/ /var/www/site /etc/nginx;\n\
             exclude /var/www/cache /var/www/*/tmp /var/www/**/.svn;\n\
             exclude *~ .* !bang \"#hash\";\n\
             include keep.me;\n\
             exclude nested/name;\n\
             compare /etc/passwd;\n",
        ));
        let g = &i.config.groups["g"];
        assert_eq!(g.paths, ["/var/www", "/etc/nginx"]);
        assert_eq!(
            g.exclude,
            [
                "*~",
                ".*",
                "\\!bang",
                "\\#hash",
                "!keep.me",
                "/var/www/cache",
                "/var/www/*/tmp",
                "/var/www/**/.svn"
            ]
        );
        assert_noted(&i, 7, "it never matched");
        assert_noted(&i, 8, "compare /etc/passwd not carried over");
        // issue 22 item 11: anchored at /var/www, not applied below /etc/nginx
        let f = crate::local::filter::Filter::new(g).unwrap();
        use crate::local::filter::Want;
        assert_eq!(f.want("/var/www", b"/var/www/site/tmp", true), Want::Skip);
        assert_eq!(
            f.want("/etc/nginx", b"/etc/nginx/site/tmp", true),
            Want::Sync
        );
        assert_eq!(f.want("/etc/nginx", b"/etc/nginx/cache", true), Want::Sync);
    }

    #[test]
    fn csync2_last_match_wins() {
        // A later include of a parent cancels an earlier exclude below it.
        let i = import(&group("include /a/b;\nexclude /a/b/c;\ninclude /a;\n"));
        let g = &i.config.groups["g"];
        assert_eq!(g.paths, ["/a"]);
        assert!(g.exclude.is_empty(), "{:?}", g.exclude);
        // Taking back what an exclude left out cannot be said: noted.
        let i = import(&group(
            "include /var;\nexclude /var/*/cache;\ninclude /var/www;\n",
        ));
        assert_eq!(i.config.groups["g"].exclude, ["/*/cache"]);
        assert_noted(
            &i,
            5,
            "takes back part of what exclude /var/*/cache left out",
        );
        let i = import(&group("include /a;\nexclude /a/b;\ninclude /a/b/c;\n"));
        let g = &i.config.groups["g"];
        assert_eq!(
            (g.paths.as_slice(), g.exclude.as_slice()),
            (&["/a".to_owned()][..], &["/b".to_owned()][..])
        );
        assert_noted(&i, 5, "takes back part of what exclude /a/b left out");
        // An exclude of a whole path removes it; an include after it brings it back.
        let i = import(&group("include /a /b;\nexclude /b;\n"));
        assert_eq!(i.config.groups["g"].paths, ["/a"]);
        let i = import(&group("include /a /b;\nexclude /*;\ninclude /b;\n"));
        assert_eq!(i.config.groups["g"].paths, ["/b"]);
        // A basename include without an exclude before it changes nothing.
        let i = import(&group("include /a;\ninclude *.php;\n"));
        assert!(i.config.groups["g"].exclude.is_empty());
        // An exclude outside every path had no effect.
        let i = import(&group("include /a;\nexclude /b/c;\n"));
        assert!(i.config.groups["g"].exclude.is_empty());
    }

    #[test]
    fn stars_under_double_star() {
        let i = import(&group("include /a;\nexclude /a/**/x*.log;\n"));
        assert_eq!(i.config.groups["g"].exclude, ["/**/x*.log"]);
        assert_noted(&i, 4, "every '*' match '/'");
    }

    #[test]
    fn wildcard_includes() {
        let i = import(&group("include /home/*/public_html /home/*/.ssh;\n"));
        let g = &i.config.groups["g"];
        assert_eq!(g.paths, ["/home"]);
        assert_eq!(g.include, ["/*/public_html", "/*/.ssh"]);
        let i = import(&group("include /etc/x /opt/*.yml;\n"));
        let g = &i.config.groups["g"];
        assert_eq!(g.paths, ["/etc/x"]);
        assert!(g.include.is_empty());
        assert_noted(&i, 3, "include /opt/*.yml not carried over");
    }

    #[test]
    fn prefixes_same_everywhere_are_substituted() {
        let i = import(
            "group g { host a b; include %web%/htdocs; exclude %web%/htdocs/tmp; \
             action { pattern %web%/htdocs/*.conf; exec x; } }\n\
             prefix web { on a: /srv/www/; on *: /srv/www; }\n",
        );
        let g = &i.config.groups["g"];
        assert_eq!(g.paths, ["/srv/www/htdocs"]);
        assert_eq!(g.exclude, ["/tmp"]);
        assert_eq!(g.actions[0].pattern, ["/srv/www/htdocs/*.conf"]);
        assert!(i.config.nodes.values().all(|n| n.root == Path::new("/")));
    }

    #[test]
    fn prefixes_that_differ_by_a_leading_part_become_roots() {
        let i = import(
            "group g { host a b c; include %home%; }\n\
             prefix home { on a: /srv/a/home; on b: /home; on c*: /data/c/home; }\n",
        );
        let c = &i.config;
        assert_eq!(c.groups["g"].paths, ["/home"]);
        assert_eq!(c.nodes["a"].root, Path::new("/srv/a"));
        assert_eq!(c.nodes["b"].root, Path::new("/"));
        assert_eq!(c.nodes["c"].root, Path::new("/data/c"));
        assert_noted(&i, 1, "each node's `root` holds the part before it");
    }

    #[test]
    fn prefixes_that_cannot_become_roots_take_the_most_common_path() {
        let i = import(
            "group g { host a b c; include /etc/x %home%; }\n\
             prefix home { on a: /export/users; on *: /home; }\n",
        );
        let c = &i.config;
        assert_eq!(c.groups["g"].paths, ["/etc/x", "/home"]);
        assert!(c.nodes.values().all(|n| n.root == Path::new("/")));
        assert_noted(
            &i,
            1,
            "its path on b, c (/home) is used, while a (/export/users)",
        );
        // Undefined prefix: the path is left out, and so the group if nothing remains.
        let i = import("group g { host a; include /x %nope%/y; }\n");
        assert_eq!(i.config.groups["g"].paths, ["/x"]);
        assert_noted(&i, 1, "prefix %nope% is not defined");
        let parsed =
            csync2::parse("group g { host a; include %nope%; }\n", Path::new("/c.cfg")).unwrap();
        assert!(matches!(translate(&parsed), Err(ImportError::Empty { .. })));
    }

    #[test]
    fn actions() {
        let i = import(&group(
            "include /etc;\n\
             action {\n pattern /etc/nginx/*;\n exec \"nginx -t && nginx -s reload\" \"touch /run/x %%\";\n logfile /var/log/a.log;\n do-local;\n}\n\
             action {\n exec \"/usr/bin/notify %% --now\";\n logfile /dev/null;\n do-local-only;\n}\n\
             action {\n pattern /etc/x;\n}\n\
             action {\n pattern x;\n exec y;\n logfile rel.log;\n}\n",
        ));
        let a = &i.config.groups["g"].actions;
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].pattern, ["/etc/nginx/*"]);
        assert_eq!(a[0].run, "nginx -t && nginx -s reload");
        assert!(a[0].local);
        assert_eq!(a[0].logfile.as_deref(), Some(Path::new("/var/log/a.log")));
        assert_eq!(
            a[1].run,
            "printf '%s\\n' \"$CLUSTERSYNC_REAL_PATHS\" | xargs -d '\\n' touch /run/x"
        );
        assert_eq!(a[2].pattern, ["/**"]);
        assert_eq!(
            a[2].run,
            "printf '%s\\n' \"$CLUSTERSYNC_REAL_PATHS\" | xargs -d '\\n' sh -c '/usr/bin/notify \"$@\" --now' sh"
        );
        assert!(a[2].local && a[2].logfile.is_none());
        assert_eq!(a[3].pattern, ["x"]);
        assert!(a[3].logfile.is_none());
        assert_noted(&i, 10, "do-local-only");
        assert_noted(&i, 15, "action without exec not carried over");
        assert_noted(&i, 19, "never matches");
        assert_noted(&i, 21, "logfile rel.log not carried over");
        let text = i.to_toml();
        assert!(
            text.contains("# csync2 /etc/csync2.cfg:6: exec \"touch /run/x %%\""),
            "{text}"
        );
        assert!(
            text.contains("# csync2 /etc/csync2.cfg:10: do-local-only: clustersync has no action")
                && text.find("do-local-only: clustersync").unwrap()
                    < text
                        .find("[[groups.g.actions]]\npattern = [\"/**\"]")
                        .unwrap()
                && text.find("do-local-only: clustersync").unwrap()
                    > text.find("nginx -s reload").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn exec_translation() {
        assert_eq!(
            translate_exec("systemctl reload nginx"),
            "systemctl reload nginx"
        );
        assert_eq!(
            translate_exec("/usr/bin/x %%"),
            "printf '%s\\n' \"$CLUSTERSYNC_REAL_PATHS\" | xargs -d '\\n' /usr/bin/x"
        );
        assert_eq!(
            translate_exec("cd /srv && make %% 'a' %%"),
            "printf '%s\\n' \"$CLUSTERSYNC_REAL_PATHS\" | xargs -d '\\n' sh -c 'cd /srv && make \"$@\" '\\''a'\\'' %%' sh"
        );
    }

    #[test]
    fn globals() {
        let i = import(&format!(
            "nossl * *;\nignore uid gid mod;\ndatabase /x.db;\ntempdir /t;\nlock-timeout 5;\nsslcert /c.pem;\n{}",
            group("include /a;\n")
        ));
        assert_eq!(i.config.groups["g"].owners, Owners::Ignore);
        for (line, what) in [
            (1, "nossl * *; not carried over"),
            (2, "ignore mod not carried over"),
            (3, "database /x.db; not carried over"),
            (4, "tempdir /t; not carried over"),
            (5, "lock-timeout 5; not carried over"),
            (6, "\"sslcert\" is not a csync2 statement"),
        ] {
            assert_noted(&i, line, what);
        }
        let i = import(&format!("ignore uid;\n{}", group("include /a;\n")));
        assert_eq!(i.config.groups["g"].owners, Owners::ByName);
        assert_noted(&i, 1, "ignore uid not carried over");
    }

    #[test]
    fn group_level_notes_and_backups() {
        let i = import(&group(
            "key /etc/k;\ninclude /a;\nbackup-directory /var/backups/csync2;\nbackup-generations 7;\nchecksum sha1;\n",
        ));
        let g = &i.config.groups["g"];
        assert_eq!(g.backup_generations, 7);
        assert_noted(&i, 3, "key /etc/k not carried over");
        assert_noted(
            &i,
            5,
            "backup-directory /var/backups/csync2 not carried over",
        );
        assert_noted(&i, 7, "\"checksum\" is not a csync2 group statement");
        let i = import(&group("include /a;\n"));
        assert_eq!(i.config.groups["g"].backup_generations, 3);
        assert_noted(&i, 1, "csync2 kept no backups for group g");
        let text = i.to_toml();
        assert!(
            text.contains("# csync2 /etc/csync2.cfg:1: csync2 kept no backups"),
            "{text}"
        );
    }

    #[test]
    fn paths_in_several_groups() {
        let i = import(
            "group one { host a b; include /etc; }\n\
             group two { host a c; include /etc/nginx /srv; }\n\
             group three { host b; include /etc/hosts; }\n\
             group four { include /z; }\n",
        );
        let c = &i.config;
        assert_eq!(c.groups["one"].paths, ["/etc"]);
        assert_eq!(c.groups["two"].paths, ["/srv"]);
        assert!(!c.groups.contains_key("three"));
        assert_noted(
            &i,
            2,
            "path /etc/nginx left out of group two: it overlaps /etc of group one",
        );
        assert_noted(&i, 3, "group three not carried over: it has no path left");
        assert_noted(&i, 4, "group four not carried over: it has no hosts");
        let i = import("group s { host (a) (b); include /x; }\ngroup t { host c; include /y; }\n");
        assert!(!i.config.groups.contains_key("s"));
        assert!(!i.config.nodes.contains_key("a"));
        assert_noted(&i, 1, "all its hosts are slaves");
    }

    #[test]
    fn names_and_addresses() {
        let i = import(
            "group \"my group\" { host a@shared b@shared \"c_d\" a; include /x; }\ngroup \"my-group\" { host a; include /y; }\n",
        );
        let c = &i.config;
        assert!(c.groups.contains_key("my-group") && c.groups.contains_key("my-group-2"));
        assert_eq!(c.nodes["a"].address, "shared:7373");
        assert_eq!(c.nodes["b"].address, "shared:7374");
        assert_eq!(c.groups["my-group"].nodes, ["a", "b", "c_d"]);
        assert_noted(&i, 1, "group \"my group\" is named \"my-group\"");
        assert_noted(&i, 1, "given port 7374");
        assert_noted(&i, 1, "host a is listed twice in group my group");
        assert_noted(
            &i,
            1,
            "host a is reached as a in group my group, but as shared",
        );
    }

    #[test]
    fn fnmatch_as_csync2_uses_it() {
        for (p, t, pathname, want) in [
            ("host[12]", "host1", false, true),
            ("host[12]", "host3", false, false),
            ("host[!12]", "host3", false, true),
            ("*", "anything.example.com", false, true),
            ("web?", "web10", false, false),
            ("[a-c]x", "bx", false, true),
            ("a\\*", "a*", false, true),
            ("a\\*", "ab", false, false),
            ("[unclosed", "[unclosed", false, true),
            ("/a/*", "/a/b/c", true, false),
            ("/a/*", "/a/b/c", false, true),
            ("/a/*/c", "/a/b/c", true, true),
        ] {
            assert_eq!(fnmatch(p, t, pathname), want, "{p} {t} {pathname}");
        }
        assert!(fnmatch_leading("/a/b", "/a/b/c/d"));
        assert!(fnmatch_leading("/a/*", "/a/b/c"));
        assert!(!fnmatch_leading("/a/b", "/a/bc"));
        assert!(fnmatch_leading("/**/x", "/a/b/x/y"));
        // Many stars do not blow up.
        let long = "a".repeat(200);
        assert!(!fnmatch(&format!("{}b", "*a".repeat(30)), &long, false));
        assert!(fnmatch(&"*a".repeat(30), &long, true));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            common_tail(["/srv/a/home".to_owned(), "/home".to_owned()].iter()),
            "/home"
        );
        assert_eq!(
            common_tail(["/t/1".to_owned(), "/t/2".to_owned()].iter()),
            "/"
        );
        assert_eq!(strip_tail("/srv/a/home", "/home"), "/srv/a");
        assert_eq!(strip_tail("/home", "/home"), "/");
        assert_eq!(strip_tail("/t/1", "/"), "/t/1");
        assert_eq!(
            split_glob("/home/*/x"),
            ("/home".to_owned(), "/*/x".to_owned())
        );
        assert_eq!(
            relative_pattern("/var/*/cache", "/var/www"),
            Some("/cache".to_owned())
        );
        assert_eq!(
            relative_pattern("/var/www/x", "/var/www"),
            Some("/x".to_owned())
        );
        assert_eq!(relative_pattern("/var/www", "/var/www"), None);
        assert_eq!(relative_pattern("/etc/x", "/var/www"), None);
        assert_eq!(escape_name("a  "), "a\\ \\ ");
        assert_eq!(node_name("-Web 1"), "Web-1");
        assert_eq!(node_name("***"), "unnamed");
        assert_eq!(
            wrap(&"word ".repeat(40)).len(),
            3,
            "{:?}",
            wrap(&"word ".repeat(40))
        );
    }
}
