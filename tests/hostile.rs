//! A misbehaving peer with a valid key speaks the real protocol: every malformed or
//! unauthorised message closes that link, is written to the audit log, and never crashes the
//! daemon nor writes anything outside the group (SPEC §6; issue "Hardening" points 1 and 3).

mod common;
use clustersync::identity::Identity;
use clustersync::protocol::{GroupResume, Msg, PROTOCOL_VERSION, WireRecord};
use clustersync::record::{ChunkRef, Kind, Meta, Owner, Record};
use clustersync::transport;
use clustersync::version::VersionVector;
use common::*;
use std::time::Duration;

fn id_of(c: &Cluster, n: &str) -> String {
    String::from_utf8(c.cli(n, &["id"]).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn record(path: &str, content: &[u8]) -> WireRecord {
    let mut vv = VersionVector::default();
    vv.bump("b");
    let h = *blake3::hash(content).as_bytes();
    WireRecord {
        rec: Record {
            path: path.into(),
            version: vv,
            origin: "b".into(),
            beat: vec![],
            meta: Some(Meta {
                kind: Kind::File,
                mode: 0o644,
                mtime_s: 1_700_000_000,
                mtime_ns: 0,
                size: content.len() as u64,
                owner: Owner::default(),
                hash: h,
                target: None,
                chunks: vec![ChunkRef {
                    hash: h,
                    len: content.len() as u32,
                }],
            }),
        },
        inline: Some(content.to_vec()),
    }
}

/// Connect to `a` as `b` (with b's real key), exchange Hello, send `msgs`, and report whether
/// `a` closed the link within a few seconds.
async fn attack(c: &Cluster, msgs: Vec<Msg>, hello: bool) -> bool {
    let ident = Identity::load(&c.node("b").state.join("node.key")).unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.node("a").port))
        .await
        .unwrap();
    let mut link = transport::connect(stream, &ident, "a", &id_of(c, "a"))
        .await
        .unwrap();
    if hello {
        link.writer
            .send(&Msg::Hello {
                version: PROTOCOL_VERSION,
                node: "b".into(),
                index_id: 7,
                groups: vec![GroupResume {
                    group: "www".into(),
                    index_id: 0,
                    seq: 0,
                    head: 0,
                }],
            })
            .await
            .unwrap();
    }
    for m in msgs {
        if link.writer.send(&m).await.is_err() {
            return true;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, link.reader.recv()).await {
            Err(_) => return false,
            Ok(Err(_)) | Ok(Ok(Msg::Bye { .. })) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peer_is_refused_logged_and_harmless() {
    let mut c = Cluster::new(
        &["a", "b"],
        Opts {
            group_extra: "exclude = [\"*.tmp\"]".into(),
            ..Default::default()
        },
    );
    write(&c.path("a", "keep"), "x");
    c.start("a");
    let outside = c.dir.path().join("a/root/etc");
    let bad = |m: Msg| vec![m];
    let index = |group: &str, w: WireRecord| Msg::Index {
        group: group.into(),
        records: vec![w],
        through: 1,
        head: 1,
    };
    let mut tampered = record("/srv/www/tampered", b"real content");
    tampered.inline = Some(b"other content".to_vec());
    let mut from_stranger = record("/srv/www/ok-but-stranger", b"x");
    from_stranger.rec.origin = "mallory".into();
    let cases: Vec<(&str, Vec<Msg>, bool)> = vec![
        (
            "absolute path outside the group",
            bad(index(
                "www",
                record("/etc/passwd", b"root::0:0::/:/bin/sh\n"),
            )),
            true,
        ),
        (
            "dot-dot",
            bad(index("www", record("/srv/www/../../etc/passwd", b"x"))),
            true,
        ),
        (
            "NUL in a name",
            bad(index("www", record("/srv/www/a\0b", b"x"))),
            true,
        ),
        (
            "empty component",
            bad(index("www", record("/srv/www//x", b"x"))),
            true,
        ),
        (
            "relative path",
            bad(index("www", record("srv/www/x", b"x"))),
            true,
        ),
        (
            "excluded path",
            bad(index("www", record("/srv/www/evil.tmp", b"x"))),
            true,
        ),
        (
            "group not shared",
            bad(index("secret", record("/srv/www/x", b"x"))),
            true,
        ),
        (
            "content not matching its hash",
            bad(index("www", tampered)),
            true,
        ),
        ("unknown origin", bad(index("www", from_stranger)), true),
        (
            "too many chunks requested",
            bad(Msg::GetChunks {
                req: 1,
                group: "www".into(),
                hashes: vec![[0; 32]; 10_000],
            }),
            true,
        ),
        (
            "ack of what was never sent",
            bad(Msg::Ack {
                group: "www".into(),
                through: 1 << 40,
            }),
            true,
        ),
        (
            "second hello",
            bad(Msg::Hello {
                version: PROTOCOL_VERSION,
                node: "b".into(),
                index_id: 1,
                groups: vec![],
            }),
            true,
        ),
        (
            "answer to no request",
            bad(Msg::Chunks {
                req: 999,
                data: vec![],
            }),
            true,
        ),
        (
            "index before hello",
            bad(index("www", record("/srv/www/early", b"x"))),
            false,
        ),
        (
            "wrong protocol version",
            bad(Msg::Hello {
                version: 999,
                node: "b".into(),
                index_id: 1,
                groups: vec![],
            }),
            false,
        ),
        (
            "another node's name",
            bad(Msg::Hello {
                version: PROTOCOL_VERSION,
                node: "a".into(),
                index_id: 1,
                groups: vec![],
            }),
            false,
        ),
    ];
    for (what, msgs, hello) in cases {
        assert!(attack(&c, msgs, hello).await, "{what}: link not closed");
        assert!(c.status("a").is_some(), "{what}: daemon died");
    }
    // garbage and strangers cost little and are refused before any data
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.node("a").port))
            .await
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let _ = s.write_all(&bytes(3000, 9)).await;
    }
    let stranger = Identity::generate().unwrap();
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", c.node("a").port))
        .await
        .unwrap();
    let r = transport::connect(stream, &stranger, "a", &id_of(&c, "a")).await;
    if let Ok(mut l) = r {
        let got = tokio::time::timeout(Duration::from_secs(5), l.reader.recv()).await;
        assert!(
            !matches!(got, Ok(Ok(Msg::Hello { .. }))),
            "a stranger got a Hello"
        );
    }

    // nothing landed anywhere
    assert!(!outside.exists(), "something was written outside the group");
    let t = c.tree("a");
    assert_eq!(
        t.keys().filter(|k| *k != "/").collect::<Vec<_>>(),
        vec!["/keep"],
        "{t:?}"
    );
    let audit = std::fs::read_to_string(c.node("a").state.join("audit.log")).unwrap();
    assert!(audit.matches("\"refused\"").count() >= 10, "{audit}");
    assert!(!c.log("a").contains("panicked"));

    // and the real b still syncs normally afterwards
    write(&c.path("b", "legit"), "hello");
    c.start("b");
    c.wait_connected();
    c.wait_converged("real peer");
    assert!(c.path("a", "legit").exists());
}

#[test]
fn idle_and_flooding_connections_do_not_starve_real_peers() {
    let mut c = Cluster::new(&["a", "b"], Opts::default());
    write(&c.path("a", "keep"), "x");
    c.start("a");
    // 150 connections that never speak (slowloris) and 150 that connect and vanish
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(std::net::TcpStream::connect(("127.0.0.1", c.node("a").port)).unwrap());
        drop(std::net::TcpStream::connect(("127.0.0.1", c.node("a").port)).unwrap());
    }
    c.start("b");
    c.wait_connected();
    c.wait_converged("real peer despite the flood");
    assert!(c.status("a").is_some());
    drop(idle);
}
