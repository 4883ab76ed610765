// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Judging a soak from its boots and samples: every boot's suite passed,
//! no failing finding, no lost event, no leaked descriptor; the RSS figures
//! are reported, not judged. Also the per-configuration summary table.

use serde::Serialize;

use super::sample::Sample;
use crate::ktap::{Report, Status};

/// What one boot of the soak left.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootRecord {
    /// 1, 2, ...
    pub boot: u32,
    /// `6.12 5-level`.
    pub config: String,
    pub release: String,
    /// Seconds since the daemon started, when QEMU started and when the
    /// daemon had ended the connection.
    pub start_s: f64,
    pub end_s: f64,
    pub qemu_secs: f64,
    pub passed: usize,
    pub failed: usize,
    /// The skipped scenarios, `name: reason`: see [`skips`].
    pub skips: Vec<String>,
    /// See [`failing_findings`].
    pub failing_findings: u64,
    /// Event and PPR log entries the daemon dropped during this boot; `None`
    /// when its statistics could not be read.
    pub lost_events: Option<u64>,
    /// The daemon's open descriptors and RSS once it had ended this boot's
    /// connection; `None` when they could not be read.
    pub fds_after: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The boot's run-level problems (the single run's verdict) and the
    /// soak's own (the connection not ended, no statistics).
    pub problems: Vec<String>,
}

impl BootRecord {
    pub fn passed_all(&self) -> bool {
        self.failed == 0 && self.problems.is_empty()
    }

    pub fn skipped(&self) -> usize {
        self.skips.len()
    }

    /// The boot.csv header and row.
    pub const CSV_HEADER: &'static str = "boot,config,release,start_s,end_s,qemu_s,passed,failed,skipped,failing_findings,lost_events,fds_after,rss_after_kib,problems";

    pub fn csv_line(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(String::new, |n| n.to_string());
        format!(
            "{},{},{},{:.1},{:.1},{:.1},{},{},{},{},{},{},{},{}",
            self.boot,
            self.config,
            self.release,
            self.start_s,
            self.end_s,
            self.qemu_secs,
            self.passed,
            self.failed,
            self.skipped(),
            self.failing_findings,
            opt(self.lost_events),
            opt(self.fds_after),
            opt(self.rss_after_kib),
            self.problems.len()
        )
    }
}

/// The top-level tests the guest skipped, each as `name: reason`, the
/// reason being the KTAP directive after `SKIP`: a boot's skip count alone
/// does not say which coverage it lost.
pub fn skips(report: &Report) -> Vec<String> {
    report
        .results
        .iter()
        .filter(|t| t.status == Status::Skip)
        .map(|t| {
            let why = t.directive.as_deref().unwrap_or("");
            let why = why.strip_prefix("SKIP").unwrap_or(why).trim();
            if why.is_empty() {
                t.name.clone()
            } else {
                format!("{}: {why}", t.name)
            }
        })
        .collect()
}

/// Findings the suite counts against the kernel or the device: every
/// finding of a scenario that failed, and `stale` and `freed` findings
/// anywhere (always a bug, README "Judging findings"). R2-R4 of a passing
/// scenario are the normal flush window and R1 reads the suite tolerates
/// (ksm_merge on 6.1) do not count.
pub fn failing_findings(report: &Report) -> u64 {
    report
        .results
        .iter()
        .filter_map(|t| t.amdvi.as_ref().map(|a| (t.status, a)))
        .map(|(status, a)| {
            let always = a.stale.unwrap_or(0) + a.freed.unwrap_or(0);
            if status == Status::Fail {
                always + [a.r1, a.r2, a.r3, a.r4].iter().flatten().sum::<u64>()
            } else {
                always
            }
        })
        .sum()
}

/// Event and PPR log entries dropped, from the daemon's statistics (summed
/// over its connections).
pub fn dropped_entries(stats: &serde_json::Value) -> Option<u64> {
    let c = stats.get("counters")?;
    Some(c.get("events_dropped")?.as_u64()? + c.get("ppr_dropped")?.as_u64()?)
}

/// Connections the daemon has ended, from its statistics.
pub fn connections(stats: &serde_json::Value) -> Option<u64> {
    stats.get("connections")?.as_u64()
}

