//! Every protocol message (protocol 4 and the previous release's protocol 3) and every stored
//! index value survives encode → decode unchanged and encodes canonically; the decoders of
//! peer and disk bytes fail cleanly (never panic) on truncated, padded, damaged or arbitrary
//! input; the translation between protocol 3 and 4 loses nothing protocol 3 can carry; and the
//! escape used to print byte paths is reversible.
//!
//! The strategies generate what the new item type allows and the old one did not: keys and
//! symlink targets that are not UTF-8, extended attributes with raw values and POSIX ACLs.
//!
//! Failing cases proptest finds are kept in `tests/roundtrip.proptest-regressions`, which is
//! committed so they are replayed first on every run.
//!
//! The seeds of the fuzz targets (`fuzz/corpus/`) are generated from the samples in [`seeds`];
//! `fuzz_seeds_are_current` fails when a format change made them stale, and
//! `cargo test --test roundtrip -- --ignored write_fuzz_seeds` writes them again. The
//! `seed-v3-*` files are the exception: they are the bytes the previous release wrote
//! (protocol 3 frames, schema-3 index values, protocol-3 records), kept as they were committed
//! before engine v2; the test checks the protocol-3 and schema-3 types still produce exactly
//! those bytes, and nothing rewrites them.

use clustersync::accounts::v4::GroupRecord;
use clustersync::accounts::{Account, Aging, Dot, Group, Member, Members, Secret, User};
use clustersync::config::Config;
use clustersync::engine::apply::validate;
use clustersync::engine::group::GroupRt;
use clustersync::fs::xattr::{
    ACL_ACCESS, ACL_DEFAULT, Acl, AclEntry, AclQualifier, AclTag, Xattr, XattrValue,
};
use clustersync::item::v3::{
    ConflictInfoV3, EntryV3, KindV3, MetaV3, NotInV3, QuickStatV3, RecordV3,
};
use clustersync::item::{
    Body, ChunkRef, Entry, Hash, Item, Kind, Meta, Owner, VersionVector, name,
};
use clustersync::net::protocol::{
    CODEC_PLAIN, GroupHello, Msg, ProtocolError, SharedSettings, SumRow, WireItem,
};
use clustersync::net::v3::{GroupResume, Msg3, WireRecord, from_current, to_current};
use clustersync::store::{Aside, ConflictInfo, decode_entry, decode_quick, encode_entry};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;
use std::path::Path;

/// Cases per property: enough to cover every variant many times, small enough for a few seconds.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// The index path named in store errors (never opened).
const INDEX: &str = "/nonexistent/index.redb";

// ---------------------------------------------------------------------------------------------
// Strategies

/// Any text, including newlines, NULs and multi-byte characters, but short.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._-]{0,12}",
        proptest::string::string_regex("(?s).{0,24}").unwrap(),
    ]
}

/// Any bytes, short.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..24)
}

fn node_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        "[a-z][a-z0-9-]{0,10}",
        text(),
    ]
}

/// One name of a path: printable UTF-8, or any bytes but `/` and NUL (Latin-1 names and
/// broken UTF-8 among them).
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9 ._ü-]{1,12}".prop_map(String::into_bytes),
        1 => Just(b"caf\xe9.jpg".to_vec()),
        2 => vec(
            any::<u8>().prop_map(|b| if b == b'/' || b == 0 { b'_' } else { b }),
            1..12
        ),
    ]
}

/// Keys: logical paths under the group (often not UTF-8), and arbitrary bytes (not paths).
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(component(), 0..5).prop_map(|cs| {
            let mut k = b"/srv/www".to_vec();
            for c in cs {
                k.push(b'/');
                k.extend_from_slice(&c);
            }
            k
        }),
        1 => bytes(),
        1 => text().prop_map(String::into_bytes),
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

fn acl_tag() -> impl Strategy<Value = AclTag> {
    let q = || {
        (any::<u32>(), proptest::option::of(text()))
            .prop_map(|(id, name)| AclQualifier { id, name })
    };
    prop_oneof![
        Just(AclTag::UserObj),
        q().prop_map(AclTag::User),
        Just(AclTag::GroupObj),
        q().prop_map(AclTag::Group),
        Just(AclTag::Mask),
        Just(AclTag::Other),
    ]
}

/// ACLs as a peer may send them: well-formed or not (the codec must carry either; `validate`
/// judges).
fn acl() -> impl Strategy<Value = Acl> {
    vec(
        (acl_tag(), any::<u8>()).prop_map(|(tag, perm)| AclEntry { tag, perm }),
        0..6,
    )
    .prop_map(|entries| Acl { entries })
}

fn xattr() -> impl Strategy<Value = Xattr> {
    let name = prop_oneof![
        3 => "user\\.[a-z0-9._-]{1,16}".prop_map(String::into_bytes),
        1 => Just(ACL_ACCESS.to_vec()),
        1 => Just(ACL_DEFAULT.to_vec()),
        1 => bytes(),
    ];
    let value = prop_oneof![
        2 => vec(any::<u8>(), 0..64).prop_map(XattrValue::Raw),
        1 => acl().prop_map(XattrValue::Acl),
    ];
    (name, value).prop_map(|(name, value)| Xattr { name, value })
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        (
            kind(),
            any::<u32>(),
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
        ),
        owner(),
        hash(),
        proptest::option::of(prop_oneof![bytes(), text().prop_map(String::into_bytes)]),
        vec(chunk_ref(), 0..4),
        vec(xattr(), 0..3),
    )
        .prop_map(
            |((kind, mode, mtime_s, mtime_ns, size), owner, hash, target, chunks, xattrs)| Meta {
                kind,
                mode,
                mtime_s,
                mtime_ns,
                size,
                owner,
                hash,
                target,
                chunks,
                xattrs,
            },
        )
}

fn version_vector() -> impl Strategy<Value = VersionVector> {
    btree_map(node_name(), any::<u64>(), 0..5).prop_map(VersionVector)
}

/// A file's metadata, or now and then a managed group (the accounts pseudo-group rides the same
/// item).
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        8 => meta().prop_map(Body::Fs),
        1 => ("[a-z_][a-z0-9_-]{0,8}", any::<u32>(), vec("[a-z][a-z0-9]{0,6}", 0..3)).prop_map(
            |(name, gid, admins)| Body::Group(GroupRecord {
                name,
                gid,
                password: None,
                admins,
            })
        ),
        2 => account().prop_map(Body::Account),
    ]
}

