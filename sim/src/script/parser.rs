//! Ordering scripts: the parser, from lines of tokens to a [`Script`]. Every
//! error is a [`ParseError`], `file:line:column: expected WHAT, found WHAT`.

use std::collections::BTreeSet;

use iommu_dev::{FaultAction, FaultPoint, FaultRule};

use super::ast::{
    CpuOp, DevOp, Device, Expect, Hook, Kind, Line, NonPresent, Notifier, Perms, Range, Script,
    Step, Target, AUTO_DEVID, AUTO_VA_BASE, MAX_DEVICES, MAX_PAGES, MAX_WORDS,
};
use super::error::{FaultSpecError, ParseError, ParseErrorKind, Unexpected};
use super::lexer::{is_ident, lex, parse_num, strip_comment, LexError, Tok, Token};

/// A fault rule from a script line or the command line (`POINT:ACTION`).
pub fn parse_fault(s: &str) -> Result<FaultRule, FaultSpecError> {
    let (p, a) = s
        .split_once(':')
        .ok_or_else(|| FaultSpecError::Form(s.into()))?;
    let point: FaultPoint = p.parse().map_err(FaultSpecError::Point)?;
    // A delay means nothing to an exploration of every interleaving.
    let action = match FaultAction::parse(a, None) {
        Ok(act) if a != "delay" => act,
        _ => return Err(FaultSpecError::Action(a.into())),
    };
    let rule = FaultRule::new(point, action);
    rule.validate()?;
    Ok(rule)
}

/// An error inside a line: what, and where.
#[derive(Debug)]
struct At {
    col: Option<usize>,
    kind: ParseErrorKind,
}

impl From<LexError> for At {
    fn from(e: LexError) -> At {
        At {
            col: Some(e.col),
            kind: e.into(),
        }
    }
}

type R<T> = Result<T, At>;

/// The tokens of one line.
struct Cur<'a> {
    toks: &'a [Token],
    i: usize,
    /// Column just past the last token (where an end of line is found).
    eol: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|t| &t.tok)
    }

    /// Column of the next token.
    fn here(&self) -> usize {
        self.toks.get(self.i).map_or(self.eol, |t| t.col)
    }

    /// Column of the token just taken.
    fn prev(&self) -> usize {
        match self.i.checked_sub(1) {
            Some(j) => self.toks[j].col,
            None => self.here(),
        }
    }

    /// `kind` at the next token.
    fn at_here(&self, kind: ParseErrorKind) -> At {
        At {
            col: Some(self.here()),
            kind,
        }
    }

    /// `kind` at the token just taken.
    fn at_prev(&self, kind: ParseErrorKind) -> At {
        At {
            col: Some(self.prev()),
            kind,
        }
    }

    /// Expected `what` instead of the next token.
    fn expected<T>(&self, what: &str) -> R<T> {
        Err(At {
            col: Some(self.here()),
            kind: ParseErrorKind::Expected {
                what: what.into(),
                found: self.peek().map_or(Unexpected::EndOfLine, Unexpected::from),
            },
        })
    }

    /// Expected `what` instead of (part of) the token just taken.
    fn rejected<T>(&self, what: impl Into<String>, found: Unexpected) -> R<T> {
        Err(self.at_prev(ParseErrorKind::Expected {
            what: what.into(),
            found,
        }))
    }

    fn word(&mut self, what: &str) -> R<String> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.i += 1;
                Ok(w)
            }
            _ => self.expected(what),
        }
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Word(x)) if x == w) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn need(&mut self, t: &Tok, what: &str) -> R<()> {
        if self.eat(t) {
            Ok(())
        } else {
            self.expected(what)
        }
    }

    fn end(&self) -> R<()> {
        if self.peek().is_none() {
            Ok(())
        } else {
            self.expected("end of line")
        }
    }

    fn at_end(&self) -> bool {
        self.peek().is_none()
    }
}

