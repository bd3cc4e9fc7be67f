//! How configuration problems are reported.
//!
//! An operator fixing a configuration wants every mistake at once, each pointing at the key to
//! edit, so a [`ConfigError`] carries a list of [`Problem`]s rather than a single message. Key
//! paths use the same notation as `serde_path_to_error` (`upstream.api_pool.backends[0].weight`)
//! so that schema errors and semantic errors read alike.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path of the offending value, e.g. `upstream.api_pool.backends[0].address`.
    /// Empty when the problem concerns the file as a whole (unreadable, or not TOML at all).
    pub key: String,
    /// What is wrong, phrased for the operator.
    pub message: String,
    /// 1-based line in the configuration file, when the TOML parser reported a position.
    pub line: Option<usize>,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// Which stage rejected the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Read,
    /// The file is not valid TOML, or does not match the schema (unknown key, wrong type,
    /// missing required key). Parsing stops at the first such problem.
    Parse,
    /// The file matches the schema but some values are unusable; every such problem is listed.
    Invalid,
}

/// Why a configuration was rejected.
#[derive(Clone, Debug)]
pub struct ConfigError {
    origin: PathBuf,
    kind: ErrorKind,
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(crate) fn new(origin: &Path, kind: ErrorKind, problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty(), "a ConfigError must carry a problem");
        ConfigError {
            origin: origin.to_path_buf(),
            kind,
            problems,
        }
    }

    /// The configuration file the problems were found in.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Every problem found, in file order where possible.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

/// One problem per line, compiler style, so editors and `grep` can jump to it:
/// `<file>[:<line>]: <key path>: <message>`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.origin.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            if !problem.key.is_empty() {
                write!(f, ": {}", problem.key)?;
            }
            write!(f, ": {}", problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
