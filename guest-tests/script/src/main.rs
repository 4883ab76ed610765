//! amdvi-script FILE...: run ordering scripts' literal orders on the real
//! device in the guest and print KTAP (docs/guest-conventions.md).
//! Exit status: 0 every script as expected, 1 a failure, 4 all skipped,
//! 2 usage.

use std::process::ExitCode;
use std::time::Instant;

use amdvi_script::guest::{Counts, Guest};
use amdvi_script::{judge, ktap_test, uapi, Outcome};
use amdvi_sim::machine::Program;

fn main() -> ExitCode {
    let mut dev = uapi::DEV_PATH.to_string();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dev" => match args.next() {
                Some(d) => dev = d,
                None => {
                    eprintln!("amdvi-script: --dev needs a path");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: amdvi-script [--dev /dev/amdvi] SCRIPT.amdvi...");
                return ExitCode::SUCCESS;
            }
            _ => files.push(a),
        }
    }
    if files.is_empty() {
        eprintln!("usage: amdvi-script [--dev /dev/amdvi] SCRIPT.amdvi...");
        return ExitCode::from(2);
    }
    println!("KTAP version 1");
    println!("1..{}", files.len());
    let (mut failed, mut skipped) = (0, 0);
    for (i, path) in files.iter().enumerate() {
        let t0 = Instant::now();
        let s = match amdvi_sim::load(path) {
            Ok(s) => s,
            Err(e) => {
                // A malformed script: a failed test with the parser's words.
                let name = amdvi_script::test_name(path);
                println!("# error: {e}");
                println!("# amdvi-result: name={name} result=fail accesses=0 r1=0 r2=0 r3=0 r4=0 stale=0 ms=0");
                println!("not ok {} {name}", i + 1);
                failed += 1;
                continue;
            }
        };
        let title = s.title.clone().unwrap_or_default();
        let (text, o) = match Guest::open(&dev, &s) {
            Err(why) => {
                let o = Outcome::Skip(why);
                let header = format!("amdvi-script: {path}: {title}");
                (
                    ktap_test(i + 1, &s, &header, None, &o, &Counts::default(), 0),
                    o,
                )
            }
            Ok(g) => {
                let header = format!(
                    "amdvi-script: {path}: {title} (pasid {}, {}-level private table, endpoints {})",
                    s.pasid,
                    g.levels,
                    g.devids
                        .iter()
                        .map(|d| format!("{d:#06x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let prog = Program::new(&s, &[]);
                let (l, g) = amdvi_sim::literal_on(&s, &prog, g);
                let o = judge(&s, &l, g.error.clone());
                let ms = t0.elapsed().as_millis() as u64;
                // Closing the device unbinds and frees the table.
                let counts = g.counts;
                drop(g);
                (ktap_test(i + 1, &s, &header, Some(&l), &o, &counts, ms), o)
            }
        };
        print!("{text}");
        match o {
            Outcome::Skip(_) => skipped += 1,
            Outcome::Ran { matches: false, .. } => failed += 1,
            Outcome::Ran { .. } => {}
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else if skipped == files.len() {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    }
}
