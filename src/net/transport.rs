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
//! **Cipher suite.** The initiator picks the Noise protocol ([`Suite`]): AES-256-GCM
//! (`Noise_XX_25519_AESGCM_BLAKE2s`) when its CPU has AES and carry-less multiply instructions
//! (four times as fast as ChaCha20-Poly1305 there), otherwise ChaCha20-Poly1305
//! (`Noise_XX_25519_ChaChaPoly_BLAKE2s`, the previous release's only suite). It names the suite
//! in the plaintext payload of handshake message 1 (that payload is part of the handshake
//! hash, so a changed name fails the handshake); the responder builds its handshake with the
//! suite named there, or ChaChaPoly when the payload is empty (the previous release) or names
//! a suite it does not know. A responder of the previous release ignores the name and answers
//! with ChaChaPoly, which the initiator cannot decrypt: [`TransportError::SuiteRefused`], and
//! the dialler connects again with ChaChaPoly ([`Suite::fallback`]). Someone on the path who
//! breaks the first attempt can only make a link use ChaChaPoly, as strong. Both suites are
//! standard Noise protocols run entirely by snow (on ring's implementations).
//!
//! Invariants: the remote static key is checked against the configured node ids as soon as the
//! handshake reveals it, before any application data is sent or accepted (the dialler checks
//! the responder's key here; a listener that refuses the initiator's key after the handshake
//! sends at most one `Bye` saying why and reads nothing, see `engine::node`); the handshake has a
//! deadline; every length read from the wire is checked against a limit before allocation;
//! nonces are counters that never repeat (a link is dropped rather than reuse one); a link with
//! no packet for the idle time given to [`LinkReader::recv_frame`] is dead.

use crate::identity::Identity;
use crate::item::hex;
use crate::net::protocol::{MAX_FRAME, MAX_VERSION, MIN_VERSION};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const PROLOGUE: &[u8] = b"clustersync";
const MAX_PACKET: usize = 65535;
const TAG: usize = 16;
const MAX_PLAIN: usize = MAX_PACKET - TAG;
/// Encrypted bytes a writer gathers before it hands them to the socket in one write.
const WRITE_BATCH: usize = 128 * 1024;
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
    #[error("the peer does not speak the {0} cipher suite")]
    SuiteRefused(Suite),
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

/// The Noise protocol of a link: which AEAD protects it (the pattern, DH and hash are fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// `Noise_XX_25519_ChaChaPoly_BLAKE2s`: every release speaks it.
    ChaChaPoly,
    /// `Noise_XX_25519_AESGCM_BLAKE2s`: preferred where the CPU accelerates AES-GCM.
    AesGcm,
}

impl Suite {
    /// The Noise protocol name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::ChaChaPoly => "Noise_XX_25519_ChaChaPoly_BLAKE2s",
            Suite::AesGcm => "Noise_XX_25519_AESGCM_BLAKE2s",
        }
    }

    /// What a dialler offers first: AES-GCM where this CPU runs it in hardware.
    pub fn preferred() -> Suite {
        if aes_in_hardware() {
            Suite::AesGcm
        } else {
            Suite::ChaChaPoly
        }
    }

    /// The suite to try next after `self` was refused, if any.
    pub fn fallback(self) -> Option<Suite> {
        match self {
            Suite::AesGcm => Some(Suite::ChaChaPoly),
            Suite::ChaChaPoly => None,
        }
    }

    /// The suite a responder answers with, given what the initiator named in handshake
    /// message 1: that suite if known, otherwise ChaChaPoly (an empty payload is the previous
    /// release; a name unknown here makes its initiator fall back, as with the previous release).
    fn answer(named: &[u8]) -> Suite {
        if named == Suite::AesGcm.name().as_bytes() {
            Suite::AesGcm
        } else {
            Suite::ChaChaPoly
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Length of the initiator's ephemeral key at the start of XX message 1 (its payload follows,
/// in plaintext).
const DH_LEN: usize = 32;

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
    io: OwnedWriteHalf,
    state: Arc<snow::StatelessTransportState>,
    nonce: u64,
    /// Length-prefixed packets are encrypted straight into this buffer (allocated once, room
    /// for [`WRITE_BATCH`] and one more packet), then written out together: no second copy.
    out: Vec<u8>,
}

/// An authenticated link and the verified id of the peer.
pub struct Link {
    pub reader: LinkReader,
    pub writer: LinkWriter,
    pub remote_id: String,
    /// The protocol version both sides speak on this link.
    pub version: u32,
    /// The Noise protocol protecting it.
    pub suite: Suite,
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

fn builder(ident: &Identity, suite: Suite) -> Result<snow::Builder<'_>, TransportError> {
    let params = suite
        .name()
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
    suite: Suite,
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
            io: stream_w,
            state,
            nonce: 0,
            out: vec![0u8; WRITE_BATCH + 2 + MAX_PACKET],
        },
        remote_id,
        version,
        suite,
    })
}

