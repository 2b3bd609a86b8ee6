//! Conflict policies (SPEC §5.4): every policy converges every node to the same winner, the
//! loser is kept as a backup and restorable; `manual` keeps each node's version until
//! `resolve`, and `sync` exits 3 meanwhile.

mod common;
use common::*;

fn cluster(policy: &str) -> Cluster {
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            proxies: true,
            group_extra: format!("conflict = \"{policy}\""),
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    write(&c.path("a", "doc.txt"), "original\n");
    c.start_all();
    c.wait_converged("start");
    c.cut_off("c", "a");
    c
}

fn set(c: &Cluster, node: &str, content: &str, mtime: &str) {
    let p = c.path(node, "doc.txt");
    write(&p, content);
    let st = std::process::Command::new("touch")
        .args(["-d", mtime])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
}

fn read(c: &Cluster, node: &str) -> String {
    std::fs::read_to_string(c.path(node, "doc.txt")).unwrap_or_default()
}

/// Make a conflict: `a` writes `(ca, ta)`, `c` writes `(cc, tc)` while cut off; heal; return
/// the content every node converged to.
fn conflict(policy: &str, ca: &str, ta: &str, cc: &str, tc: &str) -> (Cluster, String) {
    let c = cluster(policy);
    set(&c, "a", ca, ta);
    set(&c, "c", cc, tc);
    wait_until("b has a's version", WAIT, || read(&c, "b") == ca);
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.node("c").proxy.as_ref().unwrap().heal();
    c.wait_converged(&format!("policy {policy}"));
    let w = read(&c, "a");
    (c, w)
}

fn assert_loser_kept(c: &Cluster, loser_node: &str, loser: &str) {
    let dest = c.dir.path().join(format!("restored-{loser_node}"));
    let out = c.cli(
        loser_node,
        &[
            "restore",
            "/srv/www/doc.txt",
            "--to",
            dest.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(dest).unwrap(), loser);
    // the record is committed with the index right after the winner's rename, which is what
    // `wait_converged` saw: under load it can come a moment later
    let listed = || {
        let out = c.cli(loser_node, &["conflicts", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["conflicts"]
            .as_array()?
            .iter()
            .find(|x| x["path"] == "/srv/www/doc.txt")
            .cloned()
    };
    wait_until("the conflict listed", WAIT, || listed().is_some());
    let x = listed().expect("conflict listed");
    assert_eq!(x["group"], "www");
    assert_eq!(x["resolved"], true);
    assert_eq!(x["nodes"], serde_json::json!(["a", "c"]));
    assert!(x["kept_as"].is_string(), "{x}");
}

#[test]
fn newest_wins_whatever_the_order_of_writes() {
    // c writes later in real time but with an older mtime: mtimes decide, not arrival
    let (c, w) = conflict(
        "newest",
        "a: newer mtime\n",
        "2030-01-01 00:00:00",
        "c: older mtime\n",
        "2020-01-01 00:00:00",
    );
    assert_eq!(w, "a: newer mtime\n");
    assert_loser_kept(&c, "c", "c: older mtime\n");
}

#[test]
fn oldest_wins() {
    let (c, w) = conflict(
        "oldest",
        "a: newer\n",
        "2030-01-01 00:00:00",
        "c: older\n",
        "2020-01-01 00:00:00",
    );
    assert_eq!(w, "c: older\n");
    assert_loser_kept(&c, "a", "a: newer\n");
}

#[test]
fn largest_and_smallest_win() {
    let (c, w) = conflict(
        "largest",
        "a: a longer version\n",
        "2025-01-01",
        "c: short\n",
        "2026-01-01",
    );
    assert_eq!(w, "a: a longer version\n");
    assert_loser_kept(&c, "c", "c: short\n");
    drop(c);
    let (c, w) = conflict(
        "smallest",
        "a: a longer version\n",
        "2025-01-01",
        "c: short\n",
        "2026-01-01",
    );
    assert_eq!(w, "c: short\n");
    assert_loser_kept(&c, "a", "a: a longer version\n");
}

#[test]
fn prefer_node_wins_and_ties_break_by_node_name() {
    let (c, w) = conflict(
        "prefer:c",
        "from a\n",
        "2030-01-01",
        "from c\n",
        "2020-01-01",
    );
    assert_eq!(w, "from c\n");
    drop(c);
    // same mtime under newest: the node whose name sorts first wins, on every node
    let (_c, w) = conflict(
        "newest",
        "tie from a\n",
        "2024-05-05 05:05:05",
        "tie from c\n",
        "2024-05-05 05:05:05",
    );
    assert_eq!(w, "tie from a\n");
}

#[test]
fn manual_keeps_each_version_until_resolve() {
    let c = cluster("manual");
    set(&c, "a", "manual a\n", "2030-01-01");
    set(&c, "c", "manual c\n", "2020-01-01");
    wait_until("b has a's version", WAIT, || read(&c, "b") == "manual a\n");
    c.node("c").proxy.as_ref().unwrap().heal();
    c.wait_connected();
    let unresolved = |n: &str| {
        let out = c.cli(n, &["conflicts", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["conflicts"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x["path"] == "/srv/www/doc.txt" && x["resolved"] == false)
        })
    };
    wait_until("a and c to see the conflict", WAIT, || {
        unresolved("a") && unresolved("c")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(read(&c, "a"), "manual a\n");
    assert_eq!(read(&c, "c"), "manual c\n");
    let out = c.cli("a", &["sync", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.status("a").unwrap();
    assert_eq!(st["groups"][0]["conflicts"], 1);
    assert_eq!(st["groups"][0]["in_sync"], false);
    // a node that does not exist, or a version that is not in the conflict, is refused
    assert_eq!(
        c.cli("a", &["resolve", "/srv/www/doc.txt", "--keep", "zz"])
            .status
            .code(),
        Some(2)
    );
    let out = c.cli("a", &["resolve", "/srv/www/doc.txt", "--keep", "c"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_converged("after resolve");
    assert_eq!(read(&c, "b"), "manual c\n");
    for n in ["a", "b", "c"] {
        wait_until("conflict resolved everywhere", WAIT, || !unresolved(n));
    }
    let out = c.cli("a", &["sync", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a's own version was overwritten by the resolution: kept as a backup
    let out = c.cli(
        "a",
        &[
            "restore",
            "/srv/www/doc.txt",
            "--to",
            c.dir.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(c.dir.path().join("r")).unwrap(),
        "manual a\n"
    );
}
