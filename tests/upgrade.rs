//! Rolling upgrades with the real binaries of earlier releases (SPEC §5.15; issue 22 items 2–5):
//! a cluster of the previous release is upgraded one node at a time and keeps syncing; a node
//! of this release that is new, or whose group was reset, joins nodes of an earlier release
//! without being refused; each release's command line works with the other's daemon.
//!
//! The earlier releases are built from git (see `scripts/mixed-release.sh`, which builds them
//! and runs this file): `CS_PREV_BIN` is 0.2.0 (commit a275248, protocol 3–4, index 3–4),
//! `CS_PREV01_BIN` 0.1.0 (commit 5eade08, protocol 3, index 3). A test whose binary is not
//! given is skipped, and says so. `tests/compat.rs` plays protocol 3 message by message
//! without a binary.

mod common;
#[path = "common/ops.rs"]
mod ops;

use common::*;
use ops::*;
use std::process::Command;
use std::time::Instant;

/// The binary of an earlier release named by `var`, or `None` (the test says it is skipped).
fn earlier(var: &str, release: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(p) if std::path::Path::new(&p).is_file() => Some(p),
        _ => {
            eprintln!(
                "SKIPPED: set {var} to a build of clustersync {release} (scripts/mixed-release.sh does)"
            );
            None
        }
    }
}

/// `status --json` of node `n` run with binary `bin` (another release's command line).
fn status_by(c: &Cluster, n: &str, bin: &str) -> (Option<i32>, String, String) {
    let out = Command::new(bin)
        .arg("-c")
        .arg(&c.cfg)
        .args(["--node", n, "--state-dir"])
        .arg(&c.node(n).state)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let (o, e) = texts(&out);
    (out.status.code(), o, e)
}

/// Audit lines of node `n` of this kind.
fn audited(c: &Cluster, n: &str, kind: &str) -> Vec<serde_json::Value> {
    c.audit(n)
        .into_iter()
        .filter(|l| l["kind"] == kind)
        .collect()
}

/// A 0.2 cluster upgraded one node at a time: every step converges, the upgraded node links
/// with the others at their protocol, nothing is refused anywhere, and the command line of
/// each release reads the other's daemon.
#[test]
fn a_cluster_of_the_previous_release_upgraded_node_by_node_keeps_syncing() {
    let Some(prev) = earlier("CS_PREV_BIN", "0.2.0") else {
        return;
    };
    let names = ["a", "b", "c"];
    let mut c = Cluster::new(&names, Opts::default());
    for n in names {
        c.set_bin(n, Some(&prev));
    }
    write(&c.path("a", "from-a"), "a");
    write(&c.path("b", "dir/from-b"), "b");
    c.start_all();
    c.wait_converged("the previous release's cluster");
    let mut upgraded = Vec::new();
    for n in names {
        let t0 = Instant::now();
        c.stop(n);
        c.set_bin(n, None);
        c.start(n);
        upgraded.push(n);
        let old: Vec<&str> = names
            .iter()
            .copied()
            .filter(|m| !upgraded.contains(m))
            .collect();
        write(&c.path(n, &format!("made-by-{n}-after-upgrade")), n);
        if let Some(o) = old.first() {
            write(&c.path(o, &format!("made-by-{o}-while-{n}-upgraded")), *o);
        }
        c.wait_connected();
        let tree = c.wait_converged(&format!("after upgrading {n}"));
        eprintln!(
            "upgraded {n} ({} of 3 on this release): converged in {:?}, {} paths",
            upgraded.len(),
            t0.elapsed(),
            tree.len()
        );
        let st = c.status(n).unwrap();
        for o in &old {
            assert_eq!(peer_of(&st, o)["protocol"], 4, "{n} with {o}: {st}");
            // the previous release's command line reads this daemon, and the other way
            let (code, out, err) = status_by(&c, n, &prev);
            assert!(matches!(code, Some(0 | 1 | 3)), "0.2 status on {n}: {err}");
            assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(),
                "0.2 status on {n}: {out}{err}"
            );
            let (code, out, err) = status_by(&c, o, BIN);
            assert!(matches!(code, Some(0 | 1 | 3)), "0.3 status on {o}: {err}");
            let st: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(st["daemon"], true, "{out}");
        }
    }
    for n in names {
        assert!(
            audited(&c, n, "refused").is_empty(),
            "{n}: {:?}",
            audited(&c, n, "refused")
        );
        assert!(!c.log(n).contains("panicked"));
    }
}

