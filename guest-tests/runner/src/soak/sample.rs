// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The daemon's resident memory and open descriptors, read from /proc, and
//! the soak's samples of them: a sampler thread appending to samples.csv,
//! and the parser that reads the file back for the verdict and the plot.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{io_err, Result};

/// The header of samples.csv.
pub const HEADER: &str = "elapsed_s,boot,rss_kib,fds";

/// One sample of the daemon.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the soak started the daemon.
    pub elapsed_s: f64,
    /// The boot in progress, or the last one ended (0: before the first).
    pub boot: u32,
    pub rss_kib: u64,
    pub fds: u64,
}

impl Sample {
    /// The CSV row (without the newline).
    pub fn csv_line(&self) -> String {
        format!(
            "{:.1},{},{},{}",
            self.elapsed_s, self.boot, self.rss_kib, self.fds
        )
    }
}

/// Parses samples.csv: the header, then one row per sample. An error names
/// the line.
pub fn parse_samples(text: &str) -> std::result::Result<Vec<Sample>, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == HEADER => {}
        Some((_, h)) => return Err(format!("line 1: header {h:?}, expected {HEADER:?}")),
        None => return Err("empty: no header".to_string()),
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}: {line:?}", i + 1);
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            return Err(bad(&format!("{} fields, expected 4", f.len())));
        }
        let elapsed_s: f64 = f[0].parse().map_err(|_| bad("elapsed_s"))?;
        if !elapsed_s.is_finite() || elapsed_s < 0.0 {
            return Err(bad("elapsed_s"));
        }
        out.push(Sample {
            elapsed_s,
            boot: f[1].parse().map_err(|_| bad("boot"))?,
            rss_kib: f[2].parse().map_err(|_| bad("rss_kib"))?,
            fds: f[3].parse().map_err(|_| bad("fds"))?,
        });
    }
    Ok(out)
}

/// VmRSS in KiB from the text of /proc/PID/status.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut it = rest.split_whitespace();
    let n = it.next()?.parse().ok()?;
    (it.next() == Some("kB")).then_some(n)
}

/// (VmRSS in KiB, open descriptors) of process `pid`.
pub fn probe(pid: u32) -> std::io::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = vm_rss_kib(&status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no VmRSS in /proc/{pid}/status"),
        )
    })?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok((rss, fds))
}

/// A thread sampling a process every `every` into a CSV file.
#[derive(Debug)]
pub struct Sampler {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
    path: PathBuf,
}

