//! What an acknowledgement means (SPEC §5.13): a node acknowledges a peer's changes only once
//! it applied them and saved that position durably. A stopped group, a failed commit or a dry
//! run acknowledges nothing, the peer keeps its tombstones, and everything arrives once the node
//! can take it: deletions included, and no `status` says "in sync" meanwhile.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// The files (not directories) of a tree.
fn files(t: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    t.iter()
        .filter(|(_, v)| v.starts_with("file"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn group(c: &Cluster, n: &str) -> serde_json::Value {
    c.status(n)
        .map(|s| s["groups"][0].clone())
        .unwrap_or_default()
}

/// Watch `cond` hold for all of `d` (an observation of something that must not happen: there
/// is no event to wait for). Panics with `what` if it fails once.
fn holds_for(what: &str, d: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < d {
        assert!(cond(), "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The operator's scenario of issue 19: c's disk goes away (its group directory renamed away,
/// as an unmount looks), 10 files are deleted on a and 5 created on b, several tombstone
/// collection periods pass, the disk comes back: c gets exactly the others' tree, deletions
/// included. Meanwhile nobody says in sync, and a and b keep their tombstones.
#[test]
fn a_group_stopped_while_others_change_gets_everything_when_it_runs_again() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    // collect tombstones every second: the old behaviour lost deletions after one period
    c.set_env_all("CLUSTERSYNC_TEST_GC_SECS", "1");
    for i in 0..30 {
        write(&c.path("a", &format!("f{i:02}")), format!("file {i}"));
    }
    c.start_all();
    c.wait_converged("start");
    wait_until("everyone in sync", WAIT, || c.all_in_sync());

    let real = c.path("c", "");
    let away = real.with_file_name("www.away");
    std::fs::rename(&real, &away).unwrap();
    wait_until("c stops the group", WAIT, || {
        group(&c, "c")["error"].is_string()
    });
    for i in 0..10 {
        std::fs::remove_file(c.path("a", &format!("f{i:02}"))).unwrap();
    }
    for i in 0..5 {
        write(&c.path("b", &format!("new{i}")), format!("new {i}"));
    }
    let (mut ta, mut tb) = (BTreeMap::new(), BTreeMap::new());
    wait_until("a and b agree", WAIT, || {
        ta = files(&c.tree("a"));
        tb = files(&c.tree("b"));
        ta == tb && ta.len() == 25
    });
    wait_until("a holds the 10 tombstones", WAIT, || {
        group(&c, "a")["tombstones"].as_u64() >= Some(10)
    });
    // several collection periods: nothing is collected, nobody claims to be in sync
    holds_for(
        "a collected tombstones c never acknowledged, or a said it is in sync",
        Duration::from_secs(4),
        || {
            let g = group(&c, "a");
            g["tombstones"].as_u64() >= Some(10) && g["in_sync"] == false
        },
    );
    for n in ["a", "b", "c"] {
        assert_eq!(group(&c, n)["in_sync"], false, "{n} says in sync");
        let out = c.cli(n, &["status"]);
        assert_eq!(out.status.code(), Some(1), "{n}'s status exit code");
    }

    std::fs::rename(&away, &real).unwrap();
    wait_until("c resumes", WAIT, || group(&c, "c")["error"].is_null());
    let mut tc = BTreeMap::new();
    wait_until("c has exactly the others' files", WAIT, || {
        tc = files(&c.tree("c"));
        tc == ta
    });
    for i in 0..10 {
        assert!(
            !c.path("c", &format!("f{i:02}")).exists(),
            "f{i:02} came back on c"
        );
    }
    c.wait_converged("after the disk came back");
    wait_until("everyone in sync again", WAIT, || c.all_in_sync());
    // now that every member acknowledged them, the tombstones go
    wait_until("a collects the tombstones", WAIT, || {
        group(&c, "a")["tombstones"].as_u64() == Some(0)
    });
}

/// Is this process root and can it mount a tmpfs (the commit-failure test needs both)?
fn can_mount() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(probe.path())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(probe.path()).status();
    }
    ok
}

/// Unmounts on drop, also when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// b's index lives on a small filesystem that fills up: its commits fail. Nothing is
/// acknowledged (a still counts b as behind, b is not in sync), and once space is freed
/// everything arrives, without a restart.
#[test]
fn a_commit_that_fails_acknowledges_nothing_and_everything_arrives_once_it_works() {
    if !can_mount() {
        eprintln!("SKIPPED: needs root and mount -t tmpfs");
        return;
    }
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    // b's state dir on a 4 MiB tmpfs (its key copied over)
    let state = c.node("b").state.clone();
    let keep = tempfile::tempdir().unwrap();
    let key = keep.path().join("node.key");
    std::fs::copy(state.join("node.key"), &key).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _m = Mount(state.clone());
    std::fs::copy(&key, state.join("node.key")).unwrap();
    write(&c.path("a", "first"), "first");
    c.start_all();
    c.wait_converged("start");
    wait_until("in sync", WAIT, || c.all_in_sync());

    // fill b's state filesystem
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output();
    // enough new entries that b's index must grow
    for i in 0..400 {
        write(
            &c.path("a", &format!("d{}/f{i}", i % 20)),
            format!("content {i}"),
        );
    }
    std::fs::remove_file(c.path("a", "first")).unwrap();
    wait_until("b cannot save a batch", WAIT, || {
        group(&c, "b")["warning"]
            .as_str()
            .is_some_and(|w| w.contains("could not apply and save"))
            || c.log("b").contains("could not apply and save")
    });
    // nothing is acknowledged: a still has changes for b, and nobody says in sync
    holds_for(
        "a counted unsaved changes as delivered",
        Duration::from_secs(2),
        || {
            let st = c.status("a").unwrap_or_default();
            st["groups"][0]["in_sync"] == false
                && st["peers"][0]["behind"].as_u64().is_some_and(|n| n > 0)
        },
    );
    assert_eq!(group(&c, "b")["in_sync"], false);

    // space comes back: the index is opened again and everything arrives
    std::fs::remove_file(&filler).unwrap();
    let ta = files(&c.tree("a"));
    wait_until("b gets everything once it can save", WAIT, || {
        files(&c.tree("b")) == ta
    });
    c.wait_converged("after the disk was freed");
    wait_until("in sync again", WAIT, || c.all_in_sync());
    assert!(
        c.log("b").contains("opened again after an I/O error"),
        "b recovered without reopening its index?"
    );
}

/// `sync --dry-run` on a node whose daemon is not running, its peers' daemons running:
/// nothing is sent, nothing changes anywhere (no file, no acknowledgement), and each path is
/// printed once with its peer and direction.
#[test]
fn a_dry_run_sends_nothing_changes_nothing_and_names_each_path_once() {
    let mut c = Cluster::new(&["a", "b", "c"], Opts::default());
    write(&c.path("a", "shared"), "shared");
    // a second file: removing the only one would empty the group path, which stops the group
    write(&c.path("a", "stays"), "stays");
    c.start_all();
    c.wait_converged("start");
    c.stop("a");
    write(&c.path("a", "only-on-a"), "new on a");
    write(&c.path("b", "only-on-b"), "new on b");
    std::fs::remove_file(c.path("c", "shared")).unwrap();
    c.wait_converged_at("/srv/www", &["b", "c"], "b and c agree");
    let (tb, tc) = (c.tree("b"), c.tree("c"));
    let ta = c.tree("a");
    let audit_b = c.audit("b").len();
    let out = c.cli("a", &["sync", "--dry-run", "--timeout", "20s"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let line = |p: &str| {
        lines
            .iter()
            .filter(|l| l.contains(p))
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("only-on-a").len(), 1, "{text}");
    assert!(
        line("only-on-a")[0].starts_with("send") && line("only-on-a")[0].contains("to b, c"),
        "{text}"
    );
    assert_eq!(line("only-on-b").len(), 1, "{text}");
    assert!(
        line("only-on-b")[0].starts_with("receive") && line("only-on-b")[0].contains("from b"),
        "{text}"
    );
    assert_eq!(line("/srv/www/shared").len(), 1, "{text}");
    assert!(line("/srv/www/shared")[0].starts_with("delete"), "{text}");
    // nothing changed anywhere
    assert_eq!(c.tree("a"), ta, "the dry run changed a");
    assert_eq!(c.tree("b"), tb, "the dry run sent something to b");
    assert_eq!(c.tree("c"), tc, "the dry run sent something to c");
    assert!(
        !c.audit("b")[audit_b..]
            .iter()
            .any(|r| r["kind"] == "apply" || r["kind"] == "delete"),
        "b applied something from a dry run"
    );
    // a real start afterwards still sends a's new file: the dry run recorded nothing
    c.start("a");
    c.wait_connected();
    c.wait_converged("after the real start");
    assert!(c.path("b", "only-on-a").exists());
    assert!(!c.path("a", "shared").exists());
}

/// A worker that panics on one item (a bug, simulated by a test hook: the item named `boom`
/// while the flag file exists): the batch's other items are applied and recorded, but its
/// position is not saved and nothing is acknowledged; once the item can be applied, it arrives.
#[test]
fn an_item_whose_worker_panicked_is_never_acknowledged() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    let flag = c.dir.path().join("panic-flag");
    c.set_env("b", "CLUSTERSYNC_TEST_PANIC_FLAG", flag.to_str().unwrap());
    c.start_all();
    write(&flag, "");
    write(&c.path("a", "boom"), "the item that panics");
    write(&c.path("a", "calm"), "an item of the same batch");
    wait_until("b applies the other item", WAIT, || {
        c.path("b", "calm").exists()
    });
    wait_until("b says why", WAIT, || {
        c.log("b").contains("worker writing it panicked")
    });
    holds_for(
        "the batch with the panicking item was acknowledged",
        Duration::from_secs(2),
        || {
            let st = c.status("a").unwrap_or_default();
            !c.path("b", "boom").exists()
                && st["groups"][0]["in_sync"] == false
                && st["peers"][0]["behind"].as_u64().is_some_and(|n| n > 0)
        },
    );
    std::fs::remove_file(&flag).unwrap();
    wait_until("the item arrives once it applies", WAIT, || {
        c.path("b", "boom").exists()
    });
    c.wait_converged("after the fix");
    wait_until("in sync", WAIT, || c.all_in_sync());
}

/// Copy a directory tree (the state dir of a stopped node).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// A node whose state dir is restored from an older copy while the others moved on and
/// collected the tombstones of their deletions: it resumes from a position below what was
/// collected, so it is sent the whole index (audited `resend-all`), never an incremental feed
/// with a silent gap; the deletions stay deleted everywhere and every node ends the same.
#[test]
fn a_state_dir_restored_from_an_old_copy_gets_the_whole_index_again() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    c.set_env_all("CLUSTERSYNC_TEST_GC_SECS", "1");
    for i in 0..12 {
        write(&c.path("a", &format!("f{i:02}")), format!("file {i}"));
    }
    c.start_all();
    c.wait_converged("start");
    wait_until("in sync", WAIT, || c.all_in_sync());
    // an old copy of b's state dir
    c.stop("b");
    let state = c.node("b").state.clone();
    let old = c.dir.path().join("b-state-old");
    copy_tree(&state, &old);
    c.start("b");
    c.wait_connected();
    // the others move on: deletions, collected once b acknowledged them
    for i in 0..5 {
        std::fs::remove_file(c.path("a", &format!("f{i:02}"))).unwrap();
    }
    write(&c.path("a", "later"), "written after the copy");
    c.wait_converged("after the deletions");
    wait_until("a collects the tombstones", WAIT, || {
        group(&c, "a")["tombstones"].as_u64() == Some(0)
    });
    // b comes back with its old state dir
    c.stop("b");
    copy_tree(&old, &state);
    c.start("b");
    c.wait_connected();
    wait_until("a sends b the whole index", WAIT, || {
        c.audit("a").iter().any(|r| r["kind"] == "resend-all")
    });
    c.wait_converged("after the restore");
    for i in 0..5 {
        for n in ["a", "b"] {
            assert!(
                !c.path(n, &format!("f{i:02}")).exists(),
                "f{i:02} came back on {n}"
            );
        }
    }
    assert!(c.path("b", "later").exists());
    wait_until("in sync again", WAIT, || c.all_in_sync());
}
