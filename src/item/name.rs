//! Logical paths: the names of synced entries as the cluster knows them, as bytes.
//!
//! A logical path is absolute and written as in the config (`/var/www/shared/a.txt`), without
//! the node's `root` prefix. A name on Linux is any bytes but `/` and NUL, so logical paths are
//! byte strings: a file named `caf\xe9.jpg` (Latin-1) syncs as the bytes it is. Group paths in
//! the config are UTF-8 (TOML); what lies below them may be anything.
//!
//! Every path that arrives from a peer goes through [`validate`] before anything else looks at
//! it. Invariants of a valid path: starts with `/`, has no empty, `.` or `..` component, no NUL
//! byte, no component longer than 255 bytes, is at most [`MAX_PATH`] bytes, and lies at or below
//! one of the group's configured paths.
//!
//! **The escape** ([`show`], [`unescape`]) is how a path is written for people and in JSON,
//! everywhere (logs, `status`, `conflicts`, `backups`, the audit log): valid UTF-8 is written as
//! it is, except that a backslash is written `\\` and a control character (below 0x20, and 0x7f)
//! as `\xNN`; a byte that is not part of valid UTF-8 is written `\xNN` (two lowercase hex
//! digits). [`unescape`] reverses it; commands that take a path (`backups`, `restore`,
//! `resolve`, `mark`) accept the escaped form, or the raw bytes themselves.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest accepted logical path.
pub const MAX_PATH: usize = 4096;
/// Longest accepted name of one component.
pub const MAX_NAME: usize = 255;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    #[error("path {0} is not absolute")]
    NotAbsolute(String),
    #[error("path {0} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0} contains a NUL byte")]
    Nul(String),
    #[error("path {0} is too long")]
    TooLong(String),
    #[error("path {0} is outside the group's paths")]
    OutsideGroup(String),
}

fn short(p: &[u8]) -> String {
    let s = show(&p[..p.len().min(200)]).into_owned();
    if p.len() > 200 { format!("{s}…") } else { s }
}

/// Check the shape of a logical path (not yet its group).
pub fn check_shape(p: &[u8]) -> Result<(), PathError> {
    if p.len() > MAX_PATH {
        return Err(PathError::TooLong(short(p)));
    }
    if p.contains(&0) {
        return Err(PathError::Nul(short(p)));
    }
    let Some(rest) = p.strip_prefix(b"/") else {
        return Err(PathError::NotAbsolute(short(p)));
    };
    if rest.is_empty() {
        return Ok(());
    }
    for c in rest.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(PathError::BadComponent(short(p)));
        }
        if c.len() > MAX_NAME {
            return Err(PathError::TooLong(short(p)));
        }
    }
    Ok(())
}

/// Is `p` equal to `base` or below it?
pub fn is_within(p: &[u8], base: &[u8]) -> bool {
    if base == b"/" {
        return p.starts_with(b"/");
    }
    p == base || (p.starts_with(base) && p.get(base.len()) == Some(&b'/'))
}

/// Validate a path received for a group whose configured paths are `group_paths`; returns the
/// configured path it belongs to.
pub fn validate<'a>(p: &[u8], group_paths: &'a [String]) -> Result<&'a str, PathError> {
    check_shape(p)?;
    group_paths
        .iter()
        .find(|gp| is_within(p, gp.as_bytes()))
        .map(|s| s.as_str())
        .ok_or_else(|| PathError::OutsideGroup(short(p)))
}

/// The part of `p` below `base` (empty for `base` itself).
pub fn relative<'a>(p: &'a [u8], base: &str) -> &'a [u8] {
    let base = base.as_bytes();
    if base == b"/" {
        return trim_slashes(p);
    }
    match p.strip_prefix(base) {
        Some(r) => trim_slashes(r),
        None => b"",
    }
}

fn trim_slashes(mut p: &[u8]) -> &[u8] {
    while let Some(r) = p.strip_prefix(b"/") {
        p = r;
    }
    p
}

/// Join a logical path and a child name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + name.len() + 1);
    v.extend_from_slice(parent);
    if !parent.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// The logical parent of `p` (`/` for top-level entries).
pub fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &p[..i],
    }
}

