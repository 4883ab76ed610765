//! Ordering scripts: the parser. The format is documented in
//! `docs/ordering-scripts.md`; every error is `file:line: expected ...`.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use iommu_dev::{FaultAction, FaultPoint, FaultRule};

/// First VA handed to a VA name used without a `va` declaration.
pub const AUTO_VA_BASE: u64 = 0x7f00_0010_0000;
/// Most physical pages a script may name.
pub const MAX_PAGES: usize = 64;
/// Most VA words a script may read or write.
pub const MAX_WORDS: usize = 32;
/// Most device threads (each is an ATS endpoint).
pub const MAX_DEVICES: usize = 8;
/// First device id handed to an undeclared device.
pub const AUTO_DEVID: u16 = 0x10;

/// What can make a script UNSAFE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Oracle R1: a device access used a page the PTE no longer maps.
    R1,
    /// Oracle R2: a write through a stale writable translation.
    R2,
    /// Oracle R3: an access while the PTE is not present.
    R3,
    /// Oracle R4: a write while the leaf has D=0.
    R4,
    /// The audit after the CPU sequence found a cached entry the tables no
    /// longer support.
    StaleEntry,
    /// A device write the CPU never sees (later read, or the final state).
    LostWrite,
    /// A device read returned something other than the VA's current value.
    StaleRead,
    /// A device write into a page the kernel freed.
    FreedWrite,
    /// A device read from a page the kernel freed.
    FreedRead,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::R1,
        Kind::R2,
        Kind::R3,
        Kind::R4,
        Kind::StaleEntry,
        Kind::LostWrite,
        Kind::StaleRead,
        Kind::FreedWrite,
        Kind::FreedRead,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Kind::R1 => "R1",
            Kind::R2 => "R2",
            Kind::R3 => "R3",
            Kind::R4 => "R4",
            Kind::StaleEntry => "stale-entry",
            Kind::LostWrite => "lost-write",
            Kind::StaleRead => "stale-read",
            Kind::FreedWrite => "freed-write",
            Kind::FreedRead => "freed-read",
        }
    }

    /// Whether the finding fails a script that does not mention it.
    pub fn fails_by_default(&self) -> bool {
        !matches!(self, Kind::R2 | Kind::R3 | Kind::R4)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// Which notifier hooks invalidate (the guest module's `notifier_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notifier {
    pub secondary: bool,
    pub start: bool,
    pub end: bool,
}

impl Notifier {
    pub const MODES: [&'static str; 7] = [
        "auto",
        "secondary",
        "start",
        "end_only",
        "start_end",
        "all",
        "none",
    ];

    pub fn parse(s: &str) -> Option<Notifier> {
        let (secondary, start, end) = match s {
            "auto" | "secondary" => (true, false, false),
            "start" => (false, true, false),
            "end_only" => (false, false, true),
            "start_end" => (false, true, true),
            "all" => (true, true, true),
            "none" => (false, false, false),
            _ => return None,
        };
        Some(Notifier {
            secondary,
            start,
            end,
        })
    }

    pub fn enabled(&self, h: Hook) -> bool {
        match h {
            Hook::Secondary => self.secondary,
            Hook::Start => self.start,
            Hook::End => self.end,
        }
    }

    pub fn name(&self) -> &'static str {
        match (self.secondary, self.start, self.end) {
            (true, false, false) => "secondary",
            (false, true, false) => "start",
            (false, false, true) => "end_only",
            (false, true, true) => "start_end",
            (true, true, true) => "all",
            (false, false, false) => "none",
            _ => "custom",
        }
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::parse("secondary").unwrap()
    }
}

/// An mmu_notifier hook shorthand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `->arch_invalidate_secondary_tlbs` (`->invalidate_range` before 6.6).
    Secondary,
    /// `->invalidate_range_start`.
    Start,
    /// `->invalidate_range_end`.
    End,
}

impl Hook {
    pub fn word(&self) -> &'static str {
        match self {
            Hook::Secondary => "secondary",
            Hook::Start => "start",
            Hook::End => "end",
        }
    }
}

