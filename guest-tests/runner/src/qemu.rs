// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The QEMU and guest-kernel command lines, as pure functions of the settings.

use std::fmt;
use std::path::{Path, PathBuf};

/// CPU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Tcg,
    Kvm,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

/// Guest paging depth. `-cpu max` exposes LA57, so the guest uses 5 levels
/// unless the kernel is told `no5lvl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    Four,
    Five,
}

impl Paging {
    pub fn levels(self) -> u8 {
        match self {
            Paging::Four => 4,
            Paging::Five => 5,
        }
    }
}

/// The stock QEMU frontend that carries the amdvi vhost-user device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Carrier {
    /// `vhost-user-gpio-pci` (virtio id 41), the only choice on QEMU 10.0/10.1.
    Gpio,
    /// `vhost-user-test-device-pci` with virtio id 21 (QEMU >= 10.2).
    TestDevice,
}

/// The virtio device id the generic carrier presents.
///
/// QEMU's `vhost-user-test-device-pci` takes any id, but `virtio_init()`
/// looks its name up in `virtio_device_names[]` and asserts that the id is
/// inside that table (which ends at 41, GPIO, in QEMU 10.x and 11.x) and
/// named; 63 killed QEMU at once. The id must also be one no guest driver
/// binds, or that driver would take our device. 21 (VIRTIO_ID_SIGNAL_DIST,
/// "virtio-signal") is named in every QEMU table and has no Linux driver,
/// upstream or in the Debian 6.1 and 6.12 kernels (their modules.alias and
/// modules.builtin.modinfo claim 1-5, 8, 18, 19, 23, 24, 26, 27 and 33).
/// [`check_unclaimed`] refuses a guest kernel that does claim it.
pub const GENERIC_VIRTIO_ID: u32 = 21;

/// Fails when a module of the guest kernel (`lib/modules/<release>`) binds
/// virtio device id `id`: that driver, not the test module, would get it.
pub fn check_unclaimed(modules: &Path, id: u32) -> Result<(), String> {
    let needle = format!("virtio:d{id:08X}v");
    for f in ["modules.alias", "modules.builtin.modinfo"] {
        let Ok(data) = std::fs::read(modules.join(f)) else {
            continue;
        };
        let text = String::from_utf8_lossy(&data);
        if let Some(line) = text.split(['\n', '\0']).find(|l| {
            l.to_ascii_uppercase()
                .contains(&needle.to_ascii_uppercase())
        }) {
            return Err(format!(
                "the guest kernel has a driver for virtio id {id} ({}: {line}); \
                 it would take the amdvi device: use --carrier gpio",
                modules.join(f).display()
            ));
        }
    }
    Ok(())
}

impl Carrier {
    /// The carrier for a QEMU version (the generic test device became user
    /// creatable in 10.2).
    pub fn for_version(v: (u32, u32, u32)) -> Carrier {
        if v >= (10, 2, 0) {
            Carrier::TestDevice
        } else {
            Carrier::Gpio
        }
    }

    /// The `-device` value without `chardev=`/`id=`.
    pub fn device(self) -> &'static str {
        match self {
            Carrier::Gpio => "vhost-user-gpio-pci",
            Carrier::TestDevice => {
                "vhost-user-test-device-pci,virtio-id=21,num_vqs=2,config_size=8"
            }
        }
    }
}

/// Parses the first line of `qemu-system-x86_64 -version`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let v = rest.split_whitespace().next()?;
    let mut it = v.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = it.next()??;
    let minor = it.next().flatten().unwrap_or(0);
    let micro = it.next().flatten().unwrap_or(0);
    Some((major, minor, micro))
}

/// Everything the QEMU command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub smp: u32,
    pub mem_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest kernel command line (see [`kernel_cmdline`]).
    pub append: String,
    /// The vhost-user socket and carrier; `None` boots without the device
    /// (a debugging aid only).
    pub device: Option<(PathBuf, Carrier)>,
}

impl QemuConfig {
    /// Checks what [`qemu_argv`] assumes.
    pub fn validate(&self) -> Result<(), String> {
        if self.smp == 0 || self.smp > 64 {
            return Err(format!("--smp {} is out of range 1..64", self.smp));
        }
        if self.mem_mib < 128 {
            return Err(format!(
                "--mem {} MiB is too small (at least 128)",
                self.mem_mib
            ));
        }
        if self.smp > 1 && self.smp % 2 != 0 {
            return Err(format!(
                "--smp {} must be 1 or even: the vCPUs are split over two NUMA nodes",
                self.smp
            ));
        }
        if self.smp > 1 && self.mem_mib % 2 != 0 {
            return Err(format!(
                "--mem {} MiB must be even: it is split over two NUMA nodes",
                self.mem_mib
            ));
        }
        Ok(())
    }
}

