// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Ordering scripts in the guest (`--scripts`): the guest's `amdvi-script`
//! runs each script's literal order against the real daemon; here each guest
//! verdict is compared with the simulator's verdict for the same literal
//! order (`amdvi-sim --literal`, computed in-process with the same fault
//! rules the daemon was given via `--sim-fault`).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ktap::{Status, TestResult};

/// One script's guest run against the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScriptCheck {
    pub name: String,
    pub path: String,
    /// The guest's `# verdict:` line, if it ran.
    pub guest: Option<String>,
    /// `amdvi-sim --literal`'s verdict, or why it has none.
    pub sim: Result<String, String>,
    /// Why the guest skipped it.
    pub skipped: Option<String>,
    /// Guest and simulator agree (false for skips and missing results).
    pub agree: bool,
}

/// The KTAP test name of a script (as amdvi-script names it).
pub fn test_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.strip_suffix(".amdvi").unwrap_or(&base).to_string()
}

/// The simulator's verdict for a script's literal order, with `faults`
/// (`POINT:ACTION`) added, in the words `amdvi-sim --literal` prints.
pub fn sim_literal(path: &Path, faults: &[String]) -> Result<String, String> {
    let s = amdvi_sim::load(&path.to_string_lossy()).map_err(|e| e.to_string())?;
    let faults = faults
        .iter()
        .map(|f| amdvi_sim::parse_fault(f).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let l = amdvi_sim::literal(&s, &faults);
    if let Some(e) = &l.error {
        return Err(format!("simulator error: {e}"));
    }
    Ok(amdvi_sim::literal_verdict(&s, &l).to_string())
}

/// The guest's verdict: its `# verdict: ...` diagnostic.
pub fn guest_verdict(t: &TestResult) -> Option<String> {
    t.diagnostics
        .iter()
        .rev()
        .find_map(|d| d.strip_prefix("verdict: "))
        .map(|v| v.trim().to_string())
}

/// Compare every script's guest result with the simulator; the problems
/// (disagreements, missing results, simulator errors) fail the run.
pub fn check(
    scripts: &[PathBuf],
    faults: &[String],
    results: &[TestResult],
) -> (Vec<ScriptCheck>, Vec<String>) {
    let mut checks = Vec::new();
    let mut problems = Vec::new();
    for p in scripts {
        let name = test_name(p);
        let sim = sim_literal(p, faults);
        let t = results.iter().find(|t| t.name == name);
        let guest = t.and_then(guest_verdict);
        let skipped = t
            .filter(|t| t.status == Status::Skip)
            .map(|t| t.directive.clone().unwrap_or_default());
        let agree = matches!((&guest, &sim), (Some(g), Ok(s)) if g == s);
        match (&guest, &sim, &skipped) {
            (_, Err(e), _) => problems.push(format!("script {name}: amdvi-sim --literal: {e}")),
            (_, _, Some(_)) => {}
            (None, _, _) if t.is_none() => {
                problems.push(format!("script {name}: no result from the guest"))
            }
            (None, _, _) => problems.push(format!("script {name}: the guest gave no verdict")),
            (Some(g), Ok(s), _) if !agree => problems.push(format!(
                "script {name}: guest verdict {g}, but amdvi-sim --literal says {s}"
            )),
            _ => {}
        }
        checks.push(ScriptCheck {
            name,
            path: p.display().to_string(),
            guest,
            sim,
            skipped,
            agree,
        });
    }
    (checks, problems)
}

/// The comparison as a table.
pub fn table(checks: &[ScriptCheck]) -> String {
    let w = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let gw = checks
        .iter()
        .filter_map(|c| c.guest.as_ref().map(String::len))
        .max()
        .unwrap_or(5)
        .max(5);
    let sim_text = |c: &ScriptCheck| match &c.sim {
        Ok(s) => s.clone(),
        Err(e) => format!("ERROR: {e}"),
    };
    let sw = checks
        .iter()
        .map(|c| sim_text(c).len())
        .max()
        .unwrap_or(0)
        .max(19);
    let mut out = format!(
        "{:<w$} | {:<gw$} | {:<sw$} | agree\n",
        "script", "guest", "amdvi-sim --literal"
    );
    out.push_str(&format!(
        "{:-<w$}-+-{:-<gw$}-+-{:-<sw$}-+------\n",
        "", "", ""
    ));
    for c in checks {
        let sim = sim_text(c);
        let (guest, agree) = match (&c.skipped, &c.guest) {
            (Some(why), _) => (format!("SKIP: {why}"), "skip"),
            (None, Some(g)) => (g.clone(), if c.agree { "yes" } else { "NO" }),
            (None, None) => ("(none)".to_string(), "NO"),
        };
        out.push_str(&format!(
            "{:<w$} | {guest:<gw$} | {sim:<sw$} | {agree}\n",
            c.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn guest_ktap(verdicts: &[(&str, &str)]) -> Vec<TestResult> {
        let mut k = format!("KTAP version 1\n1..{}\n", verdicts.len());
        for (i, (name, v)) in verdicts.iter().enumerate() {
            k.push_str(&format!("# verdict: {v}\n# amdvi-result: name={name} result=pass accesses=1 r1=0 r2=0 r3=0 r4=0 stale=0 ms=1\nok {} {name}\n", i + 1));
        }
        ktap::parse(&k).results
    }

    #[test]
    fn agreeing_and_disagreeing_verdicts() {
        let good = root().join("sim/scripts/cow-correct.amdvi");
        let bad = root().join("sim/scripts/cow-clear-set-invalidate.amdvi");
        let results = guest_ktap(&[
            ("cow-correct", "SAFE"),
            ("cow-clear-set-invalidate", "SAFE"),
        ]);
        let (checks, problems) = check(&[good, bad], &[], &results);
        assert!(checks[0].agree);
        assert_eq!(checks[1].sim.as_deref(), Ok("UNSAFE (R1, stale-read)"));
        assert!(!checks[1].agree);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0]
            .contains("guest verdict SAFE, but amdvi-sim --literal says UNSAFE (R1, stale-read)"));
        let t = table(&checks);
        assert!(t.contains("cow-correct"), "{t}");
        assert!(t.lines().nth(3).unwrap().ends_with("| NO"), "{t}");
    }

    #[test]
    fn sim_faults_change_the_reference() {
        let p = root().join("sim/scripts/cow-correct.amdvi");
        assert_eq!(sim_literal(&p, &[]).as_deref(), Ok("SAFE"));
        let broken = sim_literal(&p, &["atc_invalidate:drop".to_string()]).unwrap();
        assert!(broken.starts_with("UNSAFE (R1"), "{broken}");
        assert!(sim_literal(&p, &["nowhere:drop".to_string()]).is_err());
    }

    #[test]
    fn missing_and_skipped_results() {
        let p = root().join("sim/scripts/cow-correct.amdvi");
        let (_, problems) = check(std::slice::from_ref(&p), &[], &[]);
        assert_eq!(problems, ["script cow-correct: no result from the guest"]);
        let k = "KTAP version 1\n1..1\n# amdvi-result: name=cow-correct result=skip accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0\nok 1 cow-correct # SKIP fault rules\n";
        let (checks, problems) = check(&[p], &[], &ktap::parse(k).results);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(checks[0].skipped.as_deref(), Some("SKIP fault rules"));
        assert!(table(&checks).contains("SKIP"));
    }
}