/// The judgement of a soak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakVerdict {
    pub boots: usize,
    /// Boots whose suite did not pass.
    pub failed_boots: Vec<u32>,
    pub failing_findings: u64,
    pub lost_events: u64,
    /// Descriptors after the first and after the last boot's disconnect.
    pub fds_first: Option<u64>,
    pub fds_last: Option<u64>,
    /// Least and most over every boot's disconnect.
    pub fds_range: Option<(u64, u64)>,
    pub leaked_fds: Option<i64>,
    /// RSS of the first sample (the idle daemon), after the first and the
    /// last boot's disconnect, and the largest seen.
    pub rss_start_kib: Option<u64>,
    pub rss_first_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    /// What failed, one phrase each; empty when the soak passed.
    pub failures: Vec<String>,
}

/// A boot as "boot 4 (6.1 4-level)".
fn name(b: &BootRecord) -> String {
    format!("boot {} ({})", b.boot, b.config)
}

/// Boot numbers as "4, 7, 9" (at most five, then "and N more").
fn list(boots: &[u32]) -> String {
    let mut s: Vec<String> = boots.iter().take(5).map(u32::to_string).collect();
    if boots.len() > 5 {
        s.push(format!("and {} more", boots.len() - 5));
    }
    s.join(", ")
}

/// Judges the soak. `end_problems` are the soak's own findings outside any
/// boot (the daemon died or ended badly, a connection count that does not
/// match the boots).
pub fn judge(boots: &[BootRecord], samples: &[Sample], end_problems: &[String]) -> SoakVerdict {
    let mut failures = Vec::new();
    if boots.len() < 2 {
        failures.push(format!(
            "only {} boot(s): the fd comparison needs at least 2 (a longer DURATION)",
            boots.len()
        ));
    }
    let failed: Vec<&BootRecord> = boots.iter().filter(|b| !b.passed_all()).collect();
    if let Some(first) = failed.first() {
        let why = if first.failed > 0 {
            format!("{} scenario(s) failed", first.failed)
        } else {
            first.problems.first().cloned().unwrap_or_default()
        };
        let nums: Vec<u32> = failed.iter().map(|b| b.boot).collect();
        failures.push(if failed.len() == 1 {
            format!("{}: {why}", name(first))
        } else {
            format!(
                "{} boots failed ({}; first {}: {why})",
                failed.len(),
                list(&nums),
                name(first)
            )
        });
    }
    let failing_findings: u64 = boots.iter().map(|b| b.failing_findings).sum();
    if failing_findings > 0 {
        let nums: Vec<u32> = boots
            .iter()
            .filter(|b| b.failing_findings > 0)
            .map(|b| b.boot)
            .collect();
        failures.push(format!(
            "{failing_findings} failing finding(s) (boot {})",
            list(&nums)
        ));
    }
    let lost_events: u64 = boots.iter().filter_map(|b| b.lost_events).sum();
    if lost_events > 0 {
        let nums: Vec<u32> = boots
            .iter()
            .filter(|b| b.lost_events.unwrap_or(0) > 0)
            .map(|b| b.boot)
            .collect();
        failures.push(format!(
            "{lost_events} lost event(s) (boot {})",
            list(&nums)
        ));
    }
    let unknown: Vec<u32> = boots
        .iter()
        .filter(|b| b.lost_events.is_none())
        .map(|b| b.boot)
        .collect();
    if !unknown.is_empty() {
        failures.push(format!(
            "lost events unknown: no daemon statistics after boot {}",
            list(&unknown)
        ));
    }

    let fds_first = boots.first().and_then(|b| b.fds_after);
    let fds_last = boots.last().and_then(|b| b.fds_after);
    let fd_values: Vec<u64> = boots.iter().filter_map(|b| b.fds_after).collect();
    let fds_range = fd_values
        .iter()
        .min()
        .zip(fd_values.iter().max())
        .map(|(a, b)| (*a, *b));
    let leaked_fds = match (fds_first, fds_last) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    match (boots.first(), boots.last(), leaked_fds) {
        (_, _, Some(0)) | (None, _, _) => {}
        (Some(first), Some(last), Some(n)) => failures.push(format!(
            "{n} leaked fd(s) ({} after {}'s disconnect, {} after {}'s)",
            fds_first.unwrap_or(0),
            name(first),
            fds_last.unwrap_or(0),
            name(last)
        )),
        (Some(first), Some(last), None) => failures.push(format!(
            "no fd count after the disconnect of {}",
            if fds_first.is_none() {
                name(first)
            } else {
                name(last)
            }
        )),
        (Some(_), None, _) => unreachable!("a first boot implies a last"),
    }
    if samples.is_empty() {
        failures.push("no RSS/fd samples of the daemon".to_string());
    }
    failures.extend(end_problems.iter().cloned());

    let rss_max_kib = samples
        .iter()
        .map(|s| s.rss_kib)
        .chain(boots.iter().filter_map(|b| b.rss_after_kib))
        .max();
    SoakVerdict {
        boots: boots.len(),
        failed_boots: failed.iter().map(|b| b.boot).collect(),
        failing_findings,
        lost_events,
        fds_first,
        fds_last,
        fds_range,
        leaked_fds,
        rss_start_kib: samples.first().map(|s| s.rss_kib),
        rss_first_kib: boots.first().and_then(|b| b.rss_after_kib),
        rss_end_kib: boots.last().and_then(|b| b.rss_after_kib),
        rss_max_kib,
        failures,
    }
}

