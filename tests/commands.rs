//! The command line contract of SPEC §2–§4: init/id, check-config errors with file, line and
//! key (exit 2), `sync` with and without a daemon and its exit codes, `status --json` fields,
//! clean shutdown on SIGTERM.

mod common;
use common::*;
use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn init_creates_a_private_key_once_and_id_prints_it() {
    let d = tempfile::tempdir().unwrap();
    let sd = d.path().join("state");
    let sds = sd.to_str().unwrap();
    let out = run(&["init", "--node", "web9", "--state-dir", sds]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[nodes.web9]"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sd.join("node.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let key = std::fs::read(sd.join("node.key")).unwrap();
    let id = run(&["--state-dir", sds, "id"]);
    assert!(id.status.success());
    let id = String::from_utf8(id.stdout).unwrap();
    assert_eq!(id.trim().len(), 64);
    assert_eq!(id.lines().count(), 1);
    assert!(text.contains(id.trim()));
    // run again: idempotent (exit 0, the same id), never overwrites
    let again = run(&["--state-dir", sds, "init"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains(id.trim()));
    assert_eq!(std::fs::read(sd.join("node.key")).unwrap(), key);
    // the options are accepted after the subcommand too, and from the environment
    let env = Command::new(BIN)
        .arg("id")
        .env("CLUSTERSYNC_STATE_DIR", sds)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(env.stdout).unwrap(), id);
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\", \"zz\"]\npaths = [\"/srv\"]\n",
            4,
            "groups.g.nodes",
        ),
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"relative/path\"]\n",
            5,
            "groups.g.paths",
        ),
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv\"]\nconflcit = \"newest\"\n",
            6,
            "conflcit",
        ),
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv\"]\nrescan = \"soon\"\n",
            6,
            "groups.g.rescan",
        ),
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv\"]\n[groups.h]\nnodes = [\"a\"]\npaths = [\"/srv\"]\n",
            8,
            "groups.h.paths",
        ),
        // a value out of its set is refused with the key, never replaced by a default
        (
            "[nodes.a]\naddress = \"127.0.0.1:1\"\n[groups.g]\nnodes = [\"a\"]\npaths = [\"/srv\"]\nconflict = \"random\"\n",
            6,
            "conflict",
        ),
    ];
    for (i, (text, line, key)) in cases.iter().enumerate() {
        let f = d.path().join(format!("c{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let out = run(&["check-config", "-c", f.to_str().unwrap(), "--node", "a"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(&format!("c{i}.toml:{line}")),
            "case {i}: no file:line in {err}"
        );
        assert!(err.contains(key), "case {i}: no key {key} in {err}");
        // the daemon refuses it the same way, before touching anything
        let sd = d.path().join(format!("s{i}"));
        let out = run(&[
            "daemon",
            "-c",
            f.to_str().unwrap(),
            "--node",
            "a",
            "--state-dir",
            sd.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "case {i}");
        assert!(
            !sd.exists(),
            "case {i}: state dir created despite a config error"
        );
    }
    let out = run(&[
        "check-config",
        "-c",
        d.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sync_status_and_exit_codes_with_and_without_a_daemon() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    write(&c.path("a", "one"), "1");
    c.start("a");
    c.start("b");
    c.wait_connected();
    // c is not running: sync on a reaches b but not c -> exit 4
    let out = c.cli("a", &["sync", "--timeout", "5s"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains('c'));
    assert!(
        c.path("b", "one").exists(),
        "what was reachable must be synced"
    );
    // c's own sync without a daemon: done in-process against the running peers -> exit 0
    write(&c.path("c", "from-c-offline"), "c");
    let out = c.cli("c", &["sync", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.path("c", "one").exists());
    wait_until("a to have c's file", WAIT, || {
        c.path("a", "from-c-offline").exists()
    });
    // dry run changes nothing
    write(&c.path("a", "two"), "2");
    wait_until("b to have two", WAIT, || c.path("b", "two").exists());
    let out = c.cli("c", &["sync", "--dry-run", "--timeout", "20s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("two"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!c.path("c", "two").exists(), "dry run changed something");
    c.start("c");
    c.wait_connected();
    let out = c.cli("a", &["sync", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(c.path("c", "two").exists());
    // unknown group: usage error
    assert_eq!(c.cli("a", &["sync", "nosuchgroup"]).status.code(), Some(2));

    let st = c.status("a").unwrap();
    assert_eq!(st["node"], "a");
    let g = &st["groups"][0];
    for k in ["name", "files", "bytes", "pending", "conflicts", "in_sync"] {
        assert!(!g[k].is_null(), "groups[].{k} missing: {g}");
    }
    assert_eq!(g["name"], "www");
    assert_eq!(g["files"], 3);
    assert_eq!(g["in_sync"], true);
    for p in st["peers"].as_array().unwrap() {
        for k in ["name", "connected", "behind", "last_seen"] {
            assert!(p.get(k).is_some(), "peers[].{k} missing: {p}");
        }
        assert_eq!(p["connected"], true);
        assert_eq!(p["behind"], 0);
        assert!(p["last_seen"].as_str().unwrap().ends_with('Z'));
    }
    // human form too
    let out = c.cli("a", &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("in sync"));
    // SIGTERM stops cleanly (exit 0) and removes the control socket
    for n in ["a", "b", "c"] {
        let st = c.stop(n);
        assert!(st.success(), "{n}: {st:?}");
        assert!(!c.node(n).state.join("control.sock").exists());
    }
    // status without a daemon still answers from the index
    let st = c.status("a").unwrap();
    assert_eq!(st["groups"][0]["files"], 3);
    assert_eq!(st["peers"][0]["connected"], false);
}

#[test]
fn a_key_that_is_not_configured_is_refused_before_any_data() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "secret"), "s");
    c.start("a");
    // b's key is replaced by a stranger's: same name and address, wrong identity
    std::fs::remove_file(c.node("b").state.join("node.key")).unwrap();
    let out = c.cli("b", &["init"]);
    assert!(out.status.success());
    // the daemon itself notices its key does not match the config (a configuration error,
    // as check-config says)
    let out = c.cli("b", &["daemon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("id"));
    let out = c.cli("b", &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    // an in-process sync with the wrong key is refused by a
    let out = c.cli("b", &["sync", "--timeout", "3s"]);
    assert_ne!(out.status.code(), Some(0));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !c.path("b", "secret").exists(),
        "data reached an unknown key"
    );
}

/// Issue 22 item 12: the demo's concurrent edit is a conflict every time (the two writes are
/// made while one node is cut off), never "the two writes were ordered this time".
#[test]
fn the_demo_shows_a_conflict_every_time() {
    for run in 0..2 {
        let out = std::process::Command::new(BIN)
            .arg("demo")
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "run {run}: {o}{e}");
        assert!(
            o.contains("5. conflict") && o.contains("the conflict is in the audit logs"),
            "run {run}:\n{o}"
        );
        assert!(!o.contains("ordered this time"), "{o}");
    }
}