/// Dial side: run the handshake with `suite` and require the responder's key to be
/// `expect_id`. [`TransportError::SuiteRefused`] means: connect again with
/// [`Suite::fallback`].
pub async fn connect(
    stream: TcpStream,
    ident: &Identity,
    expect_node: &str,
    expect_id: &str,
    suite: Suite,
) -> Result<Link, TransportError> {
    connect_speaking(
        stream,
        ident,
        expect_node,
        expect_id,
        Some((Versions::OURS, suite)),
    )
    .await
}

/// [`connect`], announcing `speak` as this side's versions and suite; `None` sends empty
/// payloads with ChaChaPoly as the previous release did (for tests of a rolling upgrade).
pub async fn connect_speaking(
    stream: TcpStream,
    ident: &Identity,
    expect_node: &str,
    expect_id: &str,
    speak: Option<(Versions, Suite)>,
) -> Result<Link, TransportError> {
    let ours = speak.map_or(Versions { min: 3, max: 3 }, |(v, _)| v);
    let suite = speak.map_or(Suite::ChaChaPoly, |(_, s)| s);
    let payload = speak.map(|(v, _)| v.encode()).unwrap_or_default();
    // the previous release sent message 1 empty; naming the default suite is as good
    let offer = match speak {
        Some(_) => suite.name().as_bytes(),
        None => &[],
    };
    let fut = async {
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let mut hs = builder(ident, suite)?.build_initiator().map_err(noise)?;
        let mut buf = vec![0u8; MAX_PACKET];
        let n = hs.write_message(offer, &mut buf).map_err(noise)?;
        write_raw(&mut w, &buf[..n]).await?;
        let mut msg = Vec::new();
        read_raw(&mut r, &mut msg).await?;
        let plen = hs.read_message(&msg, &mut buf).map_err(|e| match e {
            // a responder that does not know the suite answered with ChaChaPoly
            snow::Error::Decrypt if suite != Suite::ChaChaPoly => {
                TransportError::SuiteRefused(suite)
            }
            e => noise(e),
        })?;
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
        finish(hs, r, w, remote, version, suite)
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
    accept_speaking(stream, ident, allowed, Some(Versions::OURS)).await
}

/// [`accept`], announcing `speak` as this side's versions; `None` answers as the previous
/// release did: ChaChaPoly whatever message 1 names, an empty payload (for tests of a
/// rolling upgrade).
pub async fn accept_speaking(
    stream: TcpStream,
    ident: &Identity,
    allowed: impl Fn(&str) -> bool,
    speak: Option<Versions>,
) -> Result<Link, TransportError> {
    let ours = speak.unwrap_or(Versions { min: 3, max: 3 });
    let payload = speak.map(|v| v.encode()).unwrap_or_default();
    let fut = async {
        stream.set_nodelay(true)?;
        let (mut r, mut w) = stream.into_split();
        let mut buf = vec![0u8; MAX_PACKET];
        let mut msg = Vec::new();
        read_raw(&mut r, &mut msg).await?;
        // message 1 is the initiator's ephemeral key and, in plaintext, the suite it uses
        let suite = match speak {
            Some(_) => Suite::answer(msg.get(DH_LEN..).unwrap_or_default()),
            None => Suite::ChaChaPoly,
        };
        let mut hs = builder(ident, suite)?.build_responder().map_err(noise)?;
        hs.read_message(&msg, &mut buf).map_err(noise)?;
        let n = hs.write_message(&payload, &mut buf).map_err(noise)?;
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
        let version = ours.common(&theirs)?;
        finish(hs, r, w, remote, version, suite)
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
        let mut used = 0;
        for piece in pieces {
            if used > WRITE_BATCH {
                self.io.write_all(&self.out[..used]).await?;
                used = 0;
            }
            let n = self
                .state
                .write_message(self.nonce, piece, &mut self.out[used + 2..])
                .map_err(noise)?;
            self.nonce = self
                .nonce
                .checked_add(1)
                .ok_or_else(|| TransportError::Noise("nonce exhausted".into()))?;
            self.out[used..used + 2].copy_from_slice(&(n as u16).to_be_bytes());
            used += 2 + n;
        }
        self.io.write_all(&self.out[..used]).await?;
        Ok(())
    }

    /// Close the sending side.
    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

impl LinkReader {
    async fn fill(&mut self) -> Result<(), TransportError> {
        // a packet that lies whole in the read buffer is decrypted from there; one cut by the
        // buffer's end is put together in `packet` first
        let buffered = self.io.fill_buf().await?;
        let whole = match buffered {
            [a, b, rest @ ..] => {
                let len = u16::from_be_bytes([*a, *b]) as usize;
                (rest.len() >= len).then_some(len)
            }
            _ => None,
        };
        if whole.is_none() {
            read_raw(&mut self.io, &mut self.packet).await?;
        }
        let packet = match whole {
            Some(len) => &self.io.buffer()[2..2 + len],
            None => &self.packet[..],
        };
        if packet.len() < TAG {
            return Err(TransportError::Noise("short packet".into()));
        }
        let start = self.plain.len();
        self.plain.resize(start + packet.len(), 0);
        let n = self
            .state
            .read_message(self.nonce, packet, &mut self.plain[start..])
            .map_err(noise)?;
        if let Some(len) = whole {
            self.io.consume(2 + len);
        }
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
        let bad = connect(s, &a, "b", &"00".repeat(32), Suite::preferred()).await;
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

    /// Both suites carry frames of every size around the packet boundaries; the responder
    /// answers with the suite the initiator named; an unknown key is refused.
    #[tokio::test]
    async fn large_message_roundtrip_and_unknown_key() {
        for suite in [Suite::AesGcm, Suite::ChaChaPoly] {
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
                assert_eq!(link.suite, suite);
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
            let mut link = connect(s, &a, "b", &b.id(), suite).await.unwrap();
            assert_eq!(link.suite, suite);
            // frames around the packet boundaries (the first packet carries the length too)
            for &n in SIZES {
                let frame: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
                link.writer.send_frame(&frame).await.unwrap();
                assert_eq!(
                    link.reader.recv_frame(IDLE).await.unwrap(),
                    frame,
                    "{suite}: {n} bytes"
                );
            }
            let stranger = Identity::generate().unwrap();
            let s = TcpStream::connect(addr).await.unwrap();
            let _ = connect(s, &stranger, "b", &b.id(), suite).await;
            let err = srv.await.unwrap();
            assert!(matches!(err, Some(TransportError::UnknownKey(_))));
        }
    }

    /// Frames written back to back, without waiting for the reader, share the reader's buffer
    /// and straddle its end at every offset: each arrives whole and in order.
    #[tokio::test]
    async fn frames_back_to_back_arrive_intact() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a_id, b_id) = (a.id(), b.id());
        let frames: Vec<Vec<u8>> = (0..200usize)
            .map(|k| {
                let n = SIZES[k % SIZES.len()] + k;
                (0..n).map(|i| (i * 13 + k) as u8).collect()
            })
            .collect();
        let sent = frames.clone();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut link = accept(s, &b, |id| id == a_id).await.unwrap();
            for f in &sent {
                link.writer.send_frame(f).await.unwrap();
            }
            link
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let mut link = connect(s, &a, "b", &b_id, Suite::AesGcm).await.unwrap();
        for (k, f) in frames.iter().enumerate() {
            assert_eq!(&link.reader.recv_frame(IDLE).await.unwrap(), f, "frame {k}");
        }
        drop(srv.await.unwrap());
    }

    /// A responder of the previous release (`accept_speaking` without versions): the first
    /// frame of a link it accepted, `None` if the handshake failed.
    async fn previous_release_responder(s: TcpStream, ident: &Identity) -> Option<Vec<u8>> {
        let mut link = accept_speaking(s, ident, |_| true, None).await.ok()?;
        link.reader.recv_frame(IDLE).await.ok()
    }

    /// Against the previous release, the AES-GCM offer is refused in a way the dialler
    /// recognises (`SuiteRefused`), and the fallback suite then works (protocol 3).
    #[tokio::test]
    async fn previous_release_refuses_aes_and_accepts_the_fallback() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let b2 = b.clone();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let first = previous_release_responder(s, &b2).await;
            let (s, _) = l.accept().await.unwrap();
            (first, previous_release_responder(s, &b2).await)
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let refused = connect(s, &a, "b", &b.id(), Suite::AesGcm).await;
        assert!(
            matches!(refused, Err(TransportError::SuiteRefused(Suite::AesGcm))),
            "{:?}",
            refused.err()
        );
        assert_eq!(Suite::AesGcm.fallback(), Some(Suite::ChaChaPoly));
        assert_eq!(Suite::ChaChaPoly.fallback(), None);
        let s = TcpStream::connect(addr).await.unwrap();
        let mut link = connect(s, &a, "b", &b.id(), Suite::ChaChaPoly)
            .await
            .unwrap();
        assert_eq!((link.version, link.suite), (3, Suite::ChaChaPoly));
        link.writer.send_frame(b"hello").await.unwrap();
        let (first, second) = srv.await.unwrap();
        assert_eq!(first, None, "the refused handshake carried no frame");
        assert_eq!(second.as_deref(), Some(&b"hello"[..]));
    }

    /// An initiator of the previous release (empty message 1) gets ChaChaPoly and protocol 3;
    /// a name this build does not know is answered with ChaChaPoly too.
    #[tokio::test]
    async fn responder_answers_unknown_or_absent_suite_with_chachapoly() {
        assert_eq!(Suite::answer(b""), Suite::ChaChaPoly);
        assert_eq!(
            Suite::answer(b"Noise_XX_25519_Future_BLAKE3"),
            Suite::ChaChaPoly
        );
        assert_eq!(
            Suite::answer(Suite::AesGcm.name().as_bytes()),
            Suite::AesGcm
        );
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let a_id = a.id();
        let b_id = b.id();
        let srv = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let link = accept(s, &b, |id| id == a_id).await.unwrap();
            (link.version, link.suite)
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let link = connect_speaking(s, &a, "b", &b_id, None).await.unwrap();
        assert_eq!((link.version, link.suite), (3, Suite::ChaChaPoly));
        assert_eq!(srv.await.unwrap(), (3, Suite::ChaChaPoly));
    }
}