/// An account item body of this release: a user, a group, or a member set with dots.
fn account() -> impl Strategy<Value = Account> {
    let opt = || proptest::option::of(any::<i64>());
    let user = (
        ("[a-z_][a-z0-9_@-]{0,8}", any::<u32>(), any::<u32>()),
        (".{0,12}", "/[a-z]{0,8}", "(/bin/[a-z]{1,5})?"),
        proptest::option::of("[!*$a-zA-Z0-9./]{0,20}"),
        (opt(), opt(), opt(), opt(), opt(), opt(), opt()),
        any::<i64>(),
    )
        .prop_map(
            |((name, uid, gid), (gecos, home, shell), hash, a, made)| Account::User {
                user: User {
                    name,
                    uid,
                    gid,
                    gecos,
                    home,
                    shell,
                    password: hash.map(Secret::new),
                    aging: Aging {
                        last_change: a.0,
                        min: a.1,
                        max: a.2,
                        warn: a.3,
                        inactive: a.4,
                        expire: a.5,
                        reserved: a.6,
                    },
                },
                made,
            },
        );
    let group = (
        "[a-z_][a-z0-9_-]{0,8}",
        any::<u32>(),
        proptest::option::of("[!*]"),
        vec("[a-z][a-z0-9]{0,6}", 0..3),
        any::<i64>(),
    )
        .prop_map(|(name, gid, hash, admins, made)| Account::Group {
            group: Group {
                name,
                gid,
                password: hash.map(Secret::new),
                admins,
            },
            made,
        });
    let members = (
        "[a-z_][a-z0-9_-]{0,8}",
        vec(
            ("[a-z][a-z0-9]{0,6}", vec((node_name(), any::<u64>()), 0..3)),
            0..4,
        ),
    )
        .prop_map(|(group, ms)| {
            Account::Members(Members {
                group,
                members: ms
                    .into_iter()
                    .map(|(user, dots)| Member {
                        user,
                        dots: dots
                            .into_iter()
                            .map(|(node, counter)| Dot { node, counter })
                            .collect(),
                    })
                    .collect(),
            })
        });
    prop_oneof![user, group, members]
}

fn item() -> impl Strategy<Value = Item> {
    (
        key(),
        version_vector(),
        node_name(),
        proptest::option::of(body()),
        vec(node_name(), 0..3),
    )
        .prop_map(|(key, version, origin, body, beat)| Item {
            key,
            version,
            origin,
            body,
            beat,
        })
}

fn inline() -> impl Strategy<Value = Option<Vec<u8>>> {
    proptest::option::of(vec(any::<u8>(), 0..64))
}

fn wire_item() -> impl Strategy<Value = WireItem> {
    (item(), inline()).prop_map(|(item, inline)| WireItem { item, inline })
}

fn settings() -> impl Strategy<Value = SharedSettings> {
    (
        (
            vec(node_name(), 0..3),
            vec(node_name(), 0..2),
            vec(text(), 0..3),
            vec(text(), 0..3),
            vec(text(), 0..2),
        ),
        (
            text(),
            text(),
            any::<bool>(),
            vec(text(), 0..2),
            vec(text(), 0..2),
        ),
    )
        .prop_map(
            |(
                (nodes, replicas, paths, exclude, include),
                (conflict, owners, xattrs, xattrs_include, xattrs_exclude),
            )| SharedSettings {
                nodes,
                replicas,
                paths,
                exclude,
                include,
                conflict,
                owners,
                xattrs,
                xattrs_include,
                xattrs_exclude,
                other: vec![],
            },
        )
}

fn group_hello() -> impl Strategy<Value = GroupHello> {
    (
        text(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        settings(),
    )
        .prop_map(
            |(group, (inc, resume_inc, resume_seq, head, pending), settings)| GroupHello {
                group,
                inc,
                resume_inc,
                resume_seq,
                head,
                pending,
                pending_bytes: pending.rotate_left(17),
                settings,
            },
        )
}

/// Every variant of [`Msg`] but `Index`, equally often.
fn msg_without_index() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (node_name(), vec(group_hello(), 0..3))
            .prop_map(|(node, groups)| Msg::Hello { node, groups }),
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
        any::<u64>().prop_map(|token| Msg::Ping { token }),
        any::<u64>().prop_map(|token| Msg::Pong { token }),
        text().prop_map(|reason| Msg::Bye { reason }),
    ]
}

fn sum_row() -> impl Strategy<Value = SumRow> {
    (vec(any::<u8>(), 0..40), any::<u128>(), any::<u64>()).prop_map(|(key, hash, count)| SumRow {
        key,
        hash,
        count,
    })
}

/// Every message protocol 5 added (anti-entropy), equally often.
fn msg5() -> impl Strategy<Value = Msg> {
    prop_oneof![
        (
            (any::<u64>(), text(), any::<u8>()),
            vec(any::<u8>(), 0..40),
            proptest::option::of(vec(any::<u8>(), 0..40)),
            proptest::option::of(sum_row()),
        )
            .prop_map(|((req, group, level), lo, hi, root)| Msg::Compare {
                req,
                group,
                level,
                lo,
                hi,
                root
            }),
        (
            (any::<u64>(), any::<u64>(), any::<bool>(), any::<bool>()),
            vec(sum_row(), 0..5)
        )
            .prop_map(|((req, head, quiet, more), rows)| Msg::Rows {
                req,
                head,
                quiet,
                rows,
                more
            }),
        (
            (any::<u64>(), text(), any::<bool>()),
            vec(key(), 0..4),
            vec(wire_item(), 0..3)
        )
            .prop_map(|((req, group, settle), keys, items)| Msg::Differ {
                req,
                group,
                keys,
                items,
                settle
            }),
        (any::<u64>(), any::<u64>(), vec(wire_item(), 0..3))
            .prop_map(|(req, head, items)| Msg::DifferItems { req, head, items }),
    ]
}

fn index_of(items: impl Strategy<Value = Vec<WireItem>>) -> impl Strategy<Value = Msg> {
    (text(), items, any::<u64>(), any::<u64>()).prop_map(|(group, items, through, head)| {
        Msg::Index {
            group,
            items,
            through,
            head,
        }
    })
}

/// Every variant of [`Msg`] (protocols 4 and 5); `Index` as often as all the others of
/// protocol 4 together, since it carries the items.
fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        2 => msg_without_index(),
        2 => index_of(vec(wire_item(), 0..4)),
        1 => msg5(),
    ]
}

fn kind_v3() -> impl Strategy<Value = KindV3> {
    prop_oneof![Just(KindV3::File), Just(KindV3::Dir), Just(KindV3::Symlink)]
}

