//! The peer wire protocol: every message two nodes exchange, and its version.
//!
//! **Version [`MAX_VERSION`] (5)**; this build also speaks 4 (the previous release, 0.2) and
//! [`MIN_VERSION`] (3, release 0.1, through `net::v3`), so a rolling upgrade keeps syncing. The
//! version of a link is agreed in the transport handshake (`transport::Versions`).
//!
//! Protocol 5 is protocol 4 with messages added after the last variant of protocol 4 (`Bye`):
//! every protocol-4 message encodes the same in both, and a link of version 4 never sends a
//! message of 5 (see `Msg::since`).
//!
//! A message is one frame: a codec byte ([`CODEC_PLAIN`], or [`CODEC_ZSTD`] when compression
//! pays: the sender tries zstd at a fast level on a sample and sends plain what does not
//! shrink by a tenth, so already-compressed content costs little) followed by the postcard
//! encoding of [`Msg`]. Decoding is strict: a frame larger than
//! [`MAX_FRAME`] is rejected before anything is allocated, trailing bytes are an error, and
//! every item, path, name and list in a message is checked by the receiver before use.
//!
//! Conversation (symmetric after the handshake):
//! 1. both send `Hello`: the node's name and, per group it shares with the peer, the group's
//!    incarnation here, how far this node applied the peer's items (the peer's incarnation
//!    and seq), this node's head, how many items it holds above the peer's position, and the
//!    settings both must agree on ([`SharedSettings`]);
//! 2. each side streams `Index` batches of its items above that position, and keeps streaming
//!    new ones as they happen; at most [`MAX_UNACKED`] batches per group are unacknowledged;
//! 3. the receiver applies a batch (content comes inline for small files the sender changed
//!    itself, otherwise by `GetChunks`/`Chunks` from any peer that has it) and answers `Ack`;
//! 4. `Ping`/`Pong` mark a point in the stream for `clustersync sync` (token 0 is a
//!    keep-alive and gets no answer);
//! 5. (protocol 5) `Compare`/`Rows` walk down two summaries of a group to the keys that differ,
//!    `Differ`/`DifferItems` exchange the entries of those keys (`engine::verify`).

use crate::item::{ChunkRef, Hash, Item};
use serde::{Deserialize, Serialize};

/// Highest protocol version this build speaks.
pub const MAX_VERSION: u32 = 5;
/// Lowest protocol version this build speaks (the previous release).
pub const MIN_VERSION: u32 = 3;
/// Largest accepted message, encoded.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Items per `Index` batch at most.
pub const MAX_BATCH_ITEMS: usize = 2000;
/// Inline bytes per `Index` batch at most (the sender stops adding inline data beyond this).
pub const MAX_BATCH_INLINE: usize = 4 * 1024 * 1024;
/// Files up to this size may travel inside the `Index` batch.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Chunks per `GetChunks` at most.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;
/// Unacknowledged `Index` batches a sender may have in flight per group.
pub const MAX_UNACKED: usize = 4;
/// Groups in one `Hello` at most.
pub const MAX_GROUPS: usize = 4096;
/// A frame of plain postcard.
pub const CODEC_PLAIN: u8 = 0;
/// A frame of zstd-compressed postcard (decompressed size at most [`MAX_FRAME`]).
pub const CODEC_ZSTD: u8 = 1;
/// Frames smaller than this are never compressed.
pub const COMPRESS_MIN: usize = 1024;

/// The settings of a group that every member must agree on (SPEC §5.11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SharedSettings {
    /// Full members, sorted.
    pub nodes: Vec<String>,
    /// Receive-only members, sorted.
    pub replicas: Vec<String>,
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub include: Vec<String>,
    pub conflict: String,
    pub owners: String,
    pub xattrs: bool,
    pub xattrs_include: Vec<String>,
    pub xattrs_exclude: Vec<String>,
    /// Further settings as (key, value), e.g. the accounts policy.
    pub other: Vec<(String, String)>,
}

