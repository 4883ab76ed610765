// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Errors that stop a run before the guest's results can be judged.

/// A run that could not be carried out (as opposed to one whose tests failed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Something missing or inconsistent on the host.
    #[error("{0}")]
    Setup(String),
    /// Building the test module or programs failed.
    #[error("{0}")]
    Build(String),
    /// The daemon did not come up.
    #[error("{0}")]
    Daemon(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn io_err(what: impl Into<String>, source: std::io::Error) -> Error {
    Error::Io {
        what: what.into(),
        source,
    }
}