fn meta_v3() -> impl Strategy<Value = MetaV3> {
    (
        (
            kind_v3(),
            any::<u32>(),
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
        ),
        owner(),
        hash(),
        proptest::option::of(text()),
        vec(chunk_ref(), 0..4),
    )
        .prop_map(
            |((kind, mode, mtime_s, mtime_ns, size), owner, hash, target, chunks)| MetaV3 {
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

/// Protocol 3's paths are strings: valid-looking ones and any text.
fn path_v3() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vec("[a-zA-Z0-9 ._ü-]{1,12}", 0..5)
            .prop_map(|c| format!("/srv/www/{}", c.join("/"))),
        1 => text(),
    ]
}

fn record_v3() -> impl Strategy<Value = RecordV3> {
    (
        path_v3(),
        version_vector(),
        node_name(),
        proptest::option::of(meta_v3()),
        vec(node_name(), 0..3),
    )
        .prop_map(|(path, version, origin, meta, beat)| RecordV3 {
            path,
            version,
            origin,
            meta,
            beat,
        })
}

fn wire_record() -> impl Strategy<Value = WireRecord> {
    (record_v3(), inline()).prop_map(|(rec, inline)| WireRecord { rec, inline })
}

fn group_resume() -> impl Strategy<Value = GroupResume> {
    (text(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(group, index_id, seq, head)| {
        GroupResume {
            group,
            index_id,
            seq,
            head,
        }
    })
}

/// Every variant of [`Msg3`] (protocol 3), equally often.
fn msg3() -> impl Strategy<Value = Msg3> {
    prop_oneof![
        (
            prop_oneof![Just(3u32), any::<u32>()],
            node_name(),
            any::<u64>(),
            vec(group_resume(), 0..4),
        )
            .prop_map(|(version, node, index_id, groups)| Msg3::Hello {
                version,
                node,
                index_id,
                groups,
            }),
        (text(), vec(wire_record(), 0..4), any::<u64>(), any::<u64>()).prop_map(
            |(group, records, through, head)| Msg3::Index {
                group,
                records,
                through,
                head,
            }
        ),
        (text(), any::<u64>()).prop_map(|(group, through)| Msg3::Ack { group, through }),
        (any::<u64>(), text(), vec(hash(), 0..5))
            .prop_map(|(req, group, hashes)| { Msg3::GetChunks { req, group, hashes } }),
        (
            any::<u64>(),
            vec(proptest::option::of(vec(any::<u8>(), 0..64)), 0..5)
        )
            .prop_map(|(req, data)| Msg3::Chunks { req, data }),
        any::<u64>().prop_map(|token| Msg3::SyncPing { token }),
        any::<u64>().prop_map(|token| Msg3::SyncPong { token }),
        text().prop_map(|reason| Msg3::Bye { reason }),
    ]
}

/// Messages of protocol 4 whose items protocol 3 can carry (UTF-8 names and link texts, no
/// attributes): exactly the items made from a protocol-3 record.
fn msg_v3_can_carry() -> impl Strategy<Value = Msg> {
    let item = (record_v3(), inline()).prop_map(|(r, inline)| WireItem {
        item: Item::from(r),
        inline,
    });
    prop_oneof![
        1 => msg_without_index(),
        2 => index_of(vec(item, 0..4)),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        item(),
        (any::<u64>(), any::<u64>(), any::<i64>(), any::<u32>()),
        proptest::option::of((node_name(), any::<u64>())),
        any::<bool>(),
    )
        .prop_map(|(item, (seq, ino, ctime_s, ctime_ns), from, fresh)| Entry {
            item,
            seq,
            ino,
            ctime_s,
            ctime_ns,
            from,
            fresh,
        })
}

fn conflict_info() -> impl Strategy<Value = ConflictInfo> {
    (
        vec(node_name(), 0..3),
        any::<bool>(),
        node_name(),
        proptest::option::of(text()),
        any::<i64>(),
        vec(item(), 0..3),
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

fn aside() -> impl Strategy<Value = Aside> {
    (
        item(),
        node_name(),
        any::<u64>(),
        text(),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(item, peer, peer_inc, error, attempts, since)| Aside {
            item,
            peer,
            peer_inc,
            error,
            attempts,
            since,
        })
}

/// Input for the "never panics" properties: random bytes, and random bytes behind the plain
/// codec byte (which reaches the postcard decoder of protocol 4 instead of the codec check).
fn frame_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..512),
        vec(any::<u8>(), 0..512).prop_map(|mut v| {
            v.insert(0, CODEC_PLAIN);
            v
        }),
    ]
}

/// Overwrite some bytes of `bytes` (at least one).
fn damage(bytes: &mut [u8], at: Vec<(Index, u8)>) {
    if bytes.is_empty() {
        return;
    }
    for (i, value) in at {
        let i = i.index(bytes.len());
        bytes[i] = value;
    }
}

fn damage_list() -> impl Strategy<Value = Vec<(Index, u8)>> {
    vec((any::<Index>(), any::<u8>()), 1..4)
}

// ---------------------------------------------------------------------------------------------
// Protocol 4

proptest! {
    #![proptest_config(config())]

    /// decode(encode(m)) == m, and encoding is canonical: the decoded message encodes to the
    /// same bytes. Every frame starts with the plain codec byte.
    #[test]
    fn every_message_roundtrips(m in msg()) {
        let bytes = m.encode().expect("encode");
        prop_assert_eq!(bytes[0], CODEC_PLAIN);
        let back = Msg::decode(&bytes).expect("decode of an encoding");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode().expect("re-encode"), bytes);
    }

    /// No strict prefix of a frame decodes (to this or any other message).
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
        prop_assert!(matches!(Msg::decode(&bytes), Err(ProtocolError::Trailing)));
    }

    /// A frame of a codec this build does not know (0 is plain, 1 zstd) is refused as such,
    /// whatever follows.
    #[test]
    fn unknown_codec_fails(m in msg(), codec in 2u8..) {
        let mut bytes = m.encode().expect("encode");
        bytes[0] = codec;
        prop_assert!(matches!(Msg::decode(&bytes), Err(ProtocolError::Codec(c)) if c == codec));
    }

    /// Arbitrary bytes never panic the decoder; whatever it accepts round-trips.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in frame_bytes()) {
        if let Ok(m) = Msg::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg::decode(&again).expect("decode"), m);
        }
    }

    /// A valid frame with some bytes overwritten never panics the decoder either (this reaches
    /// deeper into the message than random bytes do).
    #[test]
    fn damaged_encodings_never_panic(m in msg(), at in damage_list()) {
        let mut bytes = m.encode().expect("encode");
        damage(&mut bytes, at);
        if let Ok(m) = Msg::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg::decode(&again).expect("decode"), m);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol 3 (a node of the previous release), and the translation

