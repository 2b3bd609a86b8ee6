//! The replication model: version vectors decide, never clocks; concurrent changes converge
//! under the default policy; the same change is not a conflict; a delete loses against a
//! modify; content-defined chunks keep transfers small (SPEC §5.2, §5.4, §7).

mod common;
use common::*;

fn partitioned() -> Cluster {
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            proxies: true,
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    write(&c.path("a", "doc.txt"), "original\n");
    write(&c.path("a", "gone-or-edited"), "v1\n");
    c.start_all();
    c.wait_converged("start");
    c
}

fn cut_c(c: &Cluster) {
    c.cut_off("c", "a");
}

fn conflicts(c: &Cluster, n: &str) -> serde_json::Value {
    // conflicts are read from the index, so stop the daemon first
    let out = c.cli(n, &["conflicts", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn concurrent_edits_during_a_partition_converge_to_the_newest_and_the_loser_is_kept() {
    let mut c = partitioned();
    cut_c(&c);
    write(&c.path("c", "doc.txt"), "edited on c first\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    write(
        &c.path("a", "doc.txt"),
        "edited on a later (newest mtime)\n",
    );
    wait_until("b has a's edit", WAIT, || {
        std::fs::read_to_string(c.path("b", "doc.txt")).unwrap()
            == "edited on a later (newest mtime)\n"
    });
    // and a delete on one side against an edit on the other: the edit survives
    std::fs::remove_file(c.path("a", "gone-or-edited")).unwrap();
    write(
        &c.path("c", "gone-or-edited"),
        "v2 edited while a deleted it\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    c.node("c").proxy.as_ref().unwrap().heal();
    let t = c.wait_converged("after heal");
    assert_eq!(
        std::fs::read_to_string(c.path("c", "doc.txt")).unwrap(),
        "edited on a later (newest mtime)\n"
    );
    assert!(
        t.contains_key("/gone-or-edited"),
        "delete won against a modify"
    );
    assert_eq!(
        std::fs::read_to_string(c.path("a", "gone-or-edited")).unwrap(),
        "v2 edited while a deleted it\n"
    );
    // the losing version of doc.txt was kept on c, where it was overwritten
    let out = c.cli("c", &["backups", c.path("c", "doc.txt").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().count() >= 2, "no backup listed: {text}");
    let dest = c.dir.path().join("restored");
    let out = c.cli(
        "c",
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
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "edited on c first\n"
    );
    for n in ["a", "b", "c"] {
        c.stop(n);
    }
    let all: Vec<serde_json::Value> = ["a", "c"].iter().map(|n| conflicts(&c, n)).collect();
    let found = all.iter().any(|v| {
        v["conflicts"].as_array().is_some_and(|l| {
            l.iter().any(|x| {
                x["path"] == "/srv/www/doc.txt"
                    && x["resolved"] == true
                    && x["nodes"].as_array().unwrap().len() == 2
            })
        })
    });
    assert!(found, "conflict not listed: {all:?}");
}

#[test]
fn the_same_change_on_two_nodes_is_not_a_conflict() {
    let c = partitioned();
    cut_c(&c);
    let same = "identical edit\n";
    write(&c.path("a", "doc.txt"), same);
    write(&c.path("c", "doc.txt"), same);
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.node("c").proxy.as_ref().unwrap().heal();
    c.wait_converged("after heal");
    assert_eq!(
        std::fs::read_to_string(c.path("b", "doc.txt")).unwrap(),
        same
    );
    for n in ["a", "c"] {
        let log = c.log(n);
        assert!(
            !log.contains("conflict on /srv/www/doc.txt"),
            "{n} reported a conflict"
        );
    }
}

#[test]
fn renames_send_no_content_and_small_edits_send_little() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    let stats = |n: &str| c.status(n).unwrap()["transfer"].clone();
    let big = bytes(32 << 20, 3);
    write(&c.path("a", "big.bin"), &big);
    c.wait_converged("big file");
    let before = stats("b")["chunk_bytes_in"].as_u64().unwrap();
    assert!(
        before >= 32 << 20,
        "the big file did not come as chunks: {before}"
    );

    // rename: metadata only
    std::fs::rename(c.path("a", "big.bin"), c.path("a", "moved.bin")).unwrap();
    c.wait_converged("rename");
    let after = stats("b")["chunk_bytes_in"].as_u64().unwrap();
    assert_eq!(after, before, "a rename sent content");

    // a copy of existing content: reused locally too
    std::fs::copy(c.path("a", "moved.bin"), c.path("a", "copy.bin")).unwrap();
    c.wait_converged("copy");
    assert_eq!(
        stats("b")["chunk_bytes_in"].as_u64().unwrap(),
        after,
        "a copy sent content"
    );

    // a 1 MiB edit in the middle sends about 1 MiB
    let mut edited = big.clone();
    edited[10 << 20..11 << 20].copy_from_slice(&bytes(1 << 20, 99));
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.path("a", "moved.bin"))
        .unwrap();
    f.seek(SeekFrom::Start(10 << 20)).unwrap();
    f.write_all(&edited[10 << 20..11 << 20]).unwrap();
    drop(f);
    c.wait_converged("edit");
    let sent = stats("b")["chunk_bytes_in"].as_u64().unwrap() - after;
    assert!(sent >= 1 << 20, "edit not transferred? {sent}");
    assert!(
        sent < (1 << 20) + 1024 * 1024,
        "a 1 MiB edit sent {sent} bytes"
    );
    assert_eq!(std::fs::read(c.path("b", "moved.bin")).unwrap(), edited);
}
