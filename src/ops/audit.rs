//! The audit log: one JSON line per change applied, sent, backed up, reverted, refused, per
//! conflict and per action run, in `<state-dir>/audit.log` (mode 0600), rotated by size (one
//! previous file, `audit.log.1`) so it cannot fill the disk. Writing is best effort: a full
//! disk must not stop syncing.
//!
//! Fields: `time`, `group`, `path` (escaped, see `item::name::show`; empty when the line is
//! not about a path), `kind`, `origin`, `version`, and when they apply `peer` (the other node)
//! and `detail` (a reason, a duration, a count). Password hashes and file contents never
//! appear.

use crate::item::name;
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size at which the log is rotated.
pub const ROTATE_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    group: &'a str,
    path: &'a str,
    kind: &'a str,
    origin: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// One line to write.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rec<'a> {
    pub group: &'a str,
    pub path: &'a [u8],
    pub kind: &'a str,
    pub origin: &'a str,
    pub version: &'a str,
    pub peer: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// The audit log of a node.
pub struct Audit {
    path: PathBuf,
    out: Mutex<Out>,
}

/// The open log file and its size (kept here, so a line costs one write and no stat).
#[derive(Default)]
struct Out {
    file: Option<std::fs::File>,
    size: u64,
}

impl Audit {
    pub fn open(path: &Path) -> Audit {
        if let Ok(md) = std::fs::metadata(path)
            && md.permissions().mode() & 0o077 != 0
        {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Audit {
            path: path.into(),
            out: Mutex::new(Out::default()),
        }
    }

    /// Append one line.
    pub fn log(&self, r: Rec) {
        self.log_all(std::iter::once(r));
    }

    fn reopen(&self, g: &mut Out) {
        g.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .ok();
        g.size = g
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    /// Append several lines with one write (a batch of changes is audited at once).
    pub fn log_all<'a>(&self, recs: impl IntoIterator<Item = Rec<'a>>) {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let mut text = String::new();
        for r in recs {
            let shown = name::show(r.path);
            let line = Line {
                time: &time,
                group: r.group,
                path: &shown,
                kind: r.kind,
                origin: r.origin,
                version: r.version,
                peer: r.peer,
                detail: r.detail,
            };
            if let Ok(l) = serde_json::to_string(&line) {
                text.push_str(&l);
                text.push('\n');
            }
        }
        if text.is_empty() {
            return;
        }
        let mut g = match self.out.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.file.is_none() {
            self.reopen(&mut g);
        }
        if g.size > ROTATE_BYTES {
            g.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            self.reopen(&mut g);
        }
        if let Some(f) = g.file.as_mut()
            && f.write_all(text.as_bytes()).is_ok()
        {
            g.size += text.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_is_private() {
        let d = tempfile::tempdir().unwrap();
        let a = Audit::open(&d.path().join("audit.log"));
        let long = vec![b'p'; 4000];
        for _ in 0..(ROTATE_BYTES / 4000 + 10) {
            a.log(Rec {
                group: "g",
                path: &long,
                kind: "apply",
                origin: "n",
                version: "n:1",
                ..Default::default()
            });
        }
        let cur = std::fs::metadata(d.path().join("audit.log")).unwrap();
        let old = std::fs::metadata(d.path().join("audit.log.1"))
            .unwrap()
            .len();
        assert!(
            cur.len() < ROTATE_BYTES && old > ROTATE_BYTES,
            "{} {old}",
            cur.len()
        );
        assert_eq!(cur.permissions().mode() & 0o777, 0o600);
        a.log(Rec {
            group: "g",
            path: b"/caf\xe9",
            kind: "apply",
            ..Default::default()
        });
        let text = std::fs::read_to_string(d.path().join("audit.log")).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(v["path"], "/caf\\xe9");
        for k in ["time", "group", "path", "kind", "origin", "version"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}
