//! Errors of reading and applying accounts. None of them carries file content, so no hash can
//! reach a log through them.

use super::validate::InvalidRecord;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountsError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is missing", path.display())]
    Missing { path: PathBuf },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{} is still locked after {waited:?}{}", path.display(), holder.map(|p| format!(" (by pid {p})")).unwrap_or_default())]
    Locked {
        path: PathBuf,
        waited: Duration,
        holder: Option<u32>,
    },
    /// A record fails validation.
    #[error("{0}")]
    Invalid(InvalidRecord),
    /// Reading the index failed.
    #[error("reading the index: {0}")]
    Index(String),
    #[error("{}: bad journal of an interrupted apply: {why}", path.display())]
    Journal { path: PathBuf, why: String },
}
