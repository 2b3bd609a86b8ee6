//! Every kind of change made on one node reaches the others (SPEC §5.1, §5.2).

mod common;
use common::*;
use std::os::unix::fs::{PermissionsExt, symlink};

#[test]
fn every_kind_of_change_propagates_between_three_nodes() {
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            group_extra: "exclude = [\"*.tmp\", \"cache/\"]".into(),
            tree_skip: vec!["*.tmp", "cache"],
            ..Default::default()
        },
    );
    write(
        &c.path("a", "keep.txt"),
        "anchor so the group path is never empty\n",
    );
    c.start_all();
    c.wait_converged("initial sync");

    // create, in a new directory tree, and names that are awkward
    write(&c.path("a", "dir one/ünïcødé ☃.txt"), "hello\n");
    write(&c.path("a", "-leading-dash"), "dash\n");
    write(&c.path("a", &"n".repeat(255)), "long name\n");
    let deep: String = (0..40).map(|i| format!("d{i}/")).collect();
    write(&c.path("a", &format!("{deep}bottom.txt")), "deep\n");
    std::fs::create_dir_all(c.path("a", "empty/dir")).unwrap();
    write(&c.path("a", "x.tmp"), "excluded\n");
    write(&c.path("a", "sub/cache/c.bin"), "excluded dir\n");
    let t = c.wait_converged("creates");
    assert!(t.contains_key("/dir one/ünïcødé ☃.txt"));
    assert!(t.contains_key("/empty/dir"));
    assert!(t.contains_key(&format!("/{deep}bottom.txt")));
    assert!(!c.path("b", "x.tmp").exists(), "excluded file synced");
    assert!(
        !c.path("b", "sub/cache").exists(),
        "excluded directory synced"
    );

    // modify on another node; mtime to the nanosecond; chmod on a third
    write(
        &c.path("b", "dir one/ünïcødé ☃.txt"),
        "hello, edited on b\n",
    );
    c.wait_converged("modify");
    let f = c.path("c", "-leading-dash");
    let st = std::process::Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06.123456789"])
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        c.path("c", "keep.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::fs::set_permissions(c.path("c", "empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let t = c.wait_converged("mtime and chmod");
    assert!(
        t["/-leading-dash"].contains(" 981173106.123456789 "),
        "{}",
        t["/-leading-dash"]
    );
    assert!(t["/keep.txt"].starts_with("file 640"));
    assert!(t["/empty"].starts_with("dir 700"));

    // chown by name (root runs the tests): daemon:daemon exists on Debian
    let out = std::process::Command::new("chown")
        .arg("daemon:daemon")
        .arg(c.path("a", "keep.txt"))
        .status()
        .unwrap();
    assert!(out.success());
    c.wait_converged("chown");
    use std::os::unix::fs::MetadataExt;
    let uid = nix_uid("daemon");
    assert_eq!(
        std::fs::metadata(c.path("b", "keep.txt")).unwrap().uid(),
        uid
    );

    // symlinks are synced as links, never followed; retargeting one
    symlink("../../etc/passwd", c.path("a", "link")).unwrap();
    c.wait_converged("symlink");
    assert_eq!(
        std::fs::read_link(c.path("b", "link")).unwrap().to_str(),
        Some("../../etc/passwd")
    );
    std::fs::remove_file(c.path("b", "link")).unwrap();
    symlink("keep.txt", c.path("b", "link")).unwrap();
    c.wait_converged("symlink retarget");
    assert_eq!(
        std::fs::read_link(c.path("c", "link")).unwrap().to_str(),
        Some("keep.txt")
    );

    // rename a file and a directory
    std::fs::rename(c.path("c", "dir one"), c.path("c", "dir two")).unwrap();
    std::fs::rename(c.path("a", "-leading-dash"), c.path("a", "renamed")).unwrap();
    let t = c.wait_converged("renames");
    assert!(t.contains_key("/dir two/ünïcødé ☃.txt") && !t.contains_key("/dir one"));
    assert!(t.contains_key("/renamed") && !t.contains_key("/-leading-dash"));

    // a file replaced by a directory, and back
    std::fs::remove_file(c.path("a", "renamed")).unwrap();
    write(&c.path("a", "renamed/inside"), "now a directory\n");
    let t = c.wait_converged("file -> dir");
    assert!(t["/renamed"].starts_with("dir"));
    std::fs::remove_dir_all(c.path("b", "renamed")).unwrap();
    write(&c.path("b", "renamed"), "a file again\n");
    let t = c.wait_converged("dir -> file");
    assert!(t["/renamed"].starts_with("file"));

    // deletes, including a whole tree
    std::fs::remove_dir_all(c.path("c", "d0")).unwrap();
    std::fs::remove_file(c.path("a", &"n".repeat(255))).unwrap();
    let t = c.wait_converged("deletes");
    assert!(!t.contains_key("/d0"));
    assert!(!t.keys().any(|k| k.starts_with("/nnnn")));

    // nothing of ours is left inside the group paths
    for n in ["a", "b", "c"] {
        assert!(
            !c.tree(n).keys().any(|k| k.contains(".clustersync")),
            "temp file left on {n}"
        );
    }
}

fn nix_uid(name: &str) -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .and_then(|l| l.split(':').nth(2))
        .and_then(|u| u.parse().ok())
        .expect("user daemon exists")
}
