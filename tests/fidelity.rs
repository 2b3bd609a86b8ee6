//! Everything a file is (SPEC §5.1, issue 8): extended attributes and POSIX ACLs travel with
//! files and directories when `xattrs = true`, an attribute change alone is a change that sends
//! no content, a file created later in a directory with a default ACL inherits it on every
//! node, and names that are not UTF-8 sync as the bytes they are (created, renamed, deleted,
//! excluded by a pattern, conflicted, restored through their escaped form).

mod common;
use common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &str, args: &[&OsStr]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `getfattr -d -m -` of one file, without its header line.
fn xattrs_of(p: &Path) -> String {
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-", "--absolute-names", "-e", "hex"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("# file:") && !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `getfacl` of one file, without its header lines.
fn acl_of(p: &Path) -> String {
    let out = Command::new("getfacl")
        .args(["--omit-header", "--absolute-names"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_tools() -> bool {
    ["getfattr", "setfattr", "getfacl", "setfacl"]
        .iter()
        .all(|t| Command::new(t).arg("--version").output().is_ok())
}

fn counter(c: &Cluster, n: &str, k: &str) -> u64 {
    c.status(n).unwrap()["transfer"][k].as_u64().unwrap_or(0)
}

#[test]
fn attributes_and_acls_travel_and_an_acl_change_sends_no_content() {
    if !have_tools() {
        eprintln!("skipped: the attr and acl tools are not installed");
        return;
    }
    let mut c = Cluster::new(
        &["a", "b", "c"],
        Opts {
            group_extra: "xattrs = true".into(),
            ..Default::default()
        },
    );
    let f = c.path("a", "doc.txt");
    write(&f, "hello\n");
    run(
        "setfattr",
        &[
            OsStr::new("-n"),
            OsStr::new("user.origin"),
            OsStr::new("-v"),
            OsStr::new("web-upload"),
            f.as_os_str(),
        ],
    );
    run(
        "setfacl",
        &[OsStr::new("-m"), OsStr::new("u:daemon:rw"), f.as_os_str()],
    );
    let d = c.path("a", "uploads");
    std::fs::create_dir_all(&d).unwrap();
    run(
        "setfacl",
        &[
            OsStr::new("-d"),
            OsStr::new("-m"),
            OsStr::new("g:daemon:rwx"),
            d.as_os_str(),
        ],
    );
    c.start_all();
    c.wait_converged("start");
    for n in ["b", "c"] {
        wait_until(&format!("attributes on {n}"), WAIT, || {
            xattrs_of(&c.path(n, "doc.txt")) == xattrs_of(&f)
                && acl_of(&c.path(n, "uploads")) == acl_of(&d)
        });
        assert!(acl_of(&c.path(n, "doc.txt")).contains("user:daemon:rw-"));
        assert!(acl_of(&c.path(n, "uploads")).contains("default:group:daemon:rwx"));
    }
    // a file created later in the directory with a default ACL inherits it, on every node
    write(&d.join("new.jpg"), "jpeg");
    for n in ["b", "c"] {
        wait_until(&format!("inherited ACL on {n}"), WAIT, || {
            acl_of(&c.path(n, "uploads/new.jpg")).contains("group:daemon:")
        });
    }
    // an ACL change alone: a new version, and no content on the wire
    let before: u64 = ["b", "c"]
        .iter()
        .map(|n| counter(&c, n, "chunk_bytes_in") + counter(&c, n, "inline_bytes_in"))
        .sum();
    let sent_before = counter(&c, "a", "items_out");
    run(
        "setfacl",
        &[OsStr::new("-m"), OsStr::new("u:bin:r"), f.as_os_str()],
    );
    for n in ["b", "c"] {
        wait_until(&format!("ACL change on {n}"), WAIT, || {
            acl_of(&c.path(n, "doc.txt")).contains("user:bin:r--")
        });
    }
    assert!(counter(&c, "a", "items_out") > sent_before);
    let after: u64 = ["b", "c"]
        .iter()
        .map(|n| counter(&c, n, "chunk_bytes_in") + counter(&c, n, "inline_bytes_in"))
        .sum();
    assert_eq!(after, before, "an ACL change sent content");
    // removing an attribute is a change too
    run(
        "setfattr",
        &[OsStr::new("-x"), OsStr::new("user.origin"), f.as_os_str()],
    );
    for n in ["b", "c"] {
        wait_until(&format!("attribute removed on {n}"), WAIT, || {
            !xattrs_of(&c.path(n, "doc.txt")).contains("user.origin")
        });
    }
    c.wait_converged("after attribute changes");
}

fn latin1(c: &Cluster, n: &str, name: &[u8]) -> PathBuf {
    c.path(n, "").join(OsStr::from_bytes(name))
}

#[test]
fn names_that_are_not_utf8_sync_as_bytes() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "exclude = [\"*.tmp\"]\nconflict = \"newest\"".into(),
            proxies: true,
            tree_skip: vec!["*.tmp"],
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    c.start_all();
    c.wait_converged("start");
    // created
    write(&latin1(&c, "a", b"caf\xe9.jpg"), "coffee");
    wait_until("the Latin-1 name on b", WAIT, || {
        std::fs::read(latin1(&c, "b", b"caf\xe9.jpg"))
            .ok()
            .as_deref()
            == Some(&b"coffee"[..])
    });
    // excluded by a pattern
    write(&latin1(&c, "a", b"caf\xe9.tmp"), "temp");
    // renamed (into a directory with a non-UTF-8 name)
    std::fs::create_dir(latin1(&c, "a", b"d\xfcr")).unwrap();
    std::fs::rename(
        latin1(&c, "a", b"caf\xe9.jpg"),
        latin1(&c, "a", b"d\xfcr/th\xe9.jpg"),
    )
    .unwrap();
    wait_until("the rename on b", WAIT, || {
        latin1(&c, "b", b"d\xfcr/th\xe9.jpg").exists() && !latin1(&c, "b", b"caf\xe9.jpg").exists()
    });
    assert!(
        !latin1(&c, "b", b"caf\xe9.tmp").exists(),
        "an excluded name was synced"
    );
    // status and audit show the escaped form
    let audit = std::fs::read_to_string(c.node("b").state.join("audit.log")).unwrap();
    assert!(
        audit.contains("/srv/www/d\\\\xfcr/th\\\\xe9.jpg"),
        "{audit}"
    );
    // conflicted: both sides change it while apart; the newest wins everywhere, the loser kept
    c.cut_off("b", "a");
    write(&latin1(&c, "b", b"d\xfcr/th\xe9.jpg"), "b's version");
    std::thread::sleep(std::time::Duration::from_millis(30));
    write(&latin1(&c, "a", b"d\xfcr/th\xe9.jpg"), "a's later version");
    std::thread::sleep(std::time::Duration::from_millis(300));
    c.node("b").proxy.as_ref().unwrap().heal();
    c.wait_converged("after the conflict");
    assert_eq!(
        std::fs::read(latin1(&c, "b", b"d\xfcr/th\xe9.jpg")).unwrap(),
        b"a's later version"
    );
    let conflicts = c.cli("b", &["conflicts", "--json"]);
    let text = String::from_utf8_lossy(&conflicts.stdout);
    assert!(text.contains("d\\\\xfcr/th\\\\xe9.jpg"), "{text}");
    // restored through the escaped form given on the command line
    let shown = "/srv/www/d\\xfcr/th\\xe9.jpg";
    let out = c.cli("b", &["backups", shown]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("gen"));
    let out = c.cli("b", &["restore", shown]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the restored version on a", WAIT, || {
        std::fs::read(latin1(&c, "a", b"d\xfcr/th\xe9.jpg"))
            .ok()
            .as_deref()
            == Some(&b"b's version"[..])
    });
    // deleted
    std::fs::remove_dir_all(latin1(&c, "a", b"d\xfcr")).unwrap();
    wait_until("the delete on b", WAIT, || {
        !latin1(&c, "b", b"d\xfcr").exists()
    });
    c.wait_converged("end");
}
