//! amdvi-sim: run ordering scripts (exhaustively or in their literal order)
//! and print verdicts and counterexample timelines.

use std::process::ExitCode;

use amdvi_sim::{literal, parse_fault, report, run_script, DEFAULT_MAX_EXECUTIONS};
use clap::Parser;

/// Prove an mmu_notifier invalidation ordering safe under every interleaving
/// with an asynchronous IOMMU walker and device, or print the shortest race.
#[derive(Debug, Parser)]
#[command(name = "amdvi-sim", version)]
struct Args {
    /// Ordering scripts (.amdvi).
    #[arg(required = true)]
    scripts: Vec<String>,
    /// Run only the script's literal order (device steps where written).
    #[arg(long)]
    literal: bool,
    /// Add a fault rule, POINT:ACTION (e.g. atc_invalidate:drop).
    #[arg(long = "fault", value_name = "POINT:ACTION", value_parser = parse_fault)]
    faults: Vec<iommu_dev::FaultRule>,
    /// Bound on explored interleavings per script.
    #[arg(long, default_value_t = DEFAULT_MAX_EXECUTIONS)]
    max_executions: u64,
    /// Run every interleaving, without the partial-order reduction.
    #[arg(long)]
    no_reduction: bool,
    /// Print the shortest counterexample of every finding, not only the first.
    #[arg(short, long)]
    verbose: bool,
    /// Ignore the scripts' expectations (exit 0 unless a script is malformed).
    #[arg(long)]
    no_check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut mismatches = 0;
    let mut errors = 0;
    for path in &args.scripts {
        let s = match amdvi_sim::load(path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                errors += 1;
                continue;
            }
        };
        let ok = if args.literal {
            let l = literal(&s, &args.faults);
            let (text, ok) = report::literal_report(&s, &l);
            print!("{text}");
            ok
        } else {
            let (_, text, ok) = run_script(
                &s,
                &args.faults,
                args.max_executions,
                !args.no_reduction,
                args.verbose,
            );
            print!("{text}");
            ok
        };
        if !ok {
            mismatches += 1;
        }
        println!();
    }
    let n = args.scripts.len();
    println!(
        "amdvi-sim: {n} script(s), {} as expected, {mismatches} not, {errors} malformed",
        n - mismatches - errors
    );
    if errors > 0 {
        ExitCode::from(2)
    } else if mismatches > 0 && !args.no_check {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
