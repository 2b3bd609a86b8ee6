//! No mass deletion, nothing written through symlinks, new nodes receive everything
//! (SPEC §5.3, §5.6).

mod common;
use common::*;
use std::os::unix::fs::symlink;

#[test]
fn removed_or_emptied_group_path_stops_the_group_and_peers_lose_nothing() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    for i in 0..20 {
        write(&c.path("a", &format!("f{i}")), format!("{i}"));
    }
    write(&c.path("a", "sub/deep"), "deep");
    c.start_all();
    let before = files(&c.wait_converged("start"));

    // a wiped directory: rm -rf of the group path itself
    std::fs::remove_dir_all(c.path("b", "")).unwrap();
    wait_until("b to report the group stopped", WAIT, || {
        c.status("b").is_some_and(|s| {
            s["groups"][0]["error"].is_string() && s["groups"][0]["in_sync"] == false
        })
    });
    // depending on when the scan ran during the rm -rf: the group path is gone, it is still
    // there but already empty, or everything below it vanished
    let log = c.log("b");
    assert!(
        log.contains("group stopped on this node")
            && (log.contains("is missing") || log.contains("is empty") || log.contains("vanished")),
        "no clear error in the log"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // an `rm -rf` unlinks one file at a time: a single deletion is handed over after 1 ms
    // (the live-delete latency), a burst is recognised from its third deletion on. On an
    // idle machine rm deletes dozens of files in that millisecond and nothing leaks; when rm
    // is descheduled between its first unlinks (a loaded machine), the first one or two
    // deletions may travel before the burst is seen (ARCHITECTURE §9). Never more.
    let after = files(&c.tree("a"));
    let lost: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        lost.len() < 3,
        "a lost {} files because b's group path vanished: {lost:?}",
        lost.len()
    );
    let before = after;

    // the disk comes back (remount): the group resumes, nothing was deleted anywhere
    std::fs::create_dir_all(c.path("b", "")).unwrap();
    for k in before.keys() {
        let src = c.path("a", k.trim_start_matches('/'));
        let dst = c.path("b", k.trim_start_matches('/'));
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
    wait_until("b to resume", WAIT, || {
        c.status("b")
            .is_some_and(|s| s["groups"][0]["error"].is_null())
    });
    c.wait_converged("after remount");
    assert_eq!(files(&c.tree("a")).len(), before.len());

    // emptied (an unmounted disk leaves an empty mount point)
    for e in std::fs::read_dir(c.path("b", "")).unwrap().flatten() {
        if e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).unwrap();
        } else {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    wait_until("b to stop the group again", WAIT, || {
        c.status("b")
            .is_some_and(|s| s["groups"][0]["error"].is_string())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        files(&c.tree("a")).len(),
        before.len(),
        "a lost files because b's group path was emptied"
    );
    // b does not resume just because something new appears in the wiped directory
    write(&c.path("b", "new-after-wipe"), "x");
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(
        c.path("a", "f1").exists(),
        "refilling a wiped directory deleted files everywhere"
    );
}

/// The regular files of a tree (directory mtimes change with their children).
fn files(
    t: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    t.iter()
        .filter(|(_, v)| v.starts_with("file"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[test]
fn new_empty_node_receives_everything_and_deletes_nothing() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    for i in 0..50 {
        write(
            &c.path("a", &format!("d{}/f{i}", i % 5)),
            bytes(1000 + i * 300, i as u64),
        );
    }
    write(&c.path("b", "only-on-b"), "b");
    c.start("a");
    c.start("b");
    c.wait_connected();
    c.wait_converged("a and b");
    // c joins later with an empty directory and an empty index; while it is behind it must
    // not claim to be in sync (a load balancer relies on that)
    for i in 0..400 {
        write(&c.path("a", &format!("bulk/f{i}")), bytes(2000, i as u64));
    }
    let t = c.wait_converged("a and b with the bulk");
    c.start("c");
    wait_until("c in sync", WAIT, || {
        let Some(st) = c.status("c") else {
            return false;
        };
        let claims = st["groups"][0]["in_sync"] == true
            && st["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["connected"] == true);
        if claims {
            assert_eq!(c.tree("c").len(), t.len(), "c claimed in_sync while behind");
        }
        claims
    });
    let t2 = c.wait_converged("c joined");
    assert_eq!(t.keys().collect::<Vec<_>>(), t2.keys().collect::<Vec<_>>());
    assert!(t2.contains_key("/only-on-b"));
}

#[test]
fn receiver_never_writes_through_a_planted_symlink() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    write(&c.path("a", "dir/old"), "x");
    c.start_all();
    c.wait_converged("start");
    let outside = c.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // on b, while it is down, a local user swaps the directory for a symlink to elsewhere
    c.stop("b");
    std::fs::remove_dir_all(c.path("b", "dir")).unwrap();
    symlink(&outside, c.path("b", "dir")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // meanwhile the cluster writes into that directory
    write(&c.path("a", "dir/new"), "must not land outside");
    write(&c.path("a", "dir/old"), "changed");
    c.start("b");
    c.wait_connected();
    let t = c.wait_converged("after the swap");
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "a file was written through the symlink"
    );
    assert!(t["/dir"].starts_with("dir"), "{}", t["/dir"]);
    assert_eq!(
        std::fs::read_to_string(c.path("b", "dir/new")).unwrap(),
        "must not land outside"
    );
}

#[test]
fn a_group_path_wiped_and_refilled_while_the_daemon_was_down_stops_the_group() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    for i in 0..5 {
        write(&c.path("a", &format!("f{i}")), format!("{i}"));
    }
    c.start_all();
    c.wait_converged("start");
    c.stop("b");
    for i in 0..5 {
        std::fs::remove_file(c.path("b", &format!("f{i}"))).unwrap();
    }
    write(&c.path("b", "fresh"), "new");
    c.start("b");
    wait_until("b to stop the group", WAIT, || {
        c.status("b")
            .is_some_and(|s| s["groups"][0]["error"].is_string())
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    for i in 0..5 {
        assert!(
            c.path("a", &format!("f{i}")).exists(),
            "f{i} deleted everywhere"
        );
    }
}

#[test]
fn a_directory_swapped_for_a_symlink_during_transfers_is_never_written_through() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    write(&c.path("a", "target/seed"), "x");
    c.start_all();
    c.wait_converged("start");
    let outside = c.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dir_b = c.path("b", "target");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // on b, a hostile local user keeps swapping the directory for a symlink to outside
    let swapper = {
        let stop = stop.clone();
        let dir_b = dir_b.clone();
        let outside = outside.clone();
        std::thread::spawn(move || {
            let aside = dir_b.with_file_name("target.aside");
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                n += 1;
                if std::fs::rename(&dir_b, &aside).is_ok() {
                    let _ = symlink(&outside, &dir_b);
                    std::thread::sleep(std::time::Duration::from_micros(300));
                    let _ = std::fs::remove_file(&dir_b);
                    let _ = std::fs::rename(&aside, &dir_b);
                }
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        })
    };
    for i in 0..60 {
        write(
            &c.path("a", &format!("target/f{i}")),
            bytes(5000 + i * 1000, i as u64),
        );
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "something was written through the swapped-in symlink"
    );
}