const CPU_OPS: &str = "a CPU step (map, set, clear, protect, free, reuse, copy, write, read, \
                       identical, inv, sync, secondary, start, end, note)";
const DEV_OPS: &str = "a device step (translate, read, write, loop)";
const DECLS: &str = "a declaration (title, notifier, pasid, va, page, map, device, retries, \
                     fault, fail-on, allow, expect, expect-literal) or a step (`cpu ...`, `dev... ...`)";

#[derive(Default)]
struct P {
    vas: Vec<(String, u64)>,
    pages: Vec<(String, u64)>,
    devices: Vec<Device>,
    words: BTreeSet<u64>,
}

impl P {
    fn va(&mut self, c: &mut Cur<'_>) -> R<u64> {
        let w = c.word("a VA (a name such as A, A+0x8, or an address)")?;
        let (base, off) = match w.split_once('+') {
            Some((b, o)) => (
                b.to_string(),
                match parse_num(o) {
                    Some(n) => n,
                    None => return c.rejected("an offset after `+`", Unexpected::Word(o.into())),
                },
            ),
            None => (w.clone(), 0),
        };
        if off >= 0x1000 || off % 8 != 0 {
            return c.rejected(
                "an 8-byte aligned offset below 0x1000",
                Unexpected::Word(format!("{off:#x}")),
            );
        }
        if let Some(a) = parse_num(&base) {
            if a % 8 != 0 {
                return c.rejected("an 8-byte aligned VA", Unexpected::Word(base));
            }
            let page = a & !0xfff;
            if !self.vas.iter().any(|(_, v)| *v == page) {
                self.vas.push((format!("{page:#x}"), page));
            }
            return Ok(a + off);
        }
        if !is_ident(&base) {
            return c.rejected("a VA name or address", Unexpected::Word(w));
        }
        if let Some((_, v)) = self.vas.iter().find(|(n, _)| *n == base) {
            return Ok(v + off);
        }
        let mut v = AUTO_VA_BASE;
        while self.vas.iter().any(|(_, x)| *x == v) {
            v += 0x1000;
        }
        self.vas.push((base, v));
        Ok(v + off)
    }

    fn word_va(&mut self, c: &mut Cur<'_>) -> R<u64> {
        let va = self.va(c)?;
        self.words.insert(va);
        if self.words.len() > MAX_WORDS {
            return Err(c.at_prev(ParseErrorKind::TooMany {
                what: "distinct VA words",
                max: MAX_WORDS,
            }));
        }
        Ok(va)
    }

    fn page(&mut self, c: &mut Cur<'_>) -> R<usize> {
        let w = c.word("a page name (e.g. P1)")?;
        if !is_ident(&w) {
            return c.rejected("a page name", Unexpected::Word(w));
        }
        if let Some(i) = self.pages.iter().position(|(n, _)| *n == w) {
            return Ok(i);
        }
        if self.pages.len() >= MAX_PAGES {
            return Err(c.at_prev(ParseErrorKind::TooMany {
                what: "pages",
                max: MAX_PAGES,
            }));
        }
        self.pages.push((w, 0));
        Ok(self.pages.len() - 1)
    }

    fn perms(&mut self, c: &mut Cur<'_>) -> R<Perms> {
        let write = match c.word("permissions `ro` or `rw`")?.as_str() {
            "ro" => false,
            "rw" => true,
            other => return c.rejected("permissions `ro` or `rw`", Unexpected::Word(other.into())),
        };
        let dirty = c.eat_word("dirty");
        Ok(Perms { write, dirty })
    }

    fn mapping(&mut self, c: &mut Cur<'_>) -> R<(u64, usize, Perms)> {
        let va = self.va(c)?;
        c.need(&Tok::Arrow, "`->` after the VA")?;
        let page = self.page(c)?;
        let perms = self.perms(c)?;
        c.end()?;
        Ok((va & !0xfff, page, perms))
    }

