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

/// FastCDC (min, avg, max) for a file of `size` bytes.
pub fn params_for(size: u64) -> (usize, usize, usize) {
    if size > LARGE_FILE {
        (MIN_CHUNK * 16, AVG_CHUNK * 16, MAX_CHUNK)
    } else {
        (MIN_CHUNK, AVG_CHUNK, SMALL_MAX_CHUNK)
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
pub fn identify(mut r: impl Read, size_hint: u64) -> std::io::Result<Content> {
    if size_hint < MIN_CHUNK as u64 {
        // below the minimum chunk size FastCDC yields the whole content as one chunk: do the
        // same without its 256 KiB buffer per file (most files of a web tree are this small)
        let mut buf = Vec::with_capacity(size_hint as usize + 1);
        r.by_ref().take(MIN_CHUNK as u64).read_to_end(&mut buf)?;
        if buf.len() < MIN_CHUNK {
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
        return identify_stream(std::io::Cursor::new(buf).chain(r), MIN_CHUNK as u64 * 2);
    }
    identify_stream(r, size_hint)
}

fn identify_stream(r: impl Read, size_hint: u64) -> std::io::Result<Content> {
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let (min, avg, max) = params_for(size_hint);
    for c in fastcdc::v2020::StreamCDC::new(r, min, avg, max) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })?;
        whole.update(&c.data);
        chunks.push(ChunkRef {
            hash: *blake3::hash(&c.data).as_bytes(),
            len: c.length as u32,
        });
        size += c.length as u64;
    }
    Ok(Content {
        hash: *whole.finalize().as_bytes(),
        size,
        chunks,
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
                identify_stream(&d[..], n as u64).unwrap(),
                "{n}"
            );
            // and a wrong size hint changes nothing
            assert_eq!(
                identify(&d[..], 10).unwrap(),
                identify_stream(&d[..], n as u64).unwrap(),
                "{n}"
            );
        }
    }
}
