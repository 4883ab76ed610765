// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One run: resolve the kernel, build the guest image, start the daemon and
//! QEMU, follow the console, judge, report.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use serde::Serialize;

use crate::cli::Args;
use crate::console::{self, ConsoleLine};
use crate::error::{io_err, Error, Result};
use crate::initramfs;
use crate::kernel;
use crate::kmod;
use crate::ktap::{self, Event, Status};
use crate::qemu::{self, Carrier, GuestArgs, Paging, QemuConfig};
use crate::report::{self, Observations, Verdict};
use crate::scripts;

/// Longest path a Unix socket address can hold (sun_path minus the NUL).
const SUN_PATH_MAX: usize = 107;
/// How long the daemon may take to create its socket.
const DAEMON_START: Duration = Duration::from_secs(10);
/// How long QEMU may take to exit after the guest printed `amdvi-exit`.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
const DAEMON_STOP: Duration = Duration::from_secs(5);

/// Entry point: runs and returns the process exit code.
pub fn main_with(args: &Args) -> i32 {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            error!("{e}");
            2
        }
    }
}

/// The repository root: the nearest ancestor of the working directory that
/// holds `guest-tests/initramfs/init`, else the one this binary was built in.
fn find_root() -> PathBuf {
    if let Ok(mut d) = std::env::current_dir() {
        loop {
            if d.join("guest-tests/initramfs/init").is_file() {
                return d;
            }
            if !d.pop() {
                break;
            }
        }
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    built.canonicalize().unwrap_or(built)
}

/// `path` relative to the working directory when it lies below it (shorter
/// command lines, and ones a README can quote), else as it is.
fn short(path: &Path) -> PathBuf {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::env::current_dir()
        .ok()
        .and_then(|cwd| abs.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (Debian installs /boot/vmlinuz-* readable by root only)"
        } else {
            ""
        };
        io_err(format!("reading {}{hint}", path.display()), e)
    })
}

/// (release, image path) of the guest kernel.
fn resolve_kernel(args: &Args) -> Result<(String, PathBuf)> {
    if let Some(image) = &args.kernel {
        let from_header = kernel::bzimage_release(&read_file(image)?);
        let release = match args.kver.as_deref() {
            Some(v) if !kernel::is_series(v) => {
                if from_header.as_deref().is_some_and(|h| h != v) {
                    warn!(
                        "{} says it is {}, using --kver {v}",
                        image.display(),
                        from_header.as_deref().unwrap_or_default()
                    );
                }
                v.to_string()
            }
            series => {
                let r = from_header.ok_or_else(|| {
                    Error::Setup(format!(
                        "cannot read the kernel release from {}: pass --kver <full release>",
                        image.display()
                    ))
                })?;
                if let Some(s) = series.filter(|s| !kernel::in_series(&r, s)) {
                    return Err(Error::Setup(format!(
                        "{} is {r}, not of series {s}",
                        image.display()
                    )));
                }
                r
            }
        };
        return Ok((release, image.clone()));
    }
    let kver = args.kver.as_deref().unwrap_or("6.12");
    if !kernel::is_series(kver) {
        let image = PathBuf::from(format!("/boot/vmlinuz-{kver}"));
        if !image.exists() {
            return Err(Error::Setup(format!(
                "{} not found: install linux-image-{kver} or pass --kernel",
                image.display()
            )));
        }
        return Ok((kver.to_string(), image));
    }
    let releases: Vec<String> = std::fs::read_dir("/boot")
        .map_err(|e| io_err("listing /boot", e))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .collect();
    let release = kernel::newest_in_series(&releases, kver).ok_or_else(|| {
        Error::Setup(format!(
            "no /boot/vmlinuz-{kver}.* kernel: run `make deps` (Debian 12) or pass --kernel"
        ))
    })?;
    Ok((
        release.to_string(),
        PathBuf::from(format!("/boot/vmlinuz-{release}")),
    ))
}

