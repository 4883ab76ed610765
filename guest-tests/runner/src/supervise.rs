// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The supervisor of a run: starts the daemon, then QEMU, follows the serial
//! console (KTAP, the init's lines, kernel problems), enforces the timeouts,
//! stops both and returns what it observed. It judges nothing.
//!
//! The daemon's part ([`start_daemon`], [`stop_daemon`]) and one boot
//! against a running daemon ([`boot`]) are separate, so that a soak
//! (`crate::soak`) can boot many guests against one daemon process.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use crate::cli::Args;
use crate::console::{self, ConsoleLine};
use crate::error::{io_err, Error, Result};
use crate::ktap::{self, Event, Status};
use crate::plan::Plan;
use crate::qemu;
use crate::report::Observations;

/// How long the daemon may take to create its socket.
const DAEMON_START: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after the guest printed `amdvi-exit`.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
const DAEMON_STOP: Duration = Duration::from_secs(5);

/// What one boot produced.
#[derive(Debug)]
pub struct Observed {
    pub report: ktap::Report,
    pub obs: Observations,
    /// Host seconds per scenario result, in order.
    pub host_secs: Vec<f64>,
    pub qemu_secs: f64,
    /// The daemon ran (not --no-device).
    pub daemon_ran: bool,
    pub daemon_stats: Option<serde_json::Value>,
}

/// "exit status N" or "killed by signal N (NAME)".
pub fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}{}", signal_name(s)),
        _ => st.to_string(),
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        _ => "",
    }
}

