//! Which release this build is, and which formats it speaks and reads: what
//! `clustersync --version` prints and what the control socket tells a command line of another
//! release (SPEC §4, §5.15).
//!
//! Invariants: the version is Cargo's package version, bumped with every release that changes
//! a format; the ranges come from the constants that govern each format (`net::protocol`,
//! `store`, `ops::control`), never written out twice.

use crate::net::protocol::{MAX_VERSION, MIN_VERSION};
use crate::store::{MIN_SCHEMA_VERSION, SCHEMA_VERSION};

/// This release, e.g. `0.3.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this binary was built from (short hash), or `unknown` (see `build.rs`).
pub const COMMIT: &str = env!("CLUSTERSYNC_COMMIT");

/// `0.3.0 (abc1234) protocol 3-5 index 3-5`: what `--version` prints after the program name.
pub fn line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LINE.get_or_init(|| {
        format!(
            "{VERSION} ({COMMIT}) protocol {MIN_VERSION}-{MAX_VERSION} index {MIN_SCHEMA_VERSION}-{SCHEMA_VERSION}"
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_line_names_release_commit_and_ranges() {
        let l = super::line();
        assert!(l.starts_with(&format!("{} (", super::VERSION)), "{l}");
        assert!(l.contains(" protocol 3-"), "{l}");
        assert!(l.contains(" index 3-"), "{l}");
    }
}
