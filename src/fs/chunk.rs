//! Content identity: files cut into content-defined chunks (FastCDC 2020) named by BLAKE3.
//!
//! Content-defined boundaries move with the data, so an insertion or an edit inside a large
//! file changes only the chunks around it and a receiver fetches little more than the edited
//! bytes. Invariants: chunk lengths add up to the file size; each chunk is between
//! [`MIN_CHUNK`] and [`MAX_CHUNK`] bytes except the last; the whole-file hash is the BLAKE3 of
//! the concatenated chunks, so a file's identity does not depend on the chunking.

use crate::item::{ChunkRef, Hash};
use std::io::Read;

pub const MIN_CHUNK: usize = 16 * 1024;
pub const AVG_CHUNK: usize = 64 * 1024;
/// Largest chunk of a file up to [`LARGE_FILE`].
pub const SMALL_MAX_CHUNK: usize = 256 * 1024;
/// Files above this size use 16x larger chunks, so that their chunk list stays well inside
/// one protocol message (a 400 GiB file still lists under 16 MiB of chunk references).
pub const LARGE_FILE: u64 = 1 << 30;
/// Largest chunk of any file: what a receiver accepts.
pub const MAX_CHUNK: usize = 4 * 1024 * 1024;
/// Files above this size (up to [`LARGE_FILE`]) are cut 4x finer: an edit costs its bytes plus
/// about one 16 KiB chunk on each side (rsync's block for 256 MiB is 16 KiB too), and their
/// chunk lists travel as group hashes on protocol 5 (`net::protocol::ChunkGroup`).
pub const FINE_FILE: u64 = 64 << 20;

/// FastCDC (min, avg, max) of one chunking scheme.
pub type Params = (usize, usize, usize);
/// Files up to [`FINE_FILE`], and every file the releases before 0.3 cut.
pub const DEFAULT: Params = (MIN_CHUNK, AVG_CHUNK, SMALL_MAX_CHUNK);
/// Files of [`FINE_FILE`] to [`LARGE_FILE`].
pub const FINE: Params = (MIN_CHUNK / 4, AVG_CHUNK / 4, SMALL_MAX_CHUNK / 4);
/// Files above [`LARGE_FILE`].
pub const LARGE: Params = (MIN_CHUNK * 16, AVG_CHUNK * 16, MAX_CHUNK);

/// FastCDC (min, avg, max) for a new file of `size` bytes.
pub fn params_for(size: u64) -> Params {
    if size > LARGE_FILE {
        LARGE
    } else if size > FINE_FILE {
        FINE
    } else {
        DEFAULT
    }
}

/// FastCDC (min, avg, max) for a new version of `size` bytes of a file whose previous version
/// was cut into `previous`: the previous version's scheme, so that an edit shares the chunks
/// around it with the version peers hold, even when that version was cut by an older release
/// or when the file grew a little past [`FINE_FILE`]. A file that at least doubled is mostly
/// new content, sent anyway: it gets the scheme of its size (a file scanned while it was
/// being written does not keep the scheme of its first part). Above [`LARGE_FILE`] only
/// [`LARGE`] keeps the list small enough.
pub fn params_like(size: u64, previous: &[ChunkRef]) -> Params {
    let before: u64 = previous.iter().map(|c| c.len as u64).sum();
    if size > LARGE_FILE || previous.len() < 5 || size >= 2 * before {
        return params_for(size);
    }
    // the last chunk is cut by the end of the file, not by the content
    let body = &previous[..previous.len() - 1];
    let avg = body.iter().map(|c| c.len as u64).sum::<u64>() / body.len() as u64;
    if avg < 2 * FINE.1 as u64 {
        FINE
    } else if avg < 4 * DEFAULT.1 as u64 {
        DEFAULT
    } else {
        LARGE
    }
}

/// The identity of some content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub hash: Hash,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

/// Hash and chunk everything `r` yields; `size_hint` (the expected size) picks the chunk sizes.
pub fn identify(r: impl Read, size_hint: u64) -> std::io::Result<Content> {
    identify_with(r, size_hint, params_for(size_hint))
}

