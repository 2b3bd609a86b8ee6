//! The audit log: one JSON line per change applied, sent, backed up, reverted or refused, in
//! `<state-dir>/audit.log`, rotated by size (one previous file, `audit.log.1`) so it cannot fill
//! the disk. Writing is best effort: a full disk must not stop syncing.

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size at which the log is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    group: &'a str,
    path: &'a str,
    kind: &'a str,
    origin: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
}

/// The audit log of a node.
pub struct Audit {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Audit {
    pub fn open(path: &Path) -> Audit {
        Audit {
            path: path.into(),
            file: Mutex::new(None),
        }
    }

    /// Append one line.
    pub fn write(&self, group: &str, path: &str, kind: &str, origin: &str, version: &str) {
        self.write_to(group, path, kind, origin, version, None);
    }

    /// Append one line about an exchange with `peer`.
    pub fn write_to(
        &self,
        group: &str,
        path: &str,
        kind: &str,
        origin: &str,
        version: &str,
        peer: Option<&str>,
    ) {
        let line = Line {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            group,
            path,
            kind,
            origin,
            version,
            peer,
        };
        let Ok(mut text) = serde_json::to_string(&line) else {
            return;
        };
        text.push('\n');
        let mut g = match self.file.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() > ROTATE_BYTES)
        {
            *g = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        if g.is_none() {
            *g = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = g.as_mut() {
            let _ = f.write_all(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size() {
        let d = tempfile::tempdir().unwrap();
        let a = Audit::open(&d.path().join("audit.log"));
        let long = "p".repeat(4000);
        for _ in 0..(ROTATE_BYTES / 4000 + 10) {
            a.write("g", &long, "apply", "n", "n:1");
        }
        let cur = std::fs::metadata(d.path().join("audit.log")).unwrap().len();
        let old = std::fs::metadata(d.path().join("audit.log.1"))
            .unwrap()
            .len();
        assert!(cur < ROTATE_BYTES && old > ROTATE_BYTES, "{cur} {old}");
        let last = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
        let v: serde_json::Value = serde_json::from_str(last.lines().next().unwrap()).unwrap();
        for k in ["time", "group", "path", "kind", "origin", "version"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
