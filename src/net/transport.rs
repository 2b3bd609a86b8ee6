//! Authenticated, encrypted links between nodes: the Noise XX handshake (snow) over TCP, then
//! length-prefixed frames inside encrypted packets. What a frame holds is `protocol`'s
//! business (and which protocol version is spoken).
//!
//! **Version negotiation.** The handshake's second message (responder) and third message
//! (initiator) carry, encrypted, the range of protocol versions the sender speaks
//! ([`Versions`]). The previous release sent empty payloads and ignored them, so an empty
//! payload means "protocol 3 only". Both sides then speak the highest version both know
//! ([`Link::version`]); none in common fails the handshake with a clear error.
//!
//! Invariants: the remote static key is checked against the configured node ids as soon as the
//! handshake reveals it, before any application data is sent or accepted; the handshake has a
//! deadline; every length read from the wire is checked against a limit before allocation;
//! nonces are counters that never repeat (a link is dropped rather than reuse one); a link with
//! no packet for the idle time given to [`LinkReader::recv_frame`] is dead.

use crate::identity::{Identity, NOISE_PARAMS};
use crate::item::hex;
use crate::net::protocol::{MAX_FRAME, MAX_VERSION, MIN_VERSION};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const PROLOGUE: &[u8] = b"clustersync";
const MAX_PACKET: usize = 65535;
const TAG: usize = 16;
const MAX_PLAIN: usize = MAX_PACKET - TAG;
/// Time allowed for a complete handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors on a peer link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("peer key {0} is not a configured node id")]
    UnknownKey(String),
    #[error("peer key {got} is not the id configured for node {expected_node}")]
    WrongKey { expected_node: String, got: String },
    #[error("message of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error(
        "no protocol version in common: we speak {MIN_VERSION}..={MAX_VERSION}, the peer {0}..={1}"
    )]
    NoCommonVersion(u32, u32),
    #[error("connection closed")]
    Closed,
    #[error("no data for {0:?}")]
    Idle(Duration),
}

/// The protocol versions one side speaks (a handshake payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub min: u32,
    pub max: u32,
}

impl Versions {
    /// What this build speaks.
    pub const OURS: Versions = Versions {
        min: MIN_VERSION,
        max: MAX_VERSION,
    };

    fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// An empty payload is the previous release (protocol 3 only); anything unreadable is
    /// treated the same way.
    fn decode(payload: &[u8]) -> Versions {
        if payload.is_empty() {
            return Versions { min: 3, max: 3 };
        }
        postcard::from_bytes(payload).unwrap_or(Versions { min: 3, max: 3 })
    }

    /// The version both speak.
    fn common(&self, other: &Versions) -> Result<u32, TransportError> {
        let v = self.max.min(other.max);
        if v < self.min.max(other.min) {
            return Err(TransportError::NoCommonVersion(other.min, other.max));
        }
        Ok(v)
    }
}

fn noise(e: snow::Error) -> TransportError {
    TransportError::Noise(e.to_string())
}

/// The receiving half of an established link.
pub struct LinkReader {
    io: BufReader<OwnedReadHalf>,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    packet: Vec<u8>,
}

/// The sending half of an established link.
pub struct LinkWriter {
    io: BufWriter<OwnedWriteHalf>,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

/// An authenticated link and the verified id of the peer.
pub struct Link {
    pub reader: LinkReader,
    pub writer: LinkWriter,
    pub remote_id: String,
    /// The protocol version both sides speak on this link.
    pub version: u32,
}

async fn write_raw(io: &mut OwnedWriteHalf, data: &[u8]) -> Result<(), TransportError> {
    let len =
        u16::try_from(data.len()).map_err(|_| TransportError::Noise("packet too big".into()))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(data).await?;
    Ok(())
}

async fn read_raw<R: AsyncReadExt + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), TransportError> {
    let mut l = [0u8; 2];
    match io.read_exact(&mut l).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(TransportError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes(l) as usize;
    buf.resize(len, 0);
    io.read_exact(buf).await?;
    Ok(())
}

fn builder(ident: &Identity) -> Result<snow::Builder<'_>, TransportError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| TransportError::Noise(format!("{e:?}")))?;
    snow::Builder::new(params)
        .local_private_key(&ident.private)
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(noise)
}

fn finish(
    hs: snow::HandshakeState,
    stream_r: OwnedReadHalf,
    stream_w: OwnedWriteHalf,
    remote_id: String,
    version: u32,
) -> Result<Link, TransportError> {
    let state = Arc::new(hs.into_stateless_transport_mode().map_err(noise)?);
    Ok(Link {
        reader: LinkReader {
            io: BufReader::with_capacity(128 * 1024, stream_r),
            state: state.clone(),
            nonce: 0,
            plain: Vec::new(),
            packet: Vec::new(),
        },
        writer: LinkWriter {
            io: BufWriter::with_capacity(128 * 1024, stream_w),
            state,
            nonce: 0,
            buf: vec![0u8; MAX_PACKET],
        },
        remote_id,
        version,
    })
}

