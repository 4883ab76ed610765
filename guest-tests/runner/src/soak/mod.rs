// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `amdvi-run --soak DURATION`: one daemon process for the whole soak, and
//! the suite booted against it again and again until DURATION has passed.
//!
//! Each boot is a new QEMU connecting to the same socket, and the boots
//! cycle through kernels and paging depths (`--soak-configs`). A sampler
//! thread records the daemon's RSS and open descriptors every
//! [`SAMPLE_EVERY`] (`sample`); after each boot the daemon's statistics
//! give the event and PPR log entries it dropped, and the descriptors are
//! counted once it has ended the connection. `verdict` judges the whole.
//!
//! Everything lands in `<build-dir>/soak/`: samples.csv, boots.csv,
//! soak.json, daemon.log, stats.json, and the console log of each failed
//! boot (boot-N-console.log).

pub mod sample;
pub mod verdict;

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde::Serialize;

use crate::cli::Args;
use crate::error::{io_err, Error, Result};
use crate::guest_kernel::{self, GuestKernel};
use crate::image;
use crate::plan::{self, DaemonFiles, Plan};
use crate::qemu;
use crate::report;
use crate::supervise::{self, Progress};
use sample::Sampler;
use verdict::{BootRecord, SoakVerdict};

/// How often the daemon is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How long the daemon may take, once QEMU has exited, to end the
/// connection and write its statistics.
const DISCONNECT_WAIT: Duration = Duration::from_secs(15);
/// The boots of a soak in turn, when `--soak-configs` is not given: both
/// kernels, both paging depths, each boot changing at least one of them.
pub const DEFAULT_CONFIGS: &str = "6.12:5,6.1:4,6.12:4,6.1:5";

/// Parses a soak duration: `90s`, `30m`, `2h`, `1h30m`, or a bare number
/// of seconds. Zero is refused.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration (e.g. 90s, 30m, 1h30m)".to_string());
    }
    let secs = if t.chars().all(|c| c.is_ascii_digit()) {
        t.parse::<u64>().map_err(|e| format!("{t:?}: {e}"))?
    } else {
        let mut total: u64 = 0;
        let mut num = String::new();
        let mut last_unit = u64::MAX;
        for c in t.chars() {
            if c.is_ascii_digit() {
                num.push(c);
                continue;
            }
            let unit = match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(format!("{t:?}: unknown unit {c:?} (h, m or s)")),
            };
            if num.is_empty() {
                return Err(format!("{t:?}: a unit without a number"));
            }
            if unit >= last_unit {
                return Err(format!("{t:?}: units must go h, m, s, each once"));
            }
            last_unit = unit;
            let n: u64 = num.parse().map_err(|e| format!("{t:?}: {e}"))?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| format!("{t:?}: too long"))?;
            num.clear();
        }
        if !num.is_empty() {
            return Err(format!("{t:?}: a number without a unit at the end"));
        }
        total
    };
    if secs == 0 {
        return Err(format!("{t:?}: the soak needs a duration above 0"));
    }
    Ok(Duration::from_secs(secs))
}

/// One configuration a soak boots: a kernel series (or release) and a
/// paging depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakConfig {
    pub kver: String,
    pub paging: u8,
}

impl fmt::Display for SoakConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-level", self.kver, self.paging)
    }
}

/// Parses `SERIES:LEVELS`, e.g. `6.12:5` or `6.1:4`.
pub fn parse_config(s: &str) -> std::result::Result<SoakConfig, String> {
    let (kver, paging) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected SERIES:LEVELS, e.g. 6.12:5"))?;
    let paging = match paging {
        "4" => 4,
        "5" => 5,
        p => return Err(format!("{s:?}: paging {p:?} is not 4 or 5")),
    };
    if kver.is_empty() || kver.contains(char::is_whitespace) {
        return Err(format!("{s:?}: no kernel before ':'"));
    }
    Ok(SoakConfig {
        kver: kver.to_string(),
        paging,
    })
}

/// One configuration, ready to boot.
struct Ready {
    config: SoakConfig,
    args: Args,
    plan: Plan,
}