fn qemu_version(qemu: &Path) -> Result<(String, (u32, u32, u32))> {
    let out = Command::new(qemu).arg("-version").output().map_err(|e| {
        io_err(
            format!("running {} -version (run `make deps`)", qemu.display()),
            e,
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = qemu::parse_version(&text).ok_or_else(|| {
        Error::Setup(format!(
            "cannot parse `{} -version`: {text:?}",
            qemu.display()
        ))
    })?;
    Ok((text.lines().next().unwrap_or_default().to_string(), v))
}

/// Runs `make -C dir vars...`, showing the output only when it fails.
fn make(dir: &Path, vars: &[String]) -> Result<()> {
    info!("make -C {} {}", dir.display(), vars.join(" "));
    let out = Command::new("make")
        .arg("-C")
        .arg(dir)
        .args(vars)
        .output()
        .map_err(|e| io_err("running make", e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Error::Build(format!(
        "make -C {} failed ({}):\n{}",
        dir.display(),
        out.status,
        tail.join("\n")
    )))
}

/// The test module: --module, or built from guest-tests/module. `None` when
/// there is no module source yet (the guest then reports it).
fn test_module(args: &Args, root: &Path, release: &str) -> Result<Option<PathBuf>> {
    let ko = if let Some(m) = &args.module {
        if !m.is_file() {
            return Err(Error::Setup(format!(
                "--module {}: no such file",
                m.display()
            )));
        }
        m.clone()
    } else {
        let dir = root.join("guest-tests/module");
        if !dir.join("Makefile").is_file() {
            warn!(
                "{} has no Makefile: the test module is not built and the guest will report it missing",
                dir.display()
            );
            return Ok(None);
        }
        let headers = args
            .headers
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/lib/modules/{release}/build")));
        if !headers.join("Makefile").is_file() {
            return Err(Error::Setup(format!(
                "kernel build tree {} not found: install linux-headers-{release} (`make deps`) or pass --headers",
                headers.display()
            )));
        }
        make(
            &dir,
            &[
                format!("KVER={release}"),
                format!("KDIR={}", headers.display()),
            ],
        )?;
        dir.join("amdvi_test.ko")
    };
    let data = read_file(&ko)?;
    match kmod::module_release(&data) {
        Some(r) if r == release => Ok(Some(ko)),
        Some(r) => Err(Error::Setup(format!(
            "{} was built for {r}, the guest runs {release}",
            ko.display()
        ))),
        None => Err(Error::Setup(format!(
            "{} has no vermagic: not a kernel module?",
            ko.display()
        ))),
    }
}

/// The guest's programs: --user-dir, or built from guest-tests/user.
fn test_programs(args: &Args, root: &Path) -> Result<Vec<PathBuf>> {
    let dir = if let Some(d) = &args.user_dir {
        d.clone()
    } else {
        let dir = root.join("guest-tests/user");
        if !dir.join("Makefile").is_file() {
            warn!(
                "{} has no Makefile: no test programs; the guest will report amdvi-tests missing",
                dir.display()
            );
            return Ok(Vec::new());
        }
        make(&dir, &[])?;
        dir
    };
    let progs = initramfs::programs_in(&dir)?;
    if !progs
        .iter()
        .any(|p| p.file_name().is_some_and(|n| n == "amdvi-tests"))
    {
        warn!("no amdvi-tests program in {}", dir.display());
    }
    Ok(progs)
}

fn describe(st: ExitStatus) -> String {
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

fn start_daemon(argv: &[String], log: &Path, socket: &Path) -> Result<Child> {
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
fn stop_daemon(child: &mut Child) -> Option<String> {
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

/// Everything the results JSON holds.
#[derive(Debug, Serialize)]
struct RunJson<'a> {
    kernel_release: &'a str,
    kernel: String,
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

fn run(args: &Args) -> Result<i32> {
    let root = find_root();
    let build_dir = args.build_dir.clone().unwrap_or_else(|| root.join("build"));
    std::fs::create_dir_all(&build_dir)
        .map_err(|e| io_err(format!("creating {}", build_dir.display()), e))?;
    let build_dir = short(&build_dir.canonicalize().unwrap_or(build_dir));

    let (release, kernel_image) = resolve_kernel(args)?;
    let (qemu_banner, qemu_ver) = qemu_version(&args.qemu)?;
    if qemu_ver < (10, 0, 0) && !args.no_device {
        warn!("{qemu_banner}: QEMU >= 10.0 is needed for the vhost-user carrier (`make deps`)");
    }
    if args.accel == qemu::Accel::Kvm {
        if !Path::new("/dev/kvm").exists() {
            return Err(Error::Setup(
                "--accel kvm: /dev/kvm does not exist (no KVM here); use --accel tcg".to_string(),
            ));
        }
        warn!(
            "--accel kvm: nested KVM is known to fail on the project's build machines \
             (QEMU aborts on MSR 0x10a with -cpu max, or hangs early in boot until --timeout); \
             --accel tcg is the tested path"
        );
    }
    let paging = if args.paging == 4 {
        Paging::Four
    } else {
        Paging::Five
    };
    let carrier = (!args.no_device).then(|| args.carrier.resolve(qemu_ver));
    let tag = format!("{release}-{}lvl", paging.levels());
    let console_log = build_dir.join(format!("console-{tag}.log"));
    let daemon_log = build_dir.join(format!("daemon-{tag}.log"));
    let qemu_log = build_dir.join(format!("qemu-{tag}.log"));
    let stats_json = build_dir.join(format!("stats-{tag}.json"));
    let initrd = build_dir.join(format!("initramfs-{release}.cpio"));
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| build_dir.join("results.json"));
    let mut socket = build_dir.join(format!("amdvi-{tag}.sock"));
    if socket.as_os_str().len() > SUN_PATH_MAX {
        socket = std::env::temp_dir().join(format!(
            "amdvi-{}-{}lvl.sock",
            std::process::id(),
            paging.levels()
        ));
    }

    let config = args
        .config
        .clone()
        .unwrap_or_else(|| short(&root.join("configs/default.toml")));
    let daemon = args
        .daemon
        .clone()
        .unwrap_or_else(|| short(&root.join("target/release/vhost-device-amdvi")));
    let daemon_argv: Vec<String> = vec![
        daemon.display().to_string(),
        "--socket-path".into(),
        socket.display().to_string(),
        "--config".into(),
        config.display().to_string(),
        "--stats-json".into(),
        stats_json.display().to_string(),
    ];
    let guest = GuestArgs {
        filter: args.filter.clone(),
        args: args.args.clone(),
        modparams: args.modparams.clone(),
        extra: args.append.clone(),
    };
    let append = qemu::kernel_cmdline(paging, &guest).map_err(Error::Setup)?;
    let qcfg = QemuConfig {
        qemu: args.qemu.clone(),
        accel: args.accel,
        smp: args.smp,
        mem_mib: args.mem,
        kernel: kernel_image.clone(),
        initrd: initrd.clone(),
        append: append.clone(),
        device: carrier.map(|c| (socket.clone(), c)),
    };
    qcfg.validate().map_err(Error::Setup)?;
    let mut qemu_cmd = vec![args.qemu.display().to_string()];
    qemu_cmd.extend(qemu::qemu_argv(&qcfg));

    if args.print_cmdline {
        if !args.no_device {
            println!("# daemon (start first; it listens on the socket)");
            println!("{}", qemu::shell_line(&daemon_argv));
        }
        println!("# QEMU ({qemu_banner}; the initramfs is built by amdvi-run)");
        println!("{}", qemu::shell_line(&qemu_cmd));
        return Ok(0);
    }

    if !args.no_device {
        if !daemon.is_file() {
            return Err(Error::Setup(format!(
                "daemon {} not found: build it with `cargo build --release --bin vhost-device-amdvi` or pass --daemon",
                daemon.display()
            )));
        }
        if !config.is_file() {
            return Err(Error::Setup(format!(
                "daemon configuration {} not found (--config)",
                config.display()
            )));
        }
    }

    // The guest image.
    let module = test_module(args, &root, &release)?;
    let mut programs = test_programs(args, &root)?;
    if !args.scripts.is_empty() {
        let bin = args.script_bin.clone().unwrap_or_else(|| {
            short(&root.join("target/x86_64-unknown-linux-gnu/release/amdvi-script"))
        });
        if !bin.is_file() {
            return Err(Error::Setup(format!(
                "{} not found: build it with `make script-bin` or pass --script-bin",
                bin.display()
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &args.scripts {
            if !names.insert(scripts::test_name(p)) {
                return Err(Error::Setup(format!(
                    "--scripts: two scripts named {}",
                    p.display()
                )));
            }
            amdvi_sim::load(&p.to_string_lossy()).map_err(|e| Error::Setup(e.to_string()))?;
        }
        programs.push(bin);
    }
    let modules_dir = PathBuf::from(format!("/lib/modules/{release}"));
    let spec = initramfs::Spec {
        busybox: PathBuf::from("/bin/busybox"),
        init: root.join("guest-tests/initramfs/init"),
        release: release.clone(),
        modules_dir: modules_dir
            .join("modules.dep")
            .is_file()
            .then_some(modules_dir),
        test_module: module,
        programs,
        scripts: args.scripts.clone(),
    };
    initramfs::build(&spec, &initrd)?;

    info!(
        "{release}, {}-level paging, {}, smp {}, {} MiB, {}",
        paging.levels(),
        args.accel,
        args.smp,
        args.mem,
        match carrier {
            Some(c) => format!(
                "carrier {}",
                c.device().split(',').next().unwrap_or_default()
            ),
            None => "NO DEVICE (debugging)".to_string(),
        }
    );

    // The daemon, then QEMU.
    let mut daemon_child = if args.no_device {
        None
    } else {
        let _ = std::fs::remove_file(&stats_json);
        Some(start_daemon(&daemon_argv, &daemon_log, &socket)?)
    };
    let qemu_err = File::create(&qemu_log)
        .map_err(|e| io_err(format!("creating {}", qemu_log.display()), e))?;
    info!("starting {}", qemu::shell_line(&qemu_cmd));
    let started = Instant::now();
    let mut qemu_child = match Command::new(&args.qemu)
        .args(&qemu_cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(qemu_err)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            if let Some(d) = daemon_child.as_mut() {
                let _ = d.kill();
                let _ = d.wait();
            }
            return Err(io_err(format!("starting {}", args.qemu.display()), e));
        }
    };
    let stdout = qemu_child.stdout.take().expect("stdout is piped");
    let mut console_file = File::create(&console_log)
        .map_err(|e| io_err(format!("creating {}", console_log.display()), e))?;
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
        requested_paging: paging.levels(),
        ..Observations::default()
    };
    let mut plan = None;
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
                        plan = Some(n);
                        mark = Instant::now();
                        println!(
                            "[{:7.1}s] plan: {n} scenario(s)",
                            started.elapsed().as_secs_f64()
                        );
                    }
                    Some(Event::Result(t)) => {
                        let secs = mark.elapsed().as_secs_f64();
                        mark = Instant::now();
                        host_secs.push(secs);
                        println!(
                            "{}",
                            progress_line(started.elapsed().as_secs_f64(), &t, plan, secs)
                        );
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
            error!(
                "timeout after {} s: killing QEMU and the daemon",
                args.timeout
            );
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
                    daemon_log.display()
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
            qemu_log.display(),
            tail_of(&qemu_log, 10)
        ));
    }
    let mut daemon_stats = None;
    if let Some(d) = daemon_child.as_mut() {
        if let Some(bad) = stop_daemon(d) {
            if obs.daemon_failure.is_none() {
                obs.daemon_failure = Some(format!("{bad}; see {}", daemon_log.display()));
            }
        }
        daemon_stats = std::fs::read_to_string(&stats_json)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if daemon_stats.is_none() {
            warn!("no daemon statistics in {}", stats_json.display());
        }
    }
    if !args.keep {
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&initrd);
    }

    let report = parser.finish();
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
    println!(
        "== {release}, {}-level paging, {}, smp {}, {} MiB, {}",
        paging.levels(),
        args.accel,
        args.smp,
        args.mem,
        carrier.map_or("no device", |c| c
            .device()
            .split(',')
            .next()
            .unwrap_or_default())
    );
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
        console_log.display()
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
        kernel_release: &release,
        kernel: kernel_image.display().to_string(),
        paging: paging.levels(),
        guest_paging: obs.guest_paging,
        accel: args.accel,
        carrier,
        qemu: &qemu_banner,
        smp: args.smp,
        mem_mib: args.mem,
        filter: args.filter.as_deref(),
        args: args.args.as_deref(),
        modparams: args.modparams.as_deref(),
        kernel_cmdline: &append,
        qemu_seconds: qemu_secs,
        verdict: &verdict,
        observations: &obs,
        plan: report.plan,
        scenarios,
        scripts: &script_checks,
        ktap_errors: &report.errors,
        console_log: console_log.display().to_string(),
        daemon_log: daemon_child
            .is_some()
            .then(|| daemon_log.display().to_string()),
        qemu_log: qemu_log.display().to_string(),
        daemon_stats,
    };
    let text = serde_json::to_string_pretty(&json).expect("results serialise");
    if let Some(parent) = json_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&json_path, text + "\n")
        .map_err(|e| io_err(format!("writing {}", json_path.display()), e))?;
    println!("results {}", json_path.display());
    if !args.expect_caught.is_empty() {
        let (code, line) = report::judge_negative(&report, &verdict, &args.expect_caught);
        println!("{line}");
        return Ok(code);
    }
    println!("{}", verdict.closing_line());
    Ok(verdict.exit_code)
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
