//! Ordering scripts: the lexer. One line at a time (comment stripped):
//! words, `->`, `..`, `=`, `:` and `;`; and the lexical forms of words
//! (numbers, names). A token knows its column; a character no token starts
//! with is a [`LexError`].

use std::fmt;

/// A token of a script line.
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

/// A token and the column it starts at (1-based, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub col: usize,
}

/// A character no token starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected a word, `->`, `..`, `=`, `:` or `;`, found `{found}`")]
pub struct LexError {
    /// Column of the character (1-based).
    pub col: usize,
    pub found: char,
}

/// The tokens of one line (comment already stripped).
pub fn lex(s: &str) -> Result<Vec<Token>, LexError> {
    let b: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let col = i + 1;
        let (tok, len) = if c.is_whitespace() {
            i += 1;
            continue;
        } else if c == '-' && b.get(i + 1) == Some(&'>') {
            (Tok::Arrow, 2)
        } else if c == '.' && b.get(i + 1) == Some(&'.') {
            (Tok::DotDot, 2)
        } else if c == '=' {
            (Tok::Eq, 1)
        } else if c == ':' {
            (Tok::Colon, 1)
        } else if c == ';' {
            (Tok::Semi, 1)
        } else if is_word_char(c) {
            let mut j = i;
            while j < b.len() && is_word_char(b[j]) && !(b[j] == '-' && b.get(j + 1) == Some(&'>'))
            {
                j += 1;
            }
            (Tok::Word(b[i..j].iter().collect()), j - i)
        } else {
            return Err(LexError { col, found: c });
        };
        out.push(Token { tok, col });
        i += len;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<(Tok, usize)> {
        lex(s)
            .unwrap()
            .into_iter()
            .map(|t| (t.tok, t.col))
            .collect()
    }

    fn w(s: &str) -> Tok {
        Tok::Word(s.into())
    }

    #[test]
    fn tokens_and_their_columns() {
        assert_eq!(
            toks("  map A -> P1 rw"),
            vec![
                (w("map"), 3),
                (w("A"), 7),
                (Tok::Arrow, 9),
                (w("P1"), 12),
                (w("rw"), 15)
            ]
        );
        // `->` ends a word; `-` inside one does not.
        assert_eq!(
            toks("copy P-1->P2"),
            vec![
                (w("copy"), 1),
                (w("P-1"), 6),
                (Tok::Arrow, 9),
                (w("P2"), 11)
            ]
        );
        assert_eq!(
            toks("loop 2: read A..B; x=1"),
            vec![
                (w("loop"), 1),
                (w("2"), 6),
                (Tok::Colon, 7),
                (w("read"), 9),
                (w("A"), 14),
                (Tok::DotDot, 15),
                (w("B"), 17),
                (Tok::Semi, 18),
                (w("x"), 20),
                (Tok::Eq, 21),
                (w("1"), 22),
            ]
        );
        assert_eq!(toks(""), vec![]);
    }

    #[test]
    fn a_stray_character_is_an_error_at_its_column() {
        let e = lex("cpu clear A $").unwrap_err();
        assert_eq!(
            e,
            LexError {
                col: 13,
                found: '$'
            }
        );
        assert_eq!(
            e.to_string(),
            "expected a word, `->`, `..`, `=`, `:` or `;`, found `$`"
        );
        // Columns count characters, not bytes.
        assert_eq!(
            lex("é .").unwrap_err(),
            LexError {
                col: 1, found: 'é'
            }
        );
        assert_eq!(lex("A é").unwrap_err().col, 3);
    }

    #[test]
    fn comments_numbers_and_names() {
        assert_eq!(
            strip_comment("expect redundant inv#1 # why"),
            "expect redundant inv#1 "
        );
        assert_eq!(strip_comment("# all comment"), "");
        assert_eq!(strip_comment("no comment"), "no comment");
        assert_eq!(parse_num("0x7f00_0000"), Some(0x7f00_0000));
        assert_eq!(parse_num("1_000"), Some(1000));
        assert_eq!(parse_num("0xzz"), None);
        assert!(is_ident("dev_a1") && is_ident("_x"));
        assert!(!is_ident("1a") && !is_ident("A+8") && !is_ident(""));
    }
}
