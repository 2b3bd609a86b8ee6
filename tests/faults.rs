//! Faults: a receiver SIGKILLed mid-transfer, links cut by a proxy, a node stopped while the
//! others change files (SPEC §5.3, issue 2 point 10).

mod common;
use common::*;
use std::time::Duration;

#[test]
fn sigkill_mid_transfer_leaves_no_partial_file_and_converges_after_restart() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    let big = bytes(64 << 20, 7);
    write(&c.path("a", "big.bin"), &big);
    // kill b as soon as its temp file appears (the transfer is under way)
    let dir = c.path("b", "");
    let mut mid = false;
    wait_until("b to start receiving", WAIT, || {
        mid = std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".clustersync.tmp.")
        });
        mid || c.path("b", "big.bin").exists()
    });
    c.kill("b");
    assert!(mid, "the transfer finished before it could be interrupted");
    // never a partial file under the real name
    if let Ok(data) = std::fs::read(c.path("b", "big.bin")) {
        assert_eq!(data.len(), big.len(), "partial file visible after SIGKILL");
    }
    c.start("b");
    c.wait_connected();
    let t = c.wait_converged("after restart");
    assert!(t.contains_key("/big.bin"));
    assert_eq!(std::fs::read(c.path("b", "big.bin")).unwrap(), big);
    // the interrupted temp file was cleaned up
    assert!(!c.tree("b").keys().any(|k| k.contains(".clustersync.tmp")));
}

#[test]
fn cut_off_node_catches_up_when_the_link_returns() {
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            proxies: true,
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    // c is the highest name: every link to it is dialed through its proxy
    c.cut_off("c", "a");
    write(&c.path("a", "while-cut-a"), "from a");
    write(&c.path("b", "while-cut-b"), "from b");
    write(&c.path("c", "while-cut-c"), "from c");
    std::fs::remove_file(c.path("b", "keep")).unwrap();
    wait_until("a and b to agree", WAIT, || {
        c.path("a", "while-cut-b").exists() && !c.path("a", "keep").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !c.path("c", "while-cut-a").exists(),
        "the proxy did not cut the link"
    );
    let st = c.status("a").unwrap();
    let peer_c = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "c")
        .unwrap()
        .clone();
    assert!(peer_c["behind"].as_u64().unwrap() > 0, "{peer_c}");
    assert_eq!(st["groups"][0]["in_sync"], false);
    c.node("c").proxy.as_ref().unwrap().heal();
    let t = c.wait_converged("after heal");
    for f in ["/while-cut-a", "/while-cut-b", "/while-cut-c"] {
        assert!(t.contains_key(f), "{f} missing");
    }
    assert!(!t.contains_key("/keep"));
    wait_until("a in sync again", WAIT, || {
        c.status("a")
            .is_some_and(|s| s["groups"][0]["in_sync"] == true)
    });
}

#[test]
fn stopped_node_catches_up_on_start_and_its_offline_deletes_are_not_resurrected() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    for f in ["one", "two", "three", "dir/four"] {
        write(&c.path("a", f), f);
    }
    c.start_all();
    c.wait_converged("start");
    let st = c.stop("b");
    assert!(st.success(), "SIGTERM must stop the daemon cleanly: {st:?}");
    // while b is down: others change things, and b's own disk changes too
    write(&c.path("a", "new-on-a"), "a");
    std::fs::remove_file(c.path("c", "one")).unwrap();
    std::fs::remove_file(c.path("b", "two")).unwrap();
    std::fs::remove_dir_all(c.path("b", "dir")).unwrap();
    write(&c.path("b", "new-on-b"), "b");
    wait_until("a and c agree", WAIT, || !c.path("a", "one").exists());
    c.start("b");
    c.wait_connected();
    let t = c.wait_converged("after b restarts");
    assert!(t.contains_key("/new-on-a") && t.contains_key("/new-on-b"));
    assert!(
        !t.contains_key("/one"),
        "delete made while b was down must reach b"
    );
    assert!(
        !t.contains_key("/two"),
        "b's offline delete was resurrected"
    );
    assert!(
        !t.contains_key("/dir"),
        "b's offline directory delete was resurrected"
    );
    assert!(t.contains_key("/three"));
}