/// Dial side: run the handshake and require the responder's key to be `expect_id`.
pub async fn connect(
    stream: TcpStream,
    ident: &Identity,
    expect_node: &str,
    expect_id: &str,
) -> Result<Link, TransportError> {
    connect_speaking(stream, ident, expect_node, expect_id, Some(Versions::OURS)).await
}

/// [`connect`], announcing `speak` as this side's versions; `None` sends an empty payload as
/// the previous release did (for tests of a rolling upgrade).
pub async fn connect_speaking(
    stream: TcpStream,
    ident: &Identity,
    expect_node: &str,
    expect_id: &str,
    speak: Option<Versions>,
) -> Result<Link, TransportError> {
    let ours = speak.unwrap_or(Versions { min: 3, max: 3 });
    let payload = speak.map(|v| v.encode()).unwrap_or_default();
    let fut = async {
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let mut hs = builder(ident)?.build_initiator().map_err(noise)?;
        let mut buf = vec![0u8; MAX_PACKET];
        let n = hs.write_message(&[], &mut buf).map_err(noise)?;
        write_raw(&mut w, &buf[..n]).await?;
        let mut msg = Vec::new();
        read_raw(&mut r, &mut msg).await?;
        let plen = hs.read_message(&msg, &mut buf).map_err(noise)?;
        let theirs = Versions::decode(&buf[..plen]);
        let remote = hs
            .get_remote_static()
            .map(hex)
            .ok_or_else(|| TransportError::Noise("no remote static key".into()))?;
        if !remote.eq_ignore_ascii_case(expect_id) {
            return Err(TransportError::WrongKey {
                expected_node: expect_node.to_string(),
                got: remote,
            });
        }
        let n = hs.write_message(&payload, &mut buf).map_err(noise)?;
        write_raw(&mut w, &buf[..n]).await?;
        let version = ours.common(&theirs)?;
        finish(hs, r, w, remote, version)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout)?
}

/// Listen side: run the handshake and require the initiator's key to satisfy `allowed`.
pub async fn accept(
    stream: TcpStream,
    ident: &Identity,
    allowed: impl Fn(&str) -> bool,
) -> Result<Link, TransportError> {
    let fut = async {
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let mut hs = builder(ident)?.build_responder().map_err(noise)?;
        let mut buf = vec![0u8; MAX_PACKET];
        let mut msg = Vec::new();
        read_raw(&mut r, &mut msg).await?;
        hs.read_message(&msg, &mut buf).map_err(noise)?;
        let n = hs
            .write_message(&Versions::OURS.encode(), &mut buf)
            .map_err(noise)?;
        write_raw(&mut w, &buf[..n]).await?;
        read_raw(&mut r, &mut msg).await?;
        let plen = hs.read_message(&msg, &mut buf).map_err(noise)?;
        let theirs = Versions::decode(&buf[..plen]);
        let remote = hs
            .get_remote_static()
            .map(hex)
            .ok_or_else(|| TransportError::Noise("no remote static key".into()))?;
        if !allowed(&remote) {
            return Err(TransportError::UnknownKey(remote));
        }
        let version = Versions::OURS.common(&theirs)?;
        finish(hs, r, w, remote, version)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, fut)
        .await
        .map_err(|_| TransportError::Timeout)?
}

