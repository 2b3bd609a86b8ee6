//! Every protocol message and every stored index entry survives encode → decode unchanged, and
//! the decoders of peer bytes fail cleanly (never panic) on truncated, padded, damaged or
//! arbitrary input.
//!
//! Failing cases proptest finds are kept in `tests/roundtrip.proptest-regressions`, which is
//! committed so they are replayed first on every run.
//!
//! The seeds of the fuzz targets (`fuzz/corpus/`) are generated from the samples at the end of
//! this file; `fuzz_seeds_are_current` fails when a format change made them stale, and
//! `cargo test --test roundtrip -- --ignored write_fuzz_seeds` writes them again.

use clustersync::index::ConflictInfo;
use clustersync::protocol::{GroupResume, Msg, PROTOCOL_VERSION, WireRecord};
use clustersync::record::{ChunkRef, Entry, Hash, Kind, Meta, Owner, QuickStat, Record};
use clustersync::version::VersionVector;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;

/// Cases per property: enough to cover every variant many times, small enough for a few seconds.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// Any text, including newlines, NULs and multi-byte characters, but short.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,12}",
        proptest::string::string_regex("(?s).{0,24}").unwrap(),
    ]
}

fn node_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        "[a-z][a-z0-9-]{0,10}",
        text(),
    ]
}

/// Logical paths (valid ones and not).
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec("[a-zA-Z0-9 ._ü-]{1,12}", 0..5)
            .prop_map(|c| format!("/srv/www/{}", c.join("/"))),
        1 => text(),
    ]
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<Hash>()
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::File), Just(Kind::Dir), Just(Kind::Symlink)]
}

fn chunk_ref() -> impl Strategy<Value = ChunkRef> {
    (hash(), any::<u32>()).prop_map(|(hash, len)| ChunkRef { hash, len })
}

fn owner() -> impl Strategy<Value = Owner> {
    (
        any::<u32>(),
        any::<u32>(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(uid, gid, user, group)| Owner {
            uid,
            gid,
            user,
            group,
        })
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        kind(),
        any::<u32>(),
        any::<i64>(),
        any::<u32>(),
        any::<u64>(),
        owner(),
        hash(),
        proptest::option::of(text()),
        vec(chunk_ref(), 0..4),
    )
        .prop_map(
            |(kind, mode, mtime_s, mtime_ns, size, owner, hash, target, chunks)| Meta {
                kind,
                mode,
                mtime_s,
                mtime_ns,
                size,
                owner,
                hash,
                target,
                chunks,
            },
        )
}

fn version_vector() -> impl Strategy<Value = VersionVector> {
    btree_map(node_name(), any::<u64>(), 0..5).prop_map(VersionVector)
}

fn record() -> impl Strategy<Value = Record> {
    (
        path(),
        version_vector(),
        node_name(),
        proptest::option::of(meta()),
        vec(node_name(), 0..3),
    )
        .prop_map(|(path, version, origin, meta, beat)| Record {
            path,
            version,
            origin,
            meta,
            beat,
        })
}

fn wire_record() -> impl Strategy<Value = WireRecord> {
    (record(), proptest::option::of(vec(any::<u8>(), 0..64)))
        .prop_map(|(rec, inline)| WireRecord { rec, inline })
}