/// Issue 22 item 3 with the real binaries: a node of this release that is new, then reset,
/// joins a node of an earlier release (0.2: protocol 4; 0.1: protocol 3, which refuses any
/// item without a version): it receives everything, its own changes reach the old node, and
/// the old node refuses nothing (the link is never dropped and dialled again). With 0.1 also
/// item 2: this node offers AES-GCM once per start, then the suite 0.1 took.
#[test]
fn a_new_and_a_reset_node_of_this_release_join_a_node_of_an_earlier_release() {
    for (var, release) in [("CS_PREV_BIN", "0.2.0"), ("CS_PREV01_BIN", "0.1.0")] {
        let Some(old) = earlier(var, release) else {
            continue;
        };
        let mut c = Cluster::new(&["a", "b"], Opts::default());
        c.set_bin("b", Some(&old));
        write(&c.path("b", "x"), "from the old node");
        write(&c.path("b", "dir/y"), "deeper");
        c.start("b");
        for state in ["new", "reset"] {
            if state == "reset" {
                c.stop("a");
                let out = c.cli("a", &["reset", "www"]);
                assert!(out.status.success(), "{out:?}");
            }
            c.start("a");
            c.wait_connected();
            c.wait_converged(&format!("{release}: a {state} node receives everything"));
            let f = format!("from-a-{state}");
            write(&c.path("a", &f), state);
            wait_until(&format!("{release}: {f} on the old node"), WAIT, || {
                c.path("b", &f).exists()
            });
        }
        // 0.1 audits the handshake this node abandons when it sees AES-GCM refused (once per
        // start of a, see below) as a closed connection; nothing else may be refused
        let (handshakes, refused): (Vec<_>, Vec<_>) = audited(&c, "b", "refused")
            .into_iter()
            .partition(|l| l.to_string().contains("connection closed"));
        assert!(
            refused.is_empty(),
            "{release} refused: {refused:#?}\n{}",
            c.log("b")
        );
        assert!(handshakes.len() <= 2, "{release}: {handshakes:#?}");
        let ups = log_lines(&c, "a", &["connected (protocol", "peer=b"])
            .iter()
            .filter(|l| !l.contains("disconnected"))
            .count();
        eprintln!("{release}: a's links with b: {ups} for 2 starts of a");
        assert_eq!(ups, 2, "{release}: a's link to b dropped:\n{}", c.log("a"));
        if release == "0.1.0"
            && clustersync::net::transport::Suite::preferred()
                == clustersync::net::transport::Suite::AesGcm
        {
            // b restarts twice: a dials it again each time, with the suite it remembered
            for _ in 0..2 {
                c.stop("b");
                c.start("b");
                c.wait_connected();
            }
            let ups = log_lines(&c, "a", &["connected (protocol 3", "peer=b"]).len();
            let offers = log_lines(&c, "a", &["refused Noise_XX_25519_AESGCM_BLAKE2s"]).len();
            eprintln!("{release}: {ups} links with b, {offers} refused AES-GCM offers");
            assert!(ups >= 4, "{}", c.log("a"));
            assert_eq!(
                offers,
                2,
                "one AES-GCM offer per start of a:\n{}",
                c.log("a")
            );
        }
        assert!(!c.log("a").contains("panicked"));
    }
}

/// Issue 22 item 4: after the package upgrade and before the restart, `backups` and `restore`
/// of this release read the kept versions that the running daemon of an earlier release wrote
/// (0.1 kept them in another layout, which this release's daemon moves over when it starts).
#[test]
fn this_command_line_lists_and_restores_what_an_earlier_daemon_kept() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: backups and restore are root's");
        return;
    }
    for (var, release) in [("CS_PREV_BIN", "0.2.0"), ("CS_PREV01_BIN", "0.1.0")] {
        let Some(old) = earlier(var, release) else {
            continue;
        };
        let mut c = Cluster::new(&["a", "b"], Opts::default());
        c.set_bin("a", Some(&old));
        c.set_bin("b", Some(&old));
        c.start_all();
        write(&c.path("a", "f"), "first version\n");
        wait_until("f on b", WAIT, || c.path("b", "f").exists());
        write(&c.path("a", "f"), "second version\n");
        wait_until("the second version on b", WAIT, || {
            std::fs::read_to_string(c.path("b", "f")).is_ok_and(|t| t.starts_with("second"))
        });
        // b's daemon of the earlier release kept the first version; this command line reads it
        let run = |args: &[&str]| {
            let out = Command::new(BIN)
                .arg("-c")
                .arg(&c.cfg)
                .args(["--node", "b", "--state-dir"])
                .arg(&c.node("b").state)
                .args(args)
                .output()
                .unwrap();
            texts(&out)
        };
        let (o, e) = run(&["backups", "/srv/www/f"]);
        eprintln!("{release}: backups: {o}{e}");
        assert!(o.lines().any(|l| l.starts_with("1 ")), "{release}: {o}{e}");
        let dest = c.dir.path().join(format!("restored-{release}"));
        let (o, e) = run(&["restore", "/srv/www/f", "--to", dest.to_str().unwrap()]);
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap_or_default(),
            "first version\n",
            "{release}: {o}{e}"
        );
    }
}

