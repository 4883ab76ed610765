// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Command-line options of `amdvi-run`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::qemu::{Accel, Carrier};

/// An oracle rule as the suite reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FindingRule {
    R1,
    R2,
    R3,
    R4,
    Stale,
    /// A cached frame the kernel freed before flushing the secondary TLB.
    Freed,
}

/// Which frontend carries the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CarrierChoice {
    /// test-device on QEMU >= 10.2, gpio before.
    Auto,
    /// vhost-user-gpio-pci (virtio id 41).
    Gpio,
    /// vhost-user-test-device-pci,virtio-id=21 (QEMU >= 10.2).
    TestDevice,
}

impl CarrierChoice {
    pub fn resolve(self, qemu_version: (u32, u32, u32)) -> Carrier {
        match self {
            CarrierChoice::Auto => Carrier::for_version(qemu_version),
            CarrierChoice::Gpio => Carrier::Gpio,
            CarrierChoice::TestDevice => Carrier::TestDevice,
        }
    }
}

/// Boot a Linux guest under QEMU with the emulated AMD IOMMU
/// (vhost-device-amdvi) attached, run the guest test suite and judge it.
///
/// Builds the test module and programs (make -C guest-tests/module,
/// make -C guest-tests/user) and the initramfs into build/, starts the daemon,
/// boots QEMU, follows the KTAP on the serial console and prints a summary.
/// Exit status: 0 all passed, 1 a failure (test, kernel warning, crash,
/// timeout, missing exit line), 2 the run could not be set up, 4 everything
/// was skipped.
#[derive(Debug, Clone, Parser)]
#[command(name = "amdvi-run", version, verbatim_doc_comment)]
pub struct Args {
    /// Guest kernel: a series (6.12, 6.1: the newest Debian cloud kernel of it
    /// under /boot) or a full release (6.1.0-56-cloud-amd64) [default: 6.12,
    /// or the release inside --kernel].
    #[arg(long, value_name = "VER")]
    pub kver: Option<String>,

    /// Kernel image (bzImage) to boot instead of /boot/vmlinuz-<release>.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Kernel build tree for the test module [default: /lib/modules/<release>/build].
    #[arg(long, value_name = "DIR")]
    pub headers: Option<PathBuf>,

    /// Use this prebuilt amdvi_test.ko instead of building guest-tests/module.
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,

    /// Take the guest's test programs from DIR instead of building guest-tests/user.
    #[arg(long, value_name = "DIR")]
    pub user_dir: Option<PathBuf>,

    /// Daemon configuration (TOML) [default: configs/default.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Daemon binary [default: target/release/vhost-device-amdvi].
    #[arg(long, value_name = "PATH")]
    pub daemon: Option<PathBuf>,

    /// QEMU binary.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,

    /// Run only the scenarios whose name matches GLOB.
    #[arg(long, value_name = "GLOB")]
    pub filter: Option<String>,

    /// Extra arguments to the guest's amdvi-tests.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub args: Option<String>,

    /// Parameters for insmod amdvi_test.ko (e.g. notifier_mode=end_only).
    #[arg(long, value_name = "STR")]
    pub modparams: Option<String>,

    /// Shadow mode instead of the suite: the guest runs `amdvi-shadow STR`
    /// (a program with the device following its address space, one KTAP
    /// result; `--` is prepended when STR has none), e.g.
    /// `--shadow 'amdvi-churn cow 200'` or `--shadow '--rate 0 -- ls -R /'`.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub shadow: Option<String>,

    /// Extra guest kernel command-line parameters.
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub append: Option<String>,