/// Which caches an invalidation targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// INVALIDATE_IOMMU_PAGES (IOTLB and walk cache, GN=1 PDE=1).
    Iommu,
    /// INVALIDATE_IOTLB_PAGES to every endpoint (device ATCs).
    Atc,
    /// Both, IOMMU first.
    Both,
}

/// A range of VAs: pages `first..=last`, or everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Pages { first: u64, last: u64 },
    All,
}

/// Leaf permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub dirty: bool,
}

/// What a non-present entry stands for (only the timeline cares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonPresent {
    None,
    Swap,
    Migration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuOp {
    /// A fresh mapping: the VA's contents become the page's.
    Map {
        va: u64,
        page: usize,
        perms: Perms,
    },
    /// Replace the PTE (COW, KSM, migration): the VA keeps its contents.
    Set {
        va: u64,
        page: usize,
        perms: Perms,
    },
    Clear {
        va: u64,
        kind: NonPresent,
    },
    Protect {
        va: u64,
        write: bool,
    },
    Free {
        page: usize,
    },
    /// Someone else allocates the page and fills it with `value`.
    Reuse {
        page: usize,
        value: u64,
    },
    Copy {
        from: usize,
        to: usize,
    },
    Write {
        va: u64,
        value: u64,
    },
    Read {
        va: u64,
    },
    /// Stop the CPU sequence here unless the pages are identical (KSM).
    Identical {
        a: usize,
        b: usize,
    },
    Inv {
        target: Target,
        range: Range,
        pasid: Option<u32>,
        wait: bool,
    },
    /// COMPLETION_WAIT: wait for every command posted so far.
    Sync,
    Hook {
        hook: Hook,
        range: Range,
    },
    Note(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevOp {
    Translate { va: u64 },
    Read { va: u64 },
    Write { va: u64, value: u64 },
}

impl DevOp {
    pub fn va(&self) -> u64 {
        match *self {
            DevOp::Translate { va } | DevOp::Read { va } | DevOp::Write { va, .. } => va,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Cpu(CpuOp),
    /// A device line: one op, or a loop unrolled.
    Dev {
        dev: usize,
        ops: Vec<DevOp>,
    },
}

/// One step line in literal order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub line: usize,
    /// The line as written (comment stripped).
    pub text: String,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub devid: u16,
}

/// The expected outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Safe,
    /// Unsafe, and each of these findings occurs in some interleaving.
    Unsafe(Vec<Kind>),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Safe => f.write_str("safe"),
            Expect::Unsafe(k) => {
                f.write_str("unsafe")?;
                for k in k {
                    write!(f, " {k}")?;
                }
                Ok(())
            }
        }
    }
}

/// A fault rule from a script line or the command line (`POINT:ACTION`).
pub fn parse_fault(s: &str) -> Result<FaultRule, String> {
    let (p, a) = s
        .split_once(':')
        .ok_or_else(|| format!("expected POINT:ACTION (e.g. atc_invalidate:drop), found `{s}`"))?;
    let point: FaultPoint = p.parse()?;
    // A delay means nothing to an exploration of every interleaving.
    let action = match FaultAction::parse(a, None) {
        Ok(act) if a != "delay" => act,
        _ => {
            return Err(format!(
                "expected fault action drop, fail, defer, narrow or other_pasid, found `{a}`"
            ))
        }
    };
    let rule = FaultRule::new(point, action);
    rule.validate().map_err(|e| e.to_string())?;
    Ok(rule)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub path: String,
    pub title: Option<String>,
    pub notifier: Notifier,
    pub pasid: u32,
    /// Named VAs (page-aligned).
    pub vas: Vec<(String, u64)>,
    /// Named physical pages with their initial 64-bit fill pattern.
    pub pages: Vec<(String, u64)>,
    /// Mappings in place before any step.
    pub init_maps: Vec<(u64, usize, Perms)>,
    pub devices: Vec<Device>,
    /// Every 8-byte VA word a step reads or writes (sorted).
    pub words: Vec<u64>,
    pub lines: Vec<Line>,
    pub retries: u32,
    pub faults: Vec<FaultRule>,
    pub fail_on: BTreeSet<Kind>,
    pub allow: BTreeSet<Kind>,
    pub expect: Option<Expect>,
    pub expect_literal: Option<Expect>,
    /// `expect redundant inv#N ...` (1-based), or `none`.
    pub expect_redundant: Option<Vec<usize>>,
}