/// SPEC §5.15 with issue 22 item 11: an exclude anchored at one group path (new in 0.3) means
/// nothing to 0.2, which would send what this node refuses: the group is paused with that peer
/// and this node's status names the setting, while the link stays up.
#[test]
fn a_setting_the_previous_release_cannot_honour_is_named_and_pauses_its_group() {
    let Some(prev) = earlier("CS_PREV_BIN", "0.2.0") else {
        return;
    };
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "exclude = [\"/srv/www/cache\"]".into(),
            ..Default::default()
        },
    );
    c.set_bin("b", Some(&prev));
    c.start_all();
    wait_until("a to name the setting b cannot honour", WAIT, || {
        c.status("a").is_some_and(|s| {
            let p = peer_of(&s, "b");
            p["connected"] == true
                && p["error"].as_str().is_some_and(|e| {
                    e.contains("exclude \"/srv/www/cache\"") && e.contains("older release")
                })
        })
    });
    assert!(
        log_lines(&c, "a", &[" ERROR ", "not understood by b"]).len() == 1,
        "{}",
        c.log("a")
    );
}

/// SPEC §5.15 / CHANGELOG "Going back": the previous release refuses this release's index with
/// a clear message and changes nothing; the documented ways back work (the state directory
/// saved before the upgrade, or the index moved aside: the node joins as new).
#[test]
fn going_back_to_the_previous_release_is_refused_plainly_and_the_documented_ways_work() {
    let Some(prev) = earlier("CS_PREV_BIN", "0.2.0") else {
        return;
    };
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    c.set_bin("a", Some(&prev));
    c.set_bin("b", Some(&prev));
    write(&c.path("a", "f"), "made on 0.2");
    c.start_all();
    c.wait_converged("0.2");
    // the upgrade of a, with the state directory saved first
    c.stop("a");
    let state = c.node("a").state.clone();
    let saved = state.with_file_name("state.0.2");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&state)
            .arg(&saved)
            .status()
            .unwrap()
            .success()
    );
    c.set_bin("a", None);
    c.start("a");
    write(&c.path("b", "g"), "made while a runs 0.3");
    c.wait_converged("a on 0.3");
    c.stop("a");
    // 0.2 on the 0.3 index: refused, nothing changed (redb rewrites its header on any open,
    // so what is compared is what the index holds, read by this release)
    let index = state.join("index.redb");
    let held = |c: &Cluster| {
        let (_, out, err) = status_by(c, "a", BIN);
        let st: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{err}"));
        (st["groups"][0]["files"].clone(), st["as_of"].clone())
    };
    let before = held(&c);
    let out = Command::new(&prev)
        .arg("-c")
        .arg(&c.cfg)
        .args(["--node", "a", "--state-dir"])
        .arg(&state)
        .arg("daemon")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    eprintln!("0.2 on a 0.3 index: {:?}: {e}", out.status.code());
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("schema version 5") && e.contains("newer release"),
        "{e}"
    );
    assert_eq!(held(&c), before, "the index changed");
    // way back 1: the saved state directory
    std::fs::rename(&state, state.with_file_name("state.0.3")).unwrap();
    std::fs::rename(&saved, &state).unwrap();
    c.set_bin("a", Some(&prev));
    c.start("a");
    c.wait_converged("a back on 0.2 from the saved state");
    assert!(c.path("a", "g").exists());
    // way back 2: the index moved aside (the node joins as new: deletes nothing)
    c.stop("a");
    std::fs::rename(&state, state.with_file_name("state.0.2-used")).unwrap();
    std::fs::rename(state.with_file_name("state.0.3"), &state).unwrap();
    std::fs::rename(&index, state.join("index.redb.0.3")).unwrap();
    c.start("a");
    write(&c.path("b", "h"), "after going back");
    c.wait_converged("a back on 0.2 with a new index");
    assert!(c.path("a", "f").exists() && c.path("a", "h").exists());
}