impl LinkWriter {
    /// Encrypt and send one frame.
    pub async fn send_frame(&mut self, body: &[u8]) -> Result<(), TransportError> {
        if body.len() > MAX_FRAME {
            return Err(TransportError::TooLarge(body.len()));
        }
        // the packets carry the 4-byte length and then the body, cut every MAX_PLAIN bytes:
        // only the first packet's plaintext is put together, the rest is encrypted in place
        let split = body.len().min(MAX_PLAIN - 4);
        let mut first = Vec::with_capacity(4 + split);
        first.extend_from_slice(&(body.len() as u32).to_be_bytes());
        first.extend_from_slice(&body[..split]);
        let pieces = std::iter::once(first.as_slice()).chain(body[split..].chunks(MAX_PLAIN));
        for piece in pieces {
            let n = self
                .state
                .write_message(self.nonce, piece, &mut self.buf)
                .map_err(noise)?;
            self.nonce = self
                .nonce
                .checked_add(1)
                .ok_or_else(|| TransportError::Noise("nonce exhausted".into()))?;
            self.io.write_all(&(n as u16).to_be_bytes()).await?;
            self.io.write_all(&self.buf[..n]).await?;
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Close the sending side.
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

impl LinkReader {
    async fn fill(&mut self) -> Result<(), TransportError> {
        read_raw(&mut self.io, &mut self.packet).await?;
        if self.packet.len() < TAG {
            return Err(TransportError::Noise("short packet".into()));
        }
        let start = self.plain.len();
        self.plain.resize(start + self.packet.len(), 0);
        let n = self
            .state
            .read_message(self.nonce, &self.packet, &mut self.plain[start..])
            .map_err(noise)?;
        self.nonce = self
            .nonce
            .checked_add(1)
            .ok_or_else(|| TransportError::Noise("nonce exhausted".into()))?;
        self.plain.truncate(start + n);
        Ok(())
    }

    async fn fill_within(&mut self, idle: Duration) -> Result<(), TransportError> {
        tokio::time::timeout(idle, self.fill())
            .await
            .map_err(|_| TransportError::Idle(idle))?
    }

    /// Receive the next frame; fails when no packet came for `idle` (a peer that vanished
    /// without closing), or the frame is larger than [`MAX_FRAME`] (checked before it is
    /// buffered).
    pub async fn recv_frame(&mut self, idle: Duration) -> Result<Vec<u8>, TransportError> {
        while self.plain.len() < 4 {
            self.fill_within(idle).await?;
        }
        let len = u32::from_be_bytes([self.plain[0], self.plain[1], self.plain[2], self.plain[3]])
            as usize;
        if len > MAX_FRAME {
            return Err(TransportError::TooLarge(len));
        }
        if self.plain.len() < 4 + len {
            // one allocation for the whole frame (plus the packet that may run past its end)
            // instead of growing by doubling, packet after packet
            self.plain.reserve(4 + len + MAX_PLAIN - self.plain.len());
        }
        while self.plain.len() < 4 + len {
            self.fill_within(idle).await?;
        }
        // the frame keeps the buffer it was received in; what followed it moves to a new one
        let rest = self.plain.split_off(4 + len);
        let mut frame = std::mem::replace(&mut self.plain, rest);
        frame.drain(..4);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const IDLE: Duration = Duration::from_secs(5);

    #[test]
    fn versions_negotiate() {
        let old = Versions::decode(&[]);
        assert_eq!(old, Versions { min: 3, max: 3 });
        assert_eq!(Versions::OURS.common(&old).unwrap(), 3);
        assert_eq!(Versions::OURS.common(&Versions::OURS).unwrap(), MAX_VERSION);
        let future = Versions { min: 99, max: 100 };
        assert!(Versions::OURS.common(&future).is_err());
        assert_eq!(Versions::decode(&Versions::OURS.encode()), Versions::OURS);
    }

    #[tokio::test]
    async fn handshake_and_messages() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a_id = a.id();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut link = accept(s, &b, |id| id == a_id).await.unwrap();
            let m = link.reader.recv_frame(IDLE).await.unwrap();
            link.writer.send_frame(&m).await.unwrap();
            b.id()
        });
        let s = TcpStream::connect(addr).await.unwrap();
        // wrong expected id is refused before data flows
        let bad = connect(s, &a, "b", &"00".repeat(32)).await;
        assert!(matches!(bad, Err(TransportError::WrongKey { .. })));
        drop(srv);
    }

    const SIZES: &[usize] = &[
        0,
        1,
        MAX_PLAIN - 5,
        MAX_PLAIN - 4,
        MAX_PLAIN - 3,
        MAX_PLAIN,
        2 * MAX_PLAIN - 4,
        2 * MAX_PLAIN + 7,
        1_000_000,
    ];

    #[tokio::test]
    async fn large_message_roundtrip_and_unknown_key() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a_id = a.id();
        let b2 = b.clone();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut link = accept(s, &b2, |id| id == a_id).await.unwrap();
            assert_eq!(link.version, MAX_VERSION);
            for _ in 0..SIZES.len() {
                let m = link.reader.recv_frame(IDLE).await.unwrap();
                link.writer.send_frame(&m).await.unwrap();
            }
            // second connection, from an unknown key
            let (s, _) = l.accept().await.unwrap();
            let a_id2 = link.remote_id.clone();
            accept(s, &b2, |id| id == a_id2).await.err()
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let mut link = connect(s, &a, "b", &b.id()).await.unwrap();
        // frames around the packet boundaries (the first packet carries the length too)
        for &n in SIZES {
            let frame: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
            link.writer.send_frame(&frame).await.unwrap();
            assert_eq!(
                link.reader.recv_frame(IDLE).await.unwrap(),
                frame,
                "{n} bytes"
            );
        }
        let stranger = Identity::generate().unwrap();
        let s = TcpStream::connect(addr).await.unwrap();
        let _ = connect(s, &stranger, "b", &b.id()).await;
        let err = srv.await.unwrap();
        assert!(matches!(err, Some(TransportError::UnknownKey(_))));
    }
}
