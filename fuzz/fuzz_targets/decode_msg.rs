//! A peer's frame, in either protocol a link may speak: `Msg::decode` (protocols 4 and 5) and
//! `Msg3::decode` (protocol 3, a node of the previous release) must never panic; whatever they
//! accept must encode back and decode to the same message; and the translation between the two
//! (`net::v3`) keeps everything protocol 3 can carry and drops only the items it cannot.
#![no_main]

use clustersync::item::v3::RecordV3;
use clustersync::net::protocol::Msg;
use clustersync::net::v3::{Msg3, from_current, to_current};
use libfuzzer_sys::fuzz_target;

/// `m` without the items protocol 3 cannot carry.
fn carriable(m: Msg) -> Msg {
    match m {
        Msg::Index {
            group,
            items,
            through,
            head,
        } => Msg::Index {
            group,
            items: items
                .into_iter()
                .filter(|w| RecordV3::try_from(&w.item).is_ok())
                .collect(),
            through,
            head,
        },
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        let _ = m.kind();
        let bytes = m.encode().expect("a decoded message must encode");
        let again = Msg::decode(&bytes).expect("an encoded message must decode");
        assert_eq!(again, m, "decode(encode(m)) != m");
        // what a link to a node of the previous release makes of it
        match from_current(&m) {
            // Hello is the link's own; protocol 5's messages are never sent to protocol 3
            None => assert!(
                matches!(m, Msg::Hello { .. }) || m.since() >= 5,
                "only Hello and protocol-5 messages are not translated"
            ),
            Some(old) => {
                let frame = old.encode().expect("a translated message must encode");
                let old = Msg3::decode(&frame).expect("a translated message must decode");
                let back = to_current(old).expect("a translated message is not a Hello");
                assert_eq!(
                    back,
                    carriable(m),
                    "protocol 3 lost more than it cannot carry"
                );
            }
        }
    }
    if let Ok(m) = Msg3::decode(data) {
        let bytes = m.encode().expect("a decoded message must encode");
        let again = Msg3::decode(&bytes).expect("an encoded message must decode");
        assert_eq!(again, m, "decode(encode(m)) != m (protocol 3)");
        match to_current(m.clone()) {
            Err(h) => assert_eq!(h, m, "Hello is handed back untouched"),
            Ok(cur) => assert_eq!(from_current(&cur), Some(m), "protocol 3 → 4 → 3 changed it"),
        }
    }
});
