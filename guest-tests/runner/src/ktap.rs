// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Incremental KTAP parser for the guest suite's output on the serial console.
//!
//! The console interleaves the suite's KTAP with kernel messages and with
//! `/init`'s own lines, so lines that are not KTAP are ignored wherever they
//! appear. Subtests are recognised by indentation, as in Linux KTAP
//! (`Documentation/dev-tools/ktap.rst`): a subtest's lines are indented more
//! than its parent's, and the parent's result line follows them.
//!
//! The project's extension (docs/guest-conventions.md) is one
//! `# amdvi-result: key=value ...` diagnostic immediately before each
//! top-level result line. The kselftest `# Totals: pass:N fail:N ...` line
//! at the end is read too and must agree with the results.

use std::collections::BTreeMap;

use serde::Serialize;

/// Outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// The `# amdvi-result:` line of one scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AmdviResult {
    pub name: Option<String>,
    pub result: Option<String>,
    /// Device accesses (stream + endpoint operations).
    pub accesses: Option<u64>,
    pub r1: Option<u64>,
    pub r2: Option<u64>,
    pub r3: Option<u64>,
    pub r4: Option<u64>,
    /// Stale entries found by audits.
    pub stale: Option<u64>,
    /// Cached frames the kernel had freed before its secondary-TLB flush.
    pub freed: Option<u64>,
    pub ms: Option<u64>,
    /// Keys this runner does not know, kept as they are.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl AmdviResult {
    /// Parses the part after `# amdvi-result:`.
    pub fn parse(text: &str) -> AmdviResult {
        let mut r = AmdviResult::default();
        for tok in text.split_whitespace() {
            let Some((k, v)) = tok.split_once('=') else {
                r.extra.insert(tok.to_string(), String::new());
                continue;
            };
            let num = || v.parse::<u64>().ok();
            match k {
                "name" => r.name = Some(v.to_string()),
                "result" => r.result = Some(v.to_string()),
                "accesses" => r.accesses = num(),
                "r1" => r.r1 = num(),
                "r2" => r.r2 = num(),
                "r3" => r.r3 = num(),
                "r4" => r.r4 = num(),
                "stale" => r.stale = num(),
                "freed" => r.freed = num(),
                "ms" => r.ms = num(),
                _ => {
                    r.extra.insert(k.to_string(), v.to_string());
                }
            }
        }
        r
    }
}

/// One test result line with what belongs to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    pub number: u32,
    pub name: String,
    pub status: Status,
    /// The directive after `#` (e.g. `SKIP no PRI`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub directive: Option<String>,
    /// Diagnostic lines (`# ...`) seen at this level since the previous result.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amdvi: Option<AmdviResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subtests: Vec<TestResult>,
}

/// What a fed line produced that a caller may want to show at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The top-level plan `1..N`.
    Plan(u32),
    /// A top-level test finished.
    Result(Box<TestResult>),
}

/// The kselftest `# Totals:` line of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub pass: u32,
    pub fail: u32,
    pub xfail: u32,
    pub xpass: u32,
    pub skip: u32,
    pub error: u32,
}

impl Totals {
    /// Parses the part after `# Totals:`; `None` unless every field is `key:N`.
    fn parse(text: &str) -> Option<Totals> {
        let mut t = Totals::default();
        for tok in text.split_whitespace() {
            let (k, v) = tok.split_once(':')?;
            let v = v.parse::<u32>().ok()?;
            match k {
                "pass" => t.pass = v,
                "fail" => t.fail = v,
                "xfail" => t.xfail = v,
                "xpass" => t.xpass = v,
                "skip" => t.skip = v,
                "error" => t.error = v,
                _ => return None,
            }
        }
        Some(t)
    }
}

/// The parse of a whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub version_seen: bool,
    pub plan: Option<u32>,
    pub results: Vec<TestResult>,
    /// The suite's own count, when it printed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
    /// Problems with the KTAP itself: missing plan, missing tests, bad
    /// numbers, a `# Totals:` line that disagrees with the results.
    pub errors: Vec<String>,
}

