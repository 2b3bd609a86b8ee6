//! Every protocol message and every stored index entry survives encode → decode unchanged, and
//! the decoders of peer bytes fail cleanly (never panic) on truncated, padded, damaged or
//! arbitrary input.
//!
//! Failing cases proptest finds are kept in `tests/roundtrip.proptest-regressions`, which is
//! committed so they are replayed first on every run.

use clustersync::protocol::{GroupResume, Msg, PROTOCOL_VERSION, WireRecord};
use clustersync::record::{ChunkRef, Entry, Hash, Kind, Meta, Owner, Record};
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
            rec,
            seq,
            ino,
            ctime_s,
            ctime_ns,
        })
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
}
