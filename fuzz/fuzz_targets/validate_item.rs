//! An item from a peer, checked by `engine::apply::validate` against a fixed group before
//! anything else looks at it: whatever the bytes, validation answers Ok or Refused and never
//! panics, and what it accepts keeps the promises the apply relies on. The bytes are tried as
//! a protocol-4 `WireItem`, and as a protocol-3 `WireRecord` translated as a link to a node of
//! the previous release translates it.
//!
//! The group (`validate_item.toml`, also read by `tests/roundtrip.rs`): paths `/srv/www` and
//! `/etc/hosts`, nodes `a` and `b`, some excludes; once as written (no `xattrs`) and once with
//! `xattrs = true`.
#![no_main]

use clustersync::config::Config;
use clustersync::engine::apply::validate;
use clustersync::engine::group::GroupRt;
use clustersync::fs::chunk::hash;
use clustersync::fs::xattr;
use clustersync::item::{Item, Kind, name};
use clustersync::net::protocol::WireItem;
use clustersync::net::v3::WireRecord;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;

const CONFIG: &str = include_str!("validate_item.toml");

fn group(xattrs: bool) -> GroupRt {
    let mut text = CONFIG.to_string();
    if xattrs {
        text.push_str("xattrs = true\n");
    }
    let cfg =
        Config::parse(&text, Path::new("validate_item.toml")).expect("the fixed config parses");
    GroupRt::new(&cfg.groups["www"], "a").expect("the fixed patterns compile")
}

static PLAIN: LazyLock<GroupRt> = LazyLock::new(|| group(false));
static WITH_XATTRS: LazyLock<GroupRt> = LazyLock::new(|| group(true));

fn known(n: &str) -> bool {
    n == "a" || n == "b"
}

/// What an accepted item promises whatever the group.
fn accepted(g: &GroupRt, w: &WireItem) {
    let i = &w.item;
    name::validate(&i.key, &g.cfg.paths).expect("an accepted key is a path of the group");
    assert!(known(&i.origin), "an accepted item comes from a known node");
    assert!(!i.version.is_empty(), "an accepted item has a version");
    match (i.meta(), &w.inline) {
        (_, None) => {}
        (Some(m), Some(data)) => {
            assert_eq!(m.kind, Kind::File, "only a file carries content");
            assert_eq!(
                data.len() as u64,
                m.size,
                "accepted content has the announced size"
            );
            assert_eq!(
                hash(data),
                m.hash,
                "accepted content has the announced hash"
            );
        }
        (None, Some(_)) => panic!("content accepted with a deletion"),
    }
    if let Some(m) = i.meta() {
        if m.kind == Kind::Symlink {
            let t = m
                .target
                .as_deref()
                .expect("an accepted symlink has a target");
            assert!(
                !t.is_empty() && !t.contains(&0),
                "an accepted link text has no NUL"
            );
        }
        if m.kind == Kind::File {
            let sum: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
            assert_eq!(sum, m.size, "accepted chunks add up to the size");
        }
        xattr::validate(&m.xattrs).expect("accepted attributes pass their own validation");
    }
}

fn check(w: &WireItem) {
    let plain = validate(&PLAIN, w, &known);
    let with = validate(&WITH_XATTRS, w, &known);
    if plain.is_ok() {
        accepted(&PLAIN, w);
        assert!(
            w.item.meta().is_none_or(|m| m.xattrs.is_empty()),
            "attributes accepted in a group without xattrs = true"
        );
        assert!(
            with.is_ok(),
            "xattrs = true refused what the plain group accepts"
        );
    }
    if with.is_ok() {
        accepted(&WITH_XATTRS, w);
    }
    let _ = plain.map_err(|e| e.to_string());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = postcard::from_bytes::<WireItem>(data) {
        check(&w);
    }
    if let Ok(w) = postcard::from_bytes::<WireRecord>(data) {
        check(&WireItem {
            item: Item::from(w.rec),
            inline: w.inline,
        });
    }
});
