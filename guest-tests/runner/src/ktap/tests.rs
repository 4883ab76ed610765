// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the KTAP parser: flat and nested documents, plans, the
//! `# amdvi-result:` and `# Totals:` lines, crashes and console noise.

use super::*;

/// Some error of `r` contains `needle` (all of them are shown when none does).
#[track_caller]
fn assert_error(r: &Report, needle: &str) {
    assert!(
        r.errors.iter().any(|e| e.contains(needle)),
        "{needle:?} not among {:?}",
        r.errors
    );
}

/// Each top-level result's name and status, in order.
fn statuses(r: &Report) -> Vec<(&str, Status)> {
    r.results
        .iter()
        .map(|t| (t.name.as_str(), t.status))
        .collect()
}

fn res(name: &str) -> String {
    format!("# amdvi-result: name={name} result=pass accesses=10 r1=0 r2=0 r3=0 r4=0 stale=0 ms=5")
}

#[test]
fn flat_pass_fail_skip() {
    let text = format!(
        "KTAP version 1\n1..3\n{}\nok 1 fork_cow\n{}\nnot ok 2 mprotect\n{}\nok 3 pri # SKIP no PRI here\n",
        res("fork_cow"),
        res("mprotect"),
        res("pri")
    );
    let r = parse(&text);
    assert!(r.version_seen);
    assert_eq!(r.plan, Some(3));
    assert_eq!(r.errors, Vec::<String>::new());
    let st = statuses(&r);
    assert_eq!(
        st,
        vec![
            ("fork_cow", Status::Pass),
            ("mprotect", Status::Fail),
            ("pri", Status::Skip)
        ]
    );
    assert_eq!(r.results[2].directive.as_deref(), Some("SKIP no PRI here"));
    assert_eq!(r.count(Status::Pass), 1);
    assert_eq!(r.count(Status::Fail), 1);
    assert_eq!(r.count(Status::Skip), 1);
}

#[test]
fn amdvi_result_fields() {
    let a = AmdviResult::parse(
        "name=x result=fail accesses=1234 r1=1 r2=2 r3=3 r4=4 stale=5 ms=67 future=yes",
    );
    assert_eq!(a.name.as_deref(), Some("x"));
    assert_eq!(a.result.as_deref(), Some("fail"));
    assert_eq!(
        (a.accesses, a.r1, a.r2, a.r3, a.r4, a.stale, a.ms),
        (
            Some(1234),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(67)
        )
    );
    assert_eq!(a.extra.get("future").map(String::as_str), Some("yes"));
    let r = parse(&format!("KTAP version 1\n1..1\n{}\nok 1 x\n", res("x")));
    assert_eq!(
        r.results[0].amdvi.as_ref().and_then(|a| a.accesses),
        Some(10)
    );
}

#[test]
fn nested_subtests() {
    let text = format!(
        "KTAP version 1\n\
         1..2\n\
         \x20 KTAP version 1\n\
         \x20 1..2\n\
         \x20 ok 1 repeat_1\n\
         \x20   KTAP version 1\n\
         \x20   1..1\n\
         \x20   not ok 1 deep\n\
         \x20 not ok 2 repeat_2\n\
         {}\n\
         not ok 1 fork_cow\n\
         {}\n\
         ok 2 plain\n",
        res("fork_cow"),
        res("plain")
    );
    let r = parse(&text);
    assert_eq!(r.errors, Vec::<String>::new());
    assert_eq!(r.results.len(), 2);
    let fc = &r.results[0];
    assert_eq!(fc.status, Status::Fail);
    assert_eq!(fc.subtests.len(), 2);
    assert_eq!(fc.subtests[0].name, "repeat_1");
    assert!(fc.subtests[0].subtests.is_empty());
    assert_eq!(fc.subtests[1].name, "repeat_2");
    assert_eq!(fc.subtests[1].subtests.len(), 1);
    assert_eq!(fc.subtests[1].subtests[0].name, "deep");
    assert_eq!(fc.subtests[1].subtests[0].status, Status::Fail);
    assert!(r.results[1].subtests.is_empty());
}

#[test]
fn subtest_plan_mismatch_is_reported() {
    let text = format!(
        "KTAP version 1\n1..1\n  KTAP version 1\n  1..3\n  ok 1 a\n{}\nok 1 t\n",
        res("t")
    );
    let r = parse(&text);
    assert_eq!(r.results[0].subtests.len(), 1);
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert!(r.errors[0].contains("1..3"), "{:?}", r.errors);
}