proptest! {
    #![proptest_config(config())]

    /// decode(encode(m)) == m for protocol 3, canonically.
    #[test]
    fn every_v3_message_roundtrips(m in msg3()) {
        let bytes = m.encode().expect("encode");
        let back = Msg3::decode(&bytes).expect("decode of an encoding");
        prop_assert_eq!(&back, &m);
        prop_assert_eq!(back.encode().expect("re-encode"), bytes);
    }

    #[test]
    fn every_v3_truncation_fails(m in msg3()) {
        let bytes = m.encode().expect("encode");
        for len in 0..bytes.len() {
            prop_assert!(Msg3::decode(&bytes[..len]).is_err(), "{} of {} bytes decoded", len, bytes.len());
        }
    }

    #[test]
    fn v3_trailing_bytes_fail(m in msg3(), extra in vec(any::<u8>(), 1..16)) {
        let mut bytes = m.encode().expect("encode");
        bytes.extend_from_slice(&extra);
        prop_assert!(matches!(Msg3::decode(&bytes), Err(ProtocolError::Trailing)));
    }

    #[test]
    fn v3_arbitrary_bytes_never_panic(bytes in frame_bytes()) {
        if let Ok(m) = Msg3::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg3::decode(&again).expect("decode"), m);
        }
    }

    #[test]
    fn v3_damaged_encodings_never_panic(m in msg3(), at in damage_list()) {
        let mut bytes = m.encode().expect("encode");
        damage(&mut bytes, at);
        if let Ok(m) = Msg3::decode(&bytes) {
            let again = m.encode().expect("encode of a decoded message");
            prop_assert_eq!(Msg3::decode(&again).expect("decode"), m);
        }
    }

    /// What protocol 3 can carry crosses it unchanged, on the wire: current message → protocol
    /// 3 → frame → protocol 3 → current message is the identity (`Hello` is the link's own
    /// business and is not translated).
    #[test]
    fn v3_translation_is_the_identity_for_what_it_can_carry(m in msg_v3_can_carry()) {
        match from_current(&m) {
            None => prop_assert!(matches!(m, Msg::Hello { .. }), "only Hello is not translated: {:?}", m.kind()),
            Some(old) => {
                let frame = old.encode().expect("encode protocol 3");
                let back = to_current(Msg3::decode(&frame).expect("decode protocol 3"));
                prop_assert_eq!(back, Ok(m));
            }
        }
    }

    /// The other way: every protocol-3 message but `Hello` becomes a current message that
    /// translates back to exactly it; `Hello` is handed back untouched.
    #[test]
    fn every_v3_message_survives_the_current_form(m in msg3()) {
        match to_current(m.clone()) {
            Err(h) => {
                prop_assert!(matches!(m, Msg3::Hello { .. }), "only Hello is handed back");
                prop_assert_eq!(h, m);
            }
            Ok(cur) => prop_assert_eq!(from_current(&cur), Some(m)),
        }
    }

    /// For any message, the translation keeps exactly the items protocol 3 can carry, in
    /// order, and everything else of the message.
    #[test]
    fn v3_translation_drops_only_what_it_cannot_carry(m in msg()) {
        let Some(old) = from_current(&m) else {
            prop_assert!(
                matches!(m, Msg::Hello { .. }) || m.since() >= 5,
                "only Hello and protocol-5 messages are not translated: {:?}",
                m.kind()
            );
            return Ok(());
        };
        let expected = match m {
            Msg::Index { group, items, through, head } => Msg::Index {
                group,
                items: items
                    .into_iter()
                    .filter(|w| RecordV3::try_from(&w.item).is_ok())
                    .collect(),
                through,
                head,
            },
            other => other,
        };
        prop_assert_eq!(to_current(old), Ok(expected));
    }

    /// Protocol 3 refuses an item exactly when its key or link text is not UTF-8 (a name), it is
    /// an account (users and groups came with protocol 4) or it has extended attributes;
    /// otherwise the item comes back from a protocol-3 record as it was.
    #[test]
    fn what_protocol_3_cannot_carry(i in item()) {
        let name_ok = std::str::from_utf8(&i.key).is_ok()
            && i.meta()
                .and_then(|m| m.target.as_deref())
                .is_none_or(|t| std::str::from_utf8(t).is_ok());
        let attrs = i.meta().is_some_and(|m| !m.xattrs.is_empty());
        match RecordV3::try_from(&i) {
            Ok(r) => {
                prop_assert!(name_ok && !attrs);
                prop_assert_eq!(Item::from(r), i);
            }
            Err(NotInV3::Name) => prop_assert!(!name_ok),
            Err(NotInV3::Xattrs) => prop_assert!(attrs),
            Err(NotInV3::Account) => prop_assert!(
                name_ok && matches!(i.body, Some(Body::User(_) | Body::Group(_) | Body::Account(_)))
            ),
        }
    }

    /// A record of the previous release converts to the current item and back unchanged (the
    /// migration of an index and every protocol-3 batch rely on it).
    #[test]
    fn v3_records_convert_both_ways(r in record_v3()) {
        let i = Item::from(r.clone());
        prop_assert!(i.meta().is_none_or(|m| m.xattrs.is_empty()));
        prop_assert_eq!(RecordV3::try_from(&i), Ok(r));
    }
}

// ---------------------------------------------------------------------------------------------
// Stored values (index schema 4)

proptest! {
    #![proptest_config(config())]

    /// An `items` value (the quick-check view, then the entry) decodes back to the entry, its
    /// quick-check prefix decodes alone, encoding is canonical, and no strict prefix decodes.
    #[test]
    fn entry_roundtrips(e in entry()) {
        let p = Path::new(INDEX);
        let bytes = encode_entry(p, &e).expect("encode");
        let back = decode_entry(p, &e.item.key, &bytes).expect("decode");
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(decode_quick(p, &e.item.key, &bytes).expect("quick"), e.quick());
        prop_assert_eq!(encode_entry(p, &back).expect("re-encode"), bytes.clone());
        for len in 0..bytes.len() {
            prop_assert!(decode_entry(p, &e.item.key, &bytes[..len]).is_err(), "{} of {} bytes decoded", len, bytes.len());
        }
    }

    /// Bytes after a stored entry are refused (the decoder is strict).
    #[test]
    fn entry_trailing_bytes_fail(e in entry(), extra in vec(any::<u8>(), 1..16)) {
        let p = Path::new(INDEX);
        let mut bytes = encode_entry(p, &e).expect("encode");
        bytes.extend_from_slice(&extra);
        prop_assert!(decode_entry(p, &e.item.key, &bytes).is_err());
    }

    /// Damaged stored entries never panic either decoder; what decodes round-trips.
    #[test]
    fn damaged_entries_never_panic(e in entry(), at in damage_list()) {
        let p = Path::new(INDEX);
        let mut bytes = encode_entry(p, &e).expect("encode");
        damage(&mut bytes, at);
        let _ = decode_quick(p, &e.item.key, &bytes);
        if let Ok(d) = decode_entry(p, &e.item.key, &bytes) {
            let again = encode_entry(p, &d).expect("encode of a decoded entry");
            prop_assert_eq!(decode_entry(p, &d.item.key, &again).expect("decode"), d);
        }
    }

    /// Arbitrary bytes never panic the stored-value decoders.
    #[test]
    fn arbitrary_entry_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let p = Path::new(INDEX);
        let _ = decode_quick(p, b"/k", &bytes);
        if let Ok(d) = decode_entry(p, b"/k", &bytes) {
            let again = encode_entry(p, &d).expect("encode of a decoded entry");
            prop_assert_eq!(decode_entry(p, b"/k", &again).expect("decode"), d);
        }
        let _ = postcard::from_bytes::<ConflictInfo>(&bytes);
        let _ = postcard::from_bytes::<Aside>(&bytes);
    }

    /// A stored conflict (`conflicts4` table) round-trips, and no strict prefix decodes.
    #[test]
    fn conflict_info_roundtrips(c in conflict_info()) {
        let bytes = postcard::to_allocvec(&c).expect("encode");
        prop_assert_eq!(&postcard::from_bytes::<ConflictInfo>(&bytes).expect("decode"), &c);
        for len in 0..bytes.len() {
            prop_assert!(postcard::from_bytes::<ConflictInfo>(&bytes[..len]).is_err());
        }
    }

    /// A set-aside item (`aside` table) round-trips, and no strict prefix decodes.
    #[test]
    fn aside_roundtrips(a in aside()) {
        let bytes = postcard::to_allocvec(&a).expect("encode");
        prop_assert_eq!(&postcard::from_bytes::<Aside>(&bytes).expect("decode"), &a);
        for len in 0..bytes.len() {
            prop_assert!(postcard::from_bytes::<Aside>(&bytes[..len]).is_err());
        }
    }

    /// A schema-3 value (the previous release's index) converts as the migration does and is
    /// stored as a schema-4 entry that decodes back to the same entry.
    #[test]
    fn schema_3_entries_migrate(r in record_v3(), seq in any::<u64>(), ino in any::<u64>(), from in proptest::option::of(node_name())) {
        let old = EntryV3 { rec: r, seq, ino, ctime_s: 1, ctime_ns: 2, from };
        let bytes = postcard::to_allocvec(&old).expect("encode schema 3");
        let old: EntryV3 = postcard::from_bytes(&bytes).expect("decode schema 3");
        let e = Entry {
            item: old.rec.clone().into(),
            seq: old.seq,
            ino: old.ino,
            ctime_s: old.ctime_s,
            ctime_ns: old.ctime_ns,
            from: None,
            fresh: false,
        };
        let p = Path::new(INDEX);
        let row = encode_entry(p, &e).expect("encode");
        prop_assert_eq!(decode_entry(p, &e.item.key, &row).expect("decode"), e.clone());
        prop_assert_eq!(RecordV3::try_from(&e.item), Ok(old.rec));
    }
}

