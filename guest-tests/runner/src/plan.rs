// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The plan of a run, built from the arguments before anything starts: the
//! guest kernel, the carrier, the daemon and QEMU command lines, and where
//! every log and result goes.

use std::path::{Path, PathBuf};
use std::process::Command;

use log::warn;

use crate::cli::Args;
use crate::error::{io_err, Error, Result};
use crate::guest_kernel::{self, GuestKernel};
use crate::qemu::{self, Carrier, GuestArgs, Paging, QemuConfig};

/// Longest path a Unix socket address can hold (sun_path minus the NUL).
pub const SUN_PATH_MAX: usize = 107;

/// Where a daemon that serves more than one boot (a soak) listens, logs and
/// writes its statistics; [`Plan::with_daemon`] points a boot at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonFiles {
    pub socket: PathBuf,
    pub log: PathBuf,
    pub stats_json: PathBuf,
}

/// Everything a run needs to know before it starts a process.
#[derive(Debug)]
pub struct Plan {
    pub root: PathBuf,
    pub kernel: GuestKernel,
    pub qemu_banner: String,
    pub paging: Paging,
    pub carrier: Option<Carrier>,
    pub console_log: PathBuf,
    pub daemon_log: PathBuf,
    pub qemu_log: PathBuf,
    pub stats_json: PathBuf,
    pub initrd: PathBuf,
    pub json_path: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub daemon: PathBuf,
    pub daemon_argv: Vec<String>,
    /// The guest kernel command line.
    pub append: String,
    /// QEMU's argv, the binary first.
    pub qemu_cmd: Vec<String>,
}

/// The repository root: the nearest ancestor of the working directory that
/// holds `guest-tests/initramfs/init`, else the one this binary was built in.
pub fn find_root() -> PathBuf {
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
pub fn short(path: &Path) -> PathBuf {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    std::env::current_dir()
        .ok()
        .and_then(|cwd| abs.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .filter(|rel| !rel.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_path_buf())
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

fn check_accel(args: &Args) -> Result<()> {
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
    Ok(())
}

impl Plan {
    /// Builds the plan; checks what can be checked without starting anything.
    pub fn new(args: &Args) -> Result<Plan> {
        Plan::build(args, None, None)
    }

    /// The plan of a boot of `kernel` (resolved already) against a daemon
    /// whose socket, log and statistics are `files` (one daemon for many
    /// boots) rather than the boot's own.
    pub fn with_daemon(args: &Args, kernel: GuestKernel, files: &DaemonFiles) -> Result<Plan> {
        Plan::build(args, Some(files), Some(kernel))
    }

    fn build(
        args: &Args,
        shared: Option<&DaemonFiles>,
        kernel: Option<GuestKernel>,
    ) -> Result<Plan> {
        let root = find_root();
        let build_dir = args.build_dir.clone().unwrap_or_else(|| root.join("build"));
        std::fs::create_dir_all(&build_dir)
            .map_err(|e| io_err(format!("creating {}", build_dir.display()), e))?;
        let build_dir = short(&build_dir.canonicalize().unwrap_or(build_dir));

        let kernel = match kernel {
            Some(k) => k,
            None => guest_kernel::resolve(args, &root)?,
        };
        let (qemu_banner, qemu_ver) = qemu_version(&args.qemu)?;
        if qemu_ver < (10, 0, 0) && !args.no_device {
            warn!("{qemu_banner}: QEMU >= 10.0 is needed for the vhost-user carrier (`make deps`)");
        }
        check_accel(args)?;
        let paging = if args.paging == 4 {
            Paging::Four
        } else {
            Paging::Five
        };
        let carrier = (!args.no_device).then(|| args.carrier.resolve(qemu_ver));
        if let (Some(Carrier::TestDevice), Some(m)) = (carrier, &kernel.modules) {
            qemu::check_unclaimed(m, qemu::GENERIC_VIRTIO_ID).map_err(Error::Setup)?;
        }
        let release = &kernel.release;
        let tag = format!("{release}-{}lvl", paging.levels());
        let mut socket = build_dir.join(format!("amdvi-{tag}.sock"));
        if let Some(f) = shared {
            socket = f.socket.clone();
        } else if socket.as_os_str().len() > SUN_PATH_MAX {
            socket = std::env::temp_dir().join(format!(
                "amdvi-{}-{}lvl.sock",
                std::process::id(),
                paging.levels()
            ));
        }
        let stats_json = shared.map_or_else(
            || build_dir.join(format!("stats-{tag}.json")),
            |f| f.stats_json.clone(),
        );
        if socket.as_os_str().len() > SUN_PATH_MAX {
            return Err(Error::Setup(format!(
                "socket path {} is longer than {SUN_PATH_MAX} bytes",
                socket.display()
            )));
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
            shadow: args.shadow.clone(),
            extra: args.append.clone(),
        };
        let append = qemu::kernel_cmdline(paging, &guest).map_err(Error::Setup)?;
        let initrd = build_dir.join(format!("initramfs-{release}.cpio"));
        let qcfg = QemuConfig {
            qemu: args.qemu.clone(),
            accel: args.accel,
            smp: args.smp,
            mem_mib: args.mem,
            kernel: kernel.image.clone(),
            initrd: initrd.clone(),
            append: append.clone(),
            device: carrier.map(|c| (socket.clone(), c)),
        };
        qcfg.validate().map_err(Error::Setup)?;
        let mut qemu_cmd = vec![args.qemu.display().to_string()];
        qemu_cmd.extend(qemu::qemu_argv(&qcfg));
        Ok(Plan {
            console_log: build_dir.join(format!("console-{tag}.log")),
            daemon_log: shared.map_or_else(
                || build_dir.join(format!("daemon-{tag}.log")),
                |f| f.log.clone(),
            ),
            qemu_log: build_dir.join(format!("qemu-{tag}.log")),
            json_path: args
                .json
                .clone()
                .unwrap_or_else(|| build_dir.join("results.json")),
            root,
            kernel,
            qemu_banner,
            paging,
            carrier,
            stats_json,
            initrd,
            socket,
            config,
            daemon,
            daemon_argv,
            append,
            qemu_cmd,
        })
    }

    /// The daemon and its configuration exist (not needed for --no-device).
    pub fn check_daemon(&self) -> Result<()> {
        if !self.daemon.is_file() {
            return Err(Error::Setup(format!(
                "daemon {} not found: build it with `cargo build --release --bin vhost-device-amdvi` or pass --daemon",
                self.daemon.display()
            )));
        }
        if !self.config.is_file() {
            return Err(Error::Setup(format!(
                "daemon configuration {} not found (--config)",
                self.config.display()
            )));
        }
        Ok(())
    }

    /// "carrier vhost-user-gpio-pci" or "no device".
    pub fn carrier_name(&self) -> &'static str {
        self.carrier.map_or("no device", |c| {
            c.device().split(',').next().unwrap_or_default()
        })
    }

    /// The line that heads the run and its summary.
    pub fn headline(&self, args: &Args) -> String {
        format!(
            "{}, {}-level paging, {}, smp {}, {} MiB, {}",
            self.kernel.release,
            self.paging.levels(),
            args.accel,
            args.smp,
            args.mem,
            self.carrier_name()
        )
    }
}
