//! Logical paths: the names of synced entries as the cluster knows them.
//!
//! A logical path is absolute and written as in the config (`/var/www/shared/a.txt`), without
//! the node's `root` prefix. Every path that arrives from a peer goes through [`validate`] before
//! anything else looks at it. Invariants of a valid path: starts with `/`, has no empty, `.` or
//! `..` component, no NUL byte, no component longer than 255 bytes, is at most 4096 bytes, and
//! lies at or below one of the group's configured paths.

use std::path::{Path, PathBuf};

/// Longest accepted logical path.
pub const MAX_PATH: usize = 4096;

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathError {
    #[error("path {0:?} is not absolute")]
    NotAbsolute(String),
    #[error("path {0:?} has an empty, '.' or '..' component")]
    BadComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is too long")]
    TooLong(String),
    #[error("path {0:?} is outside the group's paths")]
    OutsideGroup(String),
}

/// Check the shape of a logical path (not yet its group).
pub fn check_shape(p: &str) -> Result<(), PathError> {
    if p.len() > MAX_PATH {
        return Err(PathError::TooLong(p.chars().take(64).collect()));
    }
    if p.contains('\0') {
        return Err(PathError::Nul(p.replace('\0', "\\0")));
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(p.into()));
    };
    if rest.is_empty() {
        return Ok(());
    }
    for c in rest.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(PathError::BadComponent(p.into()));
        }
        if c.len() > 255 {
            return Err(PathError::TooLong(p.chars().take(64).collect()));
        }
    }
    Ok(())
}

/// Is `p` equal to `base` or below it?
pub fn is_within(p: &str, base: &str) -> bool {
    if base == "/" {
        return p.starts_with('/');
    }
    p == base || (p.starts_with(base) && p.as_bytes().get(base.len()) == Some(&b'/'))
}

/// Validate a path received for a group whose configured paths are `group_paths`; returns the
/// configured path it belongs to.
pub fn validate<'a>(p: &str, group_paths: &'a [String]) -> Result<&'a str, PathError> {
    check_shape(p)?;
    group_paths
        .iter()
        .find(|gp| is_within(p, gp))
        .map(|s| s.as_str())
        .ok_or_else(|| PathError::OutsideGroup(p.into()))
}

/// The part of `p` below `base` (empty for `base` itself).
pub fn relative<'a>(p: &'a str, base: &str) -> &'a str {
    if base == "/" {
        return p.trim_start_matches('/');
    }
    p.strip_prefix(base)
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or("")
}

/// Join a logical path and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The logical parent of `p` (`/` for top-level entries).
pub fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "/",
    }
}

/// Where logical path `p` lives on this node: `root` + `p`.
pub fn real(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Range bounds of the paths strictly below directory `p` in byte order: `p/` ..< `p0`.
pub fn subtree_bounds(p: &str) -> (String, String) {
    if p == "/" {
        return ("/".into(), "0".into());
    }
    (format!("{p}/"), format!("{p}0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(check_shape("/a/b c/ü").is_ok());
        assert!(check_shape("/").is_ok());
        assert!(check_shape("a/b").is_err());
        assert!(check_shape("/a//b").is_err());
        assert!(check_shape("/a/../b").is_err());
        assert!(check_shape("/a/./b").is_err());
        assert!(check_shape("/a/").is_err());
        assert!(check_shape("/a\0b").is_err());
        assert!(check_shape(&format!("/{}", "x".repeat(256))).is_err());
        assert!(check_shape(&format!("/{}", "x".repeat(255))).is_ok());
    }

    #[test]
    fn membership() {
        let g = vec!["/srv/www".to_string(), "/etc/hosts".to_string()];
        assert_eq!(validate("/srv/www/a", &g), Ok("/srv/www"));
        assert_eq!(validate("/srv/www", &g), Ok("/srv/www"));
        assert!(validate("/srv/wwwx", &g).is_err());
        assert!(validate("/etc/hosts.deny", &g).is_err());
        assert!(validate("/etc/passwd", &g).is_err());
        assert_eq!(relative("/srv/www/a/b", "/srv/www"), "a/b");
        assert_eq!(relative("/srv/www", "/srv/www"), "");
        assert_eq!(parent("/srv/www/a"), "/srv/www");
        assert_eq!(parent("/a"), "/");
        assert_eq!(join("/", "a"), "/a");
        let (lo, hi) = subtree_bounds("/srv/www");
        assert!(lo.as_str() < "/srv/www/zzz" && "/srv/www/zzz" < hi.as_str());
        assert!(!("/srv/www-x" >= lo.as_str() && "/srv/www-x" < hi.as_str()));
    }
}
