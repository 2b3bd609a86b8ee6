//! `clustersync import-csync2` on real csync2 configurations (`tests/fixtures/csync2`): the
//! binary prints a TOML that, once each node's id (made by `clustersync init`) is filled in,
//! passes `clustersync check-config`, and reads back to the same configuration when written
//! again. A csync2 file it cannot parse is refused with its file and line, exit status 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clustersync::config::{Config, ConfigError, Feature, UNSUPPORTED};

const BIN: &str = env!("CARGO_BIN_EXE_clustersync");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/csync2")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CLUSTERSYNC_CONFIG")
        .env_remove("CLUSTERSYNC_NODE")
        .env_remove("CLUSTERSYNC_STATE_DIR")
        .env("CLUSTERSYNC_LOG", "warn")
        .output()
        .expect("run clustersync")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// stdout and stderr of a successful `import-csync2`.
fn import(name: &str) -> (String, String) {
    let file = fixture(name);
    let out = run(&["import-csync2", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "import-csync2 {name} failed: {}",
        text(&out.stderr)
    );
    (text(&out.stdout), text(&out.stderr))
}

/// The node names of the `id = "FILL-IN-NAME"` placeholders, in the order written.
fn placeholders(toml: &str) -> Vec<String> {
    toml.lines()
        .filter_map(|l| l.strip_prefix("id = \"FILL-IN-"))
        .map(|rest| rest.trim_end_matches('"').to_owned())
        .collect()
}

/// A cluster of state dirs, one per node, each with the key `init` made.
struct Nodes {
    dir: tempfile::TempDir,
    ids: BTreeMap<String, String>,
}

impl Nodes {
    fn init(names: &[String]) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = BTreeMap::new();
        for name in names {
            let state = dir.path().join(format!("state-{name}"));
            let state = state.to_str().unwrap();
            let out = run(&["--node", name, "--state-dir", state, "init"]);
            assert!(out.status.success(), "init {name}: {}", text(&out.stderr));
            let out = run(&["--node", name, "--state-dir", state, "id"]);
            assert!(out.status.success(), "id {name}: {}", text(&out.stderr));
            let id = text(&out.stdout).trim().to_owned();
            assert_eq!(id.len(), 64, "{id}");
            ids.insert(name.clone(), id);
        }
        Nodes { dir, ids }
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("state-{name}"))
    }

    /// The TOML with every placeholder replaced by the node's id.
    fn fill_in(&self, toml: &str) -> String {
        let mut filled = toml.to_owned();
        for (name, id) in &self.ids {
            filled = filled.replace(&format!("\"FILL-IN-{name}\""), &format!("\"{id}\""));
        }
        filled
    }
}

/// Gives node `name` the root `root` in the TOML text (replacing one the import wrote), so
/// that the paths of its groups can exist under a temp dir.
fn with_root(toml: &str, name: &str, root: &Path) -> String {
    let headers = [format!("[nodes.{name}]"), format!("[nodes.\"{name}\"]")];
    let mut out = Vec::new();
    let mut in_section = false;
    for line in toml.lines() {
        if line.starts_with('[') {
            in_section = headers.iter().any(|h| h == line);
            out.push(line.to_owned());
            if in_section {
                out.push(format!("root = {:?}", root.to_str().unwrap()));
            }
            continue;
        }
        if in_section && line.starts_with("root = ") {
            continue;
        }
        out.push(line.to_owned());
    }
    out.join("\n") + "\n"
}