impl Report {
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Version,
    Plan(u32),
    Result {
        ok: bool,
        number: u32,
        name: &'a str,
        directive: Option<&'a str>,
    },
    AmdviResult(&'a str),
    Diagnostic(&'a str),
    Other,
}

fn classify(content: &str) -> Line<'_> {
    if let Some(rest) = content
        .strip_prefix("KTAP version ")
        .or_else(|| content.strip_prefix("TAP version "))
    {
        if rest.trim().chars().all(|c| c.is_ascii_digit()) && !rest.trim().is_empty() {
            return Line::Version;
        }
        return Line::Other;
    }
    if let Some(rest) = content.strip_prefix("1..") {
        let digits: &str = rest.split(|c: char| c.is_whitespace()).next().unwrap_or("");
        if let Ok(n) = digits.parse::<u32>() {
            let tail = rest[digits.len()..].trim_start();
            if tail.is_empty() || tail.starts_with('#') {
                return Line::Plan(n);
            }
        }
        return Line::Other;
    }
    if let Some(rest) = content.strip_prefix('#') {
        let rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("amdvi-result:") {
            return Line::AmdviResult(r.trim());
        }
        return Line::Diagnostic(rest);
    }
    let (ok, rest) = if let Some(r) = content.strip_prefix("ok ") {
        (true, r)
    } else if let Some(r) = content.strip_prefix("not ok ") {
        (false, r)
    } else {
        return Line::Other;
    };
    let rest = rest.trim_start();
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let Ok(number) = rest[..digits_end].parse::<u32>() else {
        return Line::Other;
    };
    let mut tail = &rest[digits_end..];
    if !(tail.is_empty() || tail.starts_with(' ')) {
        return Line::Other;
    }
    tail = tail.trim_start();
    // KTAP allows "ok 1 - name"; the dash is not part of the name.
    if let Some(t) = tail.strip_prefix("- ") {
        tail = t;
    }
    let (name, directive) = match tail.find(" # ").or_else(|| {
        // "ok 3 # SKIP reason" with an empty name.
        tail.starts_with("# ").then_some(0)
    }) {
        Some(i) => {
            let d = tail[i..].trim_start().trim_start_matches('#').trim();
            (tail[..i].trim(), Some(d))
        }
        None => (tail.trim(), None),
    };
    Line::Result {
        ok,
        number,
        name,
        directive,
    }
}

fn status_of(ok: bool, directive: Option<&str>) -> Status {
    let word = directive
        .and_then(|d| d.split_whitespace().next())
        .map(|w| w.to_ascii_uppercase());
    match word.as_deref() {
        Some("SKIP") => Status::Skip,
        Some("TODO") if !ok => Status::Skip,
        _ if ok => Status::Pass,
        _ => Status::Fail,
    }
}

#[derive(Debug, Default)]
struct Frame {
    indent: usize,
    plan: Option<u32>,
    results: Vec<TestResult>,
    diagnostics: Vec<String>,
    amdvi: Option<AmdviResult>,
    /// A finished subtest block waiting for this level's next result line.
    pending_subtests: Option<(Option<u32>, Vec<TestResult>)>,
}

/// Feed console lines one at a time; take the [`Report`] with [`Parser::finish`].
#[derive(Debug, Default)]
pub struct Parser {
    started: bool,
    version_seen: bool,
    stack: Vec<Frame>,
    totals: Option<Totals>,
    errors: Vec<String>,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Feeds one line (without its line terminator; `\r` is ignored).
    pub fn feed(&mut self, raw: &str) -> Option<Event> {
        let line = raw.trim_end_matches(['\r', '\n']).replace('\r', "");
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        let content = content.trim_end();
        let kind = classify(content);
        if kind == Line::Other {
            return None;
        }
        if !self.started {
            // Before the document starts only a top-level version line or,
            // leniently, a top-level plan opens it.
            match kind {
                Line::Version if indent == 0 => {
                    self.started = true;
                    self.version_seen = true;
                    self.stack.push(Frame::default());
                    return None;
                }
                Line::Plan(_) if indent == 0 => {
                    self.started = true;
                    self.errors
                        .push("no `KTAP version` line before the plan".to_string());
                    self.stack.push(Frame::default());
                }
                _ => return None,
            }
        }
        self.nest(indent);
        let depth = self.stack.len();
        let frame = self
            .stack
            .last_mut()
            .expect("stack is never empty once started");
        let mut errors = Vec::new();
        let event = match kind {
            Line::Version => {
                if depth == 1 && (frame.plan.is_some() || !frame.results.is_empty()) {
                    errors.push("a second top-level `KTAP version` line".to_string());
                }
                None
            }
            Line::Plan(n) => {
                if frame.plan.is_some() {
                    errors.push(format!("a second plan 1..{n} at depth {}", depth - 1));
                }
                frame.plan = Some(n);
                (depth == 1).then_some(Event::Plan(n))
            }
            Line::AmdviResult(text) => {
                frame.amdvi = Some(AmdviResult::parse(text));
                None
            }
            Line::Diagnostic(text) => {
                match text.strip_prefix("Totals:") {
                    Some(t) if depth == 1 => match Totals::parse(t) {
                        Some(t) => self.totals = Some(t),
                        None => errors.push(format!("unreadable `# Totals:` line: {text}")),
                    },
                    _ => frame.diagnostics.push(text.to_string()),
                }
                None
            }
            Line::Result {
                ok,
                number,
                name,
                directive,
            } => {
                let expected = frame.results.len() as u32 + 1;
                if number != expected {
                    errors.push(format!(
                        "test `{name}` is numbered {number}, expected {expected}"
                    ));
                }
                let mut subtests = Vec::new();
                if let Some((plan, subs)) = frame.pending_subtests.take() {
                    if let Some(p) = plan {
                        if p as usize != subs.len() {
                            errors.push(format!(
                                "test `{name}`: subtest plan 1..{p} but {} results",
                                subs.len()
                            ));
                        }
                    }
                    subtests = subs;
                }
                let amdvi = frame.amdvi.take();
                if depth == 1 {
                    match &amdvi {
                        None => errors.push(format!("test `{name}` has no `# amdvi-result:` line")),
                        Some(a) if a.name.as_deref().is_some_and(|n| n != name) => {
                            errors.push(format!(
                                "test `{name}`: `# amdvi-result:` line names `{}`",
                                a.name.as_deref().unwrap_or_default()
                            ))
                        }
                        Some(_) => {}
                    }
                }
                let result = TestResult {
                    number,
                    name: name.to_string(),
                    status: status_of(ok, directive),
                    directive: directive.map(str::to_string),
                    diagnostics: std::mem::take(&mut frame.diagnostics),
                    amdvi,
                    subtests,
                };
                frame.results.push(result.clone());
                (depth == 1).then(|| Event::Result(Box::new(result)))
            }
            Line::Other => None,
        };
        self.errors.extend(errors);
        event
    }

