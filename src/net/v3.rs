//! Protocol 3, the previous release's, spoken on a link to a node that has not been upgraded
//! yet (a rolling upgrade). The message layouts below are that release's and never change.
//!
//! A link at version 3 is run by the same code as version 4: incoming messages are translated
//! to [`Msg`] ([`to_current`]) and outgoing ones back ([`from_current`]). What protocol 3
//! cannot carry (names that are not UTF-8, extended attributes) is not sent to that peer: the
//! pump skips it and counts it, and `status` says what the peer could not take
//! (`item::v3::NotInV3`). Protocol 3 has no per-group incarnation: the node's index id stands
//! for every group's, and it has no shared settings in its `Hello` (they are assumed equal).

use crate::item::Hash;
use crate::item::v3::RecordV3;
use crate::net::protocol::{MAX_FRAME, Msg, ProtocolError, WireItem};
use serde::{Deserialize, Serialize};

/// Protocol 3's per-group resume point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResume {
    pub group: String,
    pub index_id: u64,
    pub seq: u64,
    pub head: u64,
}

/// Protocol 3's record with inline content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRecord {
    pub rec: RecordV3,
    pub inline: Option<Vec<u8>>,
}

/// Every message of protocol 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg3 {
    Hello {
        version: u32,
        node: String,
        index_id: u64,
        groups: Vec<GroupResume>,
    },
    Index {
        group: String,
        records: Vec<WireRecord>,
        through: u64,
        head: u64,
    },
    Ack {
        group: String,
        through: u64,
    },
    GetChunks {
        req: u64,
        group: String,
        hashes: Vec<Hash>,
    },
    Chunks {
        req: u64,
        data: Vec<Option<Vec<u8>>>,
    },
    SyncPing {
        token: u64,
    },
    SyncPong {
        token: u64,
    },
    Bye {
        reason: String,
    },
}

impl Msg3 {
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let v = postcard::to_allocvec(self).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if v.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge(v.len()));
        }
        Ok(v)
    }

    pub fn decode(bytes: &[u8]) -> Result<Msg3, ProtocolError> {
        if bytes.len() > MAX_FRAME {
            return Err(ProtocolError::TooLarge(bytes.len()));
        }
        let (m, rest) = postcard::take_from_bytes::<Msg3>(bytes)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(ProtocolError::Trailing);
        }
        Ok(m)
    }
}

/// A protocol-3 message as the current one. `Hello` is handled by the link itself and is
/// returned as `Err` with its parts.
pub fn to_current(m: Msg3) -> Result<Msg, Msg3> {
    Ok(match m {
        h @ Msg3::Hello { .. } => return Err(h),
        Msg3::Index {
            group,
            records,
            through,
            head,
        } => Msg::Index {
            group,
            items: records
                .into_iter()
                .map(|w| WireItem {
                    item: w.rec.into(),
                    inline: w.inline,
                })
                .collect(),
            through,
            head,
        },
        Msg3::Ack { group, through } => Msg::Ack { group, through },
        Msg3::GetChunks { req, group, hashes } => Msg::GetChunks { req, group, hashes },
        Msg3::Chunks { req, data } => Msg::Chunks { req, data },
        Msg3::SyncPing { token } => Msg::Ping { token },
        Msg3::SyncPong { token } => Msg::Pong { token },
        Msg3::Bye { reason } => Msg::Bye { reason },
    })
}

/// The current message in protocol 3 (`Hello` is built by the link: `None`). Items that
/// protocol 3 cannot carry must have been filtered out by the sender already; any left are
/// dropped here.
pub fn from_current(m: &Msg) -> Option<Msg3> {
    Some(match m {
        Msg::Hello { .. } => return None,
        Msg::Index {
            group,
            items,
            through,
            head,
        } => Msg3::Index {
            group: group.clone(),
            records: items
                .iter()
                .filter_map(|w| {
                    RecordV3::try_from(&w.item).ok().map(|rec| WireRecord {
                        rec,
                        inline: w.inline.clone(),
                    })
                })
                .collect(),
            through: *through,
            head: *head,
        },
        Msg::Ack { group, through } => Msg3::Ack {
            group: group.clone(),
            through: *through,
        },
        Msg::GetChunks { req, group, hashes } => Msg3::GetChunks {
            req: *req,
            group: group.clone(),
            hashes: hashes.clone(),
        },
        Msg::Chunks { req, data } => Msg3::Chunks {
            req: *req,
            data: data.clone(),
        },
        Msg::Ping { token } => Msg3::SyncPing { token: *token },
        Msg::Pong { token } => Msg3::SyncPong { token: *token },
        Msg::Bye { reason } => Msg3::Bye {
            reason: reason.clone(),
        },
        // protocol 5's messages: never on an older link (`Msg::since`)
        Msg::IndexGrouped { .. }
        | Msg::GetChunkLists { .. }
        | Msg::ChunkLists { .. }
        | Msg::Have { .. }
        | Msg::Compare { .. }
        | Msg::Rows { .. }
        | Msg::Differ { .. }
        | Msg::DifferItems { .. } => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_but_hello_translates_both_ways() {
        for m in crate::net::protocol::tests::sample() {
            match from_current(&m) {
                // protocol 5's messages are never sent to a node of protocol 3
                None => assert!(matches!(m, Msg::Hello { .. }) || m.since() >= 5),
                Some(old) => {
                    let bytes = old.encode().unwrap();
                    let back = to_current(Msg3::decode(&bytes).unwrap()).unwrap();
                    if let Msg::Index { items, .. } = &m {
                        // the sample's non-UTF-8 name cannot travel in protocol 3
                        assert!(!items.is_empty());
                        assert!(matches!(&back, Msg::Index { items, .. } if items.is_empty()));
                    } else {
                        assert_eq!(back, m);
                    }
                }
            }
        }
    }
}