/// Imports `fixture`, fills in ids made by `init`, and runs `check-config` as node `node`:
/// it succeeds, or (while actions are in `config::UNSUPPORTED`) refuses exactly the first
/// action with "not supported yet: actions". Returns the configuration checked.
fn check_config_after_import(name: &str, node: &str) -> Config {
    let (toml, report) = import(name);
    assert!(report.contains("carried over"), "{report}");
    let names = placeholders(&toml);
    assert!(names.iter().any(|n| n == node), "{node} not in {names:?}");
    let nodes = Nodes::init(&names);
    let filled = nodes.fill_in(&toml);
    assert!(!filled.contains("id = \"FILL-IN-"), "{filled}");

    // The paths of this node's groups, or their parents, exist under its root (check-config
    // checks that, as the daemon does before starting).
    let root = nodes.dir.path().join(format!("root-{node}"));
    let filled = with_root(&filled, node, &root);
    let file = nodes.dir.path().join("clustersync.toml");
    std::fs::write(&file, &filled).unwrap();
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => panic!("the filled-in import does not parse: {e}\n--- config:\n{filled}"),
    };
    assert_eq!(config.node(node).unwrap().root, root);
    for g in config.groups_of(node) {
        for p in &g.paths {
            let at = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        }
    }

    // Written again, it reads back the same.
    let again = Config::parse(&config.to_toml(), &file).unwrap();
    assert_eq!(again, config);

    let state = nodes.state(node);
    let out = run(&[
        "check-config",
        "-c",
        file.to_str().unwrap(),
        "--node",
        node,
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    match config.refuse_unsupported() {
        Ok(()) => {
            assert!(
                out.status.success(),
                "check-config refused the import of {name}: {stderr}\n--- config:\n{filled}"
            );
            assert!(stdout.contains("config OK"), "{stdout}");
        }
        Err(e) => {
            // The import writes no other feature that is not built yet.
            assert!(UNSUPPORTED.contains(&Feature::Actions), "{e}");
            let ConfigError::Invalid { key, message, .. } = &e else {
                panic!("{e}");
            };
            assert_eq!(message, "not supported yet: actions", "{e}");
            assert!(key.ends_with(".actions"), "{key}");
            assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
            assert!(stderr.contains(&e.to_string()), "{stderr}\nwanted: {e}");
        }
    }
    config
}

#[test]
fn debian_example_config_passes_check_config() {
    let c = check_config_after_import("debian-example.cfg", "host4");
    let g = &c.groups["mygroup"];
    assert_eq!(g.nodes, ["host1", "host2", "host4"]);
    assert_eq!(g.replicas, ["host3"]);
    assert_eq!(g.paths, ["/etc/apache", "/export/users/bob"]);
    // csync2 excluded bob's temp only, not /etc/apache/temp: anchored at its path
    assert_eq!(g.exclude, ["*~", ".*", "/export/users/bob/temp"]);
    assert_eq!(g.conflict.to_string(), "manual");
    assert_eq!(g.backup_generations, 3);
    assert_eq!(g.actions.len(), 1);
    let a = &g.actions[0];
    assert_eq!(
        a.pattern,
        ["/etc/apache/httpd.conf", "/etc/apache/sites-available/*"]
    );
    assert_eq!(a.run, "/usr/sbin/apache2ctl graceful");
    assert!(a.local);
    assert_eq!(
        a.logfile.as_deref(),
        Some(Path::new("/var/log/csync2_action.log"))
    );
    assert_eq!(c.node("host4").unwrap().address, "host4-eth2:7373");
}

#[test]
fn web_cluster_config_passes_check_config() {
    let c = check_config_after_import("web-cluster.cfg", "web1");
    assert_eq!(c.groups["web"].replicas, ["web3"]);
    assert_eq!(c.groups["web"].conflict.to_string(), "newest");
    assert_eq!(c.groups["php"].conflict.to_string(), "prefer:web1");
    // The receive-only node too.
    check_config_after_import("web-cluster.cfg", "web3");
}

#[test]
fn instances_with_prefixes_become_node_roots() {
    let (toml, _) = import("instances.cfg");
    assert!(toml.contains("root = \"/tmp/csync2-tests/2\""), "{toml}");
    assert!(toml.contains("paths = [\"/\"]"), "{toml}");
    let c = check_config_after_import("instances.cfg", "2.csync2.test");
    assert_eq!(c.groups["demo"].exclude, ["/e"]);
}

#[test]
fn multi_file_config_with_includes_passes_check_config() {
    let (toml, report) = import("multi-site.cfg");
    // Comments are wrapped: continuation lines start with "#   ".
    let toml = toml.replace("\n#   ", " ");
    // Everything not carried over is both commented and reported.
    for what in [
        "ssl_cert",
        "key /etc/csync2/etc.key not carried over",
        "compare /etc/passwd not carried over",
        "do-local-only",
        "prefix %webroot% differs between hosts",
    ] {
        assert!(toml.contains(what), "TOML lacks {what:?}:\n{toml}");
        assert!(report.contains(what), "report lacks {what:?}:\n{report}");
    }
    assert!(report.contains("(and 2 files it includes)"), "{report}");
    let c = check_config_after_import("multi-site.cfg", "node3");
    assert_eq!(c.groups["www"].replicas, ["node3"]);
    assert_eq!(c.groups["etc"].owners.to_string(), "ignore");
    assert_eq!(c.groups["group_1"].include, ["/*.yml"]);
    assert!(
        c.groups["www"].actions[0]
            .run
            .contains("\"$CLUSTERSYNC_REAL_PATHS\""),
        "{:?}",
        c.groups["www"].actions
    );
}

#[test]
fn placeholders_are_refused_until_filled_in() {
    let (toml, _) = import("web-cluster.cfg");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clustersync.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = run(&[
        "check-config",
        "-c",
        file.to_str().unwrap(),
        "--node",
        "web1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nodes.web1.id: the id of node \"web1\" is not filled in yet"),
        "{stderr}"
    );
    assert!(stderr.contains("clustersync --node web1 init"), "{stderr}");
}

#[test]
fn a_file_csync2_cannot_parse_exits_2_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("csync2.cfg");
    std::fs::write(&file, "group g\n{\n\thost a b\n\tinclude /etc;\n}\n").unwrap();
    let out = run(&["import-csync2", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:4: expected a host name or ';'",
            file.display()
        )),
        "{stderr}"
    );

    let out = run(&["import-csync2", "/nonexistent/csync2.cfg"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/csync2.cfg"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_says_what_it_does() {
    let out = run(&["import-csync2", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for want in [
        "csync2.cfg",
        "stdout",
        "FILL-IN-NAME",
        "stderr",
        "/etc/csync2.cfg",
    ] {
        assert!(help.contains(want), "help lacks {want:?}:\n{help}");
    }
}