impl SharedSettings {
    /// The first setting that differs, named as in the config: `(key, ours, theirs)`.
    pub fn diff(&self, theirs: &SharedSettings) -> Option<(&'static str, String, String)> {
        let l = |v: &[String]| format!("{v:?}");
        let checks: [(&'static str, String, String); 10] = [
            ("nodes", l(&self.nodes), l(&theirs.nodes)),
            ("replicas", l(&self.replicas), l(&theirs.replicas)),
            ("paths", l(&self.paths), l(&theirs.paths)),
            ("exclude", l(&self.exclude), l(&theirs.exclude)),
            ("include", l(&self.include), l(&theirs.include)),
            ("conflict", self.conflict.clone(), theirs.conflict.clone()),
            ("owners", self.owners.clone(), theirs.owners.clone()),
            ("xattrs", self.xattrs.to_string(), theirs.xattrs.to_string()),
            (
                "xattrs_include",
                l(&self.xattrs_include),
                l(&theirs.xattrs_include),
            ),
            (
                "xattrs_exclude",
                l(&self.xattrs_exclude),
                l(&theirs.xattrs_exclude),
            ),
        ];
        if let Some(d) = checks.into_iter().find(|(_, a, b)| a != b) {
            return Some(d);
        }
        if self.other != theirs.other {
            for (k, v) in &self.other {
                let t = theirs
                    .other
                    .iter()
                    .find(|(tk, _)| tk == k)
                    .map(|(_, tv)| tv.clone())
                    .unwrap_or_else(|| "not set".into());
                if *v != t {
                    return Some(("accounts", format!("{k} = {v}"), format!("{k} = {t}")));
                }
            }
            return Some((
                "accounts",
                format!("{:?}", self.other),
                format!("{:?}", theirs.other),
            ));
        }
        None
    }
}

/// Per group, what the sender of `Hello` tells the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHello {
    pub group: String,
    /// The sender's incarnation of the group.
    pub inc: u64,
    /// The receiver's incarnation the position below refers to (0 = none).
    pub resume_inc: u64,
    /// The receiver's last seq the sender applied.
    pub resume_seq: u64,
    /// The sender's own head for the group.
    pub head: u64,
    /// Items the sender holds above the receiver's resume position, and their bytes (for
    /// progress).
    pub pending: u64,
    pub pending_bytes: u64,
    pub settings: SharedSettings,
}

/// An item with, for a small file the sender changed itself, its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireItem {
    pub item: Item,
    #[serde(with = "serde_bytes")]
    pub inline: Option<Vec<u8>>,
}

/// One row of a group's summary (`store::summary`): the range starting at the encoded key
/// `key` (empty: the first range) and the sum and number of the digests in it; at level 0 one
/// item, its encoded key and digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumRow {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub hash: u128,
    pub count: u64,
}

/// Rows per `Rows` answer at most (the sender also stops at [`MAX_ROWS_BYTES`]).
pub const MAX_ROWS: usize = 4096;
/// Encoded bytes of the rows of one `Rows` answer at most (a sender stops adding rows once
/// past it).
pub const MAX_ROWS_BYTES: usize = 1024 * 1024;
/// Keys per `Differ` (and items per `Differ`/`DifferItems`) at most.
pub const MAX_DIFFER_KEYS: usize = MAX_BATCH_ITEMS;
/// Longest key bound in a `Compare` (an encoded path, and one byte more for "just after").
pub const MAX_BOUND: usize = crate::item::name::MAX_PATH + 1;