    fn range(&mut self, c: &mut Cur<'_>) -> R<Range> {
        if c.eat_word("all") {
            return Ok(Range::All);
        }
        let first = self.va(c)? & !0xfff;
        let last = if c.eat(&Tok::DotDot) {
            self.va(c)? & !0xfff
        } else {
            first
        };
        if last < first {
            return Err(c.at_prev(ParseErrorKind::BackwardRange));
        }
        Ok(Range::Pages { first, last })
    }

    fn value(&mut self, c: &mut Cur<'_>) -> R<u64> {
        let w = c.word("a value")?;
        match parse_num(&w) {
            Some(n) => Ok(n),
            None => c.rejected("a number", Unexpected::Word(w)),
        }
    }

    /// The device called `name`, added when new.
    fn device(&mut self, name: &str) -> Result<usize, ParseErrorKind> {
        if let Some(i) = self.devices.iter().position(|d| d.name == name) {
            return Ok(i);
        }
        if self.devices.len() >= MAX_DEVICES {
            return Err(ParseErrorKind::TooMany {
                what: "devices",
                max: MAX_DEVICES,
            });
        }
        let mut devid = AUTO_DEVID;
        while self.devices.iter().any(|d| d.devid == devid) {
            devid += 1;
        }
        self.devices.push(Device {
            name: name.into(),
            devid,
        });
        Ok(self.devices.len() - 1)
    }

    fn cpu_op(&mut self, c: &mut Cur<'_>) -> R<CpuOp> {
        let op = c.word(CPU_OPS)?;
        let r = match op.as_str() {
            "map" | "set" => {
                let (va, page, perms) = self.mapping(c)?;
                return Ok(if op == "map" {
                    CpuOp::Map { va, page, perms }
                } else {
                    CpuOp::Set { va, page, perms }
                });
            }
            "clear" => {
                let va = self.va(c)? & !0xfff;
                let kind = if c.eat_word("swap") {
                    NonPresent::Swap
                } else if c.eat_word("migration") {
                    NonPresent::Migration
                } else if c.at_end() {
                    NonPresent::None
                } else {
                    return c.expected("`swap`, `migration` or end of line");
                };
                CpuOp::Clear { va, kind }
            }
            "protect" => {
                let va = self.va(c)? & !0xfff;
                let write = match c.word("`ro` or `rw`")?.as_str() {
                    "ro" => false,
                    "rw" => true,
                    o => return c.rejected("`ro` or `rw`", Unexpected::Word(o.into())),
                };
                CpuOp::Protect { va, write }
            }
            "free" => CpuOp::Free {
                page: self.page(c)?,
            },
            "reuse" => {
                let page = self.page(c)?;
                let value = if c.eat(&Tok::Eq) {
                    self.value(c)?
                } else {
                    0xdead_beef_dead_beef
                };
                CpuOp::Reuse { page, value }
            }
            "copy" => {
                let from = self.page(c)?;
                c.need(&Tok::Arrow, "`->` between the pages")?;
                CpuOp::Copy {
                    from,
                    to: self.page(c)?,
                }
            }
            "identical" => CpuOp::Identical {
                a: self.page(c)?,
                b: self.page(c)?,
            },
            "write" => {
                let va = self.word_va(c)?;
                c.eat(&Tok::Eq);
                CpuOp::Write {
                    va,
                    value: self.value(c)?,
                }
            }
            "read" => CpuOp::Read {
                va: self.word_va(c)?,
            },
            "inv" => {
                let target = match c.word("`iommu`, `atc` or `both`")?.as_str() {
                    "iommu" => Target::Iommu,
                    "atc" | "devtlb" => Target::Atc,
                    "both" => Target::Both,
                    o => return c.rejected("`iommu`, `atc` or `both`", Unexpected::Word(o.into())),
                };
                let range = self.range(c)?;
                let mut pasid = None;
                let mut wait = true;
                while !c.at_end() {
                    if c.eat_word("pasid") {
                        let v = self.value(c)?;
                        match u32::try_from(v) {
                            Ok(v) => pasid = Some(v),
                            Err(_) => {
                                return c.rejected(
                                    "a PASID below 2^20",
                                    Unexpected::Value(v.to_string()),
                                )
                            }
                        }
                    } else if c.eat_word("nowait") {
                        wait = false;
                    } else {
                        return c.expected("`pasid N`, `nowait` or end of line");
                    }
                }
                CpuOp::Inv {
                    target,
                    range,
                    pasid,
                    wait,
                }
            }
            "sync" => CpuOp::Sync,
            "secondary" | "start" | "end" => {
                let hook = match op.as_str() {
                    "secondary" => Hook::Secondary,
                    "start" => Hook::Start,
                    _ => Hook::End,
                };
                CpuOp::Hook {
                    hook,
                    range: self.range(c)?,
                }
            }
            other => return c.rejected(CPU_OPS, Unexpected::Word(other.into())),
        };
        c.end()?;
        Ok(r)
    }

