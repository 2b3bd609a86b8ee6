//! Replicas only receive; a local change there is drift: logged, kept as a backup, shown in
//! `status`, and reverted (`on_drift = "revert"`) or left alone until resolved (`keep`)
//! (SPEC §5.5).

mod common;
use common::*;

fn cluster(on_drift: &str) -> Cluster {
    let mut c = Cluster::new(
        &["a", "b", "r"],
        Opts {
            replicas: vec!["r"],
            group_extra: format!("on_drift = \"{on_drift}\""),
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    write(&c.path("a", "site/index.html"), "group version\n");
    c.start_all();
    c.wait_converged("start");
    c
}

fn read(c: &Cluster, n: &str, f: &str) -> Option<String> {
    std::fs::read_to_string(c.path(n, f)).ok()
}

#[test]
fn drift_on_a_replica_is_reverted_kept_and_never_reaches_members() {
    let c = cluster("revert");
    // an edit on the replica
    write(
        &c.path("r", "site/index.html"),
        "hand edit on the replica\n",
    );
    wait_until("the edit to be reverted", WAIT, || {
        read(&c, "r", "site/index.html").as_deref() == Some("group version\n")
    });
    // a file added and a file deleted on the replica
    write(&c.path("r", "site/added-on-r"), "stray\n");
    std::fs::remove_file(c.path("r", "keep")).unwrap();
    wait_until(
        "the added file removed and the deleted one restored",
        WAIT,
        || {
            !c.path("r", "site/added-on-r").exists()
                && read(&c, "r", "keep").as_deref() == Some("x")
        },
    );
    c.wait_converged("after reverts");
    assert!(!c.path("a", "site/added-on-r").exists());
    assert_eq!(
        read(&c, "a", "site/index.html").as_deref(),
        Some("group version\n")
    );
    // the drifted content was kept
    let dest = c.dir.path().join("drifted");
    let out = c.cli(
        "r",
        &[
            "restore",
            "/srv/www/site/index.html",
            "--to",
            dest.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest).unwrap(),
        "hand edit on the replica\n"
    );
    let audit = std::fs::read_to_string(c.node("r").state.join("audit.log")).unwrap();
    assert!(
        audit.contains("\"drift\"") && audit.contains("\"revert\""),
        "{audit}"
    );
    // members still reach the replica
    write(&c.path("b", "site/index.html"), "new group version\n");
    wait_until("update on r", WAIT, || {
        read(&c, "r", "site/index.html").as_deref() == Some("new group version\n")
    });
    let st = c.status("r").unwrap();
    assert_eq!(st["groups"][0]["replica"], true);
    assert_eq!(st["groups"][0]["drift"], serde_json::json!([]));
}

#[test]
fn drift_kept_until_resolved() {
    let c = cluster("keep");
    write(
        &c.path("r", "site/index.html"),
        "local fix on the replica\n",
    );
    wait_until("drift reported", WAIT, || {
        c.status("r").is_some_and(|s| {
            s["groups"][0]["drift"] == serde_json::json!(["/srv/www/site/index.html"])
                && s["groups"][0]["in_sync"] == false
        })
    });
    // a member's update does not overwrite the drifted path while it is unresolved
    write(&c.path("a", "site/index.html"), "group update\n");
    write(&c.path("a", "other"), "other\n");
    wait_until("other update reaches r", WAIT, || {
        c.path("r", "other").exists()
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        read(&c, "r", "site/index.html").as_deref(),
        Some("local fix on the replica\n")
    );
    assert_eq!(
        read(&c, "b", "site/index.html").as_deref(),
        Some("group update\n")
    );
    // the replica's version cannot become the group's
    let out = c.cli("r", &["resolve", "/srv/www/site/index.html", "--keep", "r"]);
    assert!(!out.status.success());
    let out = c.cli("r", &["resolve", "/srv/www/site/index.html", "--keep", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("group version back on r", WAIT, || {
        read(&c, "r", "site/index.html").as_deref() == Some("group update\n")
    });
    c.wait_converged("after resolve");
    wait_until("drift cleared", WAIT, || {
        c.status("r")
            .is_some_and(|s| s["groups"][0]["drift"] == serde_json::json!([]))
    });
}

/// One full member and two replicas (the issue's web1 with web2 and web3): replicas never send,
/// so their heads say nothing about what a node is missing. After a replica restarts, every
/// node says in sync again (exit 0) once the trees agree, and a change still reaches both.
#[test]
fn a_replica_restart_leaves_every_node_honestly_in_sync() {
    let mut c = Cluster::new(
        &["web1", "web2", "web3"],
        Opts {
            replicas: vec!["web2", "web3"],
            ..Default::default()
        },
    );
    write(&c.path("web1", "index.html"), "v1");
    c.start_all();
    c.wait_converged("start");
    wait_until("everyone in sync", WAIT, || c.all_in_sync());
    c.stop("web2");
    c.start("web2");
    c.wait_connected();
    c.wait_converged("after the replica restarted");
    wait_until("everyone in sync after the restart", WAIT, || {
        c.all_in_sync()
    });
    for n in ["web1", "web2", "web3"] {
        let out = c.cli(n, &["status"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{n}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let st = c.status(n).unwrap();
        assert_eq!(st["groups"][0]["pending"], 0, "{n}: {st}");
    }
    write(&c.path("web1", "index.html"), "v2");
    wait_until("both replicas get v2", WAIT, || {
        read(&c, "web2", "index.html").as_deref() == Some("v2")
            && read(&c, "web3", "index.html").as_deref() == Some("v2")
    });
    wait_until("in sync again", WAIT, || c.all_in_sync());
}