/// [`identify`] with the chunking scheme `params` (see [`params_like`]).
pub fn identify_with(mut r: impl Read, size_hint: u64, params: Params) -> std::io::Result<Content> {
    if size_hint < params.0 as u64 {
        // below the minimum chunk size FastCDC yields the whole content as one chunk: do the
        // same without a chunking buffer per file (most files of a web tree are this small)
        let mut buf = Vec::with_capacity(size_hint as usize + 1);
        r.by_ref().take(params.0 as u64).read_to_end(&mut buf)?;
        if buf.len() < params.0 {
            let h = hash(&buf);
            let chunks = if buf.is_empty() {
                vec![]
            } else {
                vec![ChunkRef {
                    hash: h,
                    len: buf.len() as u32,
                }]
            };
            return Ok(Content {
                hash: h,
                size: buf.len() as u64,
                chunks,
            });
        }
        // it grew meanwhile: chunk what was read and the rest normally
        return identify_stream(
            std::io::Cursor::new(buf).chain(r),
            params.0 as u64 * 2,
            params,
        );
    }
    identify_stream(r, size_hint, params)
}

/// Content from this size on is chunked on two threads: one reads and finds the cut points,
/// the other hashes the chunks and the whole (each is about half of the work).
const PIPELINE_MIN: u64 = 16 << 20;
/// Bytes read at once (at most; less for a small file).
const BLOCK: usize = 2 << 20;
/// Blocks in flight between the two threads.
const BLOCKS: usize = 3;

/// FastCDC's cut-point search with one scheme's parameters.
struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: std::borrow::Cow<'static, [u64]>,
    gear_ls: std::borrow::Cow<'static, [u64]>,
}