impl Script {
    /// Findings that make the script UNSAFE.
    pub fn failing(&self) -> BTreeSet<Kind> {
        let mut s: BTreeSet<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| k.fails_by_default())
            .collect();
        s.extend(self.fail_on.iter().copied());
        for k in &self.allow {
            s.remove(k);
        }
        // What a script expects to find always counts.
        for e in [&self.expect, &self.expect_literal].into_iter().flatten() {
            if let Expect::Unsafe(ks) = e {
                s.extend(ks.iter().copied());
            }
        }
        s
    }

    pub fn va_name(&self, va: u64) -> String {
        let base = va & !0xfff;
        match self.vas.iter().find(|(_, v)| *v == base) {
            Some((n, _)) if va & 0xfff == 0 => n.clone(),
            Some((n, _)) => format!("{n}+{:#x}", va & 0xfff),
            None => format!("{va:#x}"),
        }
    }

    pub fn page_name(&self, page: usize) -> &str {
        &self.pages[page].0
    }

    pub fn range_text(&self, r: &Range) -> String {
        match *r {
            Range::All => "all".into(),
            Range::Pages { first, last } if first == last => self.va_name(first),
            Range::Pages { first, last } => {
                format!("{}..{}", self.va_name(first), self.va_name(last))
            }
        }
    }
}

/// A syntax error: `file:line: expected ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub path: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path, self.line, self.msg)
    }
}

impl std::error::Error for ParseError {}

