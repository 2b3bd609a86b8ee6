//! A node one release behind keeps syncing during a rolling upgrade: it speaks protocol 3
//! (an empty handshake payload, the previous release's messages), and this release speaks it
//! back. The fake node here is the previous release's wire behaviour, message for message:
//! what it sends is applied, what this release sends it decodes, and what protocol 3 cannot
//! carry (a name that is not UTF-8) is held back and reported in `status`, never mangled.

mod common;
use clustersync::fs::chunk::hash;
use clustersync::identity::Identity;
use clustersync::item::v3::{KindV3, MetaV3, RecordV3};
use clustersync::item::{ChunkRef, Owner, VersionVector};
use clustersync::net::transport::{self, Link};
use clustersync::net::v3::{GroupResume, Msg3, WireRecord};
use common::*;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

fn id_of(c: &Cluster, n: &str) -> String {
    String::from_utf8(c.cli(n, &["id"]).stdout)
        .unwrap()
        .trim()
        .to_string()
}

/// Connect to `a` as b, the way the previous release did (empty handshake payload).
async fn dial_as_previous_release(c: &Cluster) -> Link {
    let ident = Identity::load(&c.node("b").state.join("node.key")).unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.node("a").port))
        .await
        .unwrap();
    let link = transport::connect_speaking(stream, &ident, "a", &id_of(c, "a"), None)
        .await
        .expect("a node of the previous release is accepted");
    assert_eq!(
        link.version, 3,
        "the negotiated protocol with the previous release"
    );
    link
}

async fn send(link: &mut Link, m: &Msg3) {
    link.writer.send_frame(&m.encode().unwrap()).await.unwrap();
}

/// The next message from `a` before `deadline`, decoded as protocol 3 (`None`: nothing came,
/// or the link closed).
async fn next(link: &mut Link, deadline: tokio::time::Instant) -> Option<Msg3> {
    let frame = link.reader.recv_frame(Duration::from_secs(3600));
    match tokio::time::timeout_at(deadline, frame).await {
        Ok(Ok(f)) => Some(Msg3::decode(&f).expect("a speaks protocol 3 on this link")),
        _ => None,
    }
}

/// The previous release's `Hello`, from nothing.
fn hello_v3() -> Msg3 {
    Msg3::Hello {
        version: 3,
        node: "b".into(),
        index_id: 0xb0b,
        groups: vec![GroupResume {
            group: "www".into(),
            index_id: 0,
            seq: 0,
            head: 1,
        }],
    }
}

