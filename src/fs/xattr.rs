//! Extended attributes and POSIX ACLs (placeholder types; the module is being built).

use serde::{Deserialize, Serialize};

/// One extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: XattrValue,
}

/// The value of an attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
pub enum XattrValue {
    Raw(Vec<u8>),
}

/// Which attribute names are synced.
#[derive(Debug, Clone, Default)]
pub struct XattrFilter;

/// Errors reading or writing attributes.
#[derive(Debug, thiserror::Error)]
#[error("extended attributes: {0}")]
pub struct XattrError(String);

impl From<XattrError> for std::io::Error {
    fn from(e: XattrError) -> std::io::Error {
        std::io::Error::other(e.0)
    }
}

/// Read the attributes of an open file or directory.
pub fn read_fd(_fd: &std::fs::File, _filter: &XattrFilter) -> Result<Vec<Xattr>, XattrError> {
    Ok(Vec::new())
}

/// Read the attributes of a symlink (never followed).
pub fn read_path_nofollow(
    _path: &std::path::Path,
    _filter: &XattrFilter,
) -> Result<Vec<Xattr>, XattrError> {
    Ok(Vec::new())
}
