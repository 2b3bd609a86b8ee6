//! The peer wire protocol: every message two nodes exchange, and its version.
//!
//! Messages are postcard-encoded [`Msg`] values carried in length-prefixed frames inside the
//! encrypted channel of [`crate::transport`]. Decoding is strict: a frame larger than
//! [`MAX_FRAME`] is rejected before anything is allocated, trailing bytes are an error, and every
//! path, name and list in a message is checked by the receiver before use (see `peer`).
//!
//! Conversation (symmetric after the Noise handshake):
//! 1. both send `Hello` (protocol version, node name, index id, and per shared group the last
//!    sequence number of the other side's index already applied);
//! 2. each side streams `Index` batches of its records with a sequence number above that, and
//!    keeps streaming new ones as they happen; at most [`MAX_UNACKED`] batches are unacknowledged;
//! 3. the receiver applies a batch, fetching missing content with `GetChunks`/`Chunks`, and
//!    answers `Ack` with the batch's `through` sequence;
//! 4. `SyncPing`/`SyncPong` mark a point in the stream for `clustersync sync`.

use crate::record::{Hash, Record};
use serde::{Deserialize, Serialize};

/// Version of this protocol; a peer speaking another version is refused at `Hello`.
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest accepted message, encoded.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Records per `Index` batch at most.
pub const MAX_BATCH_RECORDS: usize = 2000;
/// Inline bytes per `Index` batch at most (the sender stops adding inline data beyond this).
pub const MAX_BATCH_INLINE: usize = 4 * 1024 * 1024;
/// Files up to this size travel inside the `Index` batch.
pub const INLINE_MAX: u64 = 64 * 1024;
/// Chunks per `GetChunks` at most.
pub const MAX_CHUNKS_PER_REQUEST: usize = 64;
/// Unacknowledged `Index` batches a sender may have in flight per group.
pub const MAX_UNACKED: usize = 4;

/// Per group, what the sender of `Hello` has already applied from the receiver's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResume {
    pub group: String,
    /// The receiver's index id this position refers to (0 = none).
    pub index_id: u64,
    /// Last applied sequence number of that index.
    pub seq: u64,
    /// The sender's own head for this group: the highest sequence number of its records of
    /// the group, so the receiver knows how far behind it is.
    pub head: u64,
}

/// A record with, for small files, its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    pub rec: Record,
    pub inline: Option<Vec<u8>>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello {
        version: u32,
        node: String,
        index_id: u64,
        groups: Vec<GroupResume>,
    },
    /// Records of `group` changed on the sender up to its sequence `through` (possibly none:
    /// then it only moves `through`); `head` is the sender's head for the group.
    Index {
        group: String,
        records: Vec<WireRecord>,
        through: u64,
        head: u64,
    },
    /// The receiver applied the sender's records of `group` up to `through`.
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
        data: Vec<Option<Vec<u8>>>,
    },
    /// Mark a point: answer `SyncPong` once everything indexed before it has been sent.
    SyncPing {
        token: u64,
    },
    SyncPong {
        token: u64,
    },
    /// The sender is closing the link because of an error.
    Bye {
        reason: String,
    },
}

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
}

impl Msg {
    /// Encode a message.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let v = postcard::to_allocvec(self).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if v.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge(v.len()));
        }
        Ok(v)
    }

    /// Decode exactly one message from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Msg, ProtocolError> {
        if bytes.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge(bytes.len()));
        }
        let (m, rest) = postcard::take_from_bytes::<Msg>(bytes)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Trailing);
        }
        Ok(m)
    }

    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::Index { .. } => "Index",
            Msg::Ack { .. } => "Ack",
            Msg::GetChunks { .. } => "GetChunks",
            Msg::Chunks { .. } => "Chunks",
            Msg::SyncPing { .. } => "SyncPing",
            Msg::SyncPong { .. } => "SyncPong",
            Msg::Bye { .. } => "Bye",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ChunkRef, Kind, Meta, Owner};
    use crate::version::VersionVector;

    fn sample() -> Vec<Msg> {
        let mut vv = VersionVector::default();
        vv.bump("a");
        let rec = Record {
            path: "/srv/x y/ü".into(),
            version: vv,
            origin: "a".into(),
            beat: vec![],
            meta: Some(Meta {
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
            }),
        };
        vec![
            Msg::Hello {
                version: PROTOCOL_VERSION,
                node: "a".into(),
                index_id: 42,
                groups: vec![GroupResume {
                    group: "www".into(),
                    index_id: 7,
                    seq: 9,
                    head: 11,
                }],
            },
            Msg::Index {
                group: "www".into(),
                records: vec![WireRecord {
                    rec,
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
            Msg::SyncPing { token: 5 },
            Msg::SyncPong { token: 5 },
            Msg::Bye { reason: "x".into() },
        ]
    }

    #[test]
    fn roundtrip_every_message() {
        for m in sample() {
            let b = m.encode().unwrap();
            assert_eq!(Msg::decode(&b).unwrap(), m);
        }
    }

    #[test]
    fn rejects_trailing_and_truncated() {
        for m in sample() {
            let mut b = m.encode().unwrap();
            b.push(0);
            assert!(Msg::decode(&b).is_err());
            b.pop();
            b.pop();
            assert!(Msg::decode(&b).is_err());
        }
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
