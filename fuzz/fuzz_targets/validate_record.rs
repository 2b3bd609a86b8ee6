//! A record from a peer, checked by `apply::validate` against a fixed group before anything
//! else looks at it: whatever the bytes, validation answers Ok or Refused and never panics.
#![no_main]

use clustersync::apply::validate;
use clustersync::config::Config;
use clustersync::node::GroupRt;
use clustersync::paths::check_shape;
use clustersync::protocol::WireRecord;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::LazyLock;

const CONFIG: &str = r#"
[nodes.a]
address = "127.0.0.1:7001"

[nodes.b]
address = "127.0.0.1:7002"

[groups.www]
nodes = ["a", "b"]
paths = ["/srv/www", "/etc/hosts"]
exclude = ["*.tmp", "cache/", ".git/", "/private", "**/*.bak"]
"#;

static GROUP: LazyLock<GroupRt> = LazyLock::new(|| {
    let cfg = Config::parse(CONFIG, Path::new("fuzz.toml")).expect("the fixed config parses");
    let cfg = cfg.groups["www"].clone();
    GroupRt::new(&cfg, "a").expect("the fixed patterns compile")
});

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = postcard::from_bytes::<WireRecord>(data) else {
        return;
    };
    let _ = check_shape(&wire.rec.path);
    let _ = validate(&GROUP, &wire, &|n| n == "a" || n == "b").map_err(|e| e.to_string());
});
