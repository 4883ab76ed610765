//! Ordering scripts (`docs/ordering-scripts.md`): the syntax tree
//! ([`ast`]), the line lexer ([`lexer`]) and the parser ([`parser`]), and
//! [`load`] to read and parse a file.

pub mod ast;
pub mod lexer;
pub mod parser;

pub use ast::*;
pub use parser::{parse, parse_fault, ParseError};

/// Read and parse a script file.
pub fn load(path: &str) -> Result<Script, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        path: path.into(),
        line: 0,
        msg: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}