/// The QEMU argument vector (without argv\[0\]).
///
/// Guest RAM is memfd-backed and shared so that the vhost-user daemon can map
/// it; with more than one vCPU it is split over two NUMA nodes (for page
/// migration tests), the first half of the vCPUs on node 0.
pub fn qemu_argv(c: &QemuConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let machine = if c.smp > 1 {
        format!("q35,accel={}", c.accel)
    } else {
        format!("q35,accel={},memory-backend=m0", c.accel)
    };
    // One socket per NUMA node and no L3 in CPUID: otherwise the vCPUs of the
    // two nodes share an LLC and the guest WARNs at boot (topology_sane:
    // "CPU #1's llc-sibling CPU #0 is not on the same node").
    let smp = if c.smp > 1 {
        format!("{},sockets=2,cores={},threads=1", c.smp, c.smp / 2)
    } else {
        "1".to_string()
    };
    let mem = format!("{}M", c.mem_mib);
    push(&[
        "-machine",
        &machine,
        "-cpu",
        "max,l3-cache=off",
        "-smp",
        &smp,
        "-m",
        &mem,
    ]);
    if c.smp > 1 {
        let m0 = c.mem_mib / 2;
        let m1 = c.mem_mib - m0;
        let cpus0 = c.smp / 2;
        let range = |lo: u32, hi: u32| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        };
        let obj0 = format!("memory-backend-memfd,id=m0,size={m0}M,share=on");
        let obj1 = format!("memory-backend-memfd,id=m1,size={m1}M,share=on");
        let node0 = format!("node,memdev=m0,cpus={}", range(0, cpus0 - 1));
        let node1 = format!("node,memdev=m1,cpus={}", range(cpus0, c.smp - 1));
        push(&[
            "-object", &obj0, "-object", &obj1, "-numa", &node0, "-numa", &node1,
        ]);
    } else {
        let obj0 = format!("memory-backend-memfd,id=m0,size={}M,share=on", c.mem_mib);
        push(&["-object", &obj0]);
    }
    if let Some((sock, carrier)) = &c.device {
        let chardev = format!("socket,id=c0,path={}", sock.display());
        let device = format!("{},chardev=c0,id=amdvi0", carrier.device());
        push(&["-chardev", &chardev, "-device", &device]);
    }
    let kernel = c.kernel.display().to_string();
    let initrd = c.initrd.display().to_string();
    push(&[
        "-kernel",
        &kernel,
        "-initrd",
        &initrd,
        "-append",
        &c.append,
        // No default NIC/VGA/monitor; the serial console is QEMU's stdout.
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]);
    a
}

/// Settings that go on the guest kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestArgs {
    pub filter: Option<String>,
    pub args: Option<String>,
    pub modparams: Option<String>,
    /// Shadow mode: amdvi-shadow's arguments (docs/shadow.md).
    pub shadow: Option<String>,
    /// Extra kernel parameters, appended verbatim.
    pub extra: Option<String>,
}

/// The guest kernel command line. `quiet loglevel=5` keeps boot noise off the
/// console but lets KERN_WARNING and worse through (a `WARN()` splat is
/// KERN_WARNING, which `loglevel=4` would hide); `panic=-1` with QEMU's
/// `-no-reboot` turns a panic into a QEMU exit.
pub fn kernel_cmdline(paging: Paging, g: &GuestArgs) -> Result<String, String> {
    let mut s = String::from("console=ttyS0 panic=-1 quiet loglevel=5");
    if paging == Paging::Four {
        s.push_str(" no5lvl");
    }
    for (key, val) in [
        ("amdvi.filter", &g.filter),
        ("amdvi.args", &g.args),
        ("amdvi.modparams", &g.modparams),
        ("amdvi.shadow", &g.shadow),
    ] {
        let Some(v) = val else { continue };
        if v.contains('"') || v.contains('\n') {
            return Err(format!(
                "{key}: the kernel command line cannot carry double quotes or newlines: {v:?}"
            ));
        }
        if v.is_empty() {
            continue;
        }
        if v.contains(char::is_whitespace) {
            s.push_str(&format!(" {key}=\"{v}\""));
        } else {
            s.push_str(&format!(" {key}={v}"));
        }
    }
    if let Some(extra) = g.extra.as_deref().filter(|e| !e.trim().is_empty()) {
        s.push(' ');
        s.push_str(extra.trim());
    }
    // COMMAND_LINE_SIZE on x86.
    if s.len() >= 2048 {
        return Err(format!(
            "kernel command line is {} bytes, the limit is 2047",
            s.len()
        ));
    }
    Ok(s)
}

