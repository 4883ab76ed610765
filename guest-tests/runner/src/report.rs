// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Judging a run and presenting it: the verdict, the summary table and the
//! results JSON.

use serde::Serialize;

use crate::cli::FindingRule;
use crate::ktap::{Report, Status, TestResult};

/// What the runner observed besides the KTAP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observations {
    /// N of the guest's `amdvi-exit: N` line.
    pub guest_exit: Option<i32>,
    /// More than one `amdvi-exit:` line was seen.
    pub repeated_exit: bool,
    pub timed_out: bool,
    /// QEMU ended on its own with a failure status (description).
    pub qemu_failure: Option<String>,
    /// The daemon died or ended badly (description).
    pub daemon_failure: Option<String>,
    /// Kernel messages reporting bugs (panic, BUG, WARNING, Oops, ...).
    pub kernel_problems: Vec<String>,
    /// `amdvi-init: error: ...` lines.
    pub init_errors: Vec<String>,
    pub requested_paging: u8,
    /// The paging depth `/init` saw in the guest.
    pub guest_paging: Option<u8>,
}

/// The judgement of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Everything wrong besides failed scenarios; each counts as one failure.
    pub problems: Vec<String>,
    /// The runner's exit code: 0 all good, 1 failure, 4 everything skipped.
    pub exit_code: i32,
}

impl Verdict {
    /// The closing line: `amdvi-run: P passed, F failed, S skipped`, where F
    /// also counts each run-level problem.
    pub fn closing_line(&self) -> String {
        format!(
            "amdvi-run: {} passed, {} failed, {} skipped",
            self.passed,
            self.failed + self.problems.len(),
            self.skipped
        )
    }
}

pub fn judge(report: &Report, obs: &Observations) -> Verdict {
    let mut problems = Vec::new();
    if obs.timed_out {
        problems.push("timeout: QEMU and the daemon were killed".to_string());
    }
    if let Some(q) = &obs.qemu_failure {
        problems.push(format!("QEMU: {q}"));
    }
    if let Some(d) = &obs.daemon_failure {
        problems.push(format!("daemon: {d}"));
    }
    for k in &obs.kernel_problems {
        problems.push(format!("kernel: {k}"));
    }
    for e in &obs.init_errors {
        problems.push(format!("init: {e}"));
    }
    let passed = report.count(Status::Pass);
    let failed = report.count(Status::Fail);
    let skipped = report.count(Status::Skip);
    match obs.guest_exit {
        None => problems.push("the guest never printed `amdvi-exit: N`".to_string()),
        Some(0) | Some(4) => {}
        // A failure the KTAP names is counted once, as that test.
        Some(1) if failed > 0 => {}
        // A suite that fails without saying which test failed still failed.
        Some(1) => problems.push("the suite exited with 1 but no test failed".to_string()),
        Some(n) => problems.push(format!("the suite exited with {n}")),
    }
    if obs.repeated_exit {
        problems.push("more than one `amdvi-exit:` line".to_string());
    }
    if let Some(g) = obs.guest_paging {
        if g != obs.requested_paging {
            problems.push(format!(
                "guest runs {g}-level paging, {}-level was requested",
                obs.requested_paging
            ));
        }
    }
    for e in &report.errors {
        problems.push(format!("KTAP: {e}"));
    }
    let exit_code = if failed > 0 || !problems.is_empty() {
        1
    } else if obs.guest_exit == Some(4) || (passed == 0 && skipped > 0) {
        4
    } else {
        0
    };
    Verdict {
        passed,
        failed,
        skipped,
        problems,
        exit_code,
    }
}

