//! Ordering scripts: the parser's errors. A [`ParseError`] is where
//! (`file:line:column`) and what ([`ParseErrorKind`]); a fault rule has its
//! own [`FaultSpecError`], used on the command line too.

use std::fmt;

use super::ast::UnknownKind;
use super::lexer::{LexError, Tok};

/// A malformed fault rule (`POINT:ACTION`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    #[error("expected POINT:ACTION (e.g. atc_invalidate:drop), found `{0}`")]
    Form(String),
    /// The fault point is not one iommu-dev knows (its message lists them).
    #[error("{0}")]
    Point(String),
    #[error("expected fault action drop, fail, defer, narrow or other_pasid, found `{0}`")]
    Action(String),
    /// The action has no meaning at the point (iommu-dev's per-point list).
    #[error(transparent)]
    NotAtPoint(#[from] iommu_dev::FaultError),
}

/// What an error found instead of what it expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unexpected {
    /// A word, or part of one (shown quoted).
    Word(String),
    /// Punctuation.
    Token(Tok),
    /// A number out of range (shown bare, in the base of the limit).
    Value(String),
    EndOfLine,
}

impl From<&Tok> for Unexpected {
    fn from(t: &Tok) -> Unexpected {
        match t {
            Tok::Word(w) => Unexpected::Word(w.clone()),
            t => Unexpected::Token(t.clone()),
        }
    }
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unexpected::Word(w) => write!(f, "`{w}`"),
            Unexpected::Token(t) => write!(f, "{t}"),
            Unexpected::Value(v) => f.write_str(v),
            Unexpected::EndOfLine => f.write_str("end of line"),
        }
    }
}

/// What is wrong with a line, or with the script as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error(transparent)]
    Lex(#[from] LexError),
    #[error("expected {what}, found {found}")]
    Expected { what: String, found: Unexpected },
    #[error(transparent)]
    Kind(#[from] UnknownKind),
    #[error("expected at most {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("expected a new {what}, {used} is already used")]
    AlreadyUsed { what: &'static str, used: String },
    #[error("expected a range `first..last` with first <= last")]
    BackwardRange,
    #[error("expected `map` declarations before the first step (use `cpu map` for a step)")]
    MapAfterStep,
    #[error("expected one `expect safe|unsafe` line")]
    SecondExpect,
    #[error("expected at least one step (`cpu ...`)")]
    NoStep,
    #[error(transparent)]
    Fault(#[from] FaultSpecError),
}

/// A syntax error: `file:line:column: expected ...` (no column when it is
/// about the script as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}{}: {kind}", .col.map(|c| format!(":{c}")).unwrap_or_default())]
pub struct ParseError {
    pub path: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: Option<usize>,
    pub kind: ParseErrorKind,
}
