//! Tests of the parser: every step and declaration, and its errors.

use super::*;
use crate::script::ast::UnknownKind;

const COW: &str = "\
# a comment
title    COW, correct order
notifier secondary
page P1 = 1
map  A -> P1 ro          # initial
dev  translate A
cpu  copy P1 -> P2
cpu  clear A
cpu  secondary A
cpu  set A -> P2 rw dirty
cpu  write A 2
dev  loop 2: read A; translate A
expect safe
expect redundant inv#1   # a comment after inv#1
";

fn err(text: &str) -> ParseError {
    parse("t.amdvi", text).expect_err("should not parse")
}

#[test]
fn parses_a_full_script() {
    let s = parse("cow.amdvi", COW).unwrap();
    assert_eq!(s.title.as_deref(), Some("COW, correct order"));
    assert_eq!(s.notifier, Notifier::parse("secondary").unwrap());
    assert_eq!(s.pages, vec![("P1".into(), 1), ("P2".into(), 0)]);
    assert_eq!(s.vas, vec![("A".into(), AUTO_VA_BASE)]);
    assert_eq!(s.init_maps.len(), 1);
    assert_eq!(
        s.devices,
        vec![Device {
            name: "dev".into(),
            devid: AUTO_DEVID
        }]
    );
    assert_eq!(s.lines.len(), 7);
    assert_eq!(s.lines[0].line, 6);
    let Step::Dev { ops, .. } = &s.lines[6].step else {
        panic!("device line")
    };
    assert_eq!(ops.len(), 4, "loop 2 of two ops is unrolled");
    assert_eq!(
        s.lines[3].step,
        Step::Cpu(CpuOp::Hook {
            hook: Hook::Secondary,
            range: Range::Pages {
                first: AUTO_VA_BASE,
                last: AUTO_VA_BASE
            }
        })
    );
    assert_eq!(s.expect, Some(Expect::Safe));
    assert_eq!(s.expect_redundant, Some(vec![1]));
    assert_eq!(s.words, vec![AUTO_VA_BASE]);
}

#[test]
fn all_step_forms() {
    let s = parse(
        "x",
        "va B 0x7f00_0000_0000\n\
         device dev1 devid 0x20\n\
         fault atc_invalidate:drop\n\
         fail-on R2 R3\n\
         allow R1\n\
         pasid 3\n\
         retries 2\n\
         cpu map B -> P rw\n\
         cpu clear B migration\n\
         cpu clear B swap\n\
         cpu protect B ro\n\
         cpu free P\n\
         cpu reuse P = 0x55\n\
         cpu reuse P\n\
         cpu read B+8\n\
         cpu write B+8 = 3\n\
         cpu identical P Q\n\
         cpu inv iommu B..C pasid 4 nowait\n\
         cpu inv atc all\n\
         cpu inv both B\n\
         cpu sync\n\
         cpu start all\n\
         cpu end B..C\n\
         cpu note PT lock released: page held\n\
         dev1 write B = 7\n\
         expect unsafe R1 lost-write\n\
         expect-literal safe\n",
    )
    .unwrap();
    assert_eq!(s.vas[0], ("B".into(), 0x7f00_0000_0000));
    assert_eq!(
        s.devices,
        vec![Device {
            name: "dev1".into(),
            devid: 0x20
        }]
    );
    assert_eq!(s.faults.len(), 1);
    assert_eq!(s.pasid, 3);
    assert_eq!(s.retries, 2);
    assert!(s.failing().contains(&Kind::R2) && s.failing().contains(&Kind::R1));
    let Step::Cpu(CpuOp::Inv {
        target,
        range,
        pasid,
        wait,
    }) = &s.lines[10].step
    else {
        panic!("{:?}", s.lines[10])
    };
    assert_eq!((*target, *pasid, *wait), (Target::Iommu, Some(4), false));
    assert_eq!(
        *range,
        Range::Pages {
            first: 0x7f00_0000_0000,
            last: AUTO_VA_BASE
        }
    );
    assert_eq!(
        s.lines[16].step,
        Step::Cpu(CpuOp::Note("PT lock released: page held".into()))
    );
    assert_eq!(
        s.expect,
        Some(Expect::Unsafe(vec![Kind::R1, Kind::LostWrite]))
    );
    assert_eq!(s.expect_literal, Some(Expect::Safe));
    assert_eq!(s.words, vec![0x7f00_0000_0000, 0x7f00_0000_0008]);
}