/// A negative control's verdict: caught when a scenario failed with findings
/// of one of `rules`; returns the exit code and the closing line.
pub fn judge_negative(report: &Report, verdict: &Verdict, rules: &[FindingRule]) -> (i32, String) {
    let count = |t: &TestResult| -> u64 {
        let Some(a) = t.amdvi.as_ref() else { return 0 };
        rules
            .iter()
            .map(|r| match r {
                FindingRule::R1 => a.r1,
                FindingRule::R2 => a.r2,
                FindingRule::R3 => a.r3,
                FindingRule::R4 => a.r4,
                FindingRule::Stale => a.stale,
                FindingRule::Freed => a.freed,
            })
            .map(|v| v.unwrap_or(0))
            .sum()
    };
    let caught: Vec<String> = report
        .results
        .iter()
        .filter(|t| t.status == Status::Fail && count(t) > 0)
        .map(|t| format!("{} ({} findings)", t.name, count(t)))
        .collect();
    if !verdict.problems.is_empty() {
        (
            1,
            format!(
                "amdvi-run: negative control inconclusive: {}",
                verdict.problems.join("; ")
            ),
        )
    } else if caught.is_empty() {
        (
            1,
            "amdvi-run: negative control NOT caught: no scenario failed with the expected findings"
                .to_string(),
        )
    } else {
        (
            0,
            format!("amdvi-run: negative control caught: {}", caught.join(", ")),
        )
    }
}

