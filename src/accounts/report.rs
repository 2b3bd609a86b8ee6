//! What an apply did besides the files: homes made, and an interrupted write finished.
//!
//! Nothing here carries a hash; names are escaped for messages.

use super::db::DbFile;
use super::model::shown;
use std::fmt;

/// A home directory to create (when missing) for an applied user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeRequest {
    pub user: String,
    pub home: String,
    pub uid: u32,
    pub gid: u32,
}

/// What happened to a missing home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HomeOutcome {
    Created {
        user: String,
        home: String,
        mode: u32,
    },
    /// Not created, on purpose (e.g. its parent is missing or not root's).
    Skipped {
        user: String,
        home: String,
        why: String,
    },
    Failed {
        user: String,
        home: String,
        error: String,
    },
}

impl fmt::Display for HomeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HomeOutcome::Created { user, home, mode } => {
                write!(
                    f,
                    "created home {} of {} (mode {mode:04o})",
                    shown(home),
                    shown(user)
                )
            }
            HomeOutcome::Skipped { user, home, why } => {
                write!(
                    f,
                    "home {} of {} not created: {why}",
                    shown(home),
                    shown(user)
                )
            }
            HomeOutcome::Failed { user, home, error } => {
                write!(
                    f,
                    "home {} of {} could not be created: {error}",
                    shown(home),
                    shown(user)
                )
            }
        }
    }
}

/// An apply interrupted by a crash, found in its journal and finished (or given up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Renamed into place as the interrupted apply meant to.
    pub completed: Vec<DbFile>,
    /// Not renamed because the file changed meanwhile; the temp file was removed.
    pub abandoned: Vec<DbFile>,
}
