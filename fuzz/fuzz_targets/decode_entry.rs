//! An index entry as stored on disk (`files` table, postcard `Entry`): decoding a damaged value
//! must fail cleanly, and a decoded entry must round-trip.
#![no_main]

use clustersync::record::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = postcard::from_bytes::<Entry>(data) else {
        return;
    };
    let _ = (e.rec.is_deleted(), e.rec.kind(), e.rec.size());
    let _ = e.rec.version.display();
    let bytes = postcard::to_allocvec(&e).expect("a decoded entry must encode");
    let again: Entry = postcard::from_bytes(&bytes).expect("an encoded entry must decode");
    assert_eq!(again, e, "from_bytes(to_allocvec(e)) != e");
});