/// A small file made on b, as the previous release sends it (content inline).
fn file_v3(path: &str, content: &[u8], owner: Owner) -> WireRecord {
    let h = hash(content);
    let mut version = VersionVector::default();
    version.bump("b", 1);
    WireRecord {
        rec: RecordV3 {
            path: path.into(),
            version,
            origin: "b".into(),
            meta: Some(MetaV3 {
                kind: KindV3::File,
                mode: 0o640,
                mtime_s: 1_700_000_000,
                mtime_ns: 123_456_789,
                size: content.len() as u64,
                owner,
                hash: h,
                target: None,
                chunks: vec![ChunkRef {
                    hash: h,
                    len: content.len() as u32,
                }],
            }),
            beat: vec![],
        },
        inline: Some(content.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_previous_release_syncs_both_ways() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    // a Latin-1 name: this release syncs it, protocol 3 cannot carry it
    std::fs::write(
        c.path("a", "").join(OsStr::from_bytes(b"caf\xe9.txt")),
        "latin1",
    )
    .unwrap();
    c.start("a");
    let md = std::fs::metadata(c.path("a", "")).unwrap();
    let owner = Owner {
        uid: md.uid(),
        gid: md.gid(),
        user: None,
        group: None,
    };

    let mut link = dial_as_previous_release(&c).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    match next(&mut link, deadline).await {
        Some(Msg3::Hello {
            version: 3,
            node,
            groups,
            ..
        }) => {
            assert_eq!(node, "a");
            assert!(groups.iter().any(|g| g.group == "www"), "{groups:?}");
        }
        other => panic!("a did not open with a protocol-3 Hello: {other:?}"),
    }
    send(&mut link, &hello_v3()).await;
    let content = b"made by the previous release\n";
    send(
        &mut link,
        &Msg3::Index {
            group: "www".into(),
            records: vec![file_v3("/srv/www/from-b.txt", content, owner)],
            through: 1,
            head: 1,
        },
    )
    .await;

    // a applies our file and acknowledges it; its own items arrive as protocol-3 batches
    let mut records: Vec<WireRecord> = Vec::new();
    let mut acked = false;
    while !(acked && records.iter().any(|w| w.rec.path == "/srv/www/keep")) {
        let Some(m) = next(&mut link, deadline).await else {
            panic!(
                "a's items or its Ack did not come (acked: {acked}, records: {:?})",
                records.iter().map(|w| &w.rec.path).collect::<Vec<_>>()
            );
        };
        match m {
            Msg3::Index {
                group,
                records: r,
                through,
                ..
            } => {
                assert_eq!(group, "www");
                records.extend(r);
                send(&mut link, &Msg3::Ack { group, through }).await;
            }
            Msg3::Ack { group, through } => {
                assert_eq!((group.as_str(), through), ("www", 1));
                acked = true;
            }
            Msg3::SyncPing { token } if token != 0 => {
                send(&mut link, &Msg3::SyncPong { token }).await;
            }
            Msg3::SyncPing { .. } | Msg3::SyncPong { .. } => {}
            other => panic!("unexpected from a: {other:?}"),
        }
    }
    let written = c.path("a", "from-b.txt");
    assert_eq!(std::fs::read(&written).unwrap(), content);
    let wmd = std::fs::metadata(&written).unwrap();
    assert_eq!(wmd.permissions().mode() & 0o7777, 0o640);
    assert_eq!(
        (wmd.mtime(), wmd.mtime_nsec()),
        (1_700_000_000, 123_456_789)
    );

    let keep = records
        .iter()
        .find(|w| w.rec.path == "/srv/www/keep")
        .unwrap();
    assert_eq!(keep.rec.origin, "a");
    assert_eq!(
        keep.inline.as_deref(),
        Some(&b"x"[..]),
        "small files travel inline"
    );
    assert!(
        records.iter().all(|w| !w.rec.path.contains("caf")),
        "a name protocol 3 cannot carry was sent (mangled?): {:?}",
        records.iter().map(|w| &w.rec.path).collect::<Vec<_>>()
    );

    // status says which protocol the peer speaks and what it cannot take
    wait_until("a's status to report what b cannot take", WAIT, || {
        let Some(st) = c.status("a") else {
            return false;
        };
        let p = &st["peers"][0];
        p["name"] == "b"
            && p["connected"] == true
            && p["protocol"] == 3
            && p["not_sendable"].as_u64().unwrap_or(0) >= 1
            && p["error"]
                .as_str()
                .is_some_and(|e| e.contains("protocol 3") && e.contains("not UTF-8"))
    });
    // and it does not say in sync while b lacks that file (SPEC §4)
    let st = c.status("a").unwrap();
    assert_eq!(st["groups"][0]["in_sync"], false, "{st}");
    assert!(
        st["groups"][0]["withheld"]
            .to_string()
            .contains("held back from b"),
        "{st}"
    );
    assert_eq!(c.cli("a", &["status"]).status.code(), Some(1));

    // what came from b is not echoed back to it
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Some(m) = next(&mut link, quiet).await {
        if let Msg3::Index { records, .. } = m {
            assert!(
                records.iter().all(|w| w.rec.path != "/srv/www/from-b.txt"),
                "b's own change was sent back to it"
            );
        }
    }
    drop(link);

    // a protocol-3 peer is held to the same rules: a path outside the group is refused and
    // audited, and nothing is written (that the link then closes is hostile.rs's business)
    let mut link = dial_as_previous_release(&c).await;
    send(&mut link, &hello_v3()).await;
    send(
        &mut link,
        &Msg3::Index {
            group: "www".into(),
            records: vec![file_v3(
                "/etc/passwd",
                b"root::0:0::/:/bin/sh\n",
                Owner::default(),
            )],
            through: 2,
            head: 2,
        },
    )
    .await;
    wait_until("the refusal in a's audit log", WAIT, || {
        std::fs::read_to_string(c.node("a").state.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("\"refused\"") && l.contains("/etc/passwd"))
    });
    assert!(
        !c.node("a").root.join("etc").exists(),
        "written outside the group"
    );
    drop(link);
    assert!(c.status("a").is_some(), "daemon died");
    assert!(!c.log("a").contains("panicked"));
}

/// This release dials a node of the previous release: its AES-GCM offer is answered with
/// ChaChaPoly (the previous release knows no other suite), so it connects again with
/// ChaChaPoly at once, and the link speaks protocol 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_a_node_of_the_previous_release_falls_back_to_its_cipher() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    let ident = Identity::load(&c.node("b").state.join("node.key")).unwrap();
    // b's port, held by the fake previous-release node (b's daemon is never started)
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", c.node("b").port))
        .await
        .unwrap();
    c.start("a");
    let a_id = id_of(&c, "a");
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut attempts = Vec::new();
    let mut link = loop {
        let (s, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .expect("a dials b")
            .unwrap();
        match transport::accept_speaking(s, &ident, |id| id == a_id, None).await {
            Ok(link) => break link,
            Err(e) => attempts.push(e.to_string()),
        }
        assert!(attempts.len() < 5, "a does not fall back: {attempts:?}");
    };
    if transport::Suite::preferred() == transport::Suite::AesGcm {
        assert_eq!(
            attempts.len(),
            1,
            "one refused AES-GCM attempt: {attempts:?}"
        );
    }
    assert_eq!(
        (link.version, link.suite),
        (3, transport::Suite::ChaChaPoly)
    );
    match next(&mut link, deadline).await {
        Some(Msg3::Hello {
            version: 3, node, ..
        }) => assert_eq!(node, "a"),
        other => panic!("a did not open with a protocol-3 Hello: {other:?}"),
    }
    send(&mut link, &hello_v3()).await;
    // a's items arrive over the ChaChaPoly link
    let mut got_keep = false;
    while !got_keep {
        match next(&mut link, deadline).await {
            Some(Msg3::Index {
                group,
                records,
                through,
                ..
            }) => {
                got_keep |= records.iter().any(|w| w.rec.path == "/srv/www/keep");
                send(&mut link, &Msg3::Ack { group, through }).await;
            }
            Some(Msg3::SyncPing { token }) if token != 0 => {
                send(&mut link, &Msg3::SyncPong { token }).await;
            }
            Some(_) => {}
            None => panic!("a's items did not come over the fallback link"),
        }
    }
    wait_until(
        "a's status to show b connected with protocol 3",
        WAIT,
        || {
            c.status("a").is_some_and(|st| {
                let p = &st["peers"][0];
                p["name"] == "b" && p["connected"] == true && p["protocol"] == 3
            })
        },
    );
    drop(link);
    // a remembers what b speaks (issue 22 item 2): its next connect offers ChaChaPoly at once,
    // so b's release does not refuse (and audit) an AES-GCM attempt on every connect
    let deadline = tokio::time::Instant::now() + WAIT;
    let (s, _) = tokio::time::timeout_at(deadline, listener.accept())
        .await
        .expect("a dials b again")
        .unwrap();
    let again = transport::accept_speaking(s, &ident, |id| id == a_id, None)
        .await
        .expect("the next connect is accepted at once: a offers b's suite");
    assert_eq!(
        (again.version, again.suite),
        (3, transport::Suite::ChaChaPoly)
    );
    drop(again);
    assert!(!c.log("a").contains("panicked"));
}

/// Issue 22 item 3: protocol 3 refuses an item without a version vector (it audits it and
/// drops the link). A node that has just joined, or whose group was reset, holds its group
/// root unversioned until someone versions it; it must keep that to itself on a protocol-3
/// link and send only versioned items, in both states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_or_reset_node_sends_a_previous_release_node_only_versioned_items() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    std::fs::create_dir(c.path("a", "sub")).unwrap();
    write(&c.path("a", "sub/f"), "y");
    c.start("a");
    for state in ["new", "reset"] {
        let mut link = dial_as_previous_release(&c).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        match next(&mut link, deadline).await {
            Some(Msg3::Hello { version: 3, .. }) => {}
            other => panic!("{state}: a did not open with a protocol-3 Hello: {other:?}"),
        }
        send(&mut link, &hello_v3()).await;
        let mut paths = Vec::new();
        while !(paths.iter().any(|p| p == "/srv/www/keep")
            && paths.iter().any(|p| p == "/srv/www/sub/f"))
        {
            match next(&mut link, deadline).await {
                Some(Msg3::Index {
                    group,
                    records,
                    through,
                    ..
                }) => {
                    for w in &records {
                        // what the previous release's validate refuses first
                        assert!(
                            !w.rec.version.0.is_empty(),
                            "{state} node: {} sent without a version (protocol 3 refuses the batch)",
                            w.rec.path
                        );
                    }
                    paths.extend(records.into_iter().map(|w| w.rec.path));
                    send(&mut link, &Msg3::Ack { group, through }).await;
                }
                Some(Msg3::SyncPing { token }) if token != 0 => {
                    send(&mut link, &Msg3::SyncPong { token }).await;
                }
                Some(Msg3::Bye { reason }) => panic!("{state}: a closed the link: {reason}"),
                Some(_) => {}
                None => panic!("{state}: a's items did not come (got {paths:?})"),
            }
        }
        assert!(paths.iter().any(|p| p == "/srv/www/sub"), "{paths:?}");
        drop(link);
        if state == "new" {
            c.stop("a");
            let out = c.cli("a", &["reset", "www"]);
            assert!(out.status.success(), "{out:?}");
            c.start("a");
        }
    }
    assert!(!c.log("a").contains("panicked"));
}
