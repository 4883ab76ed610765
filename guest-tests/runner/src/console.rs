// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Classification of serial-console lines that are not KTAP: `/init`'s
//! progress lines, its final `amdvi-exit: N`, and kernel messages that mean
//! something went wrong (panic, BUG, WARNING, Oops, lockups, stalls).

/// What a console line means to the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleLine<'a> {
    /// `amdvi-init: ...` (the text after the prefix).
    Init(&'a str),
    /// `amdvi-exit: N`.
    Exit(i32),
    /// A kernel message reporting a bug or a hang (the whole line, trimmed).
    KernelProblem(&'a str),
    Other,
}

/// Markers of kernel problems. They are looked for anywhere in a line that is
/// not the suite's own output, because the kernel prefixes some of them
/// (`watchdog: BUG: soft lockup`, `rcu: INFO: ... detected stalls`) and
/// because a kernel message can start in the middle of a user-space line.
const PROBLEM_MARKERS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "WARNING:",
    "Oops",
    "general protection fault",
    "detected stalls",
    "blocked for more than",
];

/// Removes a printk timestamp (`[%5lu.%06lu] `, e.g. `[    1.234567] `).
pub fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_start();
    let stamp_ok = |stamp: &str| {
        let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
            return false;
        };
        !secs.is_empty()
            && secs.chars().all(|c| c.is_ascii_digit())
            && micros.len() == 6
            && micros.chars().all(|c| c.is_ascii_digit())
    };
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            if stamp_ok(&rest[..end]) {
                return rest[end + 1..].trim_start();
            }
        }
    }
    t
}

/// True for lines the suite or `/init` print: KTAP lines and `amdvi-` lines.
fn is_suite_line(t: &str) -> bool {
    t.starts_with('#')
        || t.starts_with("ok ")
        || t.starts_with("not ok ")
        || t.starts_with("KTAP version")
        || t.starts_with("1..")
        || t.starts_with("amdvi-init:")
}

pub fn classify(line: &str) -> ConsoleLine<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix("amdvi-init:") {
        return ConsoleLine::Init(rest.trim());
    }
    if let Some(rest) = t.strip_prefix("amdvi-exit:") {
        if let Ok(n) = rest.trim().parse::<i32>() {
            return ConsoleLine::Exit(n);
        }
    }
    let has_marker = |s: &str| PROBLEM_MARKERS.iter().any(|m| s.contains(m));
    if !is_suite_line(t) {
        if has_marker(strip_timestamp(t)) {
            return ConsoleLine::KernelProblem(t.trim_end());
        }
        return ConsoleLine::Other;
    }
    // The suite's own line: only a timestamped kernel message that broke into
    // it counts (`ok 3 name[   5.1] WARNING: ...`).
    for (i, _) in t.match_indices('[').filter(|&(i, _)| i > 0) {
        let rest = &t[i..];
        let msg = strip_timestamp(rest);
        if msg.len() < rest.len() && has_marker(msg) {
            return ConsoleLine::KernelProblem(rest.trim_end());
        }
    }
    ConsoleLine::Other
}

/// The paging mode `/init` reported (`paging=5-level`), if this is that line.
pub fn init_paging(init_text: &str) -> Option<u8> {
    let i = init_text.find("paging=")?;
    let rest = &init_text[i + "paging=".len()..];
    match rest.as_bytes().first() {
        Some(b'4') => Some(4),
        Some(b'5') => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_exit_lines() {
        assert_eq!(
            classify("amdvi-init: loaded virtio.ko\r"),
            ConsoleLine::Init("loaded virtio.ko")
        );
        assert_eq!(classify("amdvi-exit: 0"), ConsoleLine::Exit(0));
        assert_eq!(classify("amdvi-exit: 4\r\n"), ConsoleLine::Exit(4));
        assert_eq!(classify("amdvi-exit: x"), ConsoleLine::Other);
    }

    #[test]
    fn kernel_problems() {
        for l in [
            "[   12.345678] WARNING: CPU: 1 PID: 77 at mm/mmu_notifier.c:123 foo+0x1/0x2",
            "[    3.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "[    3.000001] Oops: 0002 [#1] PREEMPT SMP NOPTI",
            "[    3.1] Kernel panic - not syncing: Fatal exception",
            "[   30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [amdvi-tests:80]",
            "[   40.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[  150.0] INFO: task amdvi-tests:80 blocked for more than 120 seconds.",
            "Kernel panic - not syncing: No working init found.",
            "ok 1 abc[    3.000100] WARNING: CPU: 0 PID: 1 at x",
            "# amdvi-result: name=a[    5.000001] BUG: unable to handle page fault",
        ] {
            assert!(
                matches!(classify(l), ConsoleLine::KernelProblem(_)),
                "not detected: {l}"
            );
        }
    }

    #[test]
    fn ordinary_lines_are_not_problems() {
        for l in [
            "[    0.000000] Linux version 6.12.117+deb12-cloud-amd64",
            "[    2.0] amdvi_test: loading out-of-tree module taints kernel.",
            "# amdvi-result: name=warning_path result=pass accesses=1 r1=0 r2=0 r3=0 r4=0 stale=0 ms=1",
            "# WARNING: the suite's own diagnostic",
            "ok 3 detects_BUG: in names",
            "not ok 4 Oops_recovery",
            "amdvi-init: error: insmod failed",
            "# diag [1.0] mentions WARNING: without being the kernel",
        ] {
            assert!(!matches!(classify(l), ConsoleLine::KernelProblem(_)), "false positive: {l}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(strip_timestamp("[    1.234567] hello"), "hello");
        assert_eq!(strip_timestamp("[abc] hello"), "[abc] hello");
        assert_eq!(strip_timestamp("[1.0] hello"), "[1.0] hello");
        assert_eq!(strip_timestamp("[12345.000001] x"), "x");
        assert_eq!(strip_timestamp("plain"), "plain");
    }

    #[test]
    fn paging_line() {
        assert_eq!(
            init_paging("kernel 6.12, cpus=2, paging=5-level, numa_nodes=2"),
            Some(5)
        );
        assert_eq!(init_paging("paging=4-level"), Some(4));
        assert_eq!(init_paging("loaded virtio.ko"), None);
    }
}
