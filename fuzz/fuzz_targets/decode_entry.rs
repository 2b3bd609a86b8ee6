//! Values of the index as stored on disk: a damaged value must fail to decode cleanly, and
//! whatever decodes must round-trip. The same bytes are tried as
//! - a postcard `Entry` alone;
//! - a `files` row: postcard `QuickStat`, then postcard `Entry` (see `index.rs`);
//! - a `conflicts` row: postcard `ConflictInfo`.
#![no_main]

use clustersync::index::ConflictInfo;
use clustersync::record::{Entry, QuickStat};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Re-encode `v` and decode it again: it must come back equal.
fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
    let bytes = postcard::to_allocvec(v).expect("a decoded value must encode");
    let again: T = postcard::from_bytes(&bytes).expect("an encoded value must decode");
    assert_eq!(&again, v, "from_bytes(to_allocvec(v)) != v");
}

fn entry(e: &Entry) {
    let _ = (e.rec.is_deleted(), e.rec.kind(), e.rec.size(), e.quick());
    let _ = e.rec.version.display();
    roundtrip(e);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = postcard::from_bytes::<Entry>(data) {
        entry(&e);
    }
    if let Ok((q, rest)) = postcard::take_from_bytes::<QuickStat>(data) {
        roundtrip(&q);
        if let Ok(e) = postcard::from_bytes::<Entry>(rest) {
            entry(&e);
        }
    }
    if let Ok(c) = postcard::from_bytes::<ConflictInfo>(data) {
        roundtrip(&c);
    }
});