fn group_resume() -> impl Strategy<Value = GroupResume> {
    (text(), any::<u64>(), any::<u64>()).prop_map(|(group, index_id, seq)| GroupResume {
        group,
        index_id,
        seq,
        head: seq,
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        record(),
        any::<u64>(),
        any::<u64>(),
        any::<i64>(),
        any::<u32>(),
    )
        .prop_map(|(rec, seq, ino, ctime_s, ctime_ns)| Entry {
            from: None,
            rec,
            seq,
            ino,
            ctime_s,
            ctime_ns,
        })
}

fn conflict_info() -> impl Strategy<Value = ConflictInfo> {
    (
        vec(node_name(), 0..3),
        any::<bool>(),
        node_name(),
        proptest::option::of(text()),
        any::<i64>(),
        vec(record(), 0..3),
    )
        .prop_map(
            |(nodes, resolved, winner, kept_as, time, versions)| ConflictInfo {
                nodes,
                resolved,
                winner,
                kept_as,
                time,
                versions,
            },
        )
}

/// Every variant of [`Msg`], equally often.
fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (
            prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()],
            node_name(),
            any::<u64>(),
            vec(group_resume(), 0..4),
        )
            .prop_map(|(version, node, index_id, groups)| Msg::Hello {
                version,
                node,
                index_id,
                groups,
            }),
        (text(), vec(wire_record(), 0..4), any::<u64>()).prop_map(|(group, records, through)| {
            Msg::Index {
                group,
                records,
                through,
                head: through,
            }
        }),
        (text(), any::<u64>()).prop_map(|(group, through)| Msg::Ack { group, through }),
        (any::<u64>(), text(), vec(hash(), 0..5)).prop_map(|(req, group, hashes)| Msg::GetChunks {
            req,
            group,
            hashes
        }),
        (
            any::<u64>(),
            vec(proptest::option::of(vec(any::<u8>(), 0..64)), 0..5)
        )
            .prop_map(|(req, data)| Msg::Chunks { req, data }),
        any::<u64>().prop_map(|token| Msg::SyncPing { token }),
        any::<u64>().prop_map(|token| Msg::SyncPong { token }),
        text().prop_map(|reason| Msg::Bye { reason }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// decode(encode(m)) == m, and encoding is canonical: the decoded message encodes to the
    /// same bytes.
    #[test]
    fn every_message_roundtrips(m in msg()) {
        let bytes = m.encode().expect("encode");
        let back = Msg::decode(&bytes).expect("decode of an encoding");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode().expect("re-encode"), bytes);
    }

    /// No strict prefix of an encoding decodes (to this or any other message).
    #[test]
    fn every_truncation_fails(m in msg()) {
        let bytes = m.encode().expect("encode");
        for len in 0..bytes.len() {
            prop_assert!(
                Msg::decode(&bytes[..len]).is_err(),
                "{} of {} bytes of {:?} decoded", len, bytes.len(), m.kind()
            );
        }
    }

    /// Bytes after a complete message are refused.
    #[test]
    fn trailing_bytes_fail(m in msg(), extra in vec(any::<u8>(), 1..16)) {
        let mut bytes = m.encode().expect("encode");
        bytes.extend_from_slice(&extra);
        prop_assert!(Msg::decode(&bytes).is_err());
    }

    /// Arbitrary bytes never panic the decoder; whatever it accepts round-trips.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(m) = Msg::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg::decode(&again).expect("decode"), m);
        }
    }

    /// A valid encoding with some bytes overwritten never panics the decoder either (this
    /// reaches deeper into the message than random bytes do).
    #[test]
    fn damaged_encodings_never_panic(
        m in msg(),
        damage in vec((any::<Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = m.encode().expect("encode");
        if bytes.is_empty() {
            return Ok(());
        }
        for (at, value) in damage {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(m) = Msg::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg::decode(&again).expect("decode"), m);
        }
    }

    /// An index entry as stored on disk round-trips through postcard, and a truncated value is
    /// refused.
    #[test]
    fn entry_roundtrips(e in entry(), cut in any::<Index>()) {
        let bytes = postcard::to_allocvec(&e).expect("encode");
        let back: Entry = postcard::from_bytes(&bytes).expect("decode");
        prop_assert_eq!(&back, &e);
        let len = cut.index(bytes.len());
        prop_assert!(postcard::from_bytes::<Entry>(&bytes[..len]).is_err());
    }

    /// Damaged or arbitrary stored entries never panic the decoder.
    #[test]
    fn arbitrary_entry_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = postcard::from_bytes::<Entry>(&bytes);
    }

    /// The `files` table's value (the quick-check view, then the entry) decodes back to both,
    /// and damaged values never panic either decoder.
    #[test]
    fn stored_entry_layout_roundtrips(e in entry(), damage in vec((any::<Index>(), any::<u8>()), 0..3)) {
        let mut bytes = postcard::to_allocvec(&e.quick()).expect("encode quick");
        bytes.extend_from_slice(&postcard::to_allocvec(&e).expect("encode entry"));
        let (q, rest) = postcard::take_from_bytes::<QuickStat>(&bytes).expect("decode quick");
        prop_assert_eq!(q, e.quick());
        prop_assert_eq!(&postcard::from_bytes::<Entry>(rest).expect("decode entry"), &e);
        for (at, value) in damage {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok((_, rest)) = postcard::take_from_bytes::<QuickStat>(&bytes) {
            let _ = postcard::from_bytes::<Entry>(rest);
        }
    }

    /// A stored conflict (`conflicts` table) round-trips.
    #[test]
    fn conflict_info_roundtrips(c in conflict_info()) {
        let bytes = postcard::to_allocvec(&c).expect("encode");
        prop_assert_eq!(&postcard::from_bytes::<ConflictInfo>(&bytes).expect("decode"), &c);
    }
}