/// Plans every configuration against the shared daemon files. With the
/// default list a kernel that cannot be had is left out with a warning; a
/// list given on the command line must be bootable as it is.
fn prepare(args: &Args, soak_dir: &Path, files: &DaemonFiles) -> Result<Vec<Ready>> {
    let explicit = args.soak_configs.is_some();
    let configs = match &args.soak_configs {
        Some(c) => c.clone(),
        None => DEFAULT_CONFIGS
            .split(',')
            .map(parse_config)
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::Setup)?,
    };
    let root = plan::find_root();
    // Each kernel is resolved (and fetched) once, for all its depths.
    let mut kernels: Vec<(String, Option<GuestKernel>)> = Vec::new();
    let mut ready = Vec::new();
    for config in configs {
        let mut a = args.clone();
        a.soak = None;
        a.soak_configs = None;
        a.kver = Some(config.kver.clone());
        a.paging = config.paging;
        a.build_dir = Some(soak_dir.to_path_buf());
        let kernel = match kernels.iter().find(|(k, _)| *k == config.kver) {
            Some((_, k)) => k.clone(),
            None => {
                let k = match guest_kernel::resolve(&a, &root) {
                    Ok(k) => Some(k),
                    Err(e) if !explicit => {
                        warn!("soak: leaving out kernel {}: {e}", config.kver);
                        None
                    }
                    Err(e) => return Err(e),
                };
                kernels.push((config.kver.clone(), k.clone()));
                k
            }
        };
        let Some(kernel) = kernel else { continue };
        let plan = Plan::with_daemon(&a, kernel, files)?;
        ready.push(Ready {
            config,
            args: a,
            plan,
        });
    }
    if ready.is_empty() {
        return Err(Error::Setup(
            "soak: no configuration can be booted (no guest kernel; `make kernels`)".to_string(),
        ));
    }
    Ok(ready)
}

/// The shared daemon's files in `soak_dir`; the socket falls back to the
/// temporary directory when the path would not fit a socket address.
fn daemon_files(soak_dir: &Path) -> DaemonFiles {
    let mut socket = soak_dir.join("amdvi.sock");
    if socket.as_os_str().len() > plan::SUN_PATH_MAX {
        socket = std::env::temp_dir().join(format!("amdvi-soak-{}.sock", std::process::id()));
    }
    DaemonFiles {
        socket,
        log: soak_dir.join("daemon.log"),
        stats_json: soak_dir.join("stats.json"),
    }
}

/// Waits until the daemon's statistics count `n` ended connections: it
/// writes them after tearing a connection down, so the descriptors of that
/// connection are closed by then. Returns the statistics, or why not.
fn await_disconnect(
    stats: &Path,
    n: u64,
    daemon: &mut Child,
) -> std::result::Result<serde_json::Value, String> {
    let start = Instant::now();
    loop {
        let s = supervise::read_stats(stats);
        if let Some(s) = s.as_ref().filter(|s| verdict::connections(s) >= Some(n)) {
            return Ok(s.clone());
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!(
                "the daemon exited ({}) before ending connection {n}",
                supervise::describe(st)
            ));
        }
        if start.elapsed() > DISCONNECT_WAIT {
            return Err(format!(
                "the daemon had not ended connection {n} {} s after QEMU exited ({} shows {})",
                DISCONNECT_WAIT.as_secs(),
                stats.display(),
                s.as_ref()
                    .and_then(verdict::connections)
                    .map_or_else(|| "nothing".to_string(), |c| format!("{c} connection(s)"))
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's ERROR lines in `text` (env_logger's `[TIME ERROR target] msg`)
/// and the first lines of panics (a panicking worker thread need not end
/// the process). Its warnings are not counted: the suite's `events`
/// scenario makes it warn on purpose (an illegal command).
pub fn error_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            let error = l
                .strip_prefix('[')
                .and_then(|r| r.split_whitespace().nth(1))
                .is_some_and(|level| level == "ERROR");
            error || (l.starts_with("thread '") && l.contains("' panicked at "))
        })
        .collect()
}

/// The ERROR lines the daemon logged after byte `from` of `log`.
fn log_errors(log: &Path, from: u64) -> Vec<String> {
    let Ok(data) = std::fs::read(log) else {
        return Vec::new();
    };
    let tail = data.get(from as usize..).unwrap_or_default();
    error_lines(&String::from_utf8_lossy(tail))
        .into_iter()
        .map(str::to_string)
        .collect()
}

