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
            conflict: ConflictPolicy::Newest,
        })
    );
    assert_eq!(
        c.metrics,
        Some(MetricsConfig {
            listen: Some("127.0.0.1:9373".into()),
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
    match c.refuse_unsupported() {
        Ok(()) => assert!(
            UNSUPPORTED.is_empty(),
            "the SPEC example uses unsupported features"
        ),
        Err(ConfigError::Invalid { message, .. }) => {
            assert!(message.starts_with("not supported yet: "), "{message}");
        }
        Err(e) => panic!("{e}"),
    }
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
    let text =
        with_nodes("[groups.www]\nnodes = [\"web1\"]\npaths = [\"/a\"]\nconflcit = \"newest\"\n");
    let (line, key, message) = invalid(&text);
    assert_eq!((line, key.as_str()), (10, "groups.www.conflcit"));
    assert_eq!(
        message,
        "unknown key \"conflcit\" in [groups.www] (did you mean \"conflict\"?); valid keys: nodes, \
         replicas, paths, exclude, include, conflict, backup_generations, owners, xattrs, \
         on_drift, watch, rescan, actions, xattrs_include, xattrs_exclude, backup_max_bytes, \
         verify_every"
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
        &with_nodes("[groups.www]\nnodes = [\"web1\"]\nreplicas = [\"web7\"]\npaths = [\"/a\"]\n"),
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
        &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = [\n  \"/a\",\n  \"var/www\",\n]\n"),
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
            conflict: ConflictPolicy::Newest,
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
    assert_eq!(c.metrics.unwrap().listen.as_deref(), Some("[::1]:9373"));
    assert_invalid(
        &format!("{NODES}[metrics]\n"),
        7,
        "metrics.listen",
        "needs \"listen\"",
    );
    // issue 22 item 9: not needed when every node has its own address; the summary of a node
    // names that node's address
    let own = NODES
        .replace(
            "[nodes.web1]\n",
            "[nodes.web1]\nmetrics = \"127.0.0.1:9001\"\n",
        )
        .replace(
            "[nodes.web2]\n",
            "[nodes.web2]\nmetrics = \"127.0.0.1:9002\"\n",
        )
        .replace(
            "[nodes.web3]\n",
            "[nodes.web3]\nmetrics = \"127.0.0.1:9003\"\n",
        );
    let c = parse(&format!("{own}[metrics]\nstale_after = \"30s\"\n"));
    let m = c.metrics.clone().unwrap();
    assert_eq!((m.listen, m.stale_after), (None, Duration::from_secs(30)));
    let sum = c.summary(Some("web2"));
    assert!(
        sum.contains("metrics:   127.0.0.1:9002 ([nodes.web2] metrics; stale after 30s)"),
        "{sum}"
    );
    let c = parse(&format!("{own}[metrics]\nlisten = \"127.0.0.1:9373\"\n"));
    assert!(
        c.summary(Some("web1"))
            .contains("metrics:   127.0.0.1:9001 ([nodes.web1] metrics")
    );
    // a node without one still needs [metrics] listen, and the message names it
    let one = NODES.replace(
        "[nodes.web1]\n",
        "[nodes.web1]\nmetrics = \"127.0.0.1:9001\"\n",
    );
    let (_, key, message) = invalid(&format!("{one}[metrics]\nstale_after = \"30s\"\n"));
    assert_eq!(key, "metrics.listen");
    assert!(message.contains("web2, web3 have none"), "{message}");
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
            Feature::Xattrs,
        ),
        (
            format!("{head}[[groups.g.actions]]\npattern = [\"*\"]\nrun = \"x\"\n"),
            10,
            "groups.g.actions",
            "actions",
            Feature::Actions,
        ),
        (
            "[accounts]\nusers = [\"a\"]\n".to_owned(),
            7,
            "accounts",
            "[accounts] (account sync)",
            Feature::Accounts,
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:9\"\n".to_owned(),
            7,
            "metrics",
            "[metrics]",
            Feature::Metrics,
        ),
    ];
    for (rest, want_line, want_key, what, feature) in cases {
        let c = parse(&with_nodes(&rest));
        if !UNSUPPORTED.contains(&feature) {
            assert!(c.refuse_unsupported().is_ok(), "{want_key} is built now");
            continue;
        }
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
    if UNSUPPORTED.contains(&Feature::Metrics) {
        let Err(ConfigError::Invalid { line, key, .. }) = parse(text).refuse_unsupported() else {
            panic!("node metrics should be refused");
        };
        assert_eq!((line, key.as_str()), (3, "nodes.a.metrics"));
    } else {
        assert!(parse(text).refuse_unsupported().is_ok());
    }
    // Supported settings written explicitly are fine.
    let c = parse(&with_nodes(&format!(
        "{head}xattrs = false\nconflict = \"prefer:web1\"\nowners = \"numeric\"\nrescan = \"0\"\nwatch = false\nexclude = [\"*.tmp\"]\ninclude = [\"*\"]\nbackup_generations = 9\n"
    )));
    assert!(c.refuse_unsupported().is_ok());
}

#[test]
fn refuse_reports_the_earliest_in_the_file() {
    if !(UNSUPPORTED.contains(&Feature::Accounts) && UNSUPPORTED.contains(&Feature::Bwlimit)) {
        return;
    }
    let text = format!("[cluster]\nbwlimit = \"1MiB/s\"\n{NODES}[accounts]\nusers = [\"x\"]\n");
    let Err(ConfigError::Invalid { line, key, .. }) = parse(&text).refuse_unsupported() else {
        panic!("should be refused");
    };
    assert_eq!((line, key.as_str()), (2, "cluster.bwlimit"));
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
        shown
            .starts_with("/etc/clustersync/clustersync.toml:2: cluster.prot: unknown key \"prot\""),
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
    let dir = std::env::temp_dir().join(format!("clustersync-config-test-{}", std::process::id()));
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

// ---------------------------------------------------------------------------------------------
// The keys added with the serde model, writing, and the data-driven refusal.

#[test]
fn fields_of_the_serde_types_are_the_valid_keys() {
    assert_eq!(
        de::fields_of::<raw::RawConfig>(),
        ["cluster", "nodes", "groups", "accounts", "metrics"]
    );
    assert_eq!(
        de::fields_of::<raw::RawCluster>(),
        ["port", "bwlimit", "compress", "verify_every"]
    );
    assert_eq!(
        de::fields_of::<raw::RawAction>(),
        ["pattern", "run", "local", "timeout", "logfile"]
    );
    assert_eq!(
        de::fields_of::<raw::RawMetrics>(),
        ["listen", "stale_after"]
    );
}

#[test]
fn cluster_bwlimit_and_compress() {
    let c = parse(&format!(
        "[cluster]\nbwlimit = \"20MiB/s\"\ncompress = \"off\"\n{NODES}[nodes.web4]\naddress = \"10.0.0.4\"\nbwlimit = \"0\"\n[nodes.web5]\naddress = \"10.0.0.5\"\nbwlimit = \"500KiB/s\"\n"
    ));
    assert_eq!(c.bwlimit, Some(20 << 20));
    assert_eq!(c.compress, Compress::Off);
    assert_eq!(c.node("web1").unwrap().bwlimit, None);
    assert_eq!(c.node("web4").unwrap().bwlimit, Some(None));
    assert_eq!(c.node("web5").unwrap().bwlimit, Some(Some(500 << 10)));
    assert_eq!(c.bwlimit_to("web1"), Some(20 << 20));
    assert_eq!(c.bwlimit_to("web4"), None);
    assert_eq!(c.bwlimit_to("web5"), Some(500 << 10));
    let d = parse(NODES);
    assert_eq!((d.bwlimit, d.compress), (None, Compress::Auto));
    for (raw, want) in [
        ("\"0\"", None),
        ("0", None),
        ("\"10MB/s\"", Some(10_000_000)),
        ("\"1GiB/s\"", Some(1 << 30)),
    ] {
        let c = parse(&format!("[cluster]\nbwlimit = {raw}\n{NODES}"));
        assert_eq!(c.bwlimit, want, "{raw}");
    }
    assert_invalid(
        &format!("[cluster]\nbwlimit = \"20MiB\"\n{NODES}"),
        2,
        "cluster.bwlimit",
        "bad rate \"20MiB\": a rate is a size per second",
    );
    assert_invalid(
        &format!("[cluster]\nbwlimit = \"20Mb/s\"\n{NODES}"),
        2,
        "cluster.bwlimit",
        "bits",
    );
    assert_invalid(
        &format!("[cluster]\nbwlimit = true\n{NODES}"),
        2,
        "cluster.bwlimit",
        "expected a rate such as \"20MiB/s\" (or \"0\" for no limit), found true",
    );
    assert_invalid(
        &format!("[cluster]\ncompress = \"zstd\"\n{NODES}"),
        2,
        "cluster.compress",
        "unknown compress mode \"zstd\"; valid: auto, off",
    );
    assert_invalid(
        "[nodes.a]\naddress = \"h\"\nbwlimit = \"fast\"\n",
        3,
        "nodes.a.bwlimit",
        "bad rate",
    );
    assert_invalid(
        &format!("[cluster]\nbwlimt = \"1MiB/s\"\n{NODES}"),
        2,
        "cluster.bwlimt",
        "did you mean \"bwlimit\"",
    );
}

#[test]
fn xattr_lists() {
    let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
    let c = parse(&with_nodes(&format!(
        "{head}xattrs = true\nxattrs_include = [\"user.*\"]\n"
    )));
    let g = &c.groups["g"];
    assert_eq!(g.xattrs_include, ["user.*"]);
    assert_eq!(g.xattrs_exclude, ["security.selinux"]);
    let c = parse(&with_nodes(&format!(
        "{head}xattrs = true\nxattrs_exclude = []\n"
    )));
    assert!(c.groups["g"].xattrs_exclude.is_empty());
    let c = parse(&with_nodes(head));
    assert_eq!(c.groups["g"].xattrs_exclude, DEFAULT_XATTRS_EXCLUDE);
    assert!(c.groups["g"].xattrs_include.is_empty());
    // Only meaningful with xattrs = true: the first such key is named.
    assert_invalid(
        &with_nodes(&format!(
            "{head}xattrs_exclude = [\"security.*\"]\nxattrs_include = [\"user.*\"]\n"
        )),
        10,
        "groups.g.xattrs_exclude",
        "xattrs_exclude only applies with xattrs = true",
    );
    assert_invalid(
        &with_nodes(&format!(
            "{head}xattrs = false\nxattrs_include = [\"user.*\"]\n"
        )),
        11,
        "groups.g.xattrs_include",
        "set xattrs = true in [groups.g]",
    );
    assert_invalid(
        &with_nodes(&format!(
            "{head}xattrs = true\nxattrs_include = [\"user.[\"]\n"
        )),
        11,
        "groups.g.xattrs_include",
        "bad pattern \"user.[\"",
    );
    assert_invalid(
        &with_nodes(&format!(
            "{head}xattrs = true\nxattrs_include = \"user.*\"\n"
        )),
        11,
        "groups.g.xattrs_include",
        "expected an array of strings",
    );
}

#[test]
fn backup_max_bytes() {
    let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
    let one = |line: &str| with_nodes(&format!("{head}{line}\n"));
    assert_eq!(parse(&one("")).groups["g"].backup_max_bytes, None);
    for (raw, want) in [
        ("\"0\"", None),
        ("0", None),
        ("\"10GiB\"", Some(10 << 30)),
        ("\"500MB\"", Some(500_000_000)),
        ("4096", Some(4096)),
    ] {
        assert_eq!(
            parse(&one(&format!("backup_max_bytes = {raw}"))).groups["g"].backup_max_bytes,
            want,
            "{raw}"
        );
    }
    assert_invalid(
        &one("backup_max_bytes = \"lots\""),
        10,
        "groups.g.backup_max_bytes",
        "bad size \"lots\"",
    );
    assert_invalid(
        &one("backup_max_bytes = -1"),
        10,
        "groups.g.backup_max_bytes",
        "out of range",
    );
    assert_invalid(
        &one("backup_max_bytes = [1]"),
        10,
        "groups.g.backup_max_bytes",
        "expected a size such as \"10GiB\" or \"500MB\" (or \"0\" for no limit), found an array",
    );
}

#[test]
fn action_timeout_and_logfile() {
    let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/etc\"]\n[[groups.g.actions]]\npattern = [\"*\"]\nrun = \"x\"\n";
    let c = parse(&with_nodes(head));
    let a = &c.groups["g"].actions[0];
    assert_eq!(a.timeout, Duration::from_secs(60));
    assert_eq!(a.logfile, None);
    let c = parse(&with_nodes(&format!(
        "{head}timeout = \"5m\"\nlogfile = \"/var/log/reload.log\"\n"
    )));
    let a = &c.groups["g"].actions[0];
    assert_eq!(a.timeout, Duration::from_secs(300));
    assert_eq!(a.logfile.as_deref(), Some(Path::new("/var/log/reload.log")));
    assert_invalid(
        &with_nodes(&format!("{head}timeout = \"0s\"\n")),
        13,
        "groups.g.actions[0].timeout",
        "more than 0",
    );
    assert_invalid(
        &with_nodes(&format!("{head}timeout = 60\n")),
        13,
        "groups.g.actions[0].timeout",
        "expected a duration string such as \"60s\", found the number 60",
    );
    assert_invalid(
        &with_nodes(&format!("{head}logfile = \"reload.log\"\n")),
        13,
        "groups.g.actions[0].logfile",
        "bad logfile path \"reload.log\": not an absolute path",
    );
    assert_invalid(
        &with_nodes(&format!("{head}logfle = \"/x\"\n")),
        13,
        "groups.g.actions[0].logfle",
        "did you mean \"logfile\"",
    );
}

#[test]
fn metrics_stale_after() {
    let c = parse(&format!(
        "{NODES}[metrics]\nlisten = \"127.0.0.1:9373\"\nstale_after = \"30s\"\n"
    ));
    assert_eq!(c.metrics.unwrap().stale_after, Duration::from_secs(30));
    assert_invalid(
        &format!("{NODES}[metrics]\nlisten = \"127.0.0.1:9373\"\nstale_after = \"0\"\n"),
        9,
        "metrics.stale_after",
        "bad duration \"0\"",
    );
    assert_invalid(
        &format!("{NODES}[metrics]\nlisten = \"127.0.0.1:9373\"\nstale_after = \"soon\"\n"),
        9,
        "metrics.stale_after",
        "bad duration \"soon\"",
    );
}

#[test]
fn id_placeholder_says_what_to_do() {
    assert_invalid(
        "[nodes.web1]\naddress = \"h\"\nid = \"FILL-IN-web1\"\n",
        3,
        "nodes.web1.id",
        "the id of node \"web1\" is not filled in yet (\"FILL-IN-web1\"): run `clustersync --node web1 init` on web1",
    );
}

#[test]
fn type_errors_in_arrays_and_tables() {
    // An element of the wrong type is reported at its own line.
    assert_invalid(
        &with_nodes("[groups.www]\nnodes = [\"web1\",\n 2]\npaths = [\"/a\"]\n"),
        9,
        "groups.www.nodes",
        "expected a string, found the number 2 in the array",
    );
    assert_invalid(
        &format!("groups = 3\n{NODES}"),
        1,
        "groups",
        "expected a table ([groups]), found the number 3",
    );
    assert_invalid(
        &with_nodes("[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\nwatch = 1979-05-27\n"),
        10,
        "groups.g.watch",
        "found the date 1979-05-27",
    );
    assert_invalid(
        &format!("[cluster]\nport = 99999999999999999999999\n{NODES}"),
        2,
        "cluster.port",
        "99999999999999999999999 is out of range (0 to 65535)",
    );
}

#[test]
fn refuse_unsupported_new_features() {
    let head = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
    let cases = [
        (
            format!("{head}backup_max_bytes = \"1GiB\"\n"),
            10,
            "groups.g.backup_max_bytes",
            "backup_max_bytes",
            Feature::BackupMaxBytes,
        ),
        (
            format!("{head}xattrs_include = [\"user.*\"]\nxattrs = true\n"),
            10,
            "groups.g.xattrs_include",
            "xattrs_include",
            Feature::Xattrs,
        ),
        (
            "[cluster]\nbwlimit = \"1MiB/s\"\n".to_owned(),
            2,
            "cluster.bwlimit",
            "bwlimit",
            Feature::Bwlimit,
        ),
    ];
    for (text, want_line, want_key, what, feature) in cases {
        let text = if text.starts_with("[cluster]") {
            format!("{text}{NODES}")
        } else {
            with_nodes(&text)
        };
        if !UNSUPPORTED.contains(&feature) {
            assert!(
                parse(&text).refuse_unsupported().is_ok(),
                "{want_key} is built now"
            );
            continue;
        }
        let Err(ConfigError::Invalid {
            line, key, message, ..
        }) = parse(&text).refuse_unsupported()
        else {
            panic!("{want_key} should be refused");
        };
        assert_eq!((line, key.as_str()), (want_line, want_key));
        assert_eq!(message, format!("not supported yet: {what}"));
    }
    let text = format!("{NODES}bwlimit = \"2MiB/s\"\n");
    if UNSUPPORTED.contains(&Feature::Bwlimit) {
        let Err(ConfigError::Invalid { line, key, .. }) = parse(&text).refuse_unsupported() else {
            panic!("node bwlimit should be refused");
        };
        assert_eq!((line, key.as_str()), (7, "nodes.web3.bwlimit"));
    }
    // Zero limits and compress are supported.
    let c = parse(&format!(
        "[cluster]\nbwlimit = \"0\"\ncompress = \"off\"\n{NODES}bwlimit = \"0\"\n{head}backup_max_bytes = \"0\"\n"
    ));
    assert!(c.refuse_unsupported().is_ok());
    // Every feature in UNSUPPORTED is exercised by one of the cases above or the older tests.
    assert!(UNSUPPORTED.len() <= 6);
}

// ---------------------------------------------------------------------------------------------
// Writing.

#[track_caller]
fn assert_round_trip(c: &Config) {
    let text = c.to_toml();
    let back = match Config::parse(&text, &c.file) {
        Ok(b) => b,
        Err(e) => panic!("written config does not parse: {e}\n--- written:\n{text}"),
    };
    assert_eq!(&back, c, "--- written:\n{text}");
    // Writing is stable: what was read back writes the same text.
    assert_eq!(back.to_toml(), text);
}

#[test]
fn spec_example_round_trips() {
    let c = parse(&spec_example());
    assert_round_trip(&c);
    let text = c.to_toml();
    assert!(text.contains("[nodes.web1]\n"), "{text}");
    assert!(text.contains("[[groups.www.actions]]\n"), "{text}");
    assert!(!text.contains("[nodes]\n"), "{text}");
}

#[test]
fn every_setting_round_trips() {
    let text = format!(
        "[cluster]\nport = 7000\nbwlimit = \"1.5MiB/s\"\ncompress = \"off\"\n\
         [nodes.\"web1.example.com\"]\naddress = \"[::1]\"\nlisten = \"[::]:7100\"\nid = \"{ID1}\"\nroot = \"/srv/one\"\nkey = \"/etc/k\"\nmetrics = \"127.0.0.1:9000\"\nbwlimit = \"0\"\n\
         [nodes.b]\naddress = \"b\"\nbwlimit = \"10MB/s\"\n\
         [groups.g]\nnodes = [\"b\"]\nreplicas = [\"web1.example.com\"]\npaths = [\"/a\", \"/b/c\"]\nexclude = [\"*.tmp\", \"!keep.tmp\"]\ninclude = [\"*.php\"]\nconflict = \"prefer:b\"\nbackup_generations = 0\nbackup_max_bytes = \"3GiB\"\nowners = \"numeric\"\nxattrs = true\nxattrs_include = [\"user.*\"]\nxattrs_exclude = []\non_drift = \"keep\"\nwatch = false\nrescan = \"0\"\n\
         [[groups.g.actions]]\npattern = [\"/a/**\"]\nrun = \"printf '%s\\\\n' \\\"$CLUSTERSYNC_PATHS\\\" | xargs -d '\\\\n' touch\"\nlocal = true\ntimeout = \"1m 30s\"\nlogfile = \"/var/log/a.log\"\n\
         [[groups.g.actions]]\npattern = [\"*\"]\nrun = \"true\"\n\
         [groups.h]\nnodes = [\"b\"]\npaths = [\"/h\"]\nrescan = \"15m\"\nxattrs = true\n\
         [accounts]\nnodes = [\"b\"]\nusers = [\"niden\"]\nuid_range = [0, 4294967295]\npasswords = false\ncreate_home = false\n\
         [metrics]\nlisten = \"127.0.0.1:9373\"\nstale_after = \"500ms\"\n"
    );
    let c = parse(&text);
    assert_eq!(
        c.groups["g"].actions[0].run,
        "printf '%s\\n' \"$CLUSTERSYNC_PATHS\" | xargs -d '\\n' touch"
    );
    assert_round_trip(&c);
    assert_round_trip(&parse(NODES));
}

#[test]
fn annotations_add_comments_and_placeholders() {
    let c = parse(&with_nodes(
        "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n[[groups.g.actions]]\npattern = [\"*\"]\nrun = \"x\"\n",
    ));
    let mut notes = Annotations {
        header: vec!["made by a test".into(), String::new(), "second line".into()],
        id_placeholders: true,
        ..Annotations::default()
    };
    notes.note("groups.g", "about g");
    notes.note("groups.g.actions[0]", "about the action\nover two lines");
    notes.note("nodes.web2", "about web2");
    let text = c.to_toml_annotated(&notes);
    assert!(
        text.starts_with("# made by a test\n#\n# second line\n\n"),
        "{text}"
    );
    assert!(text.contains("# about g\n[groups.g]\n"), "{text}");
    assert!(
        text.contains("# about the action\n# over two lines\n[[groups.g.actions]]\n"),
        "{text}"
    );
    assert!(text.contains("# about web2\n[nodes.web2]\n"), "{text}");
    assert!(text.contains("id = \"FILL-IN-web3\"\n"), "{text}");
    // The placeholders are refused, naming the first node.
    let (line, key, message) = invalid(&text);
    assert_eq!(key, "nodes.web1.id");
    assert_eq!(
        line,
        text[..text.find("FILL-IN-web1").unwrap()]
            .matches('\n')
            .count()
            + 1
    );
    assert!(message.contains("not filled in yet"), "{message}");
    // With the ids filled in, it is the same config.
    let filled = text
        .replace("FILL-IN-web1", &"1".repeat(64))
        .replace("FILL-IN-web2", &"2".repeat(64))
        .replace("FILL-IN-web3", &"3".repeat(64));
    let mut back = parse(&filled);
    for n in back.nodes.values_mut() {
        n.id = None;
    }
    assert_eq!(back, c);
}

#[test]
fn check_validates_a_built_config() {
    let mut c = Config::new("/etc/cs.toml");
    c.nodes
        .insert("a".into(), NodeConfig::new("a", "10.0.0.1:7373"));
    let mut g = GroupConfig::new("g");
    g.nodes.push("a".into());
    g.paths.push("/srv".into());
    g.actions
        .push(ActionConfig::new(vec!["/srv/**".into()], "true"));
    c.groups.insert("g".into(), g);
    assert_eq!(c.check().unwrap(), c);
    c.groups.get_mut("g").unwrap().nodes.push("b".into());
    let Err(ConfigError::Invalid { key, message, .. }) = c.check() else {
        panic!("b is not defined");
    };
    assert_eq!(key, "groups.g.nodes");
    assert!(message.contains("\"b\" is listed in groups.g.nodes but not defined"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9._-]{0,6}"
    }

    fn pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*.tmp".to_owned()),
            Just("cache/".to_owned()),
            Just("!keep.tmp".to_owned()),
            Just("/x/**".to_owned()),
            "[a-z]{1,5}",
            "[a-z]{1,3}/[a-z]{1,3}",
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        (1u64..10_000_000).prop_map(Duration::from_millis)
    }

    fn limit() -> impl Strategy<Value = Option<u64>> {
        prop_oneof![Just(None), (1u64..u64::MAX / 2).prop_map(Some)]
    }

    prop_compose! {
        fn node(name: String, i: usize)(
            listen in proptest::option::of(Just(format!("10.1.0.{i}:8000"))),
            id in proptest::option::of("[0-9a-f]{64}"),
            root in prop_oneof![Just("/".to_owned()), "/[a-z]{1,5}(/[a-z]{1,5})?"],
            metrics in proptest::option::of(Just("127.0.0.1:9100".to_owned())),
            bwlimit in proptest::option::of(limit()),
        ) -> NodeConfig {
            NodeConfig {
                name: name.clone(),
                address: format!("10.0.0.{i}:7373"),
                listen,
                // Ids must differ between nodes: make them so.
                id: id.map(|id| format!("{:02x}{}", i, &id[2..])),
                root: PathBuf::from(root),
                key: None,
                metrics,
                bwlimit,
            }
        }
    }

    prop_compose! {
        fn action()(
            pattern in proptest::collection::vec(pattern(), 1..3),
            run in "[a-z $'\"\\\\%|]{1,20}",
            local in any::<bool>(),
            timeout in duration(),
            logfile in proptest::option::of("/var/log/[a-z]{1,5}"),
        ) -> ActionConfig {
            ActionConfig {
                pattern,
                run: format!("x{run}"),
                local,
                timeout,
                logfile: logfile.map(PathBuf::from),
            }
        }
    }

    prop_compose! {
        fn settings()(
            exclude in proptest::collection::vec(pattern(), 0..3),
            include in proptest::collection::vec(pattern(), 0..2),
            conflict in 0usize..6,
            backup_generations in 0u32..100,
            backup_max_bytes in limit(),
            owners in prop_oneof![Just(Owners::ByName), Just(Owners::Numeric), Just(Owners::Ignore)],
            xattrs in any::<bool>(),
            xattrs_include in proptest::collection::vec("user\\.[a-z*]{1,4}", 0..2),
            xattrs_exclude in proptest::option::of(proptest::collection::vec("security\\.[a-z*]{1,4}", 0..2)),
            on_drift in proptest::option::of(prop_oneof![Just(OnDrift::Revert), Just(OnDrift::Keep)]),
            watch in any::<bool>(),
            rescan in proptest::option::of(duration()),
            actions in proptest::collection::vec(action(), 0..3),
        ) -> GroupConfig {
            let mut g = GroupConfig::new("x");
            g.exclude = exclude;
            g.include = include;
            g.conflict = match conflict {
                0 => ConflictPolicy::Newest,
                1 => ConflictPolicy::Oldest,
                2 => ConflictPolicy::Largest,
                3 => ConflictPolicy::Smallest,
                4 => ConflictPolicy::Manual,
                _ => ConflictPolicy::Prefer(String::new()),
            };
            g.backup_generations = backup_generations;
            g.backup_max_bytes = backup_max_bytes;
            g.owners = owners;
            g.xattrs = xattrs;
            if xattrs {
                g.xattrs_include = xattrs_include;
                if let Some(x) = xattrs_exclude {
                    g.xattrs_exclude = x;
                }
            }
            g.on_drift_set = on_drift.is_some();
            g.on_drift = on_drift.unwrap_or(OnDrift::Revert);
            g.watch = watch;
            g.rescan = rescan;
            g.actions = actions;
            g
        }
    }

    /// A valid config: 1-4 nodes, 0-3 groups over disjoint paths.
    fn config() -> impl Strategy<Value = Config> {
        (
            proptest::collection::btree_set(name(), 1..5),
            1u16..u16::MAX,
            limit(),
            any::<bool>(),
        )
            .prop_flat_map(|(names, port, bwlimit, compress_off)| {
                let names: Vec<String> = names.into_iter().collect();
                let nodes: Vec<_> = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| node(n.clone(), i + 1))
                    .collect();
                let n = names.len();
                let groups = proptest::collection::vec(
                    (
                        settings(),
                        proptest::collection::vec(any::<bool>(), n),
                        0..n,
                    ),
                    0..4,
                );
                (
                    nodes,
                    groups,
                    proptest::option::of((
                        proptest::collection::vec(any::<bool>(), n),
                        0u32..5000,
                        0u32..5000,
                        any::<bool>(),
                        any::<bool>(),
                    )),
                    proptest::option::of((duration(), 1u16..u16::MAX)),
                    Just((names, port, bwlimit, compress_off)),
                )
            })
            .prop_map(
                |(nodes, groups, accounts, metrics, (names, port, bwlimit, compress_off))| {
                    let mut c = Config::new("/etc/cs.toml");
                    c.port = port;
                    c.bwlimit = bwlimit;
                    c.compress = if compress_off {
                        Compress::Off
                    } else {
                        Compress::Auto
                    };
                    for n in nodes {
                        c.nodes.insert(n.name.clone(), n);
                    }
                    for (i, (mut g, members, full_one)) in groups.into_iter().enumerate() {
                        g.name = format!("g{i}");
                        // The node at `full_one` is always a full member; the others are full
                        // members or replicas by `members`.
                        for (j, name) in names.iter().enumerate() {
                            if j == full_one || members[j] {
                                g.nodes.push(name.clone());
                            } else if j % 2 == 0 {
                                g.replicas.push(name.clone());
                            }
                        }
                        if let ConflictPolicy::Prefer(_) = g.conflict {
                            g.conflict = ConflictPolicy::Prefer(g.nodes[0].clone());
                        }
                        g.paths = vec![format!("/srv/g{i}"), format!("/etc/g{i}.conf")];
                        c.groups.insert(g.name.clone(), g);
                    }
                    c.accounts = accounts.map(|(members, lo, span, passwords, create_home)| {
                        AccountsConfig {
                            nodes: members.iter().any(|m| *m).then(|| {
                                names
                                    .iter()
                                    .zip(&members)
                                    .filter(|(_, m)| **m)
                                    .map(|(n, _)| n.clone())
                                    .collect()
                            }),
                            users: vec!["niden".into()],
                            uid_range: Some((lo, lo + span)),
                            passwords,
                            create_home,
                            conflict: ConflictPolicy::Newest,
                        }
                    });
                    c.metrics = metrics.map(|(stale_after, port)| MetricsConfig {
                        listen: Some(format!("127.0.0.1:{port}")),
                        stale_after,
                    });
                    c
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn written_configs_read_back_equal(c in config()) {
            let text = c.to_toml();
            let back = Config::parse(&text, &c.file);
            prop_assert!(back.is_ok(), "{:?}\n--- written:\n{}", back.err(), text);
            prop_assert_eq!(back.ok(), Some(c));
        }
    }
}

/// `verify_every` (SPEC §3, §5.14): 10 minutes by default, `[cluster]` for every group, a
/// group's own overrides it, "0" turns comparisons off; a bad value names file, line and key;
/// writing keeps what was set where.
#[test]
fn verify_every_cluster_group_and_off() {
    let g = "[groups.g]\nnodes = [\"web1\"]\npaths = [\"/a\"]\n";
    let h = "[groups.h]\nnodes = [\"web1\"]\npaths = [\"/b\"]\nverify_every = \"30s\"\n";
    let c = parse(&with_nodes(&format!("{g}{h}")));
    assert_eq!(c.verify_every, Some(Duration::from_secs(600)));
    assert_eq!(c.groups["g"].verify_every, Some(Duration::from_secs(600)));
    assert_eq!(c.groups["h"].verify_every, Some(Duration::from_secs(30)));
    let text = format!(
        "[cluster]\nverify_every = \"0\"\n{}",
        with_nodes(&format!("{g}{h}"))
    );
    let c = parse(&text);
    assert_eq!(c.verify_every, None);
    assert_eq!(c.groups["g"].verify_every, None, "the cluster's off");
    assert_eq!(c.groups["h"].verify_every, Some(Duration::from_secs(30)));
    let back = Config::parse(&c.to_toml(), Path::new("/etc/cs.toml")).unwrap();
    assert_eq!(back, c);
    let text = format!("[cluster]\nverify_every = \"1h\"\n{}", with_nodes(g));
    let off = format!("{text}verify_every = 0\n");
    assert_eq!(parse(&off).groups["g"].verify_every, None);
    assert_eq!(
        parse(&text).groups["g"].verify_every,
        Some(Duration::from_secs(3600))
    );
    let (_, key, msg) = invalid(&with_nodes(&format!("{g}verify_every = \"often\"\n")));
    assert_eq!(key, "groups.g.verify_every");
    assert!(msg.contains("bad duration \"often\""), "{msg}");
    let (line, key, _) = invalid(&format!(
        "[cluster]\nverify_every = true\n{}",
        with_nodes(g)
    ));
    assert_eq!((line, key.as_str()), (2, "cluster.verify_every"));
}