    fn dev_op(&mut self, c: &mut Cur<'_>) -> R<DevOp> {
        let op = c.word(DEV_OPS)?;
        Ok(match op.as_str() {
            "translate" => DevOp::Translate {
                va: self.va(c)? & !0xfff,
            },
            "read" => DevOp::Read {
                va: self.word_va(c)?,
            },
            "write" => {
                let va = self.word_va(c)?;
                c.eat(&Tok::Eq);
                DevOp::Write {
                    va,
                    value: self.value(c)?,
                }
            }
            o => return c.rejected(DEV_OPS, Unexpected::Word(o.into())),
        })
    }

    fn dev_line(&mut self, c: &mut Cur<'_>) -> R<Vec<DevOp>> {
        if c.eat_word("loop") {
            let n = self.value(c)?;
            if !(1..=16).contains(&n) {
                return c.rejected("a loop count 1..=16", Unexpected::Value(n.to_string()));
            }
            c.need(&Tok::Colon, "`:` after the loop count")?;
            let mut body = vec![self.dev_op(c)?];
            while c.eat(&Tok::Semi) {
                body.push(self.dev_op(c)?);
            }
            c.end()?;
            Ok((0..n).flat_map(|_| body.iter().copied()).collect())
        } else {
            let op = self.dev_op(c)?;
            c.end()?;
            Ok(vec![op])
        }
    }
}

fn kinds(c: &mut Cur<'_>) -> R<Vec<Kind>> {
    let mut v = Vec::new();
    while let Some(Tok::Word(w)) = c.peek() {
        let k: Kind = match w.parse() {
            Ok(k) => k,
            Err(e) => return Err(c.at_here(ParseErrorKind::Kind(e))),
        };
        v.push(k);
        c.i += 1;
    }
    c.end()?;
    Ok(v)
}

fn expect(c: &mut Cur<'_>) -> R<Expect> {
    match c.word("`safe` or `unsafe`")?.as_str() {
        "safe" => {
            c.end()?;
            Ok(Expect::Safe)
        }
        "unsafe" => {
            let k = kinds(c)?;
            if k.is_empty() {
                return c.expected("the finding that makes it unsafe (e.g. R1, stale-entry)");
            }
            Ok(Expect::Unsafe(k))
        }
        o => c.rejected("`safe` or `unsafe`", Unexpected::Word(o.into())),
    }
}