    /// Opens or closes subtest levels so that the top frame has `indent`.
    fn nest(&mut self, indent: usize) {
        while self.stack.len() > 1 && self.stack.last().is_some_and(|f| f.indent > indent) {
            let done = self.stack.pop().expect("checked above");
            self.close(done);
        }
        let top = self
            .stack
            .last()
            .expect("stack is never empty once started");
        if indent > top.indent {
            self.stack.push(Frame {
                indent,
                ..Frame::default()
            });
        }
    }

    /// Hands a finished subtest block to its parent frame.
    fn close(&mut self, done: Frame) {
        let parent = self.stack.last_mut().expect("a parent frame exists");
        // Diagnostics of a block with no results (e.g. indented comments)
        // stay with the parent's next result.
        parent.diagnostics.extend(done.diagnostics);
        if done.results.is_empty() && done.plan.is_none() {
            return;
        }
        if let Some((_, orphans)) = parent.pending_subtests.take() {
            self.errors.push(format!(
                "{} subtest result(s) without a parent result line",
                orphans.len()
            ));
        }
        parent.pending_subtests = Some((done.plan, done.results));
    }

    /// Ends the input and returns the whole report.
    pub fn finish(mut self) -> Report {
        if !self.started {
            self.errors.push("no KTAP output".to_string());
            return Report {
                errors: self.errors,
                ..Report::default()
            };
        }
        while self.stack.len() > 1 {
            let done = self.stack.pop().expect("len > 1");
            self.close(done);
        }
        let top = self.stack.pop().expect("top frame");
        if let Some((_, subs)) = &top.pending_subtests {
            self.errors.push(format!(
                "output ends inside a test: {} subtest result(s) without their parent's result line",
                subs.len()
            ));
        }
        if let Some(a) = &top.amdvi {
            self.errors.push(format!(
                "output ends after the `# amdvi-result:` line of `{}` without its result line",
                a.name.as_deref().unwrap_or("?")
            ));
        }
        match top.plan {
            None => self.errors.push("missing plan (1..N)".to_string()),
            Some(n) if n as usize != top.results.len() => self.errors.push(format!(
                "plan 1..{n} but {} test result(s)",
                top.results.len()
            )),
            Some(_) => {}
        }
        if let Some(t) = self.totals {
            let count = |st| top.results.iter().filter(|r| r.status == st).count() as u32;
            let seen = (
                count(Status::Pass),
                count(Status::Fail),
                count(Status::Skip),
            );
            if (t.pass, t.fail, t.skip) != seen {
                self.errors.push(format!(
                    "`# Totals:` says pass:{} fail:{} skip:{}, the results are pass:{} fail:{} skip:{}",
                    t.pass, t.fail, t.skip, seen.0, seen.1, seen.2
                ));
            }
        }
        Report {
            version_seen: self.version_seen,
            plan: top.plan,
            results: top.results,
            totals: self.totals,
            errors: self.errors,
        }
    }
}

/// Parses a whole text at once.
pub fn parse(text: &str) -> Report {
    let mut p = Parser::new();
    for line in text.lines() {
        p.feed(line);
    }
    p.finish()
}

#[cfg(test)]
mod tests;