/// What soak.json holds.
#[derive(Debug, Serialize)]
struct SoakJson<'a> {
    duration_s: u64,
    elapsed_s: f64,
    configs: Vec<String>,
    sample_every_s: u64,
    daemon_argv: &'a [String],
    verdict: &'a SoakVerdict,
    boots: &'a [BootRecord],
}

fn append(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io_err(format!("opening {}", path.display()), e))?;
    writeln!(f, "{line}").map_err(|e| io_err(format!("writing {}", path.display()), e))
}

/// Runs the soak and returns the exit code: 0 passed, 1 failed.
pub fn soak(args: &Args, duration: Duration) -> Result<i32> {
    let build_dir = args
        .build_dir
        .clone()
        .unwrap_or_else(|| plan::find_root().join("build"));
    let soak_dir = plan::short(&build_dir).join("soak");
    std::fs::create_dir_all(&soak_dir)
        .map_err(|e| io_err(format!("creating {}", soak_dir.display()), e))?;
    let files = daemon_files(&soak_dir);
    let samples_csv = soak_dir.join("samples.csv");
    let boots_csv = soak_dir.join("boots.csv");
    let soak_json = soak_dir.join("soak.json");
    for old in std::fs::read_dir(&soak_dir)
        .map_err(|e| io_err(format!("reading {}", soak_dir.display()), e))?
        .flatten()
    {
        let n = old.file_name();
        let n = n.to_string_lossy();
        if n.starts_with("boot-") && n.ends_with("-console.log") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    for f in [&samples_csv, &boots_csv, &soak_json, &files.stats_json] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_file(soak_dir.join("soak.png"));

    let ready = prepare(args, &soak_dir, &files)?;
    ready[0].plan.check_daemon()?;
    // One initramfs per release (the paging depth is on the kernel command
    // line), built before the daemon starts.
    let mut built: Vec<&str> = Vec::new();
    for r in &ready {
        if !built.contains(&r.plan.kernel.release.as_str()) {
            image::build(&r.args, &r.plan)?;
            built.push(&r.plan.kernel.release);
        }
    }
    let configs: Vec<String> = ready.iter().map(|r| r.config.to_string()).collect();
    info!(
        "soak for {}: boots cycle through {}; one daemon, sampled every {} s into {}",
        verdict::hms(duration.as_secs_f64()),
        configs.join(", "),
        SAMPLE_EVERY.as_secs(),
        samples_csv.display()
    );

    let t0 = Instant::now();
    let mut daemon =
        supervise::start_daemon(&ready[0].plan.daemon_argv, &files.log, &files.socket)?;
    let boot_no = Arc::new(AtomicU32::new(0));
    let sampler = match Sampler::start(daemon.id(), &samples_csv, SAMPLE_EVERY, t0, boot_no.clone())
    {
        Ok(s) => s,
        Err(e) => {
            let _ = supervise::stop_daemon(&mut daemon);
            return Err(e);
        }
    };
    let result = boots(
        &ready,
        &files,
        &mut daemon,
        &boot_no,
        t0,
        duration,
        &boots_csv,
    );
    // The last sample, after the last disconnect, then the daemon stops.
    let samples = sampler.finish();
    let stopped = supervise::stop_daemon(&mut daemon);
    if !args.keep {
        let _ = std::fs::remove_file(&files.socket);
    }
    let (records, mut end_problems) = result?;
    let samples = samples?;
    if let Some(bad) = stopped {
        end_problems.push(format!("daemon: {bad}; see {}", files.log.display()));
    }
    match supervise::read_stats(&files.stats_json).and_then(|s| verdict::connections(&s)) {
        Some(c) if c == records.len() as u64 => {}
        Some(c) => end_problems.push(format!(
            "the daemon served {c} connection(s) for {} boot(s)",
            records.len()
        )),
        None => end_problems.push(format!(
            "no final daemon statistics in {}",
            files.stats_json.display()
        )),
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let v = verdict::judge(&records, &samples, &end_problems);

    println!();
    println!(
        "== soak: {} boots in {} (asked {}), one daemon, {}",
        records.len(),
        verdict::hms(elapsed),
        verdict::hms(duration.as_secs_f64()),
        ready[0].plan.carrier_name()
    );
    print!("{}", verdict::table(&records));
    print!("{}", v.figures());
    let json = SoakJson {
        duration_s: duration.as_secs(),
        elapsed_s: elapsed,
        configs,
        sample_every_s: SAMPLE_EVERY.as_secs(),
        daemon_argv: &ready[0].plan.daemon_argv,
        verdict: &v,
        boots: &records,
    };
    let text = serde_json::to_string_pretty(&json).expect("the soak serialises");
    std::fs::write(&soak_json, text + "\n")
        .map_err(|e| io_err(format!("writing {}", soak_json.display()), e))?;
    println!(
        "samples {}, boots {}, results {}, daemon log {}",
        samples_csv.display(),
        boots_csv.display(),
        soak_json.display(),
        files.log.display()
    );
    println!("{}", v.closing_line(elapsed));
    Ok(if v.passed() { 0 } else { 1 })
}

/// The boots, until `duration` has passed or the daemon is gone. Returns
/// the records and the problems outside any boot.
fn boots(
    ready: &[Ready],
    files: &DaemonFiles,
    daemon: &mut Child,
    boot_no: &AtomicU32,
    t0: Instant,
    duration: Duration,
    boots_csv: &Path,
) -> Result<(Vec<BootRecord>, Vec<String>)> {
    append(boots_csv, BootRecord::CSV_HEADER)?;
    let mut records: Vec<BootRecord> = Vec::new();
    let mut end_problems = Vec::new();
    let mut dropped_before = 0u64;
    let mut n: u32 = 0;
    while t0.elapsed() < duration {
        let r = &ready[n as usize % ready.len()];
        n += 1;
        boot_no.store(n, Ordering::Relaxed);
        let start_s = t0.elapsed().as_secs_f64();
        info!(
            "soak boot {n}: {} ({}), at {} of {}",
            r.config,
            r.plan.kernel.release,
            verdict::hms(start_s),
            verdict::hms(duration.as_secs_f64())
        );
        if n as usize <= ready.len() {
            info!("QEMU: {}", qemu::shell_line(&r.plan.qemu_cmd));
        }
        let log_before = std::fs::metadata(&files.log).map_or(0, |m| m.len());
        let b = supervise::boot(&r.args, &r.plan, Some(daemon), Progress::Failures)?;
        let v = report::judge(&b.report, &b.obs);
        let mut problems = v.problems.clone();
        let stats = match await_disconnect(&files.stats_json, u64::from(n), daemon) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        let errors = log_errors(&files.log, log_before);
        if let Some(first) = errors.first() {
            problems.push(format!(
                "daemon: {} error line(s) in {}, the first: {first}",
                errors.len(),
                files.log.display()
            ));
        }
        let dropped = stats.as_ref().and_then(verdict::dropped_entries);
        let lost_events = dropped.map(|d| d.saturating_sub(dropped_before));
        if let Some(d) = dropped {
            dropped_before = d;
        }
        let probe = sample::probe(daemon.id()).ok().filter(|_| stats.is_some());
        let rec = BootRecord {
            boot: n,
            config: r.config.to_string(),
            release: r.plan.kernel.release.clone(),
            start_s,
            end_s: t0.elapsed().as_secs_f64(),
            qemu_secs: b.qemu_secs,
            passed: v.passed,
            failed: v.failed,
            skips: verdict::skips(&b.report),
            failing_findings: verdict::failing_findings(&b.report),
            lost_events,
            fds_after: probe.map(|p| p.1),
            rss_after_kib: probe.map(|p| p.0),
            problems,
        };
        append(boots_csv, &rec.csv_line())?;
        let failed = !rec.passed_all();
        let kept = if failed {
            let to = r
                .plan
                .console_log
                .with_file_name(format!("boot-{n}-console.log"));
            let _ = std::fs::copy(&r.plan.console_log, &to);
            format!("; console {}", to.display())
        } else {
            String::new()
        };
        let skips = if rec.skips.is_empty() {
            String::new()
        } else {
            format!(" ({})", rec.skips.join("; "))
        };
        info!(
            "soak boot {n}: {}: {} passed, {} failed, {} skipped{skips}; failing findings {}, lost events {}; daemon fds {}, RSS {}{kept}",
            if failed { "FAILED" } else { "passed" },
            rec.passed,
            rec.failed + rec.problems.len(),
            rec.skipped(),
            rec.failing_findings,
            rec.lost_events
                .map_or_else(|| "?".to_string(), |l| l.to_string()),
            rec.fds_after
                .map_or_else(|| "?".to_string(), |l| l.to_string()),
            verdict::mib(rec.rss_after_kib),
        );
        for p in &rec.problems {
            println!("  - {p}");
        }
        records.push(rec);
        if let Ok(Some(st)) = daemon.try_wait() {
            end_problems.push(format!(
                "the daemon exited during boot {n} ({}); the soak stopped; see {}",
                supervise::describe(st),
                files.log.display()
            ));
            break;
        }
    }
    Ok((records, end_problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_error_lines() {
        let log = "[2026-12-07T16:23:59Z WARN  iommu_dev::iommu::commands] illegal command at 0x1e0e820\n\
[2026-12-07T16:24:00Z ERROR vhost_device_amdvi::service] connection ended: queue 1: invalid avail index\n\
a line of a message with ERROR in it\n\
[2026-12-07T16:24:01Z INFO  vhost_device_amdvi::service] frontend disconnected\n\
thread 'vring_worker' panicked at vhost-user/src/vhu_amdvi.rs:10:5:\n\
index out of bounds\n";
        assert_eq!(
            error_lines(log),
            [
                "[2026-12-07T16:24:00Z ERROR vhost_device_amdvi::service] connection ended: queue 1: invalid avail index",
                "thread 'vring_worker' panicked at vhost-user/src/vhu_amdvi.rs:10:5:"
            ]
        );
        assert!(error_lines("").is_empty());
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(d("90s"), Ok(90));
        assert_eq!(d("30m"), Ok(1800));
        assert_eq!(d("2h"), Ok(7200));
        assert_eq!(d("1h30m"), Ok(5400));
        assert_eq!(d("1m30s"), Ok(90));
        assert_eq!(d("45"), Ok(45));
        assert_eq!(d(" 5m "), Ok(300));
        for bad in [
            "", "0", "0s", "m", "5x", "5m3", "30s5m", "5m5m", "-5m", "1.5h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn configs() {
        assert_eq!(
            parse_config("6.12:5"),
            Ok(SoakConfig {
                kver: "6.12".into(),
                paging: 5
            })
        );
        assert_eq!(parse_config("6.1:4").unwrap().to_string(), "6.1 4-level");
        for bad in ["6.12", "6.12:3", ":5", "6.12:", "6 .1:4"] {
            assert!(parse_config(bad).is_err(), "{bad:?} accepted");
        }
        let all: Vec<SoakConfig> = DEFAULT_CONFIGS
            .split(',')
            .map(|c| parse_config(c).unwrap())
            .collect();
        // Every kernel with every depth, and each boot changes something.
        assert_eq!(all.len(), 4);
        for k in ["6.12", "6.1"] {
            for p in [4, 5] {
                assert!(all.iter().any(|c| c.kver == k && c.paging == p));
            }
        }
        for (a, b) in all.iter().zip(all.iter().cycle().skip(1)) {
            assert_ne!(a, b);
        }
    }

    #[test]
    fn soak_arguments() {
        use clap::Parser;
        let a = Args::try_parse_from(["amdvi-run", "--soak", "5m"]).unwrap();
        assert_eq!(a.soak, Some(Duration::from_secs(300)));
        assert_eq!(a.soak_configs, None);
        let a = Args::try_parse_from([
            "amdvi-run",
            "--soak",
            "90s",
            "--soak-configs",
            "6.12:4,6.12:5",
        ])
        .unwrap();
        assert_eq!(a.soak_configs.unwrap().len(), 2);
        for bad in [
            &["amdvi-run", "--soak", "5m", "--kver", "6.1"][..],
            &["amdvi-run", "--soak", "5m", "--paging", "4"],
            &["amdvi-run", "--soak", "5m", "--expect-caught", "r1"],
            &["amdvi-run", "--soak-configs", "6.12:5"],
            &["amdvi-run", "--soak", "soon"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}