/// Quotes one word for a POSIX shell, only when needed.
pub fn shell_quote(w: &str) -> String {
    let plain = !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// A command line for printing.
pub fn shell_line<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_carrier_presents_an_id_qemu_names() {
        // QEMU 10.x/11.x name ids 1..=41 (with gaps below 21): beyond the
        // table, virtio_id_to_name() asserts.
        const VIRTIO_ID_GPIO: u32 = 41;
        const { assert!(GENERIC_VIRTIO_ID <= VIRTIO_ID_GPIO) };
        assert!(Carrier::TestDevice
            .device()
            .contains(&format!("virtio-id={GENERIC_VIRTIO_ID},")));
    }

    #[test]
    fn a_kernel_claiming_the_generic_id_is_refused() {
        let dir = std::env::temp_dir().join(format!("amdvi-alias-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("modules.alias"),
            "alias virtio:d00000001v* virtio_net\nalias virtio:d00000029v* gpio_virtio\n",
        )
        .unwrap();
        assert_eq!(check_unclaimed(&dir, 21), Ok(()));
        let e = check_unclaimed(&dir, 41).unwrap_err();
        assert!(
            e.contains("gpio_virtio") && e.contains("--carrier gpio"),
            "{e}"
        );
        std::fs::write(
            dir.join("modules.builtin.modinfo"),
            b"x.alias=virtio:d00000015v*\0",
        )
        .unwrap();
        assert!(
            check_unclaimed(&dir, 21).is_err(),
            "built-in drivers count too"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn cfg() -> QemuConfig {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            accel: Accel::Tcg,
            smp: 2,
            mem_mib: 512,
            kernel: "/boot/vmlinuz".into(),
            initrd: "build/initramfs.cpio".into(),
            append: "console=ttyS0".into(),
            device: Some(("build/amdvi.sock".into(), Carrier::Gpio)),
        }
    }

    /// The value following `flag`, for each occurrence.
    fn values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn default_two_nodes_with_gpio_carrier() {
        let a = qemu_argv(&cfg());
        assert_eq!(values(&a, "-machine"), ["q35,accel=tcg"]);
        assert_eq!(values(&a, "-cpu"), ["max,l3-cache=off"]);
        assert_eq!(values(&a, "-smp"), ["2,sockets=2,cores=1,threads=1"]);
        assert_eq!(values(&a, "-m"), ["512M"]);
        assert_eq!(
            values(&a, "-object"),
            [
                "memory-backend-memfd,id=m0,size=256M,share=on",
                "memory-backend-memfd,id=m1,size=256M,share=on"
            ]
        );
        assert_eq!(
            values(&a, "-numa"),
            ["node,memdev=m0,cpus=0", "node,memdev=m1,cpus=1"]
        );
        assert_eq!(
            values(&a, "-chardev"),
            ["socket,id=c0,path=build/amdvi.sock"]
        );
        assert_eq!(
            values(&a, "-device"),
            ["vhost-user-gpio-pci,chardev=c0,id=amdvi0"]
        );
        assert_eq!(values(&a, "-kernel"), ["/boot/vmlinuz"]);
        assert_eq!(values(&a, "-initrd"), ["build/initramfs.cpio"]);
        assert_eq!(values(&a, "-append"), ["console=ttyS0"]);
        assert_eq!(values(&a, "-serial"), ["stdio"]);
        assert!(a.iter().any(|x| x == "-no-reboot"));
        assert!(a.iter().any(|x| x == "-nodefaults"));
    }

    #[test]
    fn single_cpu_single_node_kvm_test_device() {
        let mut c = cfg();
        c.smp = 1;
        c.accel = Accel::Kvm;
        c.device = Some(("s".into(), Carrier::TestDevice));
        let a = qemu_argv(&c);
        assert_eq!(values(&a, "-machine"), ["q35,accel=kvm,memory-backend=m0"]);
        assert_eq!(values(&a, "-smp"), ["1"]);
        assert_eq!(
            values(&a, "-object"),
            ["memory-backend-memfd,id=m0,size=512M,share=on"]
        );
        assert!(values(&a, "-numa").is_empty());
        assert_eq!(
            values(&a, "-device"),
            ["vhost-user-test-device-pci,virtio-id=21,num_vqs=2,config_size=8,chardev=c0,id=amdvi0"]
        );
    }

    #[test]
    fn more_cpus_and_no_device() {
        let mut c = cfg();
        c.smp = 4;
        c.mem_mib = 1024;
        c.device = None;
        let a = qemu_argv(&c);
        assert_eq!(values(&a, "-smp"), ["4,sockets=2,cores=2,threads=1"]);
        assert_eq!(
            values(&a, "-numa"),
            ["node,memdev=m0,cpus=0-1", "node,memdev=m1,cpus=2-3"]
        );
        assert_eq!(
            values(&a, "-object"),
            [
                "memory-backend-memfd,id=m0,size=512M,share=on",
                "memory-backend-memfd,id=m1,size=512M,share=on"
            ]
        );
        assert!(values(&a, "-device").is_empty());
        assert!(values(&a, "-chardev").is_empty());
    }

    #[test]
    fn validation() {
        // (vCPUs, MiB, valid): two NUMA nodes need an even split of both.
        let cases = [
            (2, 512, true),
            (2, 511, false),
            (1, 511, true),
            (1, 64, false),
            (0, 512, false),
            (3, 512, false),
            (4, 512, true),
            (65, 512, false),
        ];
        for (smp, mem_mib, valid) in cases {
            let c = QemuConfig {
                smp,
                mem_mib,
                ..cfg()
            };
            assert_eq!(c.validate().is_ok(), valid, "--smp {smp} --mem {mem_mib}");
        }
    }

    #[test]
    fn versions_and_carrier() {
        let v = parse_version(
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright",
        );
        assert_eq!(v, Some((10, 0, 2)));
        assert_eq!(
            parse_version("QEMU emulator version 10.2.0\n"),
            Some((10, 2, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 11.0.50 (v11.0.0-123-gabc)"),
            Some((11, 0, 50))
        );
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(Carrier::for_version((10, 0, 2)), Carrier::Gpio);
        assert_eq!(Carrier::for_version((10, 1, 9)), Carrier::Gpio);
        assert_eq!(Carrier::for_version((10, 2, 0)), Carrier::TestDevice);
        assert_eq!(Carrier::for_version((11, 0, 0)), Carrier::TestDevice);
    }

    #[test]
    fn cmdlines() {
        let g = GuestArgs {
            filter: Some("fork*".into()),
            args: Some("-v --seed 3".into()),
            modparams: Some("notifier_mode=end_only".into()),
            shadow: None,
            extra: Some(" dyndbg=+p ".into()),
        };
        assert_eq!(
            kernel_cmdline(Paging::Five, &g).unwrap(),
            "console=ttyS0 panic=-1 quiet loglevel=5 amdvi.filter=fork* amdvi.args=\"-v --seed 3\" amdvi.modparams=notifier_mode=end_only dyndbg=+p"
        );
        let plain = kernel_cmdline(Paging::Four, &GuestArgs::default()).unwrap();
        assert_eq!(plain, "console=ttyS0 panic=-1 quiet loglevel=5 no5lvl");
        let shadow = GuestArgs {
            shadow: Some("--rate 0 -- amdvi-churn cow".into()),
            ..GuestArgs::default()
        };
        assert_eq!(
            kernel_cmdline(Paging::Five, &shadow).unwrap(),
            "console=ttyS0 panic=-1 quiet loglevel=5 amdvi.shadow=\"--rate 0 -- amdvi-churn cow\""
        );
        let bad = GuestArgs {
            args: Some("say \"hi\"".into()),
            ..GuestArgs::default()
        };
        assert!(kernel_cmdline(Paging::Five, &bad).is_err());
        let long = GuestArgs {
            args: Some("x".repeat(3000)),
            ..GuestArgs::default()
        };
        assert!(kernel_cmdline(Paging::Five, &long).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-m"), "-m");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_line(&["-append", "console=ttyS0 quiet"]),
            "-append 'console=ttyS0 quiet'"
        );
    }
}