fn num(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// Time of a scenario: the suite's own `ms=`, else the host's measurement.
fn time_of(t: &TestResult, host_secs: Option<f64>) -> String {
    match (t.amdvi.as_ref().and_then(|a| a.ms), host_secs) {
        (Some(ms), _) => format!("{:.2} s", ms as f64 / 1000.0),
        (None, Some(s)) => format!("~{s:.1} s"),
        (None, None) => "-".to_string(),
    }
}

/// The summary table (scenario | result | device accesses | R1..R4 | stale | freed | time).
pub fn table(results: &[TestResult], host_secs: &[f64]) -> String {
    let header = [
        "scenario",
        "result",
        "device accesses",
        "R1",
        "R2",
        "R3",
        "R4",
        "stale",
        "freed",
        "time",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, t) in results.iter().enumerate() {
        let a = t.amdvi.clone().unwrap_or_default();
        rows.push(vec![
            t.name.clone(),
            t.status.as_str().to_string(),
            num(a.accesses),
            num(a.r1),
            num(a.r2),
            num(a.r3),
            num(a.r4),
            num(a.stale),
            num(a.freed),
            time_of(t, host_secs.get(i).copied()),
        ]);
    }
    text_table(&header, &rows)
}

/// A plain-text table: the header, a rule, the rows; the first two columns
/// (names and results) left-aligned, the numbers right-aligned.
pub(crate) fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                s.push_str(" | ");
            }
            if i < 2 {
                s.push_str(&format!("{c:<w$}"));
            } else {
                s.push_str(&format!("{c:>w$}"));
            }
        }
        s.trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let mut out = line(&header);
    out.push('\n');
    out.push_str(
        &width
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap;

    fn report(text: &str) -> Report {
        ktap::parse(text)
    }

    const GOOD: &str = "KTAP version 1\n1..2\n\
# amdvi-result: name=a result=pass accesses=1200 r1=0 r2=0 r3=0 r4=0 stale=0 freed=0 ms=1500\nok 1 a\n\
# amdvi-result: name=b result=skip accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0\nok 2 b # SKIP no PRI\n";

    fn obs() -> Observations {
        Observations {
            guest_exit: Some(0),
            requested_paging: 5,
            guest_paging: Some(5),
            ..Observations::default()
        }
    }

    #[test]
    fn negative_control_needs_a_failure_with_the_rule() {
        let mut o = obs();
        o.guest_exit = Some(1);
        let caught = GOOD.replace("ok 1 a", "not ok 1 a").replace(
            "r1=0 r2=0 r3=0 r4=0 stale=0 freed=0 ms=1500",
            "r1=3 r2=0 r3=9 r4=0 stale=0 freed=0 ms=1500",
        );
        let r = report(&caught);
        let (code, line) = judge_negative(&r, &judge(&r, &o), &[FindingRule::R1]);
        assert_eq!(code, 0, "{line}");
        assert!(line.contains("caught: a (3 findings)"), "{line}");
        // R3 alone is not what was asked for.
        let (code, _) = judge_negative(&r, &judge(&r, &o), &[FindingRule::Stale]);
        assert_eq!(code, 1);
        // A freed frame still cached is its own rule.
        let freed = caught.replace("stale=0 freed=0", "stale=0 freed=2");
        let r = report(&freed);
        let (code, line) = judge_negative(&r, &judge(&r, &o), &[FindingRule::Freed]);
        assert_eq!(code, 0, "{line}");
        assert!(line.contains("caught: a (2 findings)"), "{line}");
        // A clean pass is not caught.
        let r = report(GOOD);
        let (code, line) = judge_negative(
            &r,
            &judge(&r, &obs()),
            &[FindingRule::R1, FindingRule::Stale],
        );
        assert_eq!(code, 1);
        assert!(line.contains("NOT caught"));
        // A crash is inconclusive, not caught.
        let mut o = obs();
        o.timed_out = true;
        let r = report(&caught);
        let (code, line) = judge_negative(&r, &judge(&r, &o), &[FindingRule::R1]);
        assert_eq!(code, 1);
        assert!(line.contains("inconclusive"), "{line}");
    }

    #[test]
    fn clean_run_passes() {
        let v = judge(&report(GOOD), &obs());
        assert_eq!((v.passed, v.failed, v.skipped), (1, 0, 1));
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!(v.exit_code, 0);
        assert_eq!(v.closing_line(), "amdvi-run: 1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn each_problem_fails_the_run() {
        let cases: [fn(&mut Observations); 10] = [
            |o| o.guest_exit = None,
            |o| o.guest_exit = Some(1),
            |o| o.guest_exit = Some(139),
            |o| o.timed_out = true,
            |o| o.qemu_failure = Some("exit status 1".into()),
            |o| o.daemon_failure = Some("signal 11".into()),
            |o| o.kernel_problems.push("WARNING: CPU: 0 PID: 1".into()),
            |o| o.init_errors.push("error: rmmod failed".into()),
            |o| o.guest_paging = Some(4),
            |o| o.repeated_exit = true,
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut o = obs();
            f(&mut o);
            let v = judge(&report(GOOD), &o);
            assert_eq!(v.exit_code, 1, "case {i}: {v:?}");
            assert!(!v.problems.is_empty(), "case {i}");
            assert!(
                v.closing_line().contains(" 1 failed"),
                "case {i}: {}",
                v.closing_line()
            );
        }
    }

    #[test]
    fn failed_scenario_and_ktap_errors() {
        let text = GOOD.replace("ok 1 a", "not ok 1 a");
        let mut o = obs();
        o.guest_exit = Some(1);
        let v = judge(&report(&text), &o);
        assert_eq!(v.failed, 1);
        assert_eq!(v.exit_code, 1);
        // The failure is counted once, not again for the exit code.
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!(v.closing_line(), "amdvi-run: 0 passed, 1 failed, 1 skipped");
        // A guest that says 0 while a test failed still fails the run.
        let v = judge(&report(&text), &obs());
        assert_eq!(v.exit_code, 1);
        // Missing results are a problem even when the guest says 0.
        let v = judge(&report("KTAP version 1\n1..3\n"), &obs());
        assert_eq!(v.exit_code, 1);
        assert!(
            v.problems.iter().any(|p| p.contains("plan 1..3")),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn all_skipped_is_exit_4() {
        let text = "KTAP version 1\n1..1\n# amdvi-result: name=b result=skip accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0\nok 1 b # SKIP x\n";
        let mut o = obs();
        o.guest_exit = Some(4);
        let v = judge(&report(text), &o);
        assert_eq!(v.exit_code, 4);
    }

    #[test]
    fn table_layout() {
        let r = report(GOOD);
        let t = table(&r.results, &[1.6, 0.1]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let head: Vec<&str> = lines[0].split(" | ").map(str::trim).collect();
        let want = "scenario,result,device accesses,R1,R2,R3,R4,stale,freed,time";
        assert_eq!(head.join(","), want);
        assert!(lines[1].starts_with("---------+-"));
        let cells: Vec<&str> = lines[2].split(" | ").map(str::trim).collect();
        assert_eq!(
            cells,
            ["a", "pass", "1200", "0", "0", "0", "0", "0", "0", "1.50 s"]
        );
        let cells: Vec<&str> = lines[3].split(" | ").map(str::trim).collect();
        assert_eq!(cells[1], "skip");
        // Without the suite's ms= the host time is shown.
        let r2 = report("KTAP version 1\n1..1\nok 1 x\n");
        let t2 = table(&r2.results, &[2.25]);
        assert!(t2.lines().nth(2).unwrap().ends_with("~2.2 s"), "{t2}");
    }
}