impl Cutter {
    fn new((min, avg, max): Params) -> Self {
        use fastcdc::v2020::{Normalization, get_gear_with_seed, select_masks};
        // the masks and tables `StreamCDC::new` uses, so the cuts are the same as before
        let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(0);
        Cutter {
            min,
            avg,
            max,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    /// Length of the chunk at the start of `data`, which holds at least `max` bytes or
    /// everything up to the end of the content.
    fn next(&self, data: &[u8]) -> usize {
        fastcdc::v2020::cut_gear(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        )
        .1
    }
}

/// A buffer of content with its cut points.
struct Block {
    buf: Vec<u8>,
    len: usize,
    /// `buf[..fresh]` was carried over from the previous block (its whole-content hash is
    /// done); the chunks all lie in `buf[..len]`.
    fresh: usize,
    cuts: Vec<(usize, usize)>,
}

/// Where cut blocks go, and where empty buffers come from.
trait Sink {
    fn spare(&mut self) -> std::io::Result<Vec<u8>>;
    fn done(&mut self, b: Block) -> std::io::Result<()>;
}

/// The running hashes of one content.
#[derive(Default)]
struct Hashes {
    whole: blake3::Hasher,
    chunks: Vec<ChunkRef>,
    size: u64,
}

impl Hashes {
    fn add(&mut self, b: &Block) {
        self.whole.update(&b.buf[b.fresh..b.len]);
        self.size += (b.len - b.fresh) as u64;
        for &(at, n) in &b.cuts {
            self.chunks.push(ChunkRef {
                hash: hash(&b.buf[at..at + n]),
                len: n as u32,
            });
        }
    }

    fn finish(self) -> Content {
        Content {
            hash: *self.whole.finalize().as_bytes(),
            size: self.size,
            chunks: self.chunks,
        }
    }
}

/// Hash on the calling thread, one buffer reused.
struct Inline {
    hashes: Hashes,
    free: Option<Vec<u8>>,
}

impl Sink for Inline {
    fn spare(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(self.free.take().unwrap_or_default())
    }
    fn done(&mut self, b: Block) -> std::io::Result<()> {
        self.hashes.add(&b);
        self.free = Some(b.buf);
        Ok(())
    }
}

/// Hand blocks to a hashing thread; buffers come back from it.
struct Piped {
    to_hash: std::sync::mpsc::SyncSender<Block>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    made: usize,
}

fn gone() -> std::io::Error {
    std::io::Error::other("the hashing thread ended")
}

impl Sink for Piped {
    fn spare(&mut self) -> std::io::Result<Vec<u8>> {
        if let Ok(b) = self.back.try_recv() {
            return Ok(b);
        }
        if self.made < BLOCKS {
            self.made += 1;
            return Ok(Vec::new());
        }
        self.back.recv().map_err(|_| gone())
    }
    fn done(&mut self, b: Block) -> std::io::Result<()> {
        self.to_hash.send(b).map_err(|_| gone())
    }
}

/// Fill `buf` from `r` as far as it goes; the bytes read (fewer only at the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read `r` in blocks and cut each into chunks (a chunk never spans two blocks: the uncut end
/// of a block is carried to the start of the next).
fn cut_stream(
    mut r: impl Read,
    size_hint: u64,
    c: &Cutter,
    sink: &mut impl Sink,
) -> std::io::Result<()> {
    let block = (size_hint.saturating_add(1)).clamp(4096, BLOCK as u64) as usize;
    // a cut needs `max` bytes ahead of it (or the end), so a buffer holds a block beyond that
    let cap = block + c.max;
    let mut buf = sink.spare()?;
    buf.resize(cap, 0);
    let (mut len, mut fresh) = (0, 0);
    loop {
        let n = read_full(&mut r, &mut buf[len..])?;
        len += n;
        let end = len < cap;
        let mut pos = 0;
        let mut cuts = Vec::new();
        while pos < len && (end || len - pos >= c.max) {
            let n = c.next(&buf[pos..len]);
            cuts.push((pos, n));
            pos += n;
        }
        if end {
            return sink.done(Block {
                buf,
                len,
                fresh,
                cuts,
            });
        }
        let mut next = sink.spare()?;
        next.resize(cap, 0);
        let carry = len - pos;
        next[..carry].copy_from_slice(&buf[pos..len]);
        sink.done(Block {
            buf,
            len,
            fresh,
            cuts,
        })?;
        (buf, len, fresh) = (next, carry, carry);
    }
}

fn identify_stream(r: impl Read, size_hint: u64, params: Params) -> std::io::Result<Content> {
    let cutter = Cutter::new(params);
    if size_hint < PIPELINE_MIN {
        let mut sink = Inline {
            hashes: Hashes::default(),
            free: None,
        };
        cut_stream(r, size_hint, &cutter, &mut sink)?;
        return Ok(sink.hashes.finish());
    }
    let (to_hash, blocks) = std::sync::mpsc::sync_channel::<Block>(1);
    let (give_back, back) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::scope(|s| {
        let hasher = s.spawn(move || {
            let mut h = Hashes::default();
            for b in blocks {
                h.add(&b);
                // the cutter may be gone (an error): the buffer is simply dropped then
                let _ = give_back.send(b.buf);
            }
            h.finish()
        });
        let mut sink = Piped {
            to_hash,
            back,
            made: 0,
        };
        let cut = cut_stream(r, size_hint, &cutter, &mut sink);
        // closing the channel ends the hasher's loop
        drop(sink);
        let content = hasher.join().map_err(|_| gone())?;
        cut.map(|()| content)
    })
}

/// Identity of bytes in memory.
pub fn identify_bytes(b: &[u8]) -> Content {
    // Reading from a slice cannot fail.
    identify(b, b.len() as u64).unwrap_or_else(|_| Content {
        hash: *blake3::hash(b).as_bytes(),
        size: b.len() as u64,
        chunks: vec![],
    })
}

/// BLAKE3 of bytes.
pub fn hash(b: &[u8]) -> Hash {
    *blake3::hash(b).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// What the releases before 0.3 computed (fastcdc's `StreamCDC`).
    fn reference(d: &[u8], (min, avg, max): Params) -> Content {
        let mut whole = blake3::Hasher::new();
        let mut chunks = Vec::new();
        for c in fastcdc::v2020::StreamCDC::new(d, min, avg, max) {
            let c = c.unwrap();
            whole.update(&c.data);
            chunks.push(ChunkRef {
                hash: hash(&c.data),
                len: c.length as u32,
            });
        }
        Content {
            hash: *whole.finalize().as_bytes(),
            size: d.len() as u64,
            chunks,
        }
    }

    /// A reader that hands out a few odd-sized bytes at a time.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = (self.1 * 7 + 3) % 70_001 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn cuts_are_those_of_the_previous_releases() {
        // across block ends, on one thread and on two, whatever the reads return
        for (n, params) in [
            (5 * BLOCK + 12_345, DEFAULT),
            (3 * BLOCK, FINE),
            (PIPELINE_MIN as usize + 3 * BLOCK + 77, DEFAULT),
            (PIPELINE_MIN as usize + 1, FINE),
            (9 * LARGE.2 + 5, LARGE),
        ] {
            let d = data(n, n as u64);
            let want = reference(&d, params);
            for hint in [n as u64, 10, PIPELINE_MIN] {
                assert_eq!(identify_stream(&d[..], hint, params).unwrap(), want, "{n}");
            }
            assert_eq!(
                identify_stream(Trickle(&d, 1), n as u64, params).unwrap(),
                want,
                "{n}"
            );
        }
        // a read error ends the chunking on either path
        struct Fails(usize);
        impl Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("gone"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        for hint in [1 << 20, PIPELINE_MIN] {
            assert!(identify_stream(Fails(3 * BLOCK + 5), hint, DEFAULT).is_err());
        }
    }

    #[test]
    fn schemes_follow_the_previous_version() {
        let refs = |len: u32, n: usize| vec![ChunkRef { hash: [0; 32], len }; n];
        assert_eq!(params_for(1 << 20), DEFAULT);
        assert_eq!(params_for(256 << 20), FINE);
        assert_eq!(params_for(2 << 30), LARGE);
        // a large file cut by an older release keeps its scheme, a new one gets the fine one
        assert_eq!(params_like(256 << 20, &refs(64 << 10, 4096)), DEFAULT);
        assert_eq!(params_like(256 << 20, &[]), FINE);
        // growing a little past FINE_FILE does not change the cuts; doubling does
        assert_eq!(params_like(65 << 20, &refs(70 << 10, 900)), DEFAULT);
        assert_eq!(params_like(256 << 20, &refs(64 << 10, 700)), FINE);
        assert_eq!(params_like(60 << 20, &refs(17 << 10, 3600)), FINE);
        // above LARGE_FILE only the large scheme keeps the list small
        assert_eq!(params_like(2 << 30, &refs(17 << 10, 60_000)), LARGE);
        assert_eq!(params_like(900 << 20, &refs(1 << 20, 1000)), LARGE);
    }

    #[test]
    fn lengths_add_up_and_edit_is_local() {
        let a = data(4 << 20, 7);
        let ca = identify_bytes(&a);
        assert_eq!(ca.size, a.len() as u64);
        assert_eq!(ca.chunks.iter().map(|c| c.len as u64).sum::<u64>(), ca.size);
        assert_eq!(ca.hash, hash(&a));
        let mut b = a.clone();
        for x in &mut b[2_000_000..2_000_100] {
            *x ^= 0xff;
        }
        let cb = identify_bytes(&b);
        let known: std::collections::HashSet<_> = ca.chunks.iter().map(|c| c.hash).collect();
        let new_bytes: u64 = cb
            .chunks
            .iter()
            .filter(|c| !known.contains(&c.hash))
            .map(|c| c.len as u64)
            .sum();
        assert!(new_bytes <= 2 * SMALL_MAX_CHUNK as u64, "{new_bytes}");
        assert_eq!(params_for(2 << 30).2, MAX_CHUNK);
        assert!(identify_bytes(b"").chunks.is_empty());
        // the small-file shortcut gives what FastCDC gives
        for n in [
            1usize,
            100,
            MIN_CHUNK - 1,
            MIN_CHUNK,
            MIN_CHUNK + 1,
            3 * MIN_CHUNK,
        ] {
            let d = data(n, n as u64);
            assert_eq!(
                identify(&d[..], n as u64).unwrap(),
                identify_stream(&d[..], n as u64, DEFAULT).unwrap(),
                "{n}"
            );
            // and a wrong size hint changes nothing
            assert_eq!(
                identify(&d[..], 10).unwrap(),
                identify_stream(&d[..], n as u64, DEFAULT).unwrap(),
                "{n}"
            );
        }
    }
}
