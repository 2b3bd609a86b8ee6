use super::values::{closest, edit_distance};
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
            timeout: DEFAULT_ACTION_TIMEOUT,
            logfile: None,
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
            listen: "127.0.0.1:9373".into(),
            stale_after: DEFAULT_STALE_AFTER,
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
         on_drift, watch, rescan, actions, xattrs_include, xattrs_exclude, backup_max_bytes"
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
    let group_keys = de::fields_of::<raw::RawGroup>();
    #[allow(non_snake_case)]
    let GROUP_KEYS = group_keys.as_slice();
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