    /// Number of vCPUs: 1, or an even number split over two NUMA nodes (one
    /// socket each).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub smp: u32,

    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512, value_name = "MiB")]
    pub mem: u32,

    /// Guest paging depth: 5 (-cpu max exposes LA57) or 4 (kernel argument no5lvl).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub paging: u8,

    /// Accelerator. Nested KVM is known to fail on the project's build
    /// machines (QEMU aborts or hangs); TCG is the tested path.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    pub accel: Accel,

    /// Frontend that carries the device.
    #[arg(long, value_enum, default_value_t = CarrierChoice::Auto)]
    pub carrier: CarrierChoice,

    /// Kill QEMU and the daemon after SECS seconds.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub timeout: u64,

    /// Negative control: the run succeeds only when a scenario fails with
    /// findings of one of these rules (r1, r2, r3, r4, stale), e.g. with a
    /// broken notifier_mode or configs/broken-atc.toml. Infrastructure
    /// problems still fail the run.
    #[arg(long, value_name = "RULES", value_delimiter = ',')]
    pub expect_caught: Vec<FindingRule>,

    /// Ordering scripts (sim/scripts/*.amdvi) to run in the guest instead of
    /// the suite: the guest's amdvi-script runs each literal order against the
    /// daemon, and each guest verdict must equal `amdvi-sim --literal`'s.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub scripts: Vec<PathBuf>,

    /// The static amdvi-script binary for --scripts [default:
    /// target/x86_64-unknown-linux-gnu/release/amdvi-script; `make script-bin`].
    #[arg(long, value_name = "PATH")]
    pub script_bin: Option<PathBuf>,

    /// A fault rule the daemon has (its --config), POINT:ACTION, for the
    /// simulator's reference verdicts of --scripts (repeatable).
    #[arg(long = "sim-fault", value_name = "POINT:ACTION")]
    pub sim_faults: Vec<String>,

    /// Results file [default: build/results.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Directory for the initramfs, logs and sockets [default: build/ in the repository].
    #[arg(long, value_name = "DIR")]
    pub build_dir: Option<PathBuf>,

    /// Print the daemon and QEMU command lines and exit.
    #[arg(long)]
    pub print_cmdline: bool,

    /// Keep the initramfs and the socket after the run (logs and results are
    /// always kept).
    #[arg(long)]
    pub keep: bool,

    /// -v: show the guest's amdvi-init lines; -vv: echo the whole console.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Soak: keep one daemon process for DURATION (90s, 30m, 1h30m; a bare
    /// number is seconds) and boot the suite against it again and again,
    /// cycling through --soak-configs (kernel and paging churn; each boot is
    /// a new QEMU on the same socket). Samples the daemon's RSS and open fds
    /// into <build-dir>/soak/samples.csv; fails unless every boot passed
    /// with 0 failing findings and 0 lost events, and the fd count after the
    /// last disconnect equals the one after the first.
    #[arg(long, value_name = "DURATION", value_parser = crate::soak::parse_duration,
          conflicts_with_all = ["kver", "kernel", "paging", "shadow", "scripts", "expect_caught",
                                "no_device", "print_cmdline", "json"],
          help_heading = "Soak")]
    pub soak: Option<std::time::Duration>,

    /// The boots of a soak in turn, SERIES:LEVELS, comma-separated [default:
    /// 6.12:5,6.1:4,6.12:4,6.1:5; a kernel the cache cannot provide is then
    /// left out with a warning, while one named here is an error].
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "soak",
          value_parser = crate::soak::parse_config, help_heading = "Soak")]
    pub soak_configs: Option<Vec<crate::soak::SoakConfig>>,

    /// DEBUGGING ONLY: boot without the amdvi device and without starting the
    /// daemon (checks the kernel, initramfs and console path; the suite cannot
    /// pass this way).
    #[arg(long, help_heading = "Debugging")]
    pub no_device: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_values() {
        let a = Args::try_parse_from(["amdvi-run"]).unwrap();
        assert_eq!(a.kver, None);
        assert_eq!((a.smp, a.mem, a.paging, a.timeout), (2, 512, 5, 600));
        assert_eq!(a.accel, Accel::Tcg);
        assert_eq!(a.carrier, CarrierChoice::Auto);
        let a = Args::try_parse_from([
            "amdvi-run",
            "--kver",
            "6.1",
            "--paging",
            "4",
            "--args",
            "-v --seed 3",
            "--carrier",
            "test-device",
            "--accel",
            "kvm",
            "-vv",
        ])
        .unwrap();
        assert_eq!(a.paging, 4);
        assert_eq!(a.args.as_deref(), Some("-v --seed 3"));
        assert_eq!(a.carrier, CarrierChoice::TestDevice);
        assert_eq!(a.verbose, 2);
        assert!(Args::try_parse_from(["amdvi-run", "--paging", "3"]).is_err());
        let a = Args::try_parse_from([
            "amdvi-run",
            "--scripts",
            "a.amdvi",
            "b.amdvi",
            "--sim-fault",
            "atc_invalidate:drop",
        ])
        .unwrap();
        assert_eq!(a.scripts.len(), 2);
        assert_eq!(a.sim_faults, ["atc_invalidate:drop"]);
        assert_eq!(CarrierChoice::Auto.resolve((10, 0, 2)), Carrier::Gpio);
        assert_eq!(CarrierChoice::Auto.resolve((10, 2, 0)), Carrier::TestDevice);
        assert_eq!(CarrierChoice::Gpio.resolve((10, 2, 0)), Carrier::Gpio);
    }
}