/// Parse a script; `path` is only used in error messages.
pub fn parse(path: &str, text: &str) -> Result<Script, ParseError> {
    let mut p = P::default();
    let mut s = Script {
        path: path.into(),
        title: None,
        notifier: Notifier::default(),
        pasid: 1,
        vas: vec![],
        pages: vec![],
        init_maps: vec![],
        devices: vec![],
        words: vec![],
        lines: vec![],
        retries: 1,
        faults: vec![],
        fail_on: BTreeSet::new(),
        allow: BTreeSet::new(),
        expect: None,
        expect_literal: None,
        expect_redundant: None,
    };
    let err = |line: usize, at: At| ParseError {
        path: path.into(),
        line,
        col: at.col,
        kind: at.kind,
    };
    let mut saw_step = false;
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        let body = strip_comment(raw);
        if body.trim().is_empty() {
            continue;
        }
        let mut words = body.split_whitespace();
        let (w0, w1) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if w0 == "title" || (w0 == "cpu" && w1 == "note") {
            // Free text.
            let rest = body.trim_start()[w0.len()..].trim_start();
            if w0 == "title" {
                if rest.is_empty() {
                    let at = At {
                        col: Some(body.trim_end().chars().count() + 1),
                        kind: ParseErrorKind::Expected {
                            what: "a title".into(),
                            found: Unexpected::EndOfLine,
                        },
                    };
                    return Err(err(ln, at));
                }
                s.title = Some(rest.to_string());
            } else {
                saw_step = true;
                s.lines.push(Line {
                    line: ln,
                    text: body.trim().to_string(),
                    step: Step::Cpu(CpuOp::Note(rest[4..].trim().to_string())),
                });
            }
            continue;
        }
        let toks = lex(body).map_err(|e| err(ln, e.into()))?;
        let mut c = Cur {
            toks: &toks,
            i: 0,
            eol: body.trim_end().chars().count() + 1,
        };
        let head = c.word(DECLS).map_err(|at| err(ln, at))?;
        let r: R<()> = (|| {
            match head.as_str() {
                "cpu" => {
                    saw_step = true;
                    let op = p.cpu_op(&mut c)?;
                    s.lines.push(Line {
                        line: ln,
                        text: body.trim().to_string(),
                        step: Step::Cpu(op),
                    });
                }
                d if d.starts_with("dev") && d != "device" && is_ident(d) => {
                    saw_step = true;
                    let dev = p.device(d).map_err(|k| c.at_prev(k))?;
                    let ops = p.dev_line(&mut c)?;
                    s.lines.push(Line {
                        line: ln,
                        text: body.trim().to_string(),
                        step: Step::Dev { dev, ops },
                    });
                }
                "notifier" => {
                    let m = c.word("a notifier mode")?;
                    let Some(n) = Notifier::parse(&m) else {
                        let what = format!("a notifier mode ({})", Notifier::MODES.join(", "));
                        return c.rejected(what, Unexpected::Word(m));
                    };
                    s.notifier = n;
                    c.end()?;
                }
                "pasid" => {
                    let v = p.value(&mut c)?;
                    if v >= 512 {
                        return c.rejected("a PASID below 512", Unexpected::Value(v.to_string()));
                    }
                    s.pasid = v as u32;
                    c.end()?;
                }
                "retries" => {
                    let v = p.value(&mut c)?;
                    if v > 4 {
                        return c.rejected("at most 4 retries", Unexpected::Value(v.to_string()));
                    }
                    s.retries = v as u32;
                    c.end()?;
                }
                "va" => {
                    let n = c.word("a VA name")?;
                    if !is_ident(&n) || parse_num(&n).is_some() {
                        return c.rejected("a VA name", Unexpected::Word(n));
                    }
                    c.eat(&Tok::Eq);
                    let a = p.value(&mut c)?;
                    if a % 0x1000 != 0 || a >= 1 << 47 {
                        return c.rejected(
                            "a page-aligned user VA below 2^47",
                            Unexpected::Value(format!("{a:#x}")),
                        );
                    }
                    if p.vas.iter().any(|(x, v)| *x == n || *v == a) {
                        return Err(c.at_prev(ParseErrorKind::AlreadyUsed {
                            what: "VA",
                            used: format!("`{n}` = {a:#x}"),
                        }));
                    }
                    p.vas.push((n, a));
                    c.end()?;
                }
                "page" => {
                    let i = p.page(&mut c)?;
                    c.need(&Tok::Eq, "`=` and the page's initial value")?;
                    p.pages[i].1 = p.value(&mut c)?;
                    c.end()?;
                }
                "map" => {
                    if saw_step {
                        return Err(c.at_prev(ParseErrorKind::MapAfterStep));
                    }
                    let m = p.mapping(&mut c)?;
                    s.init_maps.push(m);
                }
                "device" => {
                    let n = c.word("a device name (dev...)")?;
                    if !n.starts_with("dev") || n == "device" || !is_ident(&n) {
                        return c
                            .rejected("a device name starting with `dev`", Unexpected::Word(n));
                    }
                    if p.devices.iter().any(|d| d.name == n) {
                        return Err(c.at_prev(ParseErrorKind::AlreadyUsed {
                            what: "device",
                            used: format!("`{n}`"),
                        }));
                    }
                    c.eat_word("devid");
                    let id = p.value(&mut c)?;
                    if id >= 128 {
                        return c
                            .rejected("a devid below 0x80", Unexpected::Value(format!("{id:#x}")));
                    }
                    if p.devices.iter().any(|d| u64::from(d.devid) == id) {
                        return Err(c.at_prev(ParseErrorKind::AlreadyUsed {
                            what: "devid",
                            used: format!("{id:#x}"),
                        }));
                    }
                    p.devices.push(Device {
                        name: n,
                        devid: id as u16,
                    });
                    c.end()?;
                }
                "fault" => {
                    let w = c.word("POINT:ACTION")?;
                    let col = c.prev();
                    let mut spec = w.clone();
                    if c.eat(&Tok::Colon) {
                        spec = format!("{w}:{}", c.word("a fault action (drop, fail)")?);
                    }
                    let rule = parse_fault(&spec).map_err(|e| At {
                        col: Some(col),
                        kind: e.into(),
                    })?;
                    s.faults.push(rule);
                    c.end()?;
                }
                "fail-on" => s.fail_on.extend(kinds(&mut c)?),
                "allow" => s.allow.extend(kinds(&mut c)?),
                "expect" => {
                    if c.eat_word("redundant") {
                        let mut v = Vec::new();
                        if c.eat_word("none") {
                            c.end()?;
                        } else {
                            while let Some(Tok::Word(w)) = c.peek() {
                                let Some(n) = w
                                    .strip_prefix("inv#")
                                    .and_then(parse_num)
                                    .filter(|n| *n >= 1)
                                else {
                                    return c.expected("`inv#N` or `none`");
                                };
                                v.push(n as usize);
                                c.i += 1;
                            }
                            if v.is_empty() {
                                return c.expected("`inv#N` or `none`");
                            }
                            c.end()?;
                        }
                        s.expect_redundant = Some(v);
                    } else {
                        if s.expect.is_some() {
                            return Err(c.at_prev(ParseErrorKind::SecondExpect));
                        }
                        s.expect = Some(expect(&mut c)?);
                    }
                }
                "expect-literal" => s.expect_literal = Some(expect(&mut c)?),
                other => return c.rejected(DECLS, Unexpected::Word(other.into())),
            }
            Ok(())
        })();
        r.map_err(|at| err(ln, at))?;
    }
    let last = text.lines().count().max(1);
    if s.lines.is_empty() {
        let kind = ParseErrorKind::NoStep;
        return Err(err(last, At { col: None, kind }));
    }
    if p.devices.is_empty() {
        p.device("dev")
            .map_err(|kind| err(last, At { col: None, kind }))?;
    }
    s.vas = p.vas;
    s.pages = p.pages;
    s.devices = p.devices;
    s.words = p.words.into_iter().collect();
    Ok(s)
}

#[cfg(test)]
mod tests;
