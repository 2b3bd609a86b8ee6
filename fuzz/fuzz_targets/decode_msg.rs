//! A peer's frame: `Msg::decode` must never panic, and whatever it accepts must encode back to
//! the same bytes and decode to the same message.
#![no_main]

use clustersync::protocol::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Msg::decode(data) else {
        return;
    };
    let _ = m.kind();
    let bytes = m.encode().expect("a decoded message must encode");
    let again = Msg::decode(&bytes).expect("an encoded message must decode");
    assert_eq!(again, m, "decode(encode(m)) != m");
});