fn tail_of(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts the daemon (`argv`, output to `log`) and waits for its socket.
pub fn start_daemon(argv: &[String], log: &Path, socket: &Path) -> Result<Child> {
    let _ = std::fs::remove_file(socket);
    let out = File::create(log).map_err(|e| io_err(format!("creating {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| io_err("duplicating the daemon log handle", e))?;
    info!("starting {}", qemu::shell_line(argv));
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| io_err(format!("starting {}", argv[0]), e))?;
    let start = Instant::now();
    loop {
        if std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            debug!(
                "daemon socket up after {:.2} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(child);
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(Error::Daemon(format!(
                "the daemon exited ({}) before creating {}; end of {}:\n{}",
                describe(st),
                socket.display(),
                log.display(),
                tail_of(log, 20)
            )));
        }
        if start.elapsed() > DAEMON_START {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Daemon(format!(
                "the daemon did not create {} within {} s; end of {}:\n{}",
                socket.display(),
                DAEMON_START.as_secs(),
                log.display(),
                tail_of(log, 20)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the daemon with SIGTERM (SIGKILL after a grace period). Returns a
/// description of a bad ending, if any.
pub fn stop_daemon(child: &mut Child) -> Option<String> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(format!("exited during the run ({})", describe(st)));
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, which has not been reaped yet (try_wait
    // above returned None), so the pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < DAEMON_STOP {
        match child.try_wait() {
            Ok(Some(st)) => {
                return match (st.code(), st.signal()) {
                    (Some(0), _) | (None, Some(libc::SIGTERM)) => None,
                    _ => Some(format!("ended badly after SIGTERM ({})", describe(st))),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Some(format!("cannot wait for it: {e}")),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Some(format!(
        "did not exit within {} s of SIGTERM (killed)",
        DAEMON_STOP.as_secs()
    ))
}

/// Formats one progress line for a finished scenario.
fn progress_line(elapsed: f64, t: &ktap::TestResult, plan: Option<u32>, host_secs: f64) -> String {
    let tag = match t.status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Skip => "SKIP",
    };
    let of = plan.map_or_else(String::new, |p| format!("/{p}"));
    let mut detail = Vec::new();
    if let Some(a) = &t.amdvi {
        if let Some(n) = a.accesses {
            detail.push(format!("{n} accesses"));
        }
        let findings: u64 = [a.r1, a.r2, a.r3, a.r4, a.stale].iter().flatten().sum();
        if findings > 0 {
            detail.push(format!(
                "findings R1..R4/stale {}/{}/{}/{}/{}",
                a.r1.unwrap_or(0),
                a.r2.unwrap_or(0),
                a.r3.unwrap_or(0),
                a.r4.unwrap_or(0),
                a.stale.unwrap_or(0)
            ));
        }
    }
    let secs = t
        .amdvi
        .as_ref()
        .and_then(|a| a.ms)
        .map_or(host_secs, |ms| ms as f64 / 1000.0);
    detail.push(format!("{secs:.2} s"));
    if let Some(d) = &t.directive {
        detail.push(format!("# {d}"));
    }
    format!(
        "[{elapsed:7.1}s] {tag} {}{of} {} ({})",
        t.number,
        t.name,
        detail.join(", ")
    )
}

/// Which scenario progress lines a boot prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The plan and every result (a single run).
    All,
    /// Only failed scenarios, and the QEMU command line at debug level (a
    /// soak's many boots).
    Failures,
}

/// What one boot against a running daemon produced.
#[derive(Debug)]
pub struct Booted {
    pub report: ktap::Report,
    pub obs: Observations,
    /// Host seconds per scenario result, in order.
    pub host_secs: Vec<f64>,
    pub qemu_secs: f64,
}

/// Boots the guest with the daemon behind it and follows it to the end.
pub fn supervise(args: &Args, plan: &Plan) -> Result<Observed> {
    let mut daemon_child = if args.no_device {
        None
    } else {
        let _ = std::fs::remove_file(&plan.stats_json);
        Some(start_daemon(
            &plan.daemon_argv,
            &plan.daemon_log,
            &plan.socket,
        )?)
    };
    let booted = boot(args, plan, daemon_child.as_mut(), Progress::All);
    let Booted {
        report,
        mut obs,
        host_secs,
        qemu_secs,
    } = match booted {
        Ok(b) => b,
        Err(e) => {
            if let Some(d) = daemon_child.as_mut() {
                let _ = d.kill();
                let _ = d.wait();
            }
            return Err(e);
        }
    };
    let mut daemon_stats = None;
    if let Some(d) = daemon_child.as_mut() {
        if let Some(bad) = stop_daemon(d) {
            if obs.daemon_failure.is_none() {
                obs.daemon_failure = Some(format!("{bad}; see {}", plan.daemon_log.display()));
            }
        }
        daemon_stats = read_stats(&plan.stats_json);
        if daemon_stats.is_none() {
            warn!("no daemon statistics in {}", plan.stats_json.display());
        }
    }
    Ok(Observed {
        report,
        obs,
        host_secs,
        qemu_secs,
        daemon_ran: daemon_child.is_some(),
        daemon_stats,
    })
}

/// The daemon's `--stats-json` file, when it exists and parses.
pub fn read_stats(path: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
}

/// One boot: starts QEMU against the daemon already listening on
/// `plan.socket` (`daemon`, watched so that its death ends the boot; `None`
/// for --no-device), follows the console to the end and returns what it
/// saw. The daemon is left running.
pub fn boot(
    args: &Args,
    plan: &Plan,
    mut daemon_child: Option<&mut Child>,
    progress: Progress,
) -> Result<Booted> {
    let qemu_err = File::create(&plan.qemu_log)
        .map_err(|e| io_err(format!("creating {}", plan.qemu_log.display()), e))?;
    let line = qemu::shell_line(&plan.qemu_cmd);
    match progress {
        Progress::All => info!("starting {line}"),
        Progress::Failures => debug!("starting {line}"),
    }
    let started = Instant::now();
    let mut qemu_child = match Command::new(&args.qemu)
        .args(&plan.qemu_cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(qemu_err)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Err(io_err(format!("starting {}", args.qemu.display()), e)),
    };
    let stdout = qemu_child.stdout.take().expect("stdout is piped");
    let mut console_file = File::create(&plan.console_log)
        .map_err(|e| io_err(format!("creating {}", plan.console_log.display()), e))?;
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = console_file.write_all(&buf);
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = console_file.flush();
    });

    let mut parser = ktap::Parser::new();
    let mut obs = Observations {
        requested_paging: plan.paging.levels(),
        ..Observations::default()
    };
    let mut ktap_plan = None;
    let mut host_secs: Vec<f64> = Vec::new();
    let mut mark = Instant::now();
    let mut exit_seen: Option<Instant> = None;
    let mut killed = false;
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(raw) => {
                let line = raw.trim_end_matches(['\n', '\r']).replace('\r', "");
                if args.verbose >= 2 {
                    println!("{line}");
                }
                match parser.feed(&line) {
                    Some(Event::Plan(n)) => {
                        ktap_plan = Some(n);
                        mark = Instant::now();
                        if progress == Progress::All {
                            println!(
                                "[{:7.1}s] plan: {n} scenario(s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Some(Event::Result(t)) => {
                        let secs = mark.elapsed().as_secs_f64();
                        mark = Instant::now();
                        host_secs.push(secs);
                        if progress == Progress::All || t.status == Status::Fail {
                            println!(
                                "{}",
                                progress_line(started.elapsed().as_secs_f64(), &t, ktap_plan, secs)
                            );
                        }
                    }
                    None => {}
                }
                match console::classify(&line) {
                    ConsoleLine::Init(text) => {
                        if args.verbose == 1 {
                            println!(
                                "[{:7.1}s] amdvi-init: {text}",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        if let Some(p) = console::init_paging(text) {
                            obs.guest_paging = Some(p);
                        }
                        if text.starts_with("error:") {
                            obs.init_errors.push(text.to_string());
                        }
                    }
                    ConsoleLine::Exit(n) => {
                        if obs.guest_exit.is_some() {
                            obs.repeated_exit = true;
                        }
                        obs.guest_exit = Some(n);
                        exit_seen = Some(Instant::now());
                    }
                    ConsoleLine::KernelProblem(p) => {
                        warn!("guest kernel: {p}");
                        obs.kernel_problems.push(p.to_string());
                    }
                    ConsoleLine::Other => {}
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if killed {
            continue;
        }
        if Instant::now() > deadline {
            error!("timeout after {} s: killing QEMU", args.timeout);
            obs.timed_out = true;
            let _ = qemu_child.kill();
            killed = true;
        } else if exit_seen.is_some_and(|t| t.elapsed() > POWEROFF_GRACE) {
            obs.qemu_failure = Some(format!(
                "still running {} s after the guest's amdvi-exit line (killed)",
                POWEROFF_GRACE.as_secs()
            ));
            let _ = qemu_child.kill();
            killed = true;
        } else if let Some(d) = daemon_child.as_mut() {
            if let Ok(Some(st)) = d.try_wait() {
                error!(
                    "the daemon exited during the run ({}): killing QEMU",
                    describe(st)
                );
                obs.daemon_failure = Some(format!(
                    "exited during the run ({}); see {}",
                    describe(st),
                    plan.daemon_log.display()
                ));
                let _ = qemu_child.kill();
                killed = true;
            }
        }
    }
    let _ = reader.join();
    let qemu_status = qemu_child
        .wait()
        .map_err(|e| io_err("waiting for QEMU", e))?;
    let qemu_secs = started.elapsed().as_secs_f64();
    if !killed && !qemu_status.success() {
        obs.qemu_failure = Some(format!(
            "{}; end of {}:\n{}",
            describe(qemu_status),
            plan.qemu_log.display(),
            tail_of(&plan.qemu_log, 10)
        ));
    }
    Ok(Booted {
        report: parser.finish(),
        obs,
        host_secs,
        qemu_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        let r = ktap::parse(
            "KTAP version 1\n1..2\n# amdvi-result: name=a result=pass accesses=99 r1=0 r2=1 r3=0 r4=0 stale=0 ms=1500\nok 1 a\nok 2 b # SKIP no PRI\n",
        );
        assert_eq!(
            progress_line(12.34, &r.results[0], Some(2), 9.0),
            "[   12.3s] PASS 1/2 a (99 accesses, findings R1..R4/stale 0/1/0/0/0, 1.50 s)"
        );
        assert_eq!(
            progress_line(1.0, &r.results[1], None, 0.25),
            "[    1.0s] SKIP 2 b (0.25 s, # SKIP no PRI)"
        );
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(describe(ExitStatus::from_raw(0)), "exit status 0");
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by signal 11 (SIGSEGV)"
        );
    }
}
