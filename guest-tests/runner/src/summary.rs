// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The report of a run: the verdict from what was observed, the summary on
//! stdout, and the results JSON.

use serde::Serialize;

use crate::cli::Args;
use crate::error::{io_err, Result};
use crate::guest_kernel::Origin;
use crate::ktap::{self, Status};
use crate::plan::Plan;
use crate::qemu::{self, Carrier};
use crate::report::{self, Observations, Verdict};
use crate::scripts;
use crate::supervise::Observed;

/// Everything the results JSON holds.
#[derive(Debug, Serialize)]
struct RunJson<'a> {
    kernel_release: &'a str,
    kernel: String,
    /// own, cache (with the Debian packages and versions) or boot.
    kernel_origin: &'a Origin,
    kernel_headers: String,
    paging: u8,
    guest_paging: Option<u8>,
    accel: qemu::Accel,
    carrier: Option<Carrier>,
    qemu: &'a str,
    smp: u32,
    mem_mib: u32,
    filter: Option<&'a str>,
    args: Option<&'a str>,
    modparams: Option<&'a str>,
    kernel_cmdline: &'a str,
    qemu_seconds: f64,
    verdict: &'a Verdict,
    observations: &'a Observations,
    plan: Option<u32>,
    scenarios: Vec<ScenarioJson<'a>>,
    scripts: &'a [scripts::ScriptCheck],
    ktap_errors: &'a [String],
    console_log: String,
    daemon_log: Option<String>,
    qemu_log: String,
    daemon_stats: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct ScenarioJson<'a> {
    #[serde(flatten)]
    result: &'a ktap::TestResult,
    host_seconds: Option<f64>,
}

/// Judges, prints the summary, writes the results JSON; returns the exit code.
pub fn report(args: &Args, plan: &Plan, seen: Observed) -> Result<i32> {
    let Observed {
        report,
        obs,
        host_secs,
        qemu_secs,
        daemon_ran,
        daemon_stats,
    } = seen;
    let mut verdict = report::judge(&report, &obs);
    let (script_checks, script_problems) = if args.scripts.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        scripts::check(&args.scripts, &args.sim_faults, &report.results)
    };
    if !script_problems.is_empty() {
        verdict.problems.extend(script_problems);
        verdict.exit_code = 1;
    }

    println!();
    println!("== {}", plan.headline(args));
    if report.results.is_empty() {
        println!("(no scenario results)");
    } else {
        print!("{}", report::table(&report.results, &host_secs));
    }
    for t in report.results.iter().filter(|t| t.status == Status::Fail) {
        // The suite's own words about a failure, shortened.
        for d in t.diagnostics.iter().take(5) {
            println!("  {}: # {d}", t.name);
        }
        if t.diagnostics.len() > 5 {
            println!(
                "  {}: ({} more lines in the console log)",
                t.name,
                t.diagnostics.len() - 5
            );
        }
    }
    if !script_checks.is_empty() {
        println!(
            "ordering scripts: guest literal order vs amdvi-sim --literal{}",
            if args.sim_faults.is_empty() {
                String::new()
            } else {
                format!(" --fault {}", args.sim_faults.join(" --fault "))
            }
        );
        print!("{}", scripts::table(&script_checks));
    }
    if !verdict.problems.is_empty() {
        println!("problems:");
        for p in &verdict.problems {
            println!("  - {p}");
        }
    }
    println!(
        "QEMU ran {qemu_secs:.1} s; guest exit {}; console {}",
        obs.guest_exit
            .map_or_else(|| "missing".to_string(), |n| n.to_string()),
        plan.console_log.display()
    );

    let scenarios = report
        .results
        .iter()
        .enumerate()
        .map(|(i, r)| ScenarioJson {
            result: r,
            host_seconds: host_secs.get(i).copied(),
        })
        .collect();
    let json = RunJson {
        kernel_release: &plan.kernel.release,
        kernel: plan.kernel.image.display().to_string(),
        kernel_origin: &plan.kernel.origin,
        kernel_headers: plan.kernel.headers.display().to_string(),
        paging: plan.paging.levels(),
        guest_paging: obs.guest_paging,
        accel: args.accel,
        carrier: plan.carrier,
        qemu: &plan.qemu_banner,
        smp: args.smp,
        mem_mib: args.mem,
        filter: args.filter.as_deref(),
        args: args.args.as_deref(),
        modparams: args.modparams.as_deref(),
        kernel_cmdline: &plan.append,
        qemu_seconds: qemu_secs,
        verdict: &verdict,
        observations: &obs,
        plan: report.plan,
        scenarios,
        scripts: &script_checks,
        ktap_errors: &report.errors,
        console_log: plan.console_log.display().to_string(),
        daemon_log: daemon_ran.then(|| plan.daemon_log.display().to_string()),
        qemu_log: plan.qemu_log.display().to_string(),
        daemon_stats,
    };
    let text = serde_json::to_string_pretty(&json).expect("results serialise");
    if let Some(parent) = plan
        .json_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&plan.json_path, text + "\n")
        .map_err(|e| io_err(format!("writing {}", plan.json_path.display()), e))?;
    println!("results {}", plan.json_path.display());
    if !args.expect_caught.is_empty() {
        let (code, line) = report::judge_negative(&report, &verdict, &args.expect_caught);
        println!("{line}");
        return Ok(code);
    }
    println!("{}", verdict.closing_line());
    Ok(verdict.exit_code)
}
