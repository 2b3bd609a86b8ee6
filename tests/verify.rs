//! Anti-entropy and `clustersync verify` (SPEC §4, §5.14) on real daemons: a divergence the
//! incremental feed cannot see (a node acknowledged a change it never applied, as a state dir
//! restored from an old copy or the stopped-group bug of the previous release leaves it) is
//! found by comparing index summaries and healed by the usual rules; `verify` says 0 on an
//! equal cluster, names the path and says 1 on a divergent one, 4 with a peer down; `--deep`
//! finds a file changed on disk while the daemon was down (size and mtime kept) and
//! `--repair` settles it as the docs say for full members and replicas.

mod common;

use clustersync::store::{Change, Extras, Store};
use common::*;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `verify` as node `n`, with its outputs for assertion messages.
fn verify(c: &Cluster, n: &str, args: &[&str]) -> (i32, String, String) {
    let mut a = vec!["verify"];
    a.extend_from_slice(args);
    let o = c.cli(n, &a);
    (code(&o), text(&o.stdout), text(&o.stderr))
}

/// Make `b` hold other content than `a` at `rel` under the same version vector, with `a`
/// believing `b` has everything: what a node that acknowledged a change it never applied
/// looks like (the feed will never send it again). Both daemons are stopped on return.
fn diverge(c: &mut Cluster, rel: &str, theirs: &[u8]) {
    let key = format!("{GP}/{rel}");
    c.cut_off("b", "a");
    write(&c.path("b", rel), theirs);
    let b_state = c.node("b").state.clone();
    wait_until("b to record its local change", WAIT, || {
        c.audit("b")
            .iter()
            .any(|l| l["kind"] == "local-change" && l["path"].as_str() == Some(key.as_str()))
    });
    c.stop("a");
    c.stop("b");
    let a_version = {
        let ix = Store::open(&c.node("a").state.join("index.redb")).unwrap();
        ix.get("www", key.as_bytes()).unwrap().unwrap().item.version
    };
    let (b_inc, b_head) = {
        let ix = Store::open(&b_state.join("index.redb")).unwrap();
        let mut e = ix.get("www", key.as_bytes()).unwrap().unwrap();
        // b's version is now a's again (with b's content): equal vectors, different content
        e.item.version = a_version;
        e.item.origin = "a".into();
        ix.commit(
            "www",
            vec![Change {
                entry: e,
                announce: false,
            }],
            Extras::default(),
        )
        .unwrap();
        (
            ix.incarnation("www").unwrap(),
            ix.group_head("www").unwrap(),
        )
    };
    // a believes it applied everything b has: b's pump will not send the change again
    let ix = Store::open(&c.node("a").state.join("index.redb")).unwrap();
    ix.commit_extras(
        "www",
        Extras {
            position: Some(("b".into(), b_inc, b_head)),
            ..Default::default()
        },
    )
    .unwrap();
    drop(ix);
    c.node("b").proxy.as_ref().unwrap().heal();
}

#[test]
fn a_divergence_the_feed_cannot_see_is_healed_by_comparing_summaries() {
    let _g = serial();
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            proxies: true,
            ..Default::default()
        },
    );
    c.start_all();
    write(&c.path("a", "f1"), b"the cluster's version\n");
    write(&c.path("a", "f2"), b"same everywhere\n");
    c.wait_converged("first files");
    diverge(&mut c, "f1", b"changed on b, acknowledged, never sent\n");
    c.start("a");
    c.start("b");
    // the comparison on connect finds f1 and settles it by the policy (newest: b's write)
    let tree = c.wait_converged("the comparison to heal f1");
    assert!(tree.contains_key("/f1"));
    assert_eq!(
        std::fs::read(c.path("a", "f1")).unwrap(),
        b"changed on b, acknowledged, never sent\n"
    );
    let key = format!("{GP}/f1");
    wait_until("a diverged audit line for f1", WAIT, || {
        ["a", "b"].iter().any(|n| {
            c.audit(n)
                .iter()
                .any(|l| l["kind"] == "diverged" && l["path"].as_str() == Some(key.as_str()))
        })
    });
    // the loser is kept and listed
    let conflicts = c.cli("a", &["conflicts", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&conflicts.stdout).unwrap();
    assert!(
        list["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"].as_str() == Some(key.as_str())),
        "{list}"
    );
    // each node's status says when it last compared with the other, and that it matched
    for (n, p) in [("a", "b"), ("b", "a")] {
        wait_until(
            &format!("{n}: last_verified with {p} matched"),
            WAIT,
            || {
                c.status(n).is_some_and(|st| {
                    let v = &group_of(&st, "www")["last_verified"][p];
                    v["matched"] == true && v["time"].is_string()
                })
            },
        );
    }
    let (code, out, err) = verify(&c, "a", &[]);
    assert_eq!(code, 0, "stdout {out}\nstderr {err}");
}

