//! Configurations of the tools clustersync replaces, translated into a clustersync
//! [`Config`]: today csync2's `csync2.cfg` (`clustersync import-csync2`, SPEC §4).
//!
//! An import reads the old configuration ([`csync2`] parses it, includes and all), maps what
//! has an equivalent (see [`translate`] for the mapping and the reasons behind it), and
//! records everything else as a [`Note`]: what was not carried over, or differs, and why.
//! The notes are written twice: as comments in the TOML ([`Imported::to_toml`]), next to the
//! section they concern, and as a report for the terminal ([`Imported::report`]).
//!
//! Invariants of an [`Imported`]: its `config` holds every invariant of a parsed [`Config`]
//! (it has been through [`Config::check`]) except that node ids are missing; its TOML, once
//! each `"FILL-IN-NAME"` id placeholder is replaced by that node's id, is read back by
//! [`Config::parse`] to `config` with those ids. The library never prints: the command line
//! prints the TOML on stdout and the report on stderr.

pub mod csync2;
pub mod translate;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Annotations, Config, ConfigError};

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// What the old configuration says, as far as clustersync can say it (no node ids).
    pub config: Config,
    /// The comments and id placeholders written with it.
    pub annotations: Annotations,
    /// What was not carried over, or differs, in the order of the source.
    pub notes: Vec<Note>,
    /// The files read (the one named, then the included ones).
    pub sources: Vec<PathBuf>,
}

/// Something of the old configuration that clustersync does not do the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Where it is written in the old configuration.
    pub file: PathBuf,
    pub line: usize,
    /// The section of the new configuration it concerns (`groups.www`, `nodes.web1`,
    /// `groups.www.actions[0]`), or `None` for the file as a whole.
    pub section: Option<String>,
    /// What, and why: one or more sentences.
    pub text: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.text)
    }
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file named could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file (or one it includes) is not a configuration csync2 would read, or holds a
    /// setting that cannot be carried over safely.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// Nothing of the file can be carried over (no group with hosts and paths).
    #[error("{file}: {message}")]
    Empty { file: PathBuf, message: String },
    /// The translation broke a rule of clustersync's configuration: a bug of the import, or
    /// a name clustersync cannot take.
    #[error("{file}: the translated configuration is not valid: {source}")]
    Untranslatable {
        file: PathBuf,
        #[source]
        source: ConfigError,
    },
}

/// Reads the csync2 configuration at `path` (and the files it includes) and translates it.
pub fn import_csync2(path: &Path) -> Result<Imported, ImportError> {
    let parsed = csync2::read(path)?;
    translate::translate(&parsed)
}

impl Imported {
    /// The TOML document: the configuration with the notes as comments and an id
    /// placeholder for every node.
    pub fn to_toml(&self) -> String {
        self.config.to_toml_annotated(&self.annotations)
    }

    /// A report for the terminal: what was imported, what was not carried over, what to do
    /// next.
    pub fn report(&self) -> String {
        use fmt::Write as _;
        let mut s = String::new();
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let first = self.sources.first().map(|p| p.display().to_string());
        let _ = write!(
            s,
            "import-csync2: {}",
            first.unwrap_or_else(|| "(no file)".to_owned())
        );
        if self.sources.len() > 1 {
            let _ = write!(
                s,
                " (and {} it includes)",
                plural(self.sources.len() - 1, "file")
            );
        }
        let _ = writeln!(
            s,
            ": {} and {} carried over",
            plural(self.config.groups.len(), "group"),
            plural(self.config.nodes.len(), "node")
        );
        if self.notes.is_empty() {
            let _ = writeln!(s, "everything was carried over");
        } else {
            let _ = writeln!(
                s,
                "not carried over, or different in clustersync (also written as comments in the output):"
            );
            for n in &self.notes {
                let _ = writeln!(s, "  {n}");
            }
        }
        let _ = writeln!(
            s,
            "next: run `clustersync --node NAME init` on each node and put the id it prints in place \
             of \"FILL-IN-NAME\"; then `clustersync check-config` on each node"
        );
        s
    }
}