/// Every message of protocol 4, and after `Bye` those of protocol 5 ([`Msg::since`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello {
        node: String,
        groups: Vec<GroupHello>,
    },
    /// Items of `group` changed on the sender up to its sequence `through` (possibly none:
    /// then it only moves `through`); `head` is the sender's head for the group.
    Index {
        group: String,
        items: Vec<WireItem>,
        through: u64,
        head: u64,
    },
    /// The receiver applied (or set aside) the sender's items of `group` up to `through`.
    Ack {
        group: String,
        through: u64,
    },
    /// Ask for chunk contents by hash.
    GetChunks {
        req: u64,
        group: String,
        hashes: Vec<Hash>,
    },
    /// Answer to `GetChunks`, in the same order; `None` when not available.
    Chunks {
        req: u64,
        #[serde(with = "chunk_list")]
        data: Vec<Option<Vec<u8>>>,
    },
    /// Mark a point: answer `Pong` once everything indexed before it has been sent.
    Ping {
        token: u64,
    },
    Pong {
        token: u64,
    },
    /// The sender is closing the link, and why. A listener that refuses the dialler's key
    /// after the handshake sends one `Bye` whose reason starts with [`BYE_UNKNOWN_KEY`]
    /// instead of its `Hello` (every protocol version carries `Bye`).
    Bye {
        reason: String,
    },
    // ---- protocol 5 (never sent on a link of an older version: `Msg::since`)
    /// An `Index` whose long chunk lists travel as group hashes: the items that `lists` names
    /// (by position) carry no chunks here; the receiver takes the groups it knows from its own
    /// version of the file and asks `GetChunkLists` for the others, then handles the batch
    /// as an `Index`.
    IndexGrouped {
        group: String,
        items: Vec<WireItem>,
        lists: Vec<GroupedList>,
        through: u64,
        head: u64,
    },
    /// Ask for the chunk refs of groups (by position) of the sender's version of `key` whose
    /// content hash is `hash`.
    GetChunkLists {
        req: u64,
        group: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        hash: Hash,
        groups: Vec<u32>,
    },
    /// Answer to `GetChunkLists`: each group's chunk refs, in order; `None` when the sender's
    /// version of the key has other content by now (a newer version follows in its index).
    ChunkLists {
        req: u64,
        lists: Option<Vec<Vec<ChunkRef>>>,
    },
    /// What the sender holds of `group` from each member it names: how far it applied that
    /// member's index, and whether it is linked with it now. Sent at connect (every member)
    /// and when a link of the sender comes or goes (the members whose entry changed); peers
    /// use it to leave out relays the receiver gets from their origin (`engine::relay`).
    Have {
        group: String,
        from: Vec<HaveFrom>,
    },
    /// Protocol 5 (anti-entropy, SPEC §5.14): ask for the receiver's summary rows of `group` at
    /// `level` whose ranges start in [`lo`, `hi`) (encoded keys; `hi` `None`: to the end).
    /// `root`: the asker's root, sent with the first request of a comparison (level
    /// `store::summary::TOP`), so the receiver learns whether they matched.
    Compare {
        req: u64,
        group: String,
        level: u8,
        #[serde(with = "serde_bytes")]
        lo: Vec<u8>,
        #[serde(with = "serde_bytes")]
        hi: Option<Vec<u8>>,
        root: Option<SumRow>,
    },
    /// Answer to `Compare`: the rows in key order, at most [`MAX_ROWS`]; `more` when some were
    /// left out (ask again from after the last). `head`: the sender's head of the group;
    /// `quiet`: nothing of the group is on its way between the two nodes as far as the sender
    /// knows (a comparison is only meaningful then).
    Rows {
        req: u64,
        head: u64,
        quiet: bool,
        rows: Vec<SumRow>,
        more: bool,
    },
    /// The keys of `group` a comparison found different (paths, not encoded), with the
    /// sender's entries for them (tombstones included; none from a replica, or when only
    /// listing). `settle`: the receiver decides the sender's entries by the usual rules, as a
    /// peer's batch. Answered by `DifferItems`.
    Differ {
        req: u64,
        group: String,
        keys: Vec<Vec<u8>>,
        items: Vec<WireItem>,
        settle: bool,
    },
    /// Answer to `Differ`: the receiver's entries for those keys (once it decided the sender's,
    /// when asked to settle).
    DifferItems {
        req: u64,
        head: u64,
        items: Vec<WireItem>,
    },
}

/// Chunk lists of at least this many chunks travel as groups on protocol 5.
pub const GROUPED_MIN: usize = 128;
/// A group ends after a chunk whose hash's first byte is a multiple of this (about this many
/// chunks per group, cut by content: an edit changes only the groups around it)...
pub const GROUP_EVERY: u8 = 64;
/// ...or after this many chunks.
pub const GROUP_MAX: usize = 1024;
/// Chunk refs in one `ChunkLists` answer at most (~4 MiB).
pub const MAX_LIST_REPLY: usize = 100_000;
/// Members named in one `Have` at most.
pub const MAX_HAVE: usize = 4096;

/// A run of consecutive chunks of a list, named by the BLAKE3 of their refs (hash, then
/// length as 4 little-endian bytes, for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkGroup {
    pub hash: Hash,
    pub chunks: u32,
}

/// The groups of the chunk list of `IndexGrouped::items[item]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupedList {
    pub item: u32,
    pub groups: Vec<ChunkGroup>,
}

/// One member's entry in `Have`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaveFrom {
    pub node: String,
    /// The member's incarnation of the group the position refers to (0: none).
    pub inc: u64,
    /// The member's last seq applied here.
    pub seq: u64,
    /// Linked with the member now, the group exchanged on that link.
    pub linked: bool,
}