impl Sampler {
    /// Starts sampling `pid` into `path` (truncated, header first): one
    /// sample before it returns, then one every `every`; each row carries the value of `boot` and the
    /// seconds since `t0`. Rows are flushed as they are written, so the file
    /// is usable while the soak runs and after it is killed.
    pub fn start(
        pid: u32,
        path: &Path,
        every: Duration,
        t0: Instant,
        boot: Arc<AtomicU32>,
    ) -> Result<Sampler> {
        let mut f =
            File::create(path).map_err(|e| io_err(format!("creating {}", path.display()), e))?;
        writeln!(f, "{HEADER}").map_err(|e| io_err(format!("writing {}", path.display()), e))?;
        let (stop, rx) = mpsc::channel::<()>();
        let shown = path.display().to_string();
        let take = move |f: &mut File| -> std::io::Result<()> {
            match probe(pid) {
                Ok((rss_kib, fds)) => {
                    let s = Sample {
                        elapsed_s: t0.elapsed().as_secs_f64(),
                        boot: boot.load(Ordering::Relaxed),
                        rss_kib,
                        fds,
                    };
                    writeln!(f, "{}", s.csv_line())
                }
                // The daemon is gone: the soak notices and says so.
                Err(e) => {
                    log::debug!("sampling pid {pid}: {e}");
                    Ok(())
                }
            }
        };
        // The first sample before this returns: the state the caller left.
        take(&mut f).map_err(|e| io_err(format!("writing {shown}"), e))?;
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            loop {
                next += every;
                let wait = next.saturating_duration_since(Instant::now());
                let last = match rx.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => false,
                    // One more sample: the state the caller ends in.
                    Ok(()) => true,
                    Err(RecvTimeoutError::Disconnected) => return,
                };
                let r = take(&mut f);
                if last {
                    return;
                }
                if let Err(e) = r {
                    log::warn!("writing {shown}: {e}; sampling stops");
                    return;
                }
            }
        });
        Ok(Sampler {
            stop,
            thread,
            path: path.to_path_buf(),
        })
    }

    /// Takes a last sample, stops the thread and returns the samples
    /// written, read back from the file.
    pub fn finish(self) -> Result<Vec<Sample>> {
        let _ = self.stop.send(());
        let _ = self.thread.join();
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| io_err(format!("reading {}", self.path.display()), e))?;
        parse_samples(&text)
            .map_err(|e| crate::error::Error::Setup(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_from_status() {
        let status = "Name:\tvhost-device-am\nVmPeak:\t  300000 kB\nVmRSS:\t    8123 kB\nRssAnon:\t 4000 kB\n";
        assert_eq!(vm_rss_kib(status), Some(8123));
        assert_eq!(
            vm_rss_kib("Name:\tx\n"),
            None,
            "a kernel thread has no VmRSS"
        );
        assert_eq!(vm_rss_kib("VmRSS:\t 12 MB\n"), None, "unit other than kB");
        assert_eq!(vm_rss_kib("VmRSS:\t\n"), None);
    }

    /// Starts `sleep` through `sh -c "<redirections> exec sleep 10"` and
    /// returns it once it is sleep (before exec it is a copy of this process).
    fn sleeper(redirections: &str) -> std::process::Child {
        use std::process::{Command, Stdio};
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{redirections} exec sleep 10"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let comm = format!("/proc/{}/comm", child.id());
        while std::fs::read_to_string(&comm).unwrap_or_default() != "sleep\n" {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "sleep did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child
    }

    #[test]
    fn probe_counts_a_childs_descriptors() {
        // What a child inherits depends on who started the tests (descriptors
        // without close-on-exec), so the test compares two children.
        // Tests running in parallel may hold descriptors without
        // close-on-exec for a moment, which one child inherits and the other
        // does not: the pair is tried again a few times.
        let mut seen = Vec::new();
        let mut reaped = None;
        for _ in 0..5 {
            let mut plain = sleeper("");
            let mut more = sleeper("exec 3</dev/null 4</dev/null 5</dev/null;");
            let got = (probe(plain.id()), probe(more.id()));
            for c in [&mut plain, &mut more] {
                let _ = c.kill();
                let _ = c.wait();
            }
            let ((rss, fds), (_, more_fds)) = (got.0.unwrap(), got.1.unwrap());
            assert!(rss > 0);
            assert!(fds >= 3, "stdin, stdout and stderr at least: {fds}");
            seen.push((fds, more_fds));
            reaped = Some(plain.id());
            if more_fds == fds + 3 {
                break;
            }
        }
        assert!(
            seen.iter().any(|&(fds, more)| more == fds + 3),
            "three more descriptors never counted: {seen:?}"
        );
        assert!(
            probe(reaped.unwrap()).is_err(),
            "a reaped process has no /proc entry"
        );
    }

    #[test]
    fn samples_round_trip_and_errors_name_the_line() {
        let rows = [
            Sample {
                elapsed_s: 0.0,
                boot: 0,
                rss_kib: 4100,
                fds: 9,
            },
            Sample {
                elapsed_s: 2.0,
                boot: 1,
                rss_kib: 190_000,
                fds: 27,
            },
        ];
        let mut text = format!("{HEADER}\n");
        for r in &rows {
            text.push_str(&r.csv_line());
            text.push('\n');
        }
        text.push('\n');
        assert_eq!(parse_samples(&text).unwrap(), rows);
        assert_eq!(parse_samples(&format!("{HEADER}\n")).unwrap(), vec![]);

        let e = parse_samples("elapsed,boot,rss,fds\n").unwrap_err();
        assert!(e.starts_with("line 1: header"), "{e}");
        assert!(parse_samples("").is_err());
        let e = parse_samples(&format!("{HEADER}\n0.0,0,1,2\n2.0,1,x,3\n")).unwrap_err();
        assert!(e.starts_with("line 3: rss_kib"), "{e}");
        let e = parse_samples(&format!("{HEADER}\n0.0,0,1\n")).unwrap_err();
        assert!(e.contains("3 fields"), "{e}");
        let e = parse_samples(&format!("{HEADER}\n-1.0,0,1,2\n")).unwrap_err();
        assert!(e.starts_with("line 2: elapsed_s"), "{e}");
        let e = parse_samples(&format!("{HEADER}\n1.0,0,1,-2\n")).unwrap_err();
        assert!(e.starts_with("line 2: fds"), "{e}");
    }

    #[test]
    fn the_sampler_writes_rows_with_the_boot_number() {
        let path = std::env::temp_dir().join(format!("amdvi-samples-{}.csv", std::process::id()));
        let boot = Arc::new(AtomicU32::new(0));
        let s = Sampler::start(
            std::process::id(),
            &path,
            Duration::from_millis(20),
            Instant::now(),
            boot.clone(),
        )
        .unwrap();
        // Windows of 15 periods, so a sampler thread starved on a loaded
        // machine still samples each boot.
        std::thread::sleep(Duration::from_millis(300));
        boot.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        boot.store(2, Ordering::Relaxed);
        let samples = s.finish().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(samples.len() >= 3, "{samples:?}");
        assert_eq!(samples[0].boot, 0, "the first sample is taken at once");
        assert!(samples.iter().any(|s| s.boot == 1));
        assert_eq!(
            samples.last().unwrap().boot,
            2,
            "finish takes a last sample"
        );
        assert!(samples.iter().all(|s| s.rss_kib > 0 && s.fds > 0));
        assert!(samples.windows(2).all(|w| w[0].elapsed_s <= w[1].elapsed_s));
    }
}