#[test]
fn missing_plan() {
    let r = parse(&format!("KTAP version 1\n{}\nok 1 a\n", res("a")));
    assert_eq!(r.plan, None);
    assert_eq!(r.results.len(), 1);
    assert_error(&r, "missing plan");
}

#[test]
fn fewer_results_than_planned() {
    let r = parse(&format!("KTAP version 1\n1..3\n{}\nok 1 a\n", res("a")));
    assert_error(&r, "plan 1..3 but 1");
}

#[test]
fn no_ktap_at_all() {
    let r = parse("[    0.000000] Linux version 6.12\nok this is not a test\n");
    assert!(!r.version_seen);
    assert!(r.results.is_empty());
    assert_eq!(r.errors, vec!["no KTAP output".to_string()]);
}

#[test]
fn garbage_and_kernel_messages_interleaved() {
    let text = format!(
        "[    0.512345] virtio-pci 0000:00:03.0: enabling device\r\n\
         amdvi-init: kernel 6.12, cpus=2\r\n\
         KTAP version 1\r\n\
         [    1.000001] random: crng init done\r\n\
         1..2\r\n\
         some stray output from a test program\r\n\
         {}\r\n\
         [    2.000000] amdvi_test: loading out-of-tree module taints kernel.\r\n\
         ok 1 a\r\n\
         \x20 [    2.1] indented kernel-ish garbage\r\n\
         \x20 more garbage that is not KTAP\r\n\
         {}\r\n\
         ok 2 b # SKIP\r\n\
         amdvi-exit: 0\r\n",
        res("a"),
        res("b")
    );
    let r = parse(&text);
    assert_eq!(r.errors, Vec::<String>::new());
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.results[0].status, Status::Pass);
    assert_eq!(r.results[1].status, Status::Skip);
    assert!(r.results[0].subtests.is_empty());
}

#[test]
fn ok_lines_before_the_document_are_ignored() {
    let text = format!(
        "ok 1 something the kernel said\nKTAP version 1\n1..1\n{}\nok 1 a\n",
        res("a")
    );
    let r = parse(&text);
    assert_eq!(r.results.len(), 1);
    assert_eq!(r.results[0].name, "a");
    assert_eq!(r.errors, Vec::<String>::new());
}

#[test]
fn numbering_and_missing_amdvi_line() {
    let r = parse("KTAP version 1\n1..2\nok 1 a\nok 3 b\n");
    assert_eq!(r.results.len(), 2);
    assert_error(&r, "numbered 3, expected 2");
    assert_error(&r, "`a` has no `# amdvi-result:`");
}

/// What the guest harness prints when a scenario's child dies on a
/// signal, another overruns its timeout inside its subtests, and the
/// suite goes on.
#[test]
fn crashed_and_timed_out_children_are_their_scenarios_failures() {
    let text = [
        "KTAP version 1",
        "1..3",
        "# stream 1 running; now dereferencing NULL on purpose",
        "# crash_selftest: the scenario's child killed by signal 11 (Segmentation fault)",
        "# amdvi-result: name=crash_selftest result=fail accesses=40 r1=0 r2=0 r3=0 r4=0 stale=0 ms=30",
        "not ok 1 crash_selftest",
        "  KTAP version 1",
        "  # Subtest: cow_fork",
        "  1..3",
        "  # amdvi-result: name=cow_fork.1 result=pass accesses=9 r1=0 r2=0 r3=0 r4=0 stale=0 ms=24",
        "  ok 1 cow_fork.1",
        "  # cow_fork.2: the scenario's child timed out after 240 s and was killed",
        "  # amdvi-result: name=cow_fork.2 result=fail accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0",
        "  not ok 2 cow_fork.2",
        "  # amdvi-result: name=cow_fork.3 result=skip accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0",
        "  ok 3 cow_fork.3 # SKIP the scenario's child ended in repeat 2",
        "# cow_fork: the scenario's child timed out after 240 s and was killed",
        "# amdvi-result: name=cow_fork result=fail accesses=9 r1=0 r2=0 r3=0 r4=0 stale=0 ms=240000",
        "not ok 2 cow_fork",
        "# amdvi-result: name=bind_basic result=pass accesses=9 r1=0 r2=0 r3=0 r4=0 stale=0 ms=20",
        "ok 3 bind_basic",
        "# Totals: pass:1 fail:2 xfail:0 xpass:0 skip:0 error:0",
    ]
    .join("\n");
    let r = parse(&text);
    assert_eq!(r.errors, Vec::<String>::new());
    let st = statuses(&r);
    assert_eq!(
        st,
        vec![
            ("crash_selftest", Status::Fail),
            ("cow_fork", Status::Fail),
            ("bind_basic", Status::Pass)
        ]
    );
    assert!(r.results[0]
        .diagnostics
        .iter()
        .any(|d| d.contains("killed by signal 11")));
    let subs: Vec<_> = r.results[1].subtests.iter().map(|t| t.status).collect();
    assert_eq!(subs, vec![Status::Pass, Status::Fail, Status::Skip]);
    assert_eq!(
        r.totals,
        Some(Totals {
            pass: 1,
            fail: 2,
            ..Totals::default()
        })
    );
}