/// "4m03s", "1h02m07s", "45s".
pub fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// KiB as "12.3 MiB".
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "-".to_string(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

impl SoakVerdict {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The closing line: what passed, or every failure in one line.
    pub fn closing_line(&self, secs: f64) -> String {
        if self.passed() {
            format!(
                "amdvi-run: soak passed: {} boots in {}, 0 failing findings, 0 lost events, 0 leaked fds ({} fds after the first and the last disconnect)",
                self.boots,
                hms(secs),
                self.fds_last.unwrap_or(0)
            )
        } else {
            format!("amdvi-run: soak FAILED: {}", self.failures.join("; "))
        }
    }

    /// The descriptor and memory lines under the table.
    pub fn figures(&self) -> String {
        let n = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        let range = self
            .fds_range
            .map_or_else(|| "-".to_string(), |(a, b)| format!("{a}..{b}"));
        let growth = match (self.rss_first_kib, self.rss_end_kib) {
            (Some(a), Some(b)) => {
                format!(", {:+.1} MiB since boot 1", (b as f64 - a as f64) / 1024.0)
            }
            _ => String::new(),
        };
        format!(
            "daemon fds after a disconnect: first boot {}, last boot {} (leaked {}), range {range}\n\
             daemon RSS: start {}, after boot 1 {}, end {}{growth}, max {}\n",
            n(self.fds_first),
            n(self.fds_last),
            self.leaked_fds
                .map_or_else(|| "-".to_string(), |l| l.to_string()),
            mib(self.rss_start_kib),
            mib(self.rss_first_kib),
            mib(self.rss_end_kib),
            mib(self.rss_max_kib),
        )
    }
}

/// The summary table: one row per configuration, in the order first booted.
pub fn table(boots: &[BootRecord]) -> String {
    let header = [
        "config",
        "release",
        "boots",
        "passed",
        "failed",
        "skipped",
        "failing findings",
        "lost events",
        "fds after",
        "QEMU s (mean)",
    ];
    let mut order: Vec<(&str, &str)> = Vec::new();
    for b in boots {
        if !order.contains(&(b.config.as_str(), b.release.as_str())) {
            order.push((&b.config, &b.release));
        }
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (config, release) in order {
        let these: Vec<&BootRecord> = boots
            .iter()
            .filter(|b| b.config == config && b.release == release)
            .collect();
        let fds: Vec<u64> = these.iter().filter_map(|b| b.fds_after).collect();
        let fds = match (fds.iter().min(), fds.iter().max()) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => "-".to_string(),
        };
        let lost = if these.iter().any(|b| b.lost_events.is_none()) {
            "?".to_string()
        } else {
            these
                .iter()
                .filter_map(|b| b.lost_events)
                .sum::<u64>()
                .to_string()
        };
        let bad = these.iter().filter(|b| !b.passed_all()).count();
        rows.push(vec![
            config.to_string(),
            release.to_string(),
            if bad > 0 {
                format!("{} ({bad} failed)", these.len())
            } else {
                these.len().to_string()
            },
            these.iter().map(|b| b.passed).sum::<usize>().to_string(),
            these.iter().map(|b| b.failed).sum::<usize>().to_string(),
            these.iter().map(|b| b.skipped()).sum::<usize>().to_string(),
            these
                .iter()
                .map(|b| b.failing_findings)
                .sum::<u64>()
                .to_string(),
            lost,
            fds,
            format!(
                "{:.1}",
                these.iter().map(|b| b.qemu_secs).sum::<f64>() / these.len() as f64
            ),
        ]);
    }
    crate::report::text_table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ktap;

    fn boot(n: u32, fds: u64) -> BootRecord {
        BootRecord {
            boot: n,
            config: if n % 2 == 1 {
                "6.12 5-level"
            } else {
                "6.1 4-level"
            }
            .to_string(),
            release: if n % 2 == 1 { "6.12.1" } else { "6.1.0-1" }.to_string(),
            start_s: 30.0 * f64::from(n - 1),
            end_s: 30.0 * f64::from(n),
            qemu_secs: 12.0,
            passed: 32,
            failed: 0,
            skips: Vec::new(),
            failing_findings: 0,
            lost_events: Some(0),
            fds_after: Some(fds),
            rss_after_kib: Some(10_000 + u64::from(n)),
            problems: Vec::new(),
        }
    }

    fn samples() -> Vec<Sample> {
        [
            (0.0, 0, 4000, 9),
            (2.0, 1, 190_000, 30),
            (4.0, 2, 12_000, 9),
        ]
        .map(|(elapsed_s, boot, rss_kib, fds)| Sample {
            elapsed_s,
            boot,
            rss_kib,
            fds,
        })
        .to_vec()
    }

    #[test]
    fn skips_name_each_skipped_scenario_with_its_reason() {
        let r = ktap::parse(
            "KTAP version 1\n1..3\nok 1 a\nok 2 uffd_move # SKIP UFFDIO_MOVE needs 6.8\nok 3 thp_split # SKIP\n",
        );
        assert_eq!(skips(&r), ["uffd_move: UFFDIO_MOVE needs 6.8", "thp_split"]);
    }

    #[test]
    fn a_clean_soak_passes_with_its_figures() {
        let boots: Vec<BootRecord> = (1..=4).map(|n| boot(n, 9)).collect();
        let v = judge(&boots, &samples(), &[]);
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(
            (v.fds_first, v.fds_last, v.leaked_fds),
            (Some(9), Some(9), Some(0))
        );
        assert_eq!(v.rss_start_kib, Some(4000));
        assert_eq!(v.rss_first_kib, Some(10_001));
        assert_eq!(v.rss_end_kib, Some(10_004));
        assert_eq!(v.rss_max_kib, Some(190_000));
        assert!(
            v.closing_line(301.0)
                .starts_with("amdvi-run: soak passed: 4 boots in 5m01s"),
            "{}",
            v.closing_line(301.0)
        );
        let f = v.figures();
        assert!(
            f.contains("first boot 9, last boot 9 (leaked 0), range 9..9"),
            "{f}"
        );
        assert!(f.contains("max 185.5 MiB"), "{f}");
    }

    #[test]
    fn a_leaked_fd_fails_and_a_passing_wobble_does_not() {
        let mut boots: Vec<BootRecord> = (1..=4).map(|n| boot(n, 9)).collect();
        // A count that differs in between but comes back is not a leak.
        boots[1].fds_after = Some(10);
        let v = judge(&boots, &samples(), &[]);
        assert!(v.passed(), "{:?}", v.failures);
        assert_eq!(v.fds_range, Some((9, 10)));
        boots[3].fds_after = Some(11);
        let v = judge(&boots, &samples(), &[]);
        assert_eq!(v.leaked_fds, Some(2));
        assert_eq!(
            v.failures,
            ["2 leaked fd(s) (9 after boot 1 (6.12 5-level)'s disconnect, 11 after boot 4 (6.1 4-level)'s)"]
        );
        assert!(v
            .closing_line(1.0)
            .starts_with("amdvi-run: soak FAILED: 2 leaked fd(s)"));
        // Fewer is as wrong as more: the first count was not at rest.
        boots[3].fds_after = Some(8);
        assert_eq!(judge(&boots, &samples(), &[]).leaked_fds, Some(-1));
        assert!(!judge(&boots, &samples(), &[]).passed());
        // A count that could not be read is not a pass.
        boots[3].fds_after = None;
        let v = judge(&boots, &samples(), &[]);
        assert_eq!(
            v.failures,
            ["no fd count after the disconnect of boot 4 (6.1 4-level)"]
        );
    }

    #[test]
    fn one_boot_is_not_a_soak() {
        let v = judge(&[boot(1, 9)], &samples(), &[]);
        assert!(!v.passed());
        assert!(
            v.failures[0].starts_with("only 1 boot(s)"),
            "{:?}",
            v.failures
        );
        let v = judge(&[], &[], &[]);
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
    }

    #[test]
    fn failed_boots_findings_and_lost_events_each_fail() {
        let base: Vec<BootRecord> = (1..=3).map(|n| boot(n, 9)).collect();
        let mut b = base.clone();
        b[1].failed = 1;
        b[1].passed = 31;
        let v = judge(&b, &samples(), &[]);
        assert_eq!(v.failures, ["boot 2 (6.1 4-level): 1 scenario(s) failed"]);
        assert_eq!(v.failed_boots, [2]);
        b[2].problems
            .push("timeout: QEMU and the daemon were killed".into());
        let v = judge(&b, &samples(), &[]);
        assert_eq!(
            v.failures,
            ["2 boots failed (2, 3; first boot 2 (6.1 4-level): 1 scenario(s) failed)"]
        );

        let mut b = base.clone();
        b[0].failing_findings = 3;
        b[2].failing_findings = 1;
        let v = judge(&b, &samples(), &[]);
        assert_eq!(v.failures, ["4 failing finding(s) (boot 1, 3)"]);

        let mut b = base.clone();
        b[1].lost_events = Some(5);
        let v = judge(&b, &samples(), &[]);
        assert_eq!(v.lost_events, 5);
        assert_eq!(v.failures, ["5 lost event(s) (boot 2)"]);
        b[1].lost_events = None;
        let v = judge(&b, &samples(), &[]);
        assert_eq!(
            v.failures,
            ["lost events unknown: no daemon statistics after boot 2"]
        );

        let v = judge(
            &base,
            &[],
            &["daemon: exited during the run (killed by signal 7 (SIGBUS))".into()],
        );
        assert_eq!(
            v.failures,
            [
                "no RSS/fd samples of the daemon",
                "daemon: exited during the run (killed by signal 7 (SIGBUS))"
            ]
        );
    }

    #[test]
    fn failing_findings_are_those_the_suite_fails_on_plus_stale_and_freed() {
        let r = ktap::parse(
            "KTAP version 1\n1..3\n\
# amdvi-result: name=a result=pass accesses=9 r1=2 r2=4 r3=800 r4=1 stale=0 freed=0 ms=1\nok 1 a\n\
# amdvi-result: name=b result=fail accesses=9 r1=3 r2=0 r3=5 r4=0 stale=1 freed=0 ms=1\nnot ok 2 b\n\
# amdvi-result: name=c result=pass accesses=9 r1=0 r2=0 r3=0 r4=0 stale=0 freed=2 ms=1\nok 3 c\n",
        );
        // a: none (R1 reads tolerated, R2-R4 in the window); b: 3+5+1; c: freed 2.
        assert_eq!(failing_findings(&r), 11);
        let clean = ktap::parse(
            "KTAP version 1\n1..1\n# amdvi-result: name=a result=pass accesses=9 r1=0 r2=0 r3=9 r4=0 stale=0 ms=1\nok 1 a\n",
        );
        assert_eq!(failing_findings(&clean), 0);
    }

    #[test]
    fn statistics_fields() {
        let s: serde_json::Value = serde_json::from_str(
            r#"{"daemon":"vhost-device-amdvi","connections":3,"accesses":10,
                "counters":{"requests":5,"events_dropped":2,"ppr_dropped":1}}"#,
        )
        .unwrap();
        assert_eq!(dropped_entries(&s), Some(3));
        assert_eq!(connections(&s), Some(3));
        let old: serde_json::Value =
            serde_json::from_str(r#"{"connections":1,"counters":{"events_dropped":0}}"#).unwrap();
        assert_eq!(
            dropped_entries(&old),
            None,
            "a counter missing is unknown, not 0"
        );
    }

    #[test]
    fn the_table_groups_by_configuration() {
        let mut boots: Vec<BootRecord> = (1..=4).map(|n| boot(n, 9)).collect();
        boots[2].failed = 1;
        boots[2].passed = 31;
        boots[3].fds_after = Some(10);
        let t = table(&boots);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        let cells = |l: &str| {
            l.split(" | ")
                .map(str::trim)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(lines[2]),
            [
                "6.12 5-level",
                "6.12.1",
                "2 (1 failed)",
                "63",
                "1",
                "0",
                "0",
                "0",
                "9",
                "12.0"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "6.1 4-level",
                "6.1.0-1",
                "2",
                "64",
                "0",
                "0",
                "0",
                "0",
                "9..10",
                "12.0"
            ]
        );
        assert_eq!(hms(45.4), "45s");
        assert_eq!(hms(3727.0), "1h02m07s");
        assert_eq!(mib(Some(2048)), "2.0 MiB");
    }
}