#[test]
fn errors_name_file_line_and_what_was_expected() {
    let e = err("map A -> P1 ro\ncpu clear A\ncpu set A P2 rw\n");
    assert_eq!((e.line, e.col), (3, Some(11)));
    assert_eq!(
        e.to_string(),
        "t.amdvi:3:11: expected `->` after the VA, found `P2`"
    );
    let cases: &[(&str, usize, &str)] = &[
        ("cpu clear A\ncpu frobnicate A\n", 2, "expected a CPU step"),
        (
            "cpu map A -> P1 rx\n",
            1,
            "expected permissions `ro` or `rw`, found `rx`",
        ),
        ("cpu clear A\nexpect unsafe R9\n", 2, "expected a finding"),
        (
            "cpu clear A\nexpect unsafe\n",
            2,
            "expected the finding that makes it unsafe",
        ),
        (
            "cpu clear A\nexpect maybe\n",
            2,
            "expected `safe` or `unsafe`, found `maybe`",
        ),
        (
            "notifier sometimes\ncpu clear A\n",
            1,
            "expected a notifier mode",
        ),
        (
            "cpu clear A\ndev loop 2 read A\n",
            2,
            "expected `:` after the loop count",
        ),
        (
            "cpu clear A\ndev loop 99: read A\n",
            2,
            "expected a loop count 1..=16",
        ),
        ("cpu clear A\ndev jump A\n", 2, "expected a device step"),
        (
            "cpu clear A\ndev write A\n",
            2,
            "expected a value, found end of line",
        ),
        ("cpu write A zz\n", 1, "expected a number, found `zz`"),
        ("cpu clear A\nmap A -> P1 ro\n", 2, "before the first step"),
        ("title nothing to do\n", 1, "expected at least one step"),
        (
            "fault atc_invalidate:explode\ncpu clear A\n",
            1,
            "expected fault action drop, fail, defer",
        ),
        (
            "fault nowhere:drop\ncpu clear A\n",
            1,
            "unknown fault point",
        ),
        (
            "device dev0 devid 0x10\ndevice dev1 devid 0x10\n",
            2,
            "already used",
        ),
        (
            "cpu inv both A wait\n",
            1,
            "expected `pasid N`, `nowait` or end of line, found `wait`",
        ),
        ("cpu inv some A\n", 1, "expected `iommu`, `atc` or `both`"),
        (
            "cpu clear A B\n",
            1,
            "expected `swap`, `migration` or end of line",
        ),
        ("cpu read A+3\n", 1, "8-byte aligned offset"),
        (
            "cpu clear A\nexpect redundant 2\n",
            2,
            "expected `inv#N` or `none`",
        ),
        ("cpu clear A\nwhatever\n", 2, "expected a declaration"),
        ("cpu clear A\ncpu clear A $\n", 2, "found `$`"),
        ("pasid 9999\ncpu clear A\n", 1, "below 512"),
        ("cpu clear A\nexpect safe\nexpect safe\n", 3, "one `expect"),
    ];
    for (text, line, msg) in cases {
        let e = err(text);
        assert_eq!(e.line, *line, "{text:?}: {e}");
        let kind = e.kind.to_string();
        assert!(kind.contains(msg), "{text:?}: got `{e}`, want `{msg}`");
        let at = match e.col {
            Some(col) => format!("t.amdvi:{line}:{col}: "),
            None => format!("t.amdvi:{line}: "),
        };
        assert_eq!(e.to_string(), format!("{at}{kind}"));
    }
}