#[test]
fn totals_must_agree_with_the_results() {
    let text = format!(
        "KTAP version 1\n1..1\n{}\nok 1 a\n# Totals: pass:0 fail:1 xfail:0 xpass:0 skip:0 error:0\n",
        res("a")
    );
    let r = parse(&text);
    assert_error(&r, "`# Totals:` says pass:0 fail:1");
    let r = parse(&format!(
        "KTAP version 1\n1..1\n{}\nok 1 a\n# Totals: pass:x\n",
        res("a")
    ));
    assert_error(&r, "unreadable");
}

#[test]
fn crash_inside_a_test() {
    let text = format!(
        "KTAP version 1\n1..2\n{}\nok 1 a\n  KTAP version 1\n  1..2\n  ok 1 sub\n[ 3.0] BUG: kernel NULL pointer dereference\n",
        res("a")
    );
    let r = parse(&text);
    assert_eq!(r.results.len(), 1);
    assert_error(&r, "output ends inside a test");
    assert_error(&r, "plan 1..2 but 1");
}

#[test]
fn events_are_emitted_for_top_level_only() {
    let mut p = Parser::new();
    assert_eq!(p.feed("KTAP version 1"), None);
    assert_eq!(p.feed("1..1"), Some(Event::Plan(1)));
    assert_eq!(p.feed("  KTAP version 1"), None);
    assert_eq!(p.feed("  1..1"), None);
    assert_eq!(p.feed("  ok 1 sub"), None);
    assert_eq!(p.feed(&res("top")), None);
    match p.feed("ok 1 top") {
        Some(Event::Result(t)) => {
            assert_eq!(t.name, "top");
            assert_eq!(t.subtests.len(), 1);
            assert_eq!(t.amdvi.as_ref().and_then(|a| a.ms), Some(5));
        }
        other => panic!("expected a result event, got {other:?}"),
    }
    let r = p.finish();
    assert_eq!(r.errors, Vec::<String>::new());
}

#[test]
fn classify_edge_cases() {
    assert_eq!(classify("1..0"), Line::Plan(0));
    assert_eq!(classify("1..4 # four"), Line::Plan(4));
    assert_eq!(classify("1..x"), Line::Other);
    assert_eq!(classify("okay 1 x"), Line::Other);
    assert_eq!(classify("ok 12abc"), Line::Other);
    assert_eq!(
        classify("ok 2 - dashed name"),
        Line::Result {
            ok: true,
            number: 2,
            name: "dashed name",
            directive: None
        }
    );
    assert_eq!(
        classify("not ok 5 # SKIP whole"),
        Line::Result {
            ok: false,
            number: 5,
            name: "",
            directive: Some("SKIP whole")
        }
    );
    assert_eq!(status_of(false, Some("SKIP x")), Status::Skip);
    assert_eq!(status_of(true, Some("skip")), Status::Skip);
    assert_eq!(status_of(false, Some("TODO later")), Status::Skip);
    assert_eq!(status_of(true, Some("XFAIL known")), Status::Pass);
    assert_eq!(status_of(false, None), Status::Fail);
    assert_eq!(classify("TAP version 13"), Line::Version);
    assert_eq!(classify("KTAP version one"), Line::Other);
}