#[test]
fn verify_exit_codes_and_the_differing_path() {
    let _g = serial();
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            proxies: true,
            group_extra: "verify_every = \"0\"\n".into(),
            ..Default::default()
        },
    );
    c.start_all();
    for i in 0..20 {
        write(&c.path("a", &format!("d/f{i}")), format!("file {i}\n"));
    }
    c.wait_converged("files");
    let (code, out, err) = verify(&c, "a", &[]);
    assert_eq!(code, 0, "equal cluster: stdout {out}\nstderr {err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("the same everywhere"), "{err}");
    let (code, out, _) = verify(&c, "b", &["--json"]);
    assert_eq!(code, 0);
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rep["compared"][0]["matched"], true, "{rep}");

    diverge(&mut c, "d/f7", b"only b has this\n");
    c.start("a");
    c.start("b");
    c.wait_connected();
    // background comparisons are off here: the difference stays until verify --repair
    let (code, out, err) = verify(&c, "a", &[]);
    assert_eq!(code, 1, "stdout {out}\nstderr {err}");
    let line = format!("{GP}/d/f7: here file 7 bytes");
    assert!(out.starts_with(&line), "{out}");
    assert!(out.contains(", b file 16 bytes"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, out, _) = verify(&c, "b", &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("{GP}/d/f7: here file 16 bytes")),
        "{out}"
    );
    // nothing changed by looking
    assert_eq!(std::fs::read(c.path("a", "d/f7")).unwrap(), b"file 7\n");

    let (code, out, err) = verify(&c, "a", &["--repair"]);
    assert_eq!(
        code, 1,
        "differences were found (and settled): {out}\n{err}"
    );
    c.wait_converged("verify --repair");
    assert_eq!(
        std::fs::read(c.path("a", "d/f7")).unwrap(),
        b"only b has this\n"
    );
    for n in ["a", "b"] {
        let (code, out, err) = verify(&c, n, &[]);
        assert_eq!(code, 0, "{n} after repair: {out}\n{err}");
    }

    // a peer down: 4, and it is named
    c.stop("b");
    let (code, _, err) = verify(&c, "a", &["--timeout", "5s"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("with b"), "{err}");
    // usage
    let (code, _, err) = verify(&c, "a", &["nosuchgroup"]);
    assert_eq!(code, 2, "{err}");
    // no daemon: a plain error, not a verdict
    c.stop("a");
    let (code, _, err) = verify(&c, "a", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no daemon is running"), "{err}");
}

/// Overwrite `p` with `data` of the same size and put its mtime back: an edit made while the
/// daemon was down that the quick check cannot see.
fn tamper(p: &std::path::Path, data: &[u8]) {
    let md = std::fs::metadata(p).unwrap();
    assert_eq!(md.len(), data.len() as u64);
    let mtime = md.modified().unwrap();
    std::fs::write(p, data).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.set_modified(mtime).unwrap();
}

#[test]
fn deep_finds_a_file_changed_behind_the_index_and_repair_offers_it_on_a_full_member() {
    let _g = serial();
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    c.start_all();
    write(&c.path("a", "page.html"), b"<p>hello world</p>\n");
    write(&c.path("a", "other"), b"untouched\n");
    c.wait_converged("files");
    c.stop("b");
    tamper(&c.path("b", "page.html"), b"<p>HELLO WORLD</p>\n");
    c.start("b");
    c.wait_connected();
    // the index still describes the old content: summaries agree
    let (code, out, err) = verify(&c, "b", &[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = verify(&c, "b", &["--deep"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.starts_with(&format!("{GP}/page.html: here on disk file 19 bytes")),
        "{out}"
    );
    assert!(out.contains(", index file 19 bytes"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(err.contains("read again from disk"), "{err}");
    // a full member offers what its disk holds as a local change: it reaches the others
    let (code, out, err) = verify(&c, "b", &["--deep", "--repair"]);
    assert_eq!(code, 1, "{out}\n{err}");
    wait_until("a to receive b's bytes", WAIT, || {
        std::fs::read(c.path("a", "page.html")).ok().as_deref() == Some(b"<p>HELLO WORLD</p>\n")
    });
    c.wait_converged("after the repair");
    for n in ["a", "b"] {
        let (code, out, err) = verify(&c, n, &["--deep"]);
        assert_eq!(code, 0, "{n}: {out}\n{err}");
    }
    assert!(
        c.audit("b").iter().any(|l| l["kind"] == "diverged"
            && l["detail"].as_str().is_some_and(|d| d.contains("--deep")))
    );
}

#[test]
fn deep_repair_on_a_replica_puts_the_clusters_version_back() {
    let _g = serial();
    let mut c = Cluster::new(
        &["a", "r"],
        Opts {
            replicas: vec!["r"],
            ..Default::default()
        },
    );
    c.start_all();
    write(&c.path("a", "conf"), b"setting = 1\n");
    c.wait_converged("files");
    c.stop("r");
    tamper(&c.path("r", "conf"), b"setting = 9\n");
    c.start("r");
    c.wait_connected();
    let (code, out, err) = verify(&c, "r", &["--deep"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.starts_with(&format!("{GP}/conf: here on disk")),
        "{out}"
    );
    let (code, _, err) = verify(&c, "r", &["--deep", "--repair"]);
    assert_eq!(code, 1, "{err}");
    wait_until("r to hold the cluster's version again", WAIT, || {
        std::fs::read(c.path("r", "conf")).ok().as_deref() == Some(b"setting = 1\n")
    });
    assert_eq!(
        std::fs::read(c.path("a", "conf")).unwrap(),
        b"setting = 1\n"
    );
    // the local bytes were kept
    let kept = std::fs::read_dir(c.node("r").state.join("backups"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(kept > 0, "no backup kept on r");
    let (code, out, err) = verify(&c, "r", &["--deep"]);
    assert_eq!(code, 0, "{out}\n{err}");
}
