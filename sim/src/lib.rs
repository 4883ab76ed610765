//! amdvi-sim: ordering scripts for mmu_notifier invalidations against the
//! asynchronous page-table walker of the iommu-dev model.
//!
//! A script (`docs/ordering-scripts.md`) lists CPU steps on one PASID's page
//! table, the invalidations the kernel issues, and device threads. The
//! simulator runs the CPU steps in order and explores every interleaving of
//! them with the IOMMU command processor and the device threads, applying
//! the coherence oracle and data checks at every device access and the
//! audit once the CPU sequence is done. The verdict is SAFE, or UNSAFE with
//! the shortest counterexample drawn as a CPU | IOMMU/device timeline.

pub mod explore;
pub mod machine;
pub mod report;
pub mod script;

pub use explore::{explore, explore_with, literal, literal_on, Literal, Outcome};
pub use machine::{Backend, BackendError, DmaResult, ExecError, Model};
pub use report::{literal_verdict, verdict, Verdict};
pub use script::{load, parse, parse_fault, Expect, Kind, LoadError, ParseError, Script};

/// Default bound on explored executions per script.
pub const DEFAULT_MAX_EXECUTIONS: u64 = 2_000_000;

/// Explore a parsed script and render its report; `true` when the verdict
/// matches the script's expectations.
pub fn run_script(
    s: &Script,
    faults: &[iommu_dev::FaultRule],
    max: u64,
    reduce: bool,
    verbose: bool,
) -> (Outcome, String, bool) {
    let o = explore_with(s, faults, max, reduce);
    let prog = machine::Program::new(s, faults);
    let (mut text, mut ok) = report::explore_report(s, &o, &prog.invs, verbose);
    if let Some(e) = &s.expect_literal {
        // The order as written, for comparison with a guest run.
        let l = literal(s, faults);
        let v = literal_verdict(s, &l);
        let m = v.matches(e) && l.error.is_none();
        ok &= m;
        let line = format!(
            "   literal order: {v}   (expected {e}: {})\n",
            if m { "ok" } else { "MISMATCH" }
        );
        let at = text
            .find("   verdict: ")
            .and_then(|i| text[i..].find('\n').map(|j| i + j + 1))
            .unwrap_or(text.len());
        text.insert_str(at, &line);
    }
    (o, text, ok)
}