/// Fixed samples of every message and stored value: the seeds of the fuzz targets.
mod seeds {
    use super::*;
    use clustersync::chunk::hash;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    fn meta(
        kind: Kind,
        size: u64,
        hash: Hash,
        target: Option<&str>,
        chunks: &[(Hash, u32)],
    ) -> Meta {
        Meta {
            kind,
            mode: if kind == Kind::Symlink { 0 } else { 0o644 },
            mtime_s: 1_700_000_000,
            mtime_ns: 123_456_789,
            size,
            owner: Owner {
                uid: 0,
                gid: 0,
                user: Some("root".into()),
                group: Some("root".into()),
            },
            hash,
            target: target.map(String::from),
            chunks: chunks
                .iter()
                .map(|&(hash, len)| ChunkRef { hash, len })
                .collect(),
        }
    }

    fn record(path: &str, origin: &str, meta: Option<Meta>) -> Record {
        Record {
            path: path.into(),
            version: vv(&[("a", 3), ("b", 1)]),
            origin: origin.into(),
            meta,
            beat: vec![],
        }
    }

    fn small_file(path: &str, data: &[u8]) -> WireRecord {
        let h = hash(data);
        let chunks: &[(Hash, u32)] = if data.is_empty() {
            &[]
        } else {
            &[(h, data.len() as u32)]
        };
        WireRecord {
            rec: record(
                path,
                "a",
                Some(meta(Kind::File, data.len() as u64, h, None, chunks)),
            ),
            inline: Some(data.to_vec()),
        }
    }

    /// Records of the group of the `validate_record` target (paths `/srv/www` and
    /// `/etc/hosts`, nodes `a` and `b`): the first seven are accepted, the others each
    /// refused by a different check.
    pub fn records() -> Vec<WireRecord> {
        let mut gone = record("/srv/www/gone.txt", "b", None);
        gone.beat = vec!["a".into()];
        let mut v = vec![
            small_file("/srv/www/index.html", b"<h1>hi</h1>\n"),
            small_file("/etc/hosts", b"127.0.0.1 localhost\n"),
            small_file("/srv/www/empty", b""),
            WireRecord {
                rec: record(
                    "/srv/www/big.bin",
                    "b",
                    Some(meta(
                        Kind::File,
                        300_000,
                        [3; 32],
                        None,
                        &[([1; 32], 100_000), ([2; 32], 200_000)],
                    )),
                ),
                inline: None,
            },
            WireRecord {
                rec: record(
                    "/srv/www/sub",
                    "b",
                    Some(meta(Kind::Dir, 0, [0; 32], None, &[])),
                ),
                inline: None,
            },
            WireRecord {
                rec: record(
                    "/srv/www/sub/link",
                    "a",
                    Some(meta(
                        Kind::Symlink,
                        9,
                        hash(b"../target"),
                        Some("../target"),
                        &[],
                    )),
                ),
                inline: None,
            },
            WireRecord {
                rec: gone,
                inline: None,
            },
        ];
        let mut bad = small_file("/srv/www/a.tmp", b"x");
        v.push(bad.clone());
        bad.rec.path = "/srv/www/../etc/shadow".into();
        v.push(bad.clone());
        bad.rec.path = "/srv/www/x".into();
        bad.rec.origin = "z".into();
        v.push(bad.clone());
        bad.rec.origin = "a".into();
        bad.inline = Some(b"y".to_vec());
        v.push(bad);
        v
    }