/// Read and parse a script file.
pub fn load(path: &str) -> Result<Script, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|e| ParseError {
        path: path.into(),
        line: 0,
        msg: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
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

fn lex(s: &str) -> Result<Vec<Tok>, String> {
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

struct Cur<'a> {
    toks: &'a [Tok],
    i: usize,
}

impl Cur<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(t) => t.to_string(),
            None => "end of line".into(),
        }
    }

    fn expected<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("expected {what}, found {}", self.found()))
    }

    fn word(&mut self, what: &str) -> Result<String, String> {
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

    fn need(&mut self, t: &Tok, what: &str) -> Result<(), String> {
        if self.eat(t) {
            Ok(())
        } else {
            self.expected(what)
        }
    }

    fn end(&self) -> Result<(), String> {
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

/// A comment starts at a `#` at the start of a line or after whitespace
/// (`inv#2` is a word).
fn strip_comment(raw: &str) -> &str {
    let mut prev_space = true;
    for (i, ch) in raw.char_indices() {
        if ch == '#' && prev_space {
            return &raw[..i];
        }
        prev_space = ch.is_whitespace();
    }
    raw
}

fn parse_num(w: &str) -> Option<u64> {
    let w = w.replace('_', "");
    if let Some(h) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        w.parse().ok()
    }
}

fn is_ident(w: &str) -> bool {
    let mut c = w.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
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
    fn va(&mut self, c: &mut Cur<'_>) -> Result<u64, String> {
        let w = c.word("a VA (a name such as A, A+0x8, or an address)")?;
        let (base, off) = match w.split_once('+') {
            Some((b, o)) => (
                b.to_string(),
                parse_num(o).ok_or_else(|| format!("expected an offset after `+`, found `{o}`"))?,
            ),
            None => (w.clone(), 0),
        };
        if off >= 0x1000 || off % 8 != 0 {
            return Err(format!(
                "expected an 8-byte aligned offset below 0x1000, found `{off:#x}`"
            ));
        }
        if let Some(a) = parse_num(&base) {
            if a % 8 != 0 {
                return Err(format!("expected an 8-byte aligned VA, found `{base}`"));
            }
            let page = a & !0xfff;
            if !self.vas.iter().any(|(_, v)| *v == page) {
                self.vas.push((format!("{page:#x}"), page));
            }
            return Ok(a + off);
        }
        if !is_ident(&base) {
            return Err(format!("expected a VA name or address, found `{w}`"));
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

    fn word_va(&mut self, c: &mut Cur<'_>) -> Result<u64, String> {
        let va = self.va(c)?;
        self.words.insert(va);
        if self.words.len() > MAX_WORDS {
            return Err(format!("expected at most {MAX_WORDS} distinct VA words"));
        }
        Ok(va)
    }

    fn page(&mut self, c: &mut Cur<'_>) -> Result<usize, String> {
        let w = c.word("a page name (e.g. P1)")?;
        if !is_ident(&w) {
            return Err(format!("expected a page name, found `{w}`"));
        }
        if let Some(i) = self.pages.iter().position(|(n, _)| *n == w) {
            return Ok(i);
        }
        if self.pages.len() >= MAX_PAGES {
            return Err(format!("expected at most {MAX_PAGES} pages"));
        }
        self.pages.push((w, 0));
        Ok(self.pages.len() - 1)
    }

    fn perms(&mut self, c: &mut Cur<'_>) -> Result<Perms, String> {
        let write = match c.word("permissions `ro` or `rw`")?.as_str() {
            "ro" => false,
            "rw" => true,
            other => {
                return Err(format!(
                    "expected permissions `ro` or `rw`, found `{other}`"
                ))
            }
        };
        let dirty = c.eat_word("dirty");
        Ok(Perms { write, dirty })
    }

    fn mapping(&mut self, c: &mut Cur<'_>) -> Result<(u64, usize, Perms), String> {
        let va = self.va(c)?;
        c.need(&Tok::Arrow, "`->` after the VA")?;
        let page = self.page(c)?;
        let perms = self.perms(c)?;
        c.end()?;
        Ok((va & !0xfff, page, perms))
    }

    fn range(&mut self, c: &mut Cur<'_>) -> Result<Range, String> {
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
            return Err("expected a range `first..last` with first <= last".into());
        }
        Ok(Range::Pages { first, last })
    }

    fn value(&mut self, c: &mut Cur<'_>) -> Result<u64, String> {
        let w = c.word("a value")?;
        parse_num(&w).ok_or_else(|| format!("expected a number, found `{w}`"))
    }

    fn device(&mut self, name: &str) -> Result<usize, String> {
        if let Some(i) = self.devices.iter().position(|d| d.name == name) {
            return Ok(i);
        }
        if self.devices.len() >= MAX_DEVICES {
            return Err(format!("expected at most {MAX_DEVICES} devices"));
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

    fn cpu_op(&mut self, c: &mut Cur<'_>) -> Result<CpuOp, String> {
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
                    o => return Err(format!("expected `ro` or `rw`, found `{o}`")),
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
                    o => return Err(format!("expected `iommu`, `atc` or `both`, found `{o}`")),
                };
                let range = self.range(c)?;
                let mut pasid = None;
                let mut wait = true;
                while !c.at_end() {
                    if c.eat_word("pasid") {
                        let v = self.value(c)?;
                        pasid = Some(u32::try_from(v).map_err(|_| "expected a PASID below 2^20")?);
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
            other => return Err(format!("expected {CPU_OPS}, found `{other}`")),
        };
        c.end()?;
        Ok(r)
    }

    fn dev_op(&mut self, c: &mut Cur<'_>) -> Result<DevOp, String> {
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
            o => return Err(format!("expected {DEV_OPS}, found `{o}`")),
        })
    }

    fn dev_line(&mut self, c: &mut Cur<'_>) -> Result<Vec<DevOp>, String> {
        if c.eat_word("loop") {
            let n = self.value(c)?;
            if !(1..=16).contains(&n) {
                return Err(format!("expected a loop count 1..=16, found {n}"));
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

fn kinds(c: &mut Cur<'_>) -> Result<Vec<Kind>, String> {
    let mut v = Vec::new();
    while let Some(Tok::Word(w)) = c.peek() {
        let k = w.parse().map_err(|_| {
            let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("expected a finding ({}), found `{w}`", names.join(", "))
        })?;
        v.push(k);
        c.i += 1;
    }
    c.end()?;
    Ok(v)
}

fn expect(c: &mut Cur<'_>) -> Result<Expect, String> {
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
        o => Err(format!("expected `safe` or `unsafe`, found `{o}`")),
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
    let err = |line: usize, msg: String| ParseError {
        path: path.into(),
        line,
        msg,
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
                    return Err(err(ln, "expected a title".into()));
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
        let toks = lex(body).map_err(|m| err(ln, m))?;
        let mut c = Cur { toks: &toks, i: 0 };
        let head = match c.word(DECLS) {
            Ok(w) => w,
            Err(m) => return Err(err(ln, m)),
        };
        let r: Result<(), String> = (|| {
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
                    let dev = p.device(d)?;
                    let ops = p.dev_line(&mut c)?;
                    s.lines.push(Line {
                        line: ln,
                        text: body.trim().to_string(),
                        step: Step::Dev { dev, ops },
                    });
                }
                "notifier" => {
                    let m = c.word("a notifier mode")?;
                    s.notifier = Notifier::parse(&m).ok_or_else(|| {
                        format!(
                            "expected a notifier mode ({}), found `{m}`",
                            Notifier::MODES.join(", ")
                        )
                    })?;
                    c.end()?;
                }
                "pasid" => {
                    let v = p.value(&mut c)?;
                    if v >= 512 {
                        return Err(format!("expected a PASID below 512, found {v}"));
                    }
                    s.pasid = v as u32;
                    c.end()?;
                }
                "retries" => {
                    let v = p.value(&mut c)?;
                    if v > 4 {
                        return Err(format!("expected at most 4 retries, found {v}"));
                    }
                    s.retries = v as u32;
                    c.end()?;
                }
                "va" => {
                    let n = c.word("a VA name")?;
                    if !is_ident(&n) || parse_num(&n).is_some() {
                        return Err(format!("expected a VA name, found `{n}`"));
                    }
                    c.eat(&Tok::Eq);
                    let a = p.value(&mut c)?;
                    if a % 0x1000 != 0 || a >= 1 << 47 {
                        return Err(format!(
                            "expected a page-aligned user VA below 2^47, found {a:#x}"
                        ));
                    }
                    if p.vas.iter().any(|(x, v)| *x == n || *v == a) {
                        return Err(format!("expected a new VA, `{n}` = {a:#x} is already used"));
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
                        return Err(
                            "expected `map` declarations before the first step (use `cpu map` for a step)"
                                .into(),
                        );
                    }
                    let m = p.mapping(&mut c)?;
                    s.init_maps.push(m);
                }
                "device" => {
                    let n = c.word("a device name (dev...)")?;
                    if !n.starts_with("dev") || n == "device" || !is_ident(&n) {
                        return Err(format!(
                            "expected a device name starting with `dev`, found `{n}`"
                        ));
                    }
                    if p.devices.iter().any(|d| d.name == n) {
                        return Err(format!("expected a new device, `{n}` is already used"));
                    }
                    c.eat_word("devid");
                    let id = p.value(&mut c)?;
                    if id >= 128 {
                        return Err(format!("expected a devid below 0x80, found {id:#x}"));
                    }
                    if p.devices.iter().any(|d| u64::from(d.devid) == id) {
                        return Err(format!("expected a new devid, {id:#x} is already used"));
                    }
                    p.devices.push(Device {
                        name: n,
                        devid: id as u16,
                    });
                    c.end()?;
                }
                "fault" => {
                    let w = c.word("POINT:ACTION")?;
                    let mut spec = w.clone();
                    if c.eat(&Tok::Colon) {
                        spec = format!("{w}:{}", c.word("a fault action (drop, fail)")?);
                    }
                    s.faults.push(parse_fault(&spec)?);
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
                                let n = w
                                    .strip_prefix("inv#")
                                    .and_then(parse_num)
                                    .filter(|n| *n >= 1)
                                    .ok_or_else(|| {
                                        format!("expected `inv#N` or `none`, found `{w}`")
                                    })?;
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
                            return Err("expected one `expect safe|unsafe` line".into());
                        }
                        s.expect = Some(expect(&mut c)?);
                    }
                }
                "expect-literal" => s.expect_literal = Some(expect(&mut c)?),
                other => return Err(format!("expected {DECLS}, found `{other}`")),
            }
            Ok(())
        })();
        r.map_err(|m| err(ln, m))?;
    }
    let last = text.lines().count().max(1);
    if s.lines.is_empty() {
        return Err(err(last, "expected at least one step (`cpu ...`)".into()));
    }
    if p.devices.is_empty() {
        p.device("dev").map_err(|m| err(last, m))?;
    }
    s.vas = p.vas;
    s.pages = p.pages;
    s.devices = p.devices;
    s.words = p.words.into_iter().collect();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COW: &str = "\
# a comment
title    COW, correct order
notifier secondary
page P1 = 1
map  A -> P1 ro          # initial
dev  translate A
cpu  copy P1 -> P2
cpu  clear A
cpu  secondary A
cpu  set A -> P2 rw dirty
cpu  write A 2
dev  loop 2: read A; translate A
expect safe
expect redundant inv#1   # a comment after inv#1
";

    fn err(text: &str) -> ParseError {
        parse("t.amdvi", text).expect_err("should not parse")
    }

    #[test]
    fn parses_a_full_script() {
        let s = parse("cow.amdvi", COW).unwrap();
        assert_eq!(s.title.as_deref(), Some("COW, correct order"));
        assert_eq!(s.notifier, Notifier::parse("secondary").unwrap());
        assert_eq!(s.pages, vec![("P1".into(), 1), ("P2".into(), 0)]);
        assert_eq!(s.vas, vec![("A".into(), AUTO_VA_BASE)]);
        assert_eq!(s.init_maps.len(), 1);
        assert_eq!(
            s.devices,
            vec![Device {
                name: "dev".into(),
                devid: AUTO_DEVID
            }]
        );
        assert_eq!(s.lines.len(), 7);
        assert_eq!(s.lines[0].line, 6);
        let Step::Dev { ops, .. } = &s.lines[6].step else {
            panic!("device line")
        };
        assert_eq!(ops.len(), 4, "loop 2 of two ops is unrolled");
        assert_eq!(
            s.lines[3].step,
            Step::Cpu(CpuOp::Hook {
                hook: Hook::Secondary,
                range: Range::Pages {
                    first: AUTO_VA_BASE,
                    last: AUTO_VA_BASE
                }
            })
        );
        assert_eq!(s.expect, Some(Expect::Safe));
        assert_eq!(s.expect_redundant, Some(vec![1]));
        assert_eq!(s.words, vec![AUTO_VA_BASE]);
    }

    #[test]
    fn all_step_forms() {
        let s = parse(
            "x",
            "va B 0x7f00_0000_0000\n\
             device dev1 devid 0x20\n\
             fault atc_invalidate:drop\n\
             fail-on R2 R3\n\
             allow R1\n\
             pasid 3\n\
             retries 2\n\
             cpu map B -> P rw\n\
             cpu clear B migration\n\
             cpu clear B swap\n\
             cpu protect B ro\n\
             cpu free P\n\
             cpu reuse P = 0x55\n\
             cpu reuse P\n\
             cpu read B+8\n\
             cpu write B+8 = 3\n\
             cpu identical P Q\n\
             cpu inv iommu B..C pasid 4 nowait\n\
             cpu inv atc all\n\
             cpu inv both B\n\
             cpu sync\n\
             cpu start all\n\
             cpu end B..C\n\
             cpu note PT lock released: page held\n\
             dev1 write B = 7\n\
             expect unsafe R1 lost-write\n\
             expect-literal safe\n",
        )
        .unwrap();
        assert_eq!(s.vas[0], ("B".into(), 0x7f00_0000_0000));
        assert_eq!(
            s.devices,
            vec![Device {
                name: "dev1".into(),
                devid: 0x20
            }]
        );
        assert_eq!(s.faults.len(), 1);
        assert_eq!(s.pasid, 3);
        assert_eq!(s.retries, 2);
        assert!(s.failing().contains(&Kind::R2) && s.failing().contains(&Kind::R1));
        let Step::Cpu(CpuOp::Inv {
            target,
            range,
            pasid,
            wait,
        }) = &s.lines[10].step
        else {
            panic!("{:?}", s.lines[10])
        };
        assert_eq!((*target, *pasid, *wait), (Target::Iommu, Some(4), false));
        assert_eq!(
            *range,
            Range::Pages {
                first: 0x7f00_0000_0000,
                last: AUTO_VA_BASE
            }
        );
        assert_eq!(
            s.lines[16].step,
            Step::Cpu(CpuOp::Note("PT lock released: page held".into()))
        );
        assert_eq!(
            s.expect,
            Some(Expect::Unsafe(vec![Kind::R1, Kind::LostWrite]))
        );
        assert_eq!(s.expect_literal, Some(Expect::Safe));
        assert_eq!(s.words, vec![0x7f00_0000_0000, 0x7f00_0000_0008]);
    }

    #[test]
    fn errors_name_file_line_and_what_was_expected() {
        let e = err("map A -> P1 ro\ncpu clear A\ncpu set A P2 rw\n");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "t.amdvi:3: expected `->` after the VA, found `P2`"
        );
        let cases: &[(&str, usize, &str)] = &[
            ("cpu clear A\ncpu frobnicate A\n", 2, "expected a CPU step"),
            (
                "cpu map A -> P1 rx\n",
                1,
                "expected permissions `ro` or `rw`, found `rx`",
            ),
            ("cpu clear A\nexpect unsafe R9\n", 2, "expected a finding"),
            (
                "cpu clear A\nexpect unsafe\n",
                2,
                "expected the finding that makes it unsafe",
            ),
            (
                "cpu clear A\nexpect maybe\n",
                2,
                "expected `safe` or `unsafe`, found `maybe`",
            ),
            (
                "notifier sometimes\ncpu clear A\n",
                1,
                "expected a notifier mode",
            ),
            (
                "cpu clear A\ndev loop 2 read A\n",
                2,
                "expected `:` after the loop count",
            ),
            (
                "cpu clear A\ndev loop 99: read A\n",
                2,
                "expected a loop count 1..=16",
            ),
            ("cpu clear A\ndev jump A\n", 2, "expected a device step"),
            (
                "cpu clear A\ndev write A\n",
                2,
                "expected a value, found end of line",
            ),
            ("cpu write A zz\n", 1, "expected a number, found `zz`"),
            ("cpu clear A\nmap A -> P1 ro\n", 2, "before the first step"),
            ("title nothing to do\n", 1, "expected at least one step"),
            (
                "fault atc_invalidate:explode\ncpu clear A\n",
                1,
                "expected fault action drop, fail, defer",
            ),
            (
                "fault nowhere:drop\ncpu clear A\n",
                1,
                "unknown fault point",
            ),
            (
                "device dev0 devid 0x10\ndevice dev1 devid 0x10\n",
                2,
                "already used",
            ),
            (
                "cpu inv both A wait\n",
                1,
                "expected `pasid N`, `nowait` or end of line, found `wait`",
            ),
            ("cpu inv some A\n", 1, "expected `iommu`, `atc` or `both`"),
            (
                "cpu clear A B\n",
                1,
                "expected `swap`, `migration` or end of line",
            ),
            ("cpu read A+3\n", 1, "8-byte aligned offset"),
            (
                "cpu clear A\nexpect redundant 2\n",
                2,
                "expected `inv#N` or `none`",
            ),
            ("cpu clear A\nwhatever\n", 2, "expected a declaration"),
            ("cpu clear A\ncpu clear A $\n", 2, "found `$`"),
            ("pasid 9999\ncpu clear A\n", 1, "below 512"),
            ("cpu clear A\nexpect safe\nexpect safe\n", 3, "one `expect"),
        ];
        for (text, line, msg) in cases {
            let e = err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.msg.contains(msg), "{text:?}: got `{e}`, want `{msg}`");
            assert!(e.to_string().starts_with(&format!("t.amdvi:{line}: ")));
        }
    }

    #[test]
    fn notifier_modes_match_the_guest_module() {
        for m in Notifier::MODES {
            let n = Notifier::parse(m).unwrap();
            if m != "auto" {
                assert_eq!(n.name(), m);
            }
        }
        let e = Notifier::parse("end_only").unwrap();
        assert!(e.enabled(Hook::End) && !e.enabled(Hook::Start) && !e.enabled(Hook::Secondary));
    }

    #[test]
    fn fault_specs() {
        let r = parse_fault("atc_invalidate:drop").unwrap();
        assert_eq!(
            r,
            FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Drop)
        );
        assert!(parse_fault("atc_invalidate").is_err());
        assert!(parse_fault("iotlb_invalidate:fail").is_ok());
    }
}
