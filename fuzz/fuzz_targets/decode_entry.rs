//! Values of the index as stored on disk: a damaged value must fail to decode cleanly, and
//! whatever decodes must round-trip. The same bytes are tried as
//! - an `items` row of schema 4 (`store::decode_entry`: the quick-check view, then the entry,
//!   strictly) and its quick-check prefix alone (`store::decode_quick`);
//! - a `conflicts4` row (`ConflictInfo`) and an `aside` row (`Aside`);
//! - schema-3 values of the previous release's index, which `store::migrate` reads once: a
//!   `files` row (`QuickStatV3` then `EntryV3`), an `EntryV3` alone, a `ConflictInfoV3`; each
//!   converted as the migration converts it and stored as schema 4, which must decode back.
#![no_main]

use clustersync::item::v3::{ConflictInfoV3, EntryV3, QuickStatV3, RecordV3};
use clustersync::item::{Entry, Item};
use clustersync::store::{Aside, ConflictInfo, decode_entry, decode_quick, encode_entry};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::path::Path;

const INDEX: &str = "fuzz.redb";

/// Re-encode `v` and decode it again: it must come back equal.
fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + Debug>(v: &T) {
    let bytes = postcard::to_allocvec(v).expect("a decoded value must encode");
    let again: T = postcard::from_bytes(&bytes).expect("an encoded value must decode");
    assert_eq!(&again, v, "from_bytes(to_allocvec(v)) != v");
}

/// Store `e` as an `items` row and read it back.
fn stored(e: &Entry) {
    let p = Path::new(INDEX);
    let _ = (
        e.item.is_deleted(),
        e.item.kind(),
        e.item.size(),
        e.item.show(),
    );
    let _ = e.item.version.display();
    let bytes = encode_entry(p, e).expect("a decoded entry must encode");
    let again = decode_entry(p, &e.item.key, &bytes).expect("an encoded entry must decode");
    assert_eq!(&again, e, "decode_entry(encode_entry(e)) != e");
    let q = decode_quick(p, &e.item.key, &bytes).expect("an encoded entry has a quick view");
    assert_eq!(
        q,
        e.quick(),
        "the stored quick-check view is not the entry's"
    );
}

/// What the migration from schema 3 does with an old entry.
fn migrate(old: EntryV3) {
    let e = Entry {
        item: old.rec.clone().into(),
        seq: old.seq,
        ino: old.ino,
        ctime_s: old.ctime_s,
        ctime_ns: old.ctime_ns,
        from: None,
        fresh: false,
    };
    stored(&e);
    assert_eq!(
        RecordV3::try_from(&e.item),
        Ok(old.rec),
        "a schema-3 record does not survive the conversion"
    );
}

fuzz_target!(|data: &[u8]| {
    let p = Path::new(INDEX);
    let _ = decode_quick(p, b"/k", data);
    if let Ok(e) = decode_entry(p, b"/k", data) {
        stored(&e);
    }
    if let Ok(c) = postcard::from_bytes::<ConflictInfo>(data) {
        roundtrip(&c);
    }
    if let Ok(a) = postcard::from_bytes::<Aside>(data) {
        roundtrip(&a);
    }
    let row = postcard::take_from_bytes::<QuickStatV3>(data)
        .ok()
        .and_then(|(_, rest)| postcard::from_bytes::<EntryV3>(rest).ok());
    for old in [row, postcard::from_bytes::<EntryV3>(data).ok()]
        .into_iter()
        .flatten()
    {
        migrate(old);
    }
    if let Ok(c) = postcard::from_bytes::<ConflictInfoV3>(data) {
        let c = ConflictInfo {
            nodes: c.nodes,
            resolved: c.resolved,
            winner: c.winner,
            kept_as: c.kept_as,
            time: c.time,
            versions: c.versions.into_iter().map(Item::from).collect(),
        };
        roundtrip(&c);
    }
});
