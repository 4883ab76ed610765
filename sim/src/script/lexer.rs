//! Ordering scripts: the lexer. One line at a time (comment stripped):
//! words, `->`, `..`, `=`, `:` and `;`; and the lexical forms of words
//! (numbers, names).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    Arrow,
    DotDot,
    Eq,
    Colon,
    Semi,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Arrow => f.write_str("`->`"),
            Tok::DotDot => f.write_str("`..`"),
            Tok::Eq => f.write_str("`=`"),
            Tok::Colon => f.write_str("`:`"),
            Tok::Semi => f.write_str("`;`"),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '#' | '/' | '!')
}

pub fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && b.get(i + 1) == Some(&'>') {
            out.push(Tok::Arrow);
            i += 2;
        } else if c == '.' && b.get(i + 1) == Some(&'.') {
            out.push(Tok::DotDot);
            i += 2;
        } else if c == '=' {
            out.push(Tok::Eq);
            i += 1;
        } else if c == ':' {
            out.push(Tok::Colon);
            i += 1;
        } else if c == ';' {
            out.push(Tok::Semi);
            i += 1;
        } else if is_word_char(c) {
            let start = i;
            while i < b.len() && is_word_char(b[i]) && !(b[i] == '-' && b.get(i + 1) == Some(&'>'))
            {
                i += 1;
            }
            out.push(Tok::Word(b[start..i].iter().collect()));
        } else {
            return Err(format!(
                "expected a word, `->`, `..`, `=`, `:` or `;`, found `{c}`"
            ));
        }
    }
    Ok(out)
}

/// A comment starts at a `#` at the start of a line or after whitespace
/// (`inv#2` is a word).
pub fn strip_comment(raw: &str) -> &str {
    let mut prev_space = true;
    for (i, ch) in raw.char_indices() {
        if ch == '#' && prev_space {
            return &raw[..i];
        }
        prev_space = ch.is_whitespace();
    }
    raw
}

pub fn parse_num(w: &str) -> Option<u64> {
    let w = w.replace('_', "");
    if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        w.parse().ok()
    }
}

pub fn is_ident(w: &str) -> bool {
    let mut c = w.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}
