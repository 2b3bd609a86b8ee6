//! Live change detection: files being written are sent only once stable; the inotify watch
//! limit degrades to rescans with one clear warning; `watch = false` plus `mark`.

mod common;
use common::*;
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn a_file_being_written_is_never_sent_half_written() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    let full = bytes(1 << 20, 5);
    let path = c.path("a", "growing.log");
    let mut f = std::fs::File::create(&path).unwrap();
    let peer = c.path("b", "growing.log");
    let mut observed_partial = None;
    for piece in full.chunks(64 * 1024) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        // pauses shorter than the write-quiet window, longer than the normal one
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(150) {
            if let Ok(d) = std::fs::read(&peer)
                && d != full
            {
                observed_partial = Some(d.len());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(f);
    wait_until("the complete file on b", WAIT, || {
        std::fs::read(&peer).is_ok_and(|d| d == full)
    });
    assert_eq!(observed_partial, None, "b saw a half-written file");
}

#[test]
fn watch_limit_degrades_to_rescans_with_one_warning() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("b", "d1/d2/d3/f"), "start");
    write(&c.path("b", "e1/g"), "start");
    // b may only watch 2 directories: the group path and one more
    c.set_env("b", "CLUSTERSYNC_TEST_MAX_WATCHES", "2");
    c.start_all();
    c.wait_converged("start");
    write(
        &c.path("b", "d1/d2/d3/f"),
        "changed in an unwatched directory",
    );
    write(&c.path("b", "e1/g"), "changed too");
    wait_until(
        "the change to reach a by rescan",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(c.path("a", "d1/d2/d3/f")).unwrap()
                == "changed in an unwatched directory"
                && std::fs::read_to_string(c.path("a", "e1/g")).unwrap() == "changed too"
        },
    );
    let log = c.log("b");
    assert_eq!(
        log.matches("inotify watch limit reached").count(),
        1,
        "{log}"
    );
    assert!(log.contains("max_user_watches"));
    assert!(!log.contains("panicked"));
}

#[test]
fn without_watching_changes_wait_for_mark_or_sync() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "watch = false\nrescan = \"0\"".into(),
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    write(&c.path("a", "marked"), "m");
    write(&c.path("a", "synced"), "s");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.path("b", "marked").exists(), "watch = false was ignored");
    let real = c.path("a", "marked");
    let out = c.cli("a", &["mark", real.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("marked file on b", WAIT, || c.path("b", "marked").exists());
    assert!(!c.path("b", "synced").exists());
    let out = c.cli("a", &["sync", "--timeout", "20s"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        c.path("b", "synced").exists(),
        "sync returned before b had the change"
    );
    // a path outside every group is refused
    let out = c.cli("a", &["mark", "/etc/passwd"]);
    assert!(!out.status.success());
}