/// The hash of a group of chunk refs.
pub fn group_hash(chunks: &[ChunkRef]) -> Hash {
    let mut h = blake3::Hasher::new();
    for c in chunks {
        h.update(&c.hash);
        h.update(&c.len.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// A chunk list cut into groups: each group and the positions of its chunks.
pub fn chunk_groups(chunks: &[ChunkRef]) -> Vec<(ChunkGroup, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in chunks.iter().enumerate() {
        let end = i + 1;
        if c.hash[0] % GROUP_EVERY == 0 || end - start >= GROUP_MAX || end == chunks.len() {
            out.push((
                ChunkGroup {
                    hash: group_hash(&chunks[start..end]),
                    chunks: (end - start) as u32,
                },
                start..end,
            ));
            start = end;
        }
    }
    out
}

/// How the reason of a `Bye` sent instead of `Hello` starts when the listener does not know
/// the dialler's key; the dialler, which has authenticated the listener, reports it and backs
/// off (the rest of the reason is for people).
pub const BYE_UNKNOWN_KEY: &str = "unknown key";

/// Errors decoding a peer's bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("message of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("trailing bytes after message")]
    Trailing,
    #[error("unknown codec {0}")]
    Codec(u8),
}

impl Msg {
    /// Encode a message as one frame.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        // sized first (a walk that copies nothing), so a frame of file content is built in one
        // allocation instead of growing by doubling, and an oversized one is never built
        let size = postcard::experimental::serialized_size(self)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?
            + 1;
        if size > MAX_FRAME {
            return Err(ProtocolError::TooLarge(size));
        }
        let mut v = Vec::with_capacity(size);
        v.push(CODEC_PLAIN);
        postcard::to_extend(self, v).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }

    /// Encode a message as one frame, compressed with zstd when that pays.
    pub fn encode_compressed(&self) -> Result<Vec<u8>, ProtocolError> {
        let plain = self.encode()?;
        if plain.len() < COMPRESS_MIN {
            return Ok(plain);
        }
        let body = &plain[1..];
        // a sample first: content that does not shrink (media, archives) is not compressed
        const SAMPLE: usize = 64 * 1024;
        if body.len() > 4 * SAMPLE {
            let mid = body.len() / 2;
            let sample = &body[mid - SAMPLE / 2..mid + SAMPLE / 2];
            match zstd::bulk::compress(sample, 1) {
                Ok(c) if c.len() * 10 < sample.len() * 9 => {}
                _ => return Ok(plain),
            }
        }
        match zstd::bulk::compress(body, 1) {
            Ok(c) if c.len() * 10 < body.len() * 9 => {
                let mut v = Vec::with_capacity(c.len() + 1);
                v.push(CODEC_ZSTD);
                v.extend_from_slice(&c);
                Ok(v)
            }
            _ => Ok(plain),
        }
    }

    /// Decode exactly one message from a frame.
    pub fn decode(bytes: &[u8]) -> Result<Msg, ProtocolError> {
        if bytes.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge(bytes.len()));
        }
        let Some((&codec, body)) = bytes.split_first() else {
            return Err(ProtocolError::Malformed("empty frame".into()));
        };
        let unpacked;
        let body = match codec {
            CODEC_PLAIN => body,
            CODEC_ZSTD => {
                // bounded: a frame that inflates beyond MAX_FRAME is refused
                unpacked = zstd::bulk::decompress(body, MAX_FRAME)
                    .map_err(|e| ProtocolError::Malformed(format!("zstd: {e}")))?;
                unpacked.as_slice()
            }
            c => return Err(ProtocolError::Codec(c)),
        };
        let (m, rest) = postcard::take_from_bytes::<Msg>(body)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Trailing);
        }
        Ok(m)
    }

    /// The protocol version that introduced this message: a link of an older version never
    /// carries it.
    pub fn since(&self) -> u32 {
        match self {
            Msg::Hello { .. }
            | Msg::Index { .. }
            | Msg::Ack { .. }
            | Msg::GetChunks { .. }
            | Msg::Chunks { .. }
            | Msg::Ping { .. }
            | Msg::Pong { .. }
            | Msg::Bye { .. } => 4,
            Msg::IndexGrouped { .. }
            | Msg::GetChunkLists { .. }
            | Msg::ChunkLists { .. }
            | Msg::Have { .. } => 5,
            Msg::Compare { .. }
            | Msg::Rows { .. }
            | Msg::Differ { .. }
            | Msg::DifferItems { .. } => 5,
        }
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Index { .. } => "Index",
            Msg::Ack { .. } => "Ack",
            Msg::GetChunks { .. } => "GetChunks",
            Msg::Chunks { .. } => "Chunks",
            Msg::Ping { .. } => "Ping",
            Msg::Pong { .. } => "Pong",
            Msg::Bye { .. } => "Bye",
            Msg::IndexGrouped { .. } => "IndexGrouped",
            Msg::GetChunkLists { .. } => "GetChunkLists",
            Msg::ChunkLists { .. } => "ChunkLists",
            Msg::Have { .. } => "Have",
            Msg::Compare { .. } => "Compare",
            Msg::Rows { .. } => "Rows",
            Msg::Differ { .. } => "Differ",
            Msg::DifferItems { .. } => "DifferItems",
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::item::{Body, ChunkRef, Kind, Meta, Owner, VersionVector};

    pub(crate) fn sample() -> Vec<Msg> {
        let mut vv = VersionVector::default();
        vv.bump("a", 1);
        let item = Item {
            key: b"/srv/x y/caf\xe9".to_vec(),
            version: vv,
            origin: "a".into(),
            beat: vec![],
            body: Some(Body::Fs(Meta {
                kind: Kind::File,
                mode: 0o644,
                mtime_s: 1_700_000_000,
                mtime_ns: 123_456_789,
                size: 3,
                owner: Owner {
                    uid: 0,
                    gid: 0,
                    user: Some("root".into()),
                    group: Some("root".into()),
                },
                hash: [7; 32],
                target: None,
                chunks: vec![ChunkRef {
                    hash: [7; 32],
                    len: 3,
                }],
                xattrs: vec![],
            })),
        };
        vec![
            Msg::Hello {
                node: "a".into(),
                groups: vec![GroupHello {
                    group: "www".into(),
                    inc: 5,
                    resume_inc: 7,
                    resume_seq: 9,
                    head: 11,
                    pending: 2,
                    pending_bytes: 20,
                    settings: SharedSettings::default(),
                }],
            },
            Msg::Index {
                group: "www".into(),
                items: vec![WireItem {
                    item,
                    inline: Some(b"abc".to_vec()),
                }],
                through: 12,
                head: 12,
            },
            Msg::Ack {
                group: "www".into(),
                through: 12,
            },
            Msg::GetChunks {
                req: 1,
                group: "www".into(),
                hashes: vec![[1; 32]],
            },
            Msg::Chunks {
                req: 1,
                data: vec![None, Some(vec![1, 2])],
            },
            Msg::Ping { token: 5 },
            Msg::Pong { token: 5 },
            Msg::Bye { reason: "x".into() },
            Msg::IndexGrouped {
                group: "www".into(),
                items: vec![],
                lists: vec![GroupedList {
                    item: 0,
                    groups: vec![ChunkGroup {
                        hash: [3; 32],
                        chunks: 70,
                    }],
                }],
                through: 13,
                head: 14,
            },
            Msg::GetChunkLists {
                req: 2,
                group: "www".into(),
                key: b"/srv/big".to_vec(),
                hash: [4; 32],
                groups: vec![0, 5],
            },
            Msg::ChunkLists {
                req: 2,
                lists: Some(vec![vec![ChunkRef {
                    hash: [5; 32],
                    len: 9,
                }]]),
            },
            Msg::ChunkLists {
                req: 3,
                lists: None,
            },
            Msg::Have {
                group: "www".into(),
                from: vec![HaveFrom {
                    node: "c".into(),
                    inc: 8,
                    seq: 99,
                    linked: true,
                }],
            },
            Msg::Compare {
                req: 3,
                group: "www".into(),
                level: 6,
                lo: vec![],
                hi: Some(vec![0, b'a']),
                root: Some(SumRow {
                    key: vec![],
                    hash: u128::MAX,
                    count: 3,
                }),
            },
            Msg::Rows {
                req: 3,
                head: 9,
                quiet: true,
                rows: vec![SumRow {
                    key: vec![0, b'a'],
                    hash: 5,
                    count: 1,
                }],
                more: false,
            },
            Msg::Differ {
                req: 4,
                group: "www".into(),
                keys: vec![b"/srv/a".to_vec()],
                items: vec![],
                settle: true,
            },
            Msg::DifferItems {
                req: 4,
                head: 1,
                items: vec![],
            },
        ]
    }

    #[test]
    fn roundtrip_every_message() {
        for m in sample() {
            let b = m.encode().unwrap();
            assert_eq!(b[0], CODEC_PLAIN);
            assert_eq!(Msg::decode(&b).unwrap(), m);
        }
    }

    #[test]
    fn rejects_trailing_truncated_and_unknown_codec() {
        for m in sample() {
            let mut b = m.encode().unwrap();
            b.push(0);
            assert!(Msg::decode(&b).is_err());
            b.pop();
            b.pop();
            assert!(Msg::decode(&b).is_err());
            let mut c = m.encode().unwrap();
            c[0] = 9;
            assert!(matches!(Msg::decode(&c), Err(ProtocolError::Codec(9))));
        }
        assert!(Msg::decode(&[]).is_err());
    }

    #[test]
    fn compressed_frames_roundtrip_and_incompressible_ones_stay_plain() {
        let text = Msg::Chunks {
            req: 1,
            data: vec![Some(b"<p>hello web</p>\n".repeat(4000))],
        };
        let f = text.encode_compressed().unwrap();
        assert_eq!(f[0], CODEC_ZSTD);
        assert!(f.len() * 10 < text.encode().unwrap().len());
        assert_eq!(Msg::decode(&f).unwrap(), text);
        let mut x: u64 = 7;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let random = Msg::Chunks {
            req: 2,
            data: vec![Some(noise)],
        };
        assert_eq!(random.encode_compressed().unwrap()[0], CODEC_PLAIN);
        // a bomb: a tiny frame inflating past the limit is refused
        let huge = vec![0u8; MAX_FRAME + 10];
        let mut bomb = vec![CODEC_ZSTD];
        bomb.extend(zstd::bulk::compress(&huge, 3).unwrap());
        assert!(Msg::decode(&bomb).is_err());
    }

    #[test]
    fn groups_cover_the_list_and_follow_the_content() {
        let refs: Vec<ChunkRef> = (0..5000u32)
            .map(|i| ChunkRef {
                hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
                len: 1000 + i,
            })
            .collect();
        let g = chunk_groups(&refs);
        assert_eq!(g.first().map(|x| x.1.start), Some(0));
        assert_eq!(g.last().map(|x| x.1.end), Some(refs.len()));
        assert!(g.windows(2).all(|w| w[0].1.end == w[1].1.start));
        assert!(g.iter().all(|(cg, r)| cg.chunks as usize == r.len()
            && r.len() <= GROUP_MAX
            && cg.hash == group_hash(&refs[r.clone()])));
        assert!((40..140).contains(&(refs.len() / g.len())), "{}", g.len());
        // one chunk replaced: only its group changes
        let mut edited = refs.clone();
        edited[2500].hash = [0xff; 32];
        let h = chunk_groups(&edited);
        let old: std::collections::HashSet<_> = g.iter().map(|x| x.0).collect();
        assert!(h.iter().filter(|x| !old.contains(&x.0)).count() <= 2);
        assert!(chunk_groups(&[]).is_empty());
    }

    #[test]
    fn settings_diff_names_the_setting() {
        let a = SharedSettings {
            exclude: vec!["*.tmp".into()],
            ..Default::default()
        };
        let b = SharedSettings::default();
        assert_eq!(a.diff(&b).map(|d| d.0), Some("exclude"));
        assert_eq!(a.diff(&a), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for len in 0..2000usize {
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = Msg::decode(&buf);
        }
    }
}

/// `Chunks::data` as a sequence of optional byte strings: postcard writes a byte string as its
/// length and the bytes, exactly what it writes for a `Vec<u8>` element by element, so the
/// encoding is the same; only the (de)serializer's work is one copy instead of a call per byte.
mod chunk_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(v: &[Option<Vec<u8>>], s: S) -> Result<S::Ok, S::Error> {
        let view: Vec<Option<&Bytes>> = v.iter().map(|o| o.as_deref().map(Bytes::new)).collect();
        view.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<Vec<u8>>>, D::Error> {
        let v: Vec<Option<ByteBuf>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|o| o.map(ByteBuf::into_vec)).collect())
    }
}
