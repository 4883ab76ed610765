//! Verdicts and the two-column CPU | IOMMU/device timeline.

use std::fmt::Write;

use crate::explore::{Literal, Outcome, Trace};
use crate::machine::{Rec, CPU, END};
use crate::script::{Expect, Kind, Script};

/// The verdict of an exploration or a literal run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Safe,
    Unsafe(Vec<Kind>),
}

impl Verdict {
    pub fn is_safe(&self) -> bool {
        *self == Verdict::Safe
    }

    /// Whether it satisfies an expectation.
    pub fn matches(&self, e: &Expect) -> bool {
        match (self, e) {
            (Verdict::Safe, Expect::Safe) => true,
            (Verdict::Unsafe(found), Expect::Unsafe(want)) => {
                want.iter().all(|k| found.contains(k))
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Safe => f.write_str("SAFE"),
            Verdict::Unsafe(k) => {
                f.write_str("UNSAFE (")?;
                for (i, k) in k.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}")?;
                }
                f.write_str(")")
            }
        }
    }
}

pub fn verdict(s: &Script, o: &Outcome) -> Verdict {
    let k = o.failing(s);
    if k.is_empty() {
        Verdict::Safe
    } else {
        Verdict::Unsafe(k)
    }
}

pub fn literal_verdict(s: &Script, l: &Literal) -> Verdict {
    let f = s.failing();
    let k: Vec<Kind> = l.kinds().into_iter().filter(|k| f.contains(k)).collect();
    if k.is_empty() {
        Verdict::Safe
    } else {
        Verdict::Unsafe(k)
    }
}

/// Draw steps as the 2017 thread does: CPU on the left, IOMMU and devices
/// on the right, findings under the step that made them.
pub fn timeline(recs: &[Rec], mark_all: bool, only: Option<usize>) -> String {
    let cpu_w = recs
        .iter()
        .filter(|r| r.actor == CPU)
        .map(|r| r.text.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(24, 48);
    let mut out = String::new();
    let _ = writeln!(out, "     {:<cpu_w$} | IOMMU / device", "CPU");
    let _ = writeln!(out, "     {:-<cpu_w$}-+-{:-<30}", "", "");
    for (i, r) in recs.iter().enumerate() {
        let n = i + 1;
        match r.actor {
            CPU => {
                let _ = writeln!(out, "  {n:>2} {:<cpu_w$} |", r.text);
            }
            END => {
                let _ = writeln!(out, "  {n:>2} {:<cpu_w$} | {}", "", r.text);
            }
            _ => {
                let _ = writeln!(out, "  {n:>2} {:<cpu_w$} | {}", "", r.text);
            }
        }
        if mark_all || only == Some(i) {
            for f in &r.findings {
                let _ = writeln!(out, "     {:>cpu_w$}   ^^ {}: {}", "", f.kind, f.detail);
            }
        }
    }
    out
}

fn trace_text(t: &Trace) -> String {
    let mut s = format!(
        "  shortest counterexample for {} ({} steps, cut from an interleaving of {}):\n",
        t.kind,
        t.recs.len(),
        t.full_len
    );
    s.push_str(&timeline(&t.recs, false, Some(t.at)));
    s
}

/// The full report of an exploration: verdict, counts, timelines,
/// redundant invalidations; and whether it matches the script's expectations.
pub fn explore_report(
    s: &Script,
    o: &Outcome,
    prog_invs: &[(usize, String)],
    verbose: bool,
) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let v = verdict(s, o);
    let title = s.title.as_deref().unwrap_or("");
    let _ = writeln!(out, "== {}: {title}", s.path);
    let _ = writeln!(
        out,
        "   notifier {}, {} device thread(s); {} interleavings explored ({} steps) in {:.2} s{}",
        s.notifier.name(),
        s.devices.len(),
        o.executions,
        o.steps,
        o.elapsed.as_secs_f64(),
        if o.truncated {
            " (TRUNCATED at the bound)"
        } else {
            ""
        }
    );
    if let Some(e) = &o.error {
        ok = false;
        let _ = writeln!(out, "   error: {e}");
    }
    let exp = match &s.expect {
        Some(e) => {
            let m = v.matches(e) && !(o.truncated && v.is_safe());
            ok &= m;
            format!("expected {e}: {}", if m { "ok" } else { "MISMATCH" })
        }
        None => "no expectation".into(),
    };
    if o.truncated && v.is_safe() {
        let _ = writeln!(
            out,
            "   verdict: INCOMPLETE (no counterexample before the bound)   ({exp})"
        );
    } else {
        let _ = writeln!(out, "   verdict: {v}   ({exp})");
    }
    let failing = s.failing();
    for (k, n) in &o.counts {
        let tag = if failing.contains(k) {
            "failing"
        } else {
            "listed, not failing"
        };
        let _ = writeln!(
            out,
            "   {k:<12} in {n} of {} interleavings ({tag})",
            o.executions
        );
    }
    let red = o.redundant();
    if o.truncated {
        let _ = writeln!(
            out,
            "   redundant invalidations: not judged (exploration truncated)"
        );
        ok &= s.expect_redundant.is_none();
    } else if !red.is_empty() || s.expect_redundant.is_some() {
        let names: Vec<String> = red
            .iter()
            .map(|&i| {
                let (line, text) = &prog_invs[i - 1];
                format!("inv#{i} (line {line}: `{text}`)")
            })
            .collect();
        let mut line = format!(
            "   redundant invalidations (remove nothing in any interleaving): {}",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
        if let Some(want) = &s.expect_redundant {
            let m = *want == red;
            ok &= m;
            let w: Vec<String> = want.iter().map(|i| format!("inv#{i}")).collect();
            let _ = write!(
                line,
                "   (expected {}: {})",
                if w.is_empty() {
                    "none".into()
                } else {
                    w.join(" ")
                },
                if m { "ok" } else { "MISMATCH" }
            );
        }
        let _ = writeln!(out, "{line}");
    }
    let shown: Vec<&Trace> = if verbose {
        o.shortest.values().collect()
    } else {
        o.counterexample(s).into_iter().collect()
    };
    for t in shown {
        out.push_str(&trace_text(t));
    }
    (out, ok)
}

pub fn literal_report(s: &Script, l: &Literal) -> (String, bool) {
    let mut out = String::new();
    let v = literal_verdict(s, l);
    let mut ok = l.error.is_none();
    let _ = writeln!(
        out,
        "== {} (literal order): {}",
        s.path,
        s.title.as_deref().unwrap_or("")
    );
    out.push_str(&timeline(&l.recs, true, None));
    if let Some(e) = &l.error {
        let _ = writeln!(out, "   error: {e}");
    }
    let exp = match &s.expect_literal {
        Some(e) => {
            let m = v.matches(e);
            ok &= m;
            format!("expected {e}: {}", if m { "ok" } else { "MISMATCH" })
        }
        None => "no literal expectation".into(),
    };
    let _ = writeln!(out, "   literal verdict: {v}   ({exp})");
    (out, ok)
}
