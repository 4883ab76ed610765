//! Ordering scripts (`docs/ordering-scripts.md`): the syntax tree
//! ([`ast`]), the line lexer ([`lexer`]), the parser ([`parser`]) and its
//! errors ([`error`]), and [`load`] to read and parse a file.

pub mod ast;
pub mod error;
pub mod lexer;
pub mod parser;

pub use ast::*;
pub use error::{FaultSpecError, ParseError, ParseErrorKind, Unexpected};
pub use lexer::LexError;
pub use parser::{parse, parse_fault};

/// Why a script file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

/// Read and parse a script file.
pub fn load(path: &str) -> Result<Script, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.into(),
        source,
    })?;
    Ok(parse(path, &text)?)
}