/// The last component of `p`.
pub fn file_name(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Where logical path `p` lives on this node: `root` + `p`.
pub fn real(root: &Path, p: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(trim_slashes(p)))
}

/// A byte string as an OS path (no copy).
pub fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

/// The escaped, printable form of a path (see the module doc).
pub fn show(p: &[u8]) -> Cow<'_, str> {
    let plain = match std::str::from_utf8(p) {
        Ok(s) => !s.bytes().any(|b| b == b'\\' || b < 0x20 || b == 0x7f),
        Err(_) => false,
    };
    if plain {
        // checked above: valid UTF-8
        return String::from_utf8_lossy(p);
    }
    let mut out = String::with_capacity(p.len() + 8);
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Cow::Owned(out)
}

/// The bytes of an escaped path (the inverse of [`show`]). Lenient: a backslash that does not
/// start `\\` or `\xNN` stands for itself.
pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x')
                && let (Some(h), Some(l)) = (
                    b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
                    b.get(i + 3).and_then(|c| (*c as char).to_digit(16)),
                )
            {
                out.push((h * 16 + l) as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A path given on the command line: raw bytes when they are not UTF-8, otherwise the escaped
/// form (so both `$'caf\xe9.jpg'` and `'caf\xe9.jpg'` name the same file).
pub fn from_arg(arg: &OsStr) -> Vec<u8> {
    match arg.to_str() {
        Some(s) => unescape(s),
        None => arg.as_bytes().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(check_shape(b"/a/b c/\xc3\xbc").is_ok());
        assert!(check_shape(b"/caf\xe9.jpg").is_ok());
        assert!(check_shape(b"/").is_ok());
        assert!(check_shape(b"a/b").is_err());
        assert!(check_shape(b"/a//b").is_err());
        assert!(check_shape(b"/a/../b").is_err());
        assert!(check_shape(b"/a/./b").is_err());
        assert!(check_shape(b"/a/").is_err());
        assert!(check_shape(b"/a\0b").is_err());
        assert!(check_shape(format!("/{}", "x".repeat(256)).as_bytes()).is_err());
        assert!(check_shape(format!("/{}", "x".repeat(255)).as_bytes()).is_ok());
    }

    #[test]
    fn membership() {
        let g = vec!["/srv/www".to_string(), "/etc/hosts".to_string()];
        assert_eq!(validate(b"/srv/www/a", &g), Ok("/srv/www"));
        assert_eq!(validate(b"/srv/www", &g), Ok("/srv/www"));
        assert!(validate(b"/srv/wwwx", &g).is_err());
        assert!(validate(b"/etc/hosts.deny", &g).is_err());
        assert!(validate(b"/etc/passwd", &g).is_err());
        assert_eq!(relative(b"/srv/www/a/b", "/srv/www"), b"a/b");
        assert_eq!(relative(b"/srv/www", "/srv/www"), b"");
        assert_eq!(relative(b"/a/b", "/"), b"a/b");
        assert_eq!(parent(b"/srv/www/a"), b"/srv/www");
        assert_eq!(parent(b"/a"), b"/");
        assert_eq!(join(b"/", b"a"), b"/a");
        assert_eq!(file_name(b"/srv/www/a"), b"a");
    }

    #[test]
    fn escape_round_trips() {
        for p in [
            &b"/plain/path.txt"[..],
            b"/caf\xe9.jpg",
            b"/back\\slash",
            b"/new\nline",
            b"/\xff\xfe",
            b"/\xc3\xbcber",
            b"/lit\\xe9",
        ] {
            assert_eq!(unescape(&show(p)), p, "{}", show(p));
        }
        assert_eq!(show(b"/caf\xe9.jpg"), "/caf\\xe9.jpg");
        assert_eq!(show(b"/a\\b"), "/a\\\\b");
        assert_eq!(show("/ü".as_bytes()), "/ü");
        assert_eq!(unescape("/caf\\xe9.jpg"), b"/caf\xe9.jpg");
        // lenient: a lone backslash stands for itself
        assert_eq!(unescape("/a\\b"), b"/a\\b");
        assert_eq!(from_arg(OsStr::from_bytes(b"/caf\xe9")), b"/caf\xe9");
    }
}