#[test]
fn errors_point_at_the_column() {
    let cases: &[(&str, Option<usize>, &str)] = &[
        // The token found instead.
        ("cpu clear A\ncpu clear A $\n", Some(13), "found `$`"),
        ("cpu frob A\n", Some(5), "found `frob`"),
        ("  cpu  map A -> P1 rx\n", Some(20), "found `rx`"),
        // The end of the line, comment stripped.
        (
            "cpu clear A\ndev write A   # v?\n",
            Some(12),
            "found end of line",
        ),
        (
            "title   \ncpu clear A\n",
            Some(6),
            "expected a title, found end of line",
        ),
        // The word a value or name was wrong in.
        ("pasid 9999\ncpu clear A\n", Some(7), "found 9999"),
        ("cpu read A+3\n", Some(10), "found `0x3`"),
        (
            "device dev0 devid 0x10\ndevice dev1 devid 0x10\n",
            Some(19),
            "0x10 is already used",
        ),
        (
            "cpu clear A\nmap A -> P ro\n",
            Some(1),
            "before the first step",
        ),
        (
            "fault nowhere:drop\ncpu clear A\n",
            Some(7),
            "unknown fault point",
        ),
        // About the script as a whole.
        ("title t\n", None, "expected at least one step"),
    ];
    for (text, col, msg) in cases {
        let e = err(text);
        assert_eq!(e.col, *col, "{text:?}: {e}");
        assert!(
            e.to_string().contains(msg),
            "{text:?}: got `{e}`, want `{msg}`"
        );
    }
}

#[test]
fn error_kinds_are_typed() {
    let e = err("cpu clear A\ncpu clear A $\n");
    assert_eq!(
        e.kind,
        ParseErrorKind::Lex(LexError {
            col: 13,
            found: '$'
        })
    );
    let e = err("cpu map A -> P1 rx\n");
    assert_eq!(
        e.kind,
        ParseErrorKind::Expected {
            what: "permissions `ro` or `rw`".into(),
            found: Unexpected::Word("rx".into()),
        }
    );
    assert_eq!(err("title t\n").kind, ParseErrorKind::NoStep);
    let e = err("cpu clear A\nexpect unsafe R1 R9\n");
    assert_eq!(e.kind, ParseErrorKind::Kind(UnknownKind("R9".into())));
    assert_eq!(
        e.to_string(),
        "t.amdvi:2:18: expected a finding (R1, R2, R3, R4, stale-entry, lost-write, \
         stale-read, freed-write, freed-read), found `R9`"
    );
    let e = err("fault atc_invalidate:explode\ncpu clear A\n");
    assert_eq!(
        e.kind,
        ParseErrorKind::Fault(FaultSpecError::Action("explode".into()))
    );
}

#[test]
fn notifier_modes_match_the_guest_module() {
    for m in Notifier::MODES {
        let n = Notifier::parse(m).unwrap();
        if m != "auto" {
            assert_eq!(n.name(), m);
        }
    }
    let e = Notifier::parse("end_only").unwrap();
    assert!(e.enabled(Hook::End) && !e.enabled(Hook::Start) && !e.enabled(Hook::Secondary));
}

#[test]
fn fault_specs() {
    let r = parse_fault("atc_invalidate:drop").unwrap();
    assert_eq!(
        r,
        FaultRule::new(FaultPoint::AtcInvalidate, FaultAction::Drop)
    );
    assert_eq!(
        parse_fault("atc_invalidate"),
        Err(FaultSpecError::Form("atc_invalidate".into()))
    );
    assert!(matches!(
        parse_fault("nowhere:drop"),
        Err(FaultSpecError::Point(_))
    ));
    assert!(parse_fault("iotlb_invalidate:fail").is_ok());
}
