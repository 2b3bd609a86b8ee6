//! The anti-entropy figures of SPEC §7 (issue 21): two indexes of an N-file group (default
//! 1,000,000), compared with the real comparison walk (`engine::verify::walk`) over the real
//! message codec. Measures one comparison of equal groups and finding 10 differing paths among
//! N: wall time, messages, round trips and bytes on the wire (`engine::verify::IndexFar`: each
//! message encoded as the link encodes it, plus the transport's framing). Not a network
//! benchmark: the far side
//! answers in-process, so add one loopback round trip (~0.1 ms) per round trip counted.
//!
//!     cargo bench --bench summary                       # N = 1,000,000, 10 differences
//!     BENCH_SUMMARY_FILES=100000 BENCH_SUMMARY_DIFFS=100 cargo bench --bench summary
//!
//! The indexes are built under `$BENCH_TMPDIR` (default /tmp) and removed afterwards; building
//! the first takes a minute or two (N commits' worth of index writes), the second is a copy.
//! Under `cargo test` (no `--bench` argument) it does nothing.

use clustersync::engine::verify::{Far, IndexFar, VerifyError, Walked, walk};
use clustersync::item::{Body, ChunkRef, Entry, Item, Kind, Meta, Owner, VersionVector};
use clustersync::net::protocol::WireItem;
use clustersync::store::{Change, Extras, Store};
use std::sync::atomic::Ordering;
use std::time::Instant;

fn key(i: u64) -> Vec<u8> {
    // 10,000 directories as in bench.py's `scale` tree
    format!("/srv/www/d{:04}/file-{i:07}.html", i % 10_000).into_bytes()
}

fn entry(i: u64, content: u8) -> Entry {
    let mut version = VersionVector::default();
    version.bump("web1", 1_733_000_000_000 + i);
    let mut hash = [content; 32];
    hash[..8].copy_from_slice(&i.to_le_bytes());
    let mut e = Entry::new(Item {
        key: key(i),
        version,
        origin: "web1".into(),
        beat: vec![],
        body: Some(Body::Fs(Meta {
            kind: Kind::File,
            mode: 0o644,
            mtime_s: 1_733_000_000,
            mtime_ns: 0,
            size: 100,
            owner: Owner {
                uid: 33,
                gid: 33,
                user: Some("www-data".into()),
                group: Some("www-data".into()),
            },
            hash,
            target: None,
            chunks: vec![ChunkRef { hash, len: 100 }],
            xattrs: vec![],
        })),
    });
    e.ino = i + 1000;
    e
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u64 = std::env::var("BENCH_SUMMARY_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let diffs: u64 = std::env::var("BENCH_SUMMARY_DIFFS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = std::env::var("BENCH_TMPDIR").unwrap_or_else(|_| "/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("bench-summary.")
        .tempdir_in(tmp)
        .expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    println!("summary: building an index of {n} files");
    let t0 = Instant::now();
    let pa = dir.path().join("a.redb");
    {
        let a = Store::open(&pa).expect("open a");
        let batch = 10_000u64;
        let mut i = 0;
        while i < n {
            let changes = (i..(i + batch).min(n))
                .map(|j| Change {
                    entry: entry(j, 1),
                    announce: true,
                })
                .collect();
            a.commit("www", changes, Extras::default()).expect("commit");
            i += batch;
        }
    }
    let build = t0.elapsed();
    let pb = dir.path().join("b.redb");
    std::fs::copy(&pa, &pb).expect("copy");
    let a = Store::open(&pa).expect("open a");
    let b = Store::open(&pb).expect("open b");
    println!(
        "summary: built in {:.1} s ({:.1} µs per file, summary upkeep included); root {:?}",
        build.as_secs_f64(),
        build.as_secs_f64() * 1e6 / n as f64,
        a.summary_root("www").expect("root").count,
    );

    // equal groups
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut msgs = 0;
    for _ in 0..21 {
        let far = IndexFar::new(&b);
        let t = Instant::now();
        let w = rt
            .block_on(walk(&a, &far, "b", "www", 10_000))
            .expect("walk");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(w, Walked::Matched);
        bytes = far.bytes.load(Ordering::Relaxed);
        msgs = far.messages.load(Ordering::Relaxed);
    }
    let (lo, med, hi) = stats(times);
    println!(
        "summary: equal groups of {n} files: one comparison {med:.3} ms (range {lo:.3}-{hi:.3} ms over 21), {msgs} messages, {bytes} bytes on the wire, 1 round trip"
    );

    // `diffs` differing paths: other content on b
    // spread over the whole group (a fixed pseudo-random pick, no two in one directory)
    let mut changed: Vec<u64> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while (changed.len() as u64) < diffs.min(n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % n;
        if !changed.contains(&i) {
            changed.push(i);
        }
    }
    b.commit(
        "www",
        changed
            .iter()
            .map(|i| Change {
                entry: entry(*i, 2),
                announce: false,
            })
            .collect(),
        Extras::default(),
    )
    .expect("commit differences");
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut msgs = 0;
    let mut found = 0;
    for _ in 0..5 {
        let far = IndexFar::new(&b);
        let t = Instant::now();
        let w = rt
            .block_on(async {
                let w = walk(&a, &far, "b", "www", 10_000).await?;
                if let Walked::Differ { keys, .. } = &w {
                    // the exchange of the entries, as a comparison settles them
                    let mine: Vec<WireItem> = keys
                        .iter()
                        .filter_map(|k| a.get("www", k).ok().flatten())
                        .map(|e| WireItem {
                            item: e.item,
                            inline: None,
                        })
                        .collect();
                    far.differ("www", keys.clone(), mine, true).await?;
                }
                Ok::<_, VerifyError>(w)
            })
            .expect("walk");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let Walked::Differ { keys, .. } = w else {
            panic!("no difference found")
        };
        found = keys.len();
        bytes = far.bytes.load(Ordering::Relaxed);
        msgs = far.messages.load(Ordering::Relaxed);
    }
    assert_eq!(found as u64, diffs, "every difference found, nothing else");
    let (lo, med, hi) = stats(times);
    // round trips: the root, one per level walked (5), the exchange of entries
    println!(
        "summary: {diffs} differing paths among {n}: found and exchanged in {med:.1} ms (range {lo:.1}-{hi:.1} ms over 5), {msgs} messages in 7 round trips, {bytes} bytes ({:.1} KiB) on the wire",
        bytes as f64 / 1024.0
    );
    drop(a);
    drop(b);
}
