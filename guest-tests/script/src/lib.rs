//! amdvi-script: the guest half of the ordering scripts
//! (docs/ordering-scripts.md). A script's literal order runs step by step on
//! a private page table bound to its PASID, against the real daemon through
//! `/dev/amdvi`; the device's oracle, its audit and the data checks give the
//! verdict. The judging is the simulator's own code
//! ([`amdvi_sim::literal_on`] on the [`guest::Guest`] backend), so a guest
//! verdict differs from `amdvi-sim --literal` only where the device does.

pub mod guest;
pub mod uapi;

use std::fmt::Write;

use amdvi_sim::report::{literal_verdict, timeline, Verdict};
use amdvi_sim::{Literal, Script};

pub use guest::Counts;

/// One script's KTAP test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Ran: the verdict, whether it matches `expect-literal`, the error that
    /// stopped judging (if any).
    Ran {
        verdict: Verdict,
        matches: bool,
        error: Option<String>,
    },
    /// Could not run in the guest, and why.
    Skip(String),
}

/// The KTAP test name of a script: its file name without `.amdvi`.
pub fn test_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.strip_suffix(".amdvi").unwrap_or(base).to_string()
}

/// Judge a literal run: the verdict in `amdvi-sim --literal`'s words.
pub fn judge(s: &Script, l: &Literal, backend_error: Option<String>) -> Outcome {
    let verdict = literal_verdict(s, l);
    let error = backend_error.or_else(|| l.error.as_ref().map(ToString::to_string));
    let matches = error.is_none() && s.expect_literal.as_ref().is_none_or(|e| verdict.matches(e));
    Outcome::Ran {
        verdict,
        matches,
        error,
    }
}

/// The KTAP lines of test number `n` (diagnostics, `# amdvi-result:`, the
/// result line), per docs/guest-conventions.md.
pub fn ktap_test(
    n: usize,
    s: &Script,
    header: &str,
    l: Option<&Literal>,
    o: &Outcome,
    c: &Counts,
    ms: u64,
) -> String {
    let name = test_name(&s.path);
    let mut out = String::new();
    let _ = writeln!(out, "# {header}");
    let (result, status) = match o {
        Outcome::Ran {
            verdict,
            matches,
            error,
        } => {
            if let Some(e) = error {
                let _ = writeln!(out, "# error: {e}");
            }
            let _ = writeln!(out, "# verdict: {verdict}");
            if let Some(e) = &s.expect_literal {
                let _ = writeln!(
                    out,
                    "# expect-literal {e}: {}",
                    if verdict.matches(e) { "ok" } else { "MISMATCH" }
                );
            }
            if *matches {
                ("pass", format!("ok {n} {name}"))
            } else {
                ("fail", format!("not ok {n} {name}"))
            }
        }
        Outcome::Skip(why) => ("skip", format!("ok {n} {name} # SKIP {why}")),
    };
    // The timeline after the verdict, so the first lines say what happened.
    if let Some(l) = l {
        for line in timeline(&l.recs, true, None).lines() {
            let _ = writeln!(out, "# {line}");
        }
    }
    let _ = writeln!(
        out,
        "# amdvi-result: name={name} result={result} accesses={} r1={} r2={} r3={} r4={} stale={} ms={ms}",
        c.accesses, c.r[0], c.r[1], c.r[2], c.r[3], c.stale
    );
    let _ = writeln!(out, "{status}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use amdvi_sim::{literal_on, machine::Program, Model};

    const COW_BAD: &str = "\
title COW, clear -> set -> invalidate
page P1 = 1
map  A -> P1 ro
dev  translate A
cpu  copy P1 -> P2
cpu  clear A
cpu  set A -> P2 rw dirty
cpu  write A 2
dev  read A
cpu  secondary A
expect unsafe R1 stale-read
expect-literal unsafe R1 stale-read
";

    fn run(text: &str, expect_literal: Option<&str>) -> (Script, Literal, Outcome) {
        let mut text = text.to_string();
        if let Some(e) = expect_literal {
            text = text
                .lines()
                .filter(|l| !l.starts_with("expect-literal"))
                .map(|l| format!("{l}\n"))
                .collect();
            text.push_str(&format!("expect-literal {e}\n"));
        }
        let s = amdvi_sim::parse("sim/scripts/cow-bad.amdvi", &text).unwrap();
        let prog = Program::new(&s, &[]);
        let (l, _) = literal_on(&s, &prog, Model::new(&s, &[]));
        let o = judge(&s, &l, None);
        (s, l, o)
    }

    #[test]
    fn names() {
        assert_eq!(test_name("sim/scripts/cow-correct.amdvi"), "cow-correct");
        assert_eq!(test_name("/scripts/x"), "x");
    }

    #[test]
    fn ktap_block_states_the_simulators_literal_verdict() {
        let (s, l, o) = run(COW_BAD, None);
        let Outcome::Ran {
            verdict, matches, ..
        } = &o
        else {
            panic!("{o:?}")
        };
        assert!(matches);
        // The same words amdvi-sim --literal prints.
        assert_eq!(verdict.to_string(), "UNSAFE (R1, stale-read)");
        assert_eq!(
            *verdict,
            amdvi_sim::literal_verdict(&s, &amdvi_sim::literal(&s, &[]))
        );
        let c = Counts {
            accesses: 2,
            r: [1, 0, 0, 0],
            stale: 0,
        };
        let k = ktap_test(3, &s, "amdvi-script: x", Some(&l), &o, &c, 7);
        let lines: Vec<&str> = k.lines().collect();
        assert_eq!(lines.last(), Some(&"ok 3 cow-bad"));
        assert!(lines.contains(&"# verdict: UNSAFE (R1, stale-read)"), "{k}");
        assert!(lines.contains(&"# expect-literal unsafe R1 stale-read: ok"));
        assert!(lines.contains(
            &"# amdvi-result: name=cow-bad result=pass accesses=2 r1=1 r2=0 r3=0 r4=0 stale=0 ms=7"
        ));
        assert!(lines
            .iter()
            .all(|l| l.starts_with('#') || l.starts_with("ok")));
    }

    #[test]
    fn a_verdict_other_than_expected_fails_the_test() {
        let (s, l, o) = run(COW_BAD, Some("safe"));
        assert!(matches!(o, Outcome::Ran { matches: false, .. }));
        let k = ktap_test(1, &s, "h", Some(&l), &o, &Counts::default(), 0);
        assert!(k.contains("# expect-literal safe: MISMATCH"));
        assert!(k.ends_with("not ok 1 cow-bad\n"));
        assert!(k.contains("result=fail"));
    }

    #[test]
    fn a_backend_error_fails_the_test() {
        let (s, l, _) = run(COW_BAD, None);
        let o = judge(&s, &l, Some("PT_PTE set: Operation not permitted".into()));
        assert!(matches!(o, Outcome::Ran { matches: false, .. }));
        let k = ktap_test(1, &s, "h", Some(&l), &o, &Counts::default(), 0);
        assert!(k.contains("# error: PT_PTE set: Operation not permitted"));
    }

    #[test]
    fn skips() {
        let (s, _, _) = run(COW_BAD, None);
        let k = ktap_test(
            2,
            &s,
            "h",
            None,
            &Outcome::Skip("why".into()),
            &Counts::default(),
            0,
        );
        assert!(k.ends_with("ok 2 cow-bad # SKIP why\n"));
        assert!(k.contains("result=skip"));
    }
}
