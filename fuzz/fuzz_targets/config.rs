//! The configuration parser: any text gives a `Config` or a `ConfigError`, never a panic; an
//! accepted config can be summarised, checked for unsupported features, its patterns
//! compile into the group filters (an invariant `Config::parse` promises), and it is written
//! by `Config::to_toml` as a text that reads back to an equal config.
#![no_main]

use clustersync::config::Config;
use clustersync::local::filter::Filter;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let cfg = match Config::parse(&text, Path::new("fuzz.toml")) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = cfg.refuse_unsupported().map_err(|e| e.to_string());
    let _ = cfg.summary(None);
    if let Some(name) = cfg.nodes.keys().next() {
        let _ = cfg.summary(Some(name));
        let _ = cfg.peers_of(name);
    }
    let written = cfg.to_toml();
    match Config::parse(&written, Path::new("fuzz.toml")) {
        Ok(back) => assert!(
            back == cfg,
            "written config reads back different:\n{written}"
        ),
        Err(e) => panic!("written config does not parse: {e}\n{written}"),
    }
    for g in cfg.groups.values() {
        if let Err(e) = Filter::new(g) {
            panic!(
                "group {:?} passed Config::parse but its filter fails: {e}",
                g.name
            );
        }
    }
});