// ---------------------------------------------------------------------------------------------
// The escape of byte paths

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// `unescape(show(p)) == p` for any bytes, and what `show` writes has no control character
    /// (it goes into logs, JSON and terminals); valid UTF-8 without backslash or control
    /// characters is written as it is.
    #[test]
    fn escape_roundtrips(p in prop_oneof![vec(any::<u8>(), 0..64), key(), text().prop_map(String::into_bytes)]) {
        let shown = name::show(&p);
        prop_assert_eq!(name::unescape(&shown), p.clone(), "{}", shown);
        prop_assert!(!shown.bytes().any(|b| b < 0x20 || b == 0x7f), "{:?}", shown);
        if let Ok(s) = std::str::from_utf8(&p)
            && !s.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f)
        {
            prop_assert_eq!(&*shown, s);
        }
    }

    /// `unescape` is total: any text gives bytes, and text without a backslash is its own bytes.
    #[test]
    fn unescape_never_panics(s in text()) {
        let b = name::unescape(&s);
        if !s.contains('\\') {
            prop_assert_eq!(b, s.into_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed samples: the seeds of the fuzz targets

/// Fixed samples of every message and stored value: the seeds of the fuzz targets.
mod seeds {
    use super::*;
    use clustersync::fs::chunk::hash;

    pub fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        VersionVector(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    fn root() -> Owner {
        Owner {
            uid: 0,
            gid: 0,
            user: Some("root".into()),
            group: Some("root".into()),
        }
    }

    fn meta(kind: Kind, size: u64, h: Hash, target: Option<&[u8]>, chunks: &[(Hash, u32)]) -> Meta {
        Meta {
            kind,
            mode: if kind == Kind::Symlink { 0 } else { 0o644 },
            mtime_s: 1_700_000_000,
            mtime_ns: 123_456_789,
            size,
            owner: root(),
            hash: h,
            target: target.map(<[u8]>::to_vec),
            chunks: chunks
                .iter()
                .map(|&(hash, len)| ChunkRef { hash, len })
                .collect(),
            xattrs: vec![],
        }
    }

    fn item(key: &[u8], origin: &str, meta: Option<Meta>) -> Item {
        Item {
            key: key.to_vec(),
            version: vv(&[("a", 3), ("b", 1)]),
            origin: origin.into(),
            body: meta.map(Body::Fs),
            beat: vec![],
        }
    }

    fn small_file(key: &[u8], data: &[u8]) -> WireItem {
        let h = hash(data);
        let chunks: &[(Hash, u32)] = if data.is_empty() {
            &[]
        } else {
            &[(h, data.len() as u32)]
        };
        WireItem {
            item: item(
                key,
                "a",
                Some(meta(Kind::File, data.len() as u64, h, None, chunks)),
            ),
            inline: Some(data.to_vec()),
        }
    }

    fn link(key: &[u8], target: &[u8]) -> WireItem {
        WireItem {
            item: item(
                key,
                "a",
                Some(meta(
                    Kind::Symlink,
                    target.len() as u64,
                    hash(target),
                    Some(target),
                    &[],
                )),
            ),
            inline: None,
        }
    }

    /// A well-formed access ACL with a named user and group (what `getfacl` shows as
    /// `user::rwx user:alice:r-- group::r-x group:www:rw- mask::rwx other::---`).
    pub fn acl() -> Acl {
        let named = |id, name: &str| AclQualifier {
            id,
            name: Some(name.into()),
        };
        Acl {
            entries: vec![
                AclEntry {
                    tag: AclTag::UserObj,
                    perm: 7,
                },
                AclEntry {
                    tag: AclTag::User(named(1000, "alice")),
                    perm: 4,
                },
                AclEntry {
                    tag: AclTag::GroupObj,
                    perm: 5,
                },
                AclEntry {
                    tag: AclTag::Group(named(33, "www")),
                    perm: 6,
                },
                AclEntry {
                    tag: AclTag::Mask,
                    perm: 7,
                },
                AclEntry {
                    tag: AclTag::Other,
                    perm: 0,
                },
            ],
        }
    }

    /// Extended attributes as a node with `xattrs = true` reads them (sorted by name).
    pub fn xattrs() -> Vec<Xattr> {
        vec![
            Xattr {
                name: ACL_ACCESS.to_vec(),
                value: XattrValue::Acl(acl()),
            },
            Xattr {
                name: b"user.comment".to_vec(),
                value: XattrValue::Raw(b"caf\xe9 \x00binary".to_vec()),
            },
        ]
    }

    /// How `engine::apply::validate` judges an item of the `validate_item` target's group.
    pub enum Verdict {
        Accepted,
        /// Refused, with a piece of the reason.
        Refused(&'static str),
    }

    /// Items for the group of the `validate_item` target (`fuzz/fuzz_targets/validate_item.toml`:
    /// paths `/srv/www` and `/etc/hosts`, nodes `a` and `b`, no `xattrs`): the first ones
    /// accepted, the others each refused by a different check.
    pub fn items() -> Vec<(WireItem, Verdict)> {
        use Verdict::*;
        let mut gone = item(b"/srv/www/gone.txt", "b", None);
        gone.beat = vec!["a".into()];
        let mut v = vec![
            (
                small_file(b"/srv/www/index.html", b"<h1>hi</h1>\n"),
                Accepted,
            ),
            (
                small_file(b"/etc/hosts", b"127.0.0.1 localhost\n"),
                Accepted,
            ),
            (small_file(b"/srv/www/empty", b""), Accepted),
            (
                WireItem {
                    item: item(
                        b"/srv/www/big.bin",
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
                Accepted,
            ),
            (
                WireItem {
                    item: item(
                        b"/srv/www/sub",
                        "b",
                        Some(meta(Kind::Dir, 0, [0; 32], None, &[])),
                    ),
                    inline: None,
                },
                Accepted,
            ),
            (link(b"/srv/www/sub/link", b"../target"), Accepted),
            (
                WireItem {
                    item: gone,
                    inline: None,
                },
                Accepted,
            ),
            // a Latin-1 name and a link text that is not UTF-8: bytes as they are
            (small_file(b"/srv/www/caf\xe9.jpg", b"jpeg"), Accepted),
            (link(b"/srv/www/latin1-link", b"caf\xe9.jpg"), Accepted),
        ];
        let bad = small_file(b"/srv/www/a.tmp", b"x");
        v.push((bad.clone(), Refused("excluded")));
        let mut b = bad.clone();
        b.item.key = b"/srv/www/../etc/shadow".to_vec();
        v.push((b, Refused("'..' component")));
        let mut b = bad.clone();
        b.item.key = b"/srv/www/x".to_vec();
        b.item.origin = "z".into();
        v.push((b, Refused("unknown origin")));
        let mut b = bad.clone();
        b.item.key = b"/srv/www/x".to_vec();
        b.inline = Some(b"y".to_vec());
        v.push((b, Refused("inline content does not match")));
        let mut b = bad.clone();
        b.item.key = b"/etc/caf\xe9".to_vec();
        v.push((b, Refused("outside the group")));
        let mut b = bad.clone();
        b.item.key = b"/srv/www/a\0b".to_vec();
        v.push((b, Refused("NUL")));
        let mut b = small_file(b"/srv/www/attrs", b"x");
        if let Some(Body::Fs(m)) = &mut b.item.body {
            m.xattrs = xattrs();
        }
        v.push((b, Refused("without xattrs = true")));
        v.push((link(b"/srv/www/nul-link", b"a\0b"), Refused("bad symlink")));
        v
    }

    /// Group settings as a daemon with the config of the tests computes them.
    fn settings() -> SharedSettings {
        SharedSettings {
            nodes: vec!["a".into(), "b".into()],
            replicas: vec![],
            paths: vec!["/srv/www".into(), "/etc/hosts".into()],
            exclude: vec!["*.tmp".into()],
            include: vec![],
            conflict: "newest".into(),
            owners: "by-name".into(),
            xattrs: false,
            xattrs_include: vec![],
            xattrs_exclude: vec!["security.selinux".into()],
            other: vec![],
        }
    }

    pub fn messages() -> Vec<Msg> {
        let accepted: Vec<WireItem> = items()
            .into_iter()
            .filter(|(_, v)| matches!(v, Verdict::Accepted))
            .map(|(w, _)| w)
            .collect();
        let mut with_attrs = small_file(b"/srv/www/attrs", b"x");
        if let Some(Body::Fs(m)) = &mut with_attrs.item.body {
            m.xattrs = xattrs();
        }
        vec![
            Msg::Hello {
                node: "a".into(),
                groups: vec![
                    GroupHello {
                        group: "www".into(),
                        inc: 0x1234_5678_9abc_def0,
                        resume_inc: 7,
                        resume_seq: 9,
                        head: 11,
                        pending: 2,
                        pending_bytes: 8192,
                        settings: settings(),
                    },
                    GroupHello {
                        group: "etc".into(),
                        inc: 1,
                        resume_inc: 0,
                        resume_seq: 0,
                        head: 0,
                        pending: 0,
                        pending_bytes: 0,
                        settings: SharedSettings {
                            xattrs: true,
                            ..settings()
                        },
                    },
                ],
            },
            Msg::Index {
                group: "www".into(),
                items: accepted,
                through: 12,
                head: 12,
            },
            Msg::Index {
                group: "attrs".into(),
                items: vec![with_attrs],
                through: 13,
                head: 13,
            },
            Msg::Index {
                group: "www".into(),
                items: vec![],
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
            Msg::Ping { token: 5 },
            Msg::Pong { token: u64::MAX },
            Msg::Bye {
                reason: "no protocol version in common".into(),
            },
            Msg::Compare {
                req: 2,
                group: "www".into(),
                level: 6,
                lo: vec![],
                hi: None,
                root: Some(SumRow {
                    key: vec![],
                    hash: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                    count: 1_000_000,
                }),
            },
            Msg::Compare {
                req: 3,
                group: "www".into(),
                level: 0,
                lo: b"\0srv\0www\0a".to_vec(),
                hi: Some(b"\0srv\0www\0b".to_vec()),
                root: None,
            },
            Msg::Rows {
                req: 3,
                head: 17,
                quiet: true,
                rows: vec![
                    SumRow {
                        key: b"\0srv\0www\0a".to_vec(),
                        hash: 5,
                        count: 1,
                    },
                    SumRow {
                        key: b"\0srv\0www\0a\0x".to_vec(),
                        hash: u128::MAX,
                        count: 1,
                    },
                ],
                more: true,
            },
            Msg::Differ {
                req: 4,
                group: "www".into(),
                keys: vec![b"/srv/www/a".to_vec(), b"/srv/www/caf\xe9".to_vec()],
                items: vec![small_file(b"/srv/www/a", b"x")],
                settle: true,
            },
            Msg::DifferItems {
                req: 4,
                head: 18,
                items: vec![small_file(b"/srv/www/a", b"y")],
            },
        ]
    }

    /// Stored values of schema 4: `items` rows (with and without attributes, from a peer or
    /// not), a conflict with competing versions, a set-aside item.
    pub fn stored() -> Vec<Vec<u8>> {
        let p = Path::new(INDEX);
        let mut out = Vec::new();
        let mut all: Vec<Item> = items()
            .into_iter()
            .filter(|(_, v)| matches!(v, Verdict::Accepted))
            .map(|(w, _)| w.item)
            .collect();
        let mut attrs = small_file(b"/srv/www/attrs", b"x").item;
        if let Some(Body::Fs(m)) = &mut attrs.body {
            m.xattrs = xattrs();
        }
        all.push(attrs);
        for (i, item) in all.iter().enumerate() {
            let e = Entry {
                item: item.clone(),
                seq: 1000 + i as u64,
                ino: 123_456 + i as u64,
                ctime_s: 1_700_000_100,
                ctime_ns: 42,
                from: (i % 2 == 1).then(|| ("b".to_string(), 0xfeed)),
                fresh: i % 2 == 0,
            };
            out.push(encode_entry(p, &e).unwrap());
        }
        let c = ConflictInfo {
            nodes: vec!["a".into(), "b".into()],
            resolved: false,
            winner: String::new(),
            kept_as: Some("backup on a (clustersync backups /srv/www/index.html)".into()),
            time: 1_700_000_200,
            versions: all[..2].to_vec(),
        };
        out.push(postcard::to_allocvec(&c).unwrap());
        let a = Aside {
            item: all[7].clone(),
            peer: "b".into(),
            peer_inc: 0xfeed,
            error: "content not available from any connected peer".into(),
            attempts: 3,
            since: 1_700_000_300,
        };
        out.push(postcard::to_allocvec(&a).unwrap());
        out
    }

    // --- the previous release: the same samples as its own tests wrote them ---------------

    fn meta_v3(
        kind: KindV3,
        size: u64,
        h: Hash,
        target: Option<&str>,
        chunks: &[(Hash, u32)],
    ) -> MetaV3 {
        MetaV3 {
            kind,
            mode: if kind == KindV3::Symlink { 0 } else { 0o644 },
            mtime_s: 1_700_000_000,
            mtime_ns: 123_456_789,
            size,
            owner: root(),
            hash: h,
            target: target.map(String::from),
            chunks: chunks
                .iter()
                .map(|&(hash, len)| ChunkRef { hash, len })
                .collect(),
        }
    }

    fn record_v3(path: &str, origin: &str, meta: Option<MetaV3>) -> RecordV3 {
        RecordV3 {
            path: path.into(),
            version: vv(&[("a", 3), ("b", 1)]),
            origin: origin.into(),
            meta,
            beat: vec![],
        }
    }

    fn small_file_v3(path: &str, data: &[u8]) -> WireRecord {
        let h = hash(data);
        let chunks: &[(Hash, u32)] = if data.is_empty() {
            &[]
        } else {
            &[(h, data.len() as u32)]
        };
        WireRecord {
            rec: record_v3(
                path,
                "a",
                Some(meta_v3(KindV3::File, data.len() as u64, h, None, chunks)),
            ),
            inline: Some(data.to_vec()),
        }
    }

    /// The previous release's seed records (protocol 3): the first seven accepted by the
    /// group of `validate_item`, the others each refused by a different check.
    pub fn records_v3() -> Vec<(WireRecord, Verdict)> {
        use Verdict::*;
        let mut gone = record_v3("/srv/www/gone.txt", "b", None);
        gone.beat = vec!["a".into()];
        let mut v = vec![
            (
                small_file_v3("/srv/www/index.html", b"<h1>hi</h1>\n"),
                Accepted,
            ),
            (
                small_file_v3("/etc/hosts", b"127.0.0.1 localhost\n"),
                Accepted,
            ),
            (small_file_v3("/srv/www/empty", b""), Accepted),
            (
                WireRecord {
                    rec: record_v3(
                        "/srv/www/big.bin",
                        "b",
                        Some(meta_v3(
                            KindV3::File,
                            300_000,
                            [3; 32],
                            None,
                            &[([1; 32], 100_000), ([2; 32], 200_000)],
                        )),
                    ),
                    inline: None,
                },
                Accepted,
            ),
            (
                WireRecord {
                    rec: record_v3(
                        "/srv/www/sub",
                        "b",
                        Some(meta_v3(KindV3::Dir, 0, [0; 32], None, &[])),
                    ),
                    inline: None,
                },
                Accepted,
            ),
            (
                WireRecord {
                    rec: record_v3(
                        "/srv/www/sub/link",
                        "a",
                        Some(meta_v3(
                            KindV3::Symlink,
                            9,
                            hash(b"../target"),
                            Some("../target"),
                            &[],
                        )),
                    ),
                    inline: None,
                },
                Accepted,
            ),
            (
                WireRecord {
                    rec: gone,
                    inline: None,
                },
                Accepted,
            ),
        ];
        let mut bad = small_file_v3("/srv/www/a.tmp", b"x");
        v.push((bad.clone(), Refused("excluded")));
        bad.rec.path = "/srv/www/../etc/shadow".into();
        v.push((bad.clone(), Refused("'..' component")));
        bad.rec.path = "/srv/www/x".into();
        bad.rec.origin = "z".into();
        v.push((bad.clone(), Refused("unknown origin")));
        bad.rec.origin = "a".into();
        bad.inline = Some(b"y".to_vec());
        v.push((bad, Refused("inline content does not match")));
        v
    }

    pub fn messages_v3() -> Vec<Msg3> {
        vec![
            Msg3::Hello {
                version: 3,
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
            Msg3::Index {
                group: "www".into(),
                records: records_v3()[..7].iter().map(|(w, _)| w.clone()).collect(),
                through: 12,
                head: 12,
            },
            Msg3::Index {
                group: "www".into(),
                records: vec![],
                through: 0,
                head: 0,
            },
            Msg3::Ack {
                group: "www".into(),
                through: 12,
            },
            Msg3::GetChunks {
                req: 1,
                group: "www".into(),
                hashes: vec![[1; 32], [2; 32]],
            },
            Msg3::Chunks {
                req: 1,
                data: vec![None, Some(vec![1, 2, 3])],
            },
            Msg3::SyncPing { token: 5 },
            Msg3::SyncPong { token: u64::MAX },
            Msg3::Bye {
                reason: "protocol version 2 not supported".into(),
            },
        ]
    }

    fn quick_v3(e: &EntryV3) -> QuickStatV3 {
        let m = e.rec.meta.as_ref();
        QuickStatV3 {
            live: m.is_some(),
            kind: m.map(|m| m.kind),
            size: m.map_or(0, |m| m.size),
            mtime_s: m.map_or(0, |m| m.mtime_s),
            mtime_ns: m.map_or(0, |m| m.mtime_ns),
            mode: m.map_or(0, |m| m.mode),
            uid: m.map_or(0, |m| m.owner.uid),
            gid: m.map_or(0, |m| m.owner.gid),
            ino: e.ino,
            ctime_s: e.ctime_s,
            ctime_ns: e.ctime_ns,
        }
    }

    /// Schema-3 values as the previous release stored them: entries alone, `files` rows
    /// (quick-check view first), and a conflict.
    pub fn stored_v3() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (i, (w, _)) in records_v3().into_iter().take(7).enumerate() {
            let e = EntryV3 {
                rec: w.rec,
                seq: 1000 + i as u64,
                ino: 123_456 + i as u64,
                ctime_s: 1_700_000_100,
                ctime_ns: 42,
                from: (i % 2 == 1).then(|| "b".to_string()),
            };
            let body = postcard::to_allocvec(&e).unwrap();
            let mut row = postcard::to_allocvec(&quick_v3(&e)).unwrap();
            row.extend_from_slice(&body);
            out.push(body);
            out.push(row);
        }
        let c = ConflictInfoV3 {
            nodes: vec!["a".into(), "b".into()],
            resolved: false,
            winner: "a".into(),
            kept_as: Some("20240101T000000-b".into()),
            time: 1_700_000_200,
            versions: records_v3()
                .into_iter()
                .take(2)
                .map(|(w, _)| w.rec)
                .collect(),
        };
        out.push(postcard::to_allocvec(&c).unwrap());
        out
    }

    /// One seed file.
    pub struct Seed {
        pub target: &'static str,
        pub name: String,
        pub bytes: Vec<u8>,
        /// Bytes of the previous release: never rewritten.
        pub frozen: bool,
    }

    /// The seed files, by target and name.
    pub fn files() -> Vec<Seed> {
        let mut out = Vec::new();
        let mut add = |target, name, bytes, frozen| {
            out.push(Seed {
                target,
                name,
                bytes,
                frozen,
            })
        };
        for (i, m) in messages().iter().enumerate() {
            add(
                "decode_msg",
                format!("seed-{i:02}-{}", m.kind()),
                m.encode().unwrap(),
                false,
            );
        }
        let kind3 = |m: &Msg3| match m {
            Msg3::Hello { .. } => "Hello",
            Msg3::Index { .. } => "Index",
            Msg3::Ack { .. } => "Ack",
            Msg3::GetChunks { .. } => "GetChunks",
            Msg3::Chunks { .. } => "Chunks",
            Msg3::SyncPing { .. } => "SyncPing",
            Msg3::SyncPong { .. } => "SyncPong",
            Msg3::Bye { .. } => "Bye",
        };
        for (i, m) in messages_v3().iter().enumerate() {
            add(
                "decode_msg",
                format!("seed-v3-{i:02}-{}", kind3(m)),
                m.encode().unwrap(),
                true,
            );
        }
        for (i, b) in stored().into_iter().enumerate() {
            add("decode_entry", format!("seed-{i:02}"), b, false);
        }
        for (i, b) in stored_v3().into_iter().enumerate() {
            add("decode_entry", format!("seed-v3-{i:02}"), b, true);
        }
        for (i, (w, _)) in items().iter().enumerate() {
            add(
                "validate_item",
                format!("seed-{i:02}"),
                postcard::to_allocvec(w).unwrap(),
                false,
            );
        }
        for (i, (w, _)) in records_v3().iter().enumerate() {
            add(
                "validate_item",
                format!("seed-v3-{i:02}"),
                postcard::to_allocvec(w).unwrap(),
                true,
            );
        }
        out
    }
}

fn corpus_dir(target: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed fuzz seeds are what the samples encode to today (a format change makes them
/// stale: the fuzzers would start from inputs the decoders refuse), the previous release's
/// bytes are still what the protocol-3 and schema-3 types write, and the seed configs parse.
#[test]
fn fuzz_seeds_are_current() {
    for s in seeds::files() {
        let file = corpus_dir(s.target).join(&s.name);
        let on_disk = std::fs::read(&file).unwrap_or_default();
        if s.frozen {
            assert!(
                on_disk == s.bytes,
                "{}: the protocol-3/schema-3 types no longer write the bytes the previous release \
                 wrote; they must not change (a node one release behind would not understand us)",
                file.display()
            );
        } else {
            assert!(
                on_disk == s.bytes,
                "{} is stale or missing; run `cargo test --test roundtrip -- --ignored write_fuzz_seeds`",
                file.display()
            );
        }
    }
    for f in std::fs::read_dir(corpus_dir("config")).expect("fuzz/corpus/config") {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        if let Err(e) = Config::parse(&text, &f) {
            panic!("seed config no longer parses: {e}");
        }
    }
}

/// The frozen bytes of the previous release decode with the protocol-3 and schema-3 types,
/// and translate to current messages and entries: what a node one release behind sends, and
/// what an index it wrote holds, is understood.
#[test]
fn previous_release_bytes_decode() {
    for s in seeds::files().into_iter().filter(|s| s.frozen) {
        match s.target {
            "decode_msg" => {
                let m = Msg3::decode(&s.bytes).unwrap_or_else(|e| panic!("{}: {e}", s.name));
                if let Ok(cur) = to_current(m.clone()) {
                    assert_eq!(from_current(&cur), Some(m), "{}", s.name);
                }
                // a protocol-3 frame is not a protocol-4 frame that means something else
                if let Ok(m4) = Msg::decode(&s.bytes) {
                    panic!("{}: also decodes as protocol 4: {m4:?}", s.name);
                }
            }
            "decode_entry" => {
                let row = postcard::take_from_bytes::<QuickStatV3>(&s.bytes)
                    .ok()
                    .and_then(|(_, rest)| postcard::from_bytes::<EntryV3>(rest).ok());
                let alone = postcard::from_bytes::<EntryV3>(&s.bytes).ok();
                let conflict = postcard::from_bytes::<ConflictInfoV3>(&s.bytes).ok();
                assert!(
                    row.is_some() || alone.is_some() || conflict.is_some(),
                    "{}: no schema-3 value",
                    s.name
                );
            }
            "validate_item" => {
                let w: WireRecord =
                    postcard::from_bytes(&s.bytes).unwrap_or_else(|e| panic!("{}: {e}", s.name));
                assert_eq!(postcard::to_allocvec(&w).unwrap(), s.bytes, "{}", s.name);
            }
            t => panic!("unexpected frozen seed of {t}"),
        }
    }
}

/// The `validate_item` target's group, from the config file the target itself reads.
fn validate_item_group(xattrs: bool) -> GroupRt {
    let mut text = include_str!("../fuzz/fuzz_targets/validate_item.toml").to_string();
    if xattrs {
        text.push_str("xattrs = true\n");
    }
    let cfg =
        Config::parse(&text, Path::new("validate_item.toml")).expect("the fixed config parses");
    GroupRt::new(&cfg.groups["www"], "a").expect("the fixed patterns compile")
}

/// The `validate_item` seeds are judged as documented: accepted ones pass, each refused one
/// fails for its own reason (so the seeds reach every check), protocol-3 records the same way
/// once translated as a protocol-3 link translates them; with `xattrs = true` the item with
/// attributes is accepted.
#[test]
fn validate_item_seeds_are_judged_as_documented() {
    let g = validate_item_group(false);
    let known = |n: &str| n == "a" || n == "b";
    let judge = |w: &WireItem, verdict: &seeds::Verdict| {
        let r = validate(&g, w, &known);
        match (verdict, r) {
            (seeds::Verdict::Accepted, Ok(())) => {}
            (seeds::Verdict::Accepted, Err(e)) => panic!("{}: refused: {e}", w.item.show()),
            (seeds::Verdict::Refused(why), Ok(())) => {
                panic!("{}: accepted, not {why}", w.item.show())
            }
            (seeds::Verdict::Refused(why), Err(e)) => {
                assert!(
                    e.to_string().contains(why),
                    "{}: {e}, expected {why}",
                    w.item.show()
                )
            }
        }
    };
    for (w, verdict) in seeds::items() {
        judge(&w, &verdict);
    }
    for (w, verdict) in seeds::records_v3() {
        let w = WireItem {
            item: w.rec.into(),
            inline: w.inline,
        };
        judge(&w, &verdict);
    }
    let gx = validate_item_group(true);
    let with_attrs = seeds::items()
        .into_iter()
        .find(|(w, _)| w.item.key == b"/srv/www/attrs")
        .unwrap()
        .0;
    validate(&gx, &with_attrs, &known).expect("attributes in a group with xattrs = true");
}

/// Write the fuzz seeds again (after a change of the wire or index format). The previous
/// release's bytes (`seed-v3-*`) are left alone.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand after a format change"]
fn write_fuzz_seeds() {
    for target in ["decode_msg", "decode_entry", "validate_item"] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap();
            let n = f.file_name().to_string_lossy().into_owned();
            if n.starts_with("seed-") && !n.starts_with("seed-v3-") {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    }
    for s in seeds::files().into_iter().filter(|s| !s.frozen) {
        std::fs::write(corpus_dir(s.target).join(s.name), s.bytes).unwrap();
    }
}