    pub fn messages() -> Vec<Msg> {
        vec![
            Msg::Hello {
                version: PROTOCOL_VERSION,
                node: "a".into(),
                index_id: 0x1234_5678_9abc_def0,
                groups: vec![
                    GroupResume {
                        group: "www".into(),
                        index_id: 7,
                        seq: 9,
                        head: 11,
                    },
                    GroupResume {
                        group: "etc".into(),
                        index_id: 0,
                        seq: 0,
                        head: 0,
                    },
                ],
            },
            Msg::Index {
                group: "www".into(),
                records: records()[..7].to_vec(),
                through: 12,
                head: 12,
            },
            Msg::Index {
                group: "www".into(),
                records: vec![],
                through: 0,
                head: 0,
            },
            Msg::Ack {
                group: "www".into(),
                through: 12,
            },
            Msg::GetChunks {
                req: 1,
                group: "www".into(),
                hashes: vec![[1; 32], [2; 32]],
            },
            Msg::Chunks {
                req: 1,
                data: vec![None, Some(vec![1, 2, 3])],
            },
            Msg::SyncPing { token: 5 },
            Msg::SyncPong { token: u64::MAX },
            Msg::Bye {
                reason: "protocol version 2 not supported".into(),
            },
        ]
    }

    /// Stored values: entries alone, entries as the `files` table holds them (quick-check view
    /// first), and a conflict.
    pub fn stored() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, w) in records().into_iter().take(7).enumerate() {
            let e = Entry {
                rec: w.rec,
                seq: 1000 + i as u64,
                ino: 123_456 + i as u64,
                ctime_s: 1_700_000_100,
                ctime_ns: 42,
                from: (i % 2 == 1).then(|| "b".to_string()),
            };
            let body = postcard::to_allocvec(&e).unwrap();
            let mut row = postcard::to_allocvec(&e.quick()).unwrap();
            row.extend_from_slice(&body);
            out.push(body);
            out.push(row);
        }
        let c = ConflictInfo {
            nodes: vec!["a".into(), "b".into()],
            resolved: false,
            winner: "a".into(),
            kept_as: Some("20240101T000000-b".into()),
            time: 1_700_000_200,
            versions: records().into_iter().take(2).map(|w| w.rec).collect(),
        };
        out.push(postcard::to_allocvec(&c).unwrap());
        out
    }

    /// The seed files, by target and name.
    pub fn files() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, m) in messages().iter().enumerate() {
            out.push((
                "decode_msg",
                format!("seed-{i:02}-{}", m.kind()),
                m.encode().unwrap(),
            ));
        }
        for (i, b) in stored().into_iter().enumerate() {
            out.push(("decode_entry", format!("seed-{i:02}"), b));
        }
        for (i, w) in records().iter().enumerate() {
            out.push((
                "validate_record",
                format!("seed-{i:02}"),
                postcard::to_allocvec(w).unwrap(),
            ));
        }
        out
    }
}

fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed fuzz seeds are what the samples encode to today (a format change makes them
/// stale: the fuzzers would start from inputs the decoders refuse), and the seed configs parse.
#[test]
fn fuzz_seeds_are_current() {
    for (target, name, bytes) in seeds::files() {
        let file = corpus_dir(target).join(&name);
        let on_disk = std::fs::read(&file).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is stale or missing; run `cargo test --test roundtrip -- --ignored write_fuzz_seeds`",
            file.display()
        );
    }
    for f in std::fs::read_dir(corpus_dir("config")).expect("fuzz/corpus/config") {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        if let Err(e) = clustersync::config::Config::parse(&text, &f) {
            panic!("seed config no longer parses: {e}");
        }
    }
}

/// Write the fuzz seeds again (after a change of the wire or index format).
#[test]
#[ignore = "writes fuzz/corpus/; run by hand after a format change"]
fn write_fuzz_seeds() {
    for target in ["decode_msg", "decode_entry", "validate_record"] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            if f.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
    for (target, name, bytes) in seeds::files() {
        std::fs::write(corpus_dir(target).join(name), bytes).unwrap();
    }
}
