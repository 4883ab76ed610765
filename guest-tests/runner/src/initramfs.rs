// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Assembles the guest initramfs: static busybox and its applet links, the
//! `/init` script, kernel modules the guest kernel lacks built in (virtio on
//! 6.1), the test module and the static test programs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use log::{info, warn};

use crate::cpio::{self, Entry};
use crate::error::{io_err, Error, Result};
use crate::kmod::{self, ExecKind};

/// Modules the guest needs for the transport, whatever else the test module
/// depends on.
pub const TRANSPORT_MODULES: &[&str] = &["virtio_pci"];

/// Modules some mm scenarios use when the kernel has them: zram (and the
/// compressor it asks the crypto API for) gives the guest swap, loop and
/// ext4 a block-backed file system. A kernel without one loads the rest, and
/// the scenarios that need it skip with the reason.
pub const SCENARIO_MODULES: &[&str] = &["lzo_rle", "zram", "loop", "ext4"];

/// Where the pieces of the image come from.
#[derive(Debug, Clone)]
pub struct Spec {
    pub busybox: PathBuf,
    pub init: PathBuf,
    /// Guest kernel release (names `/lib/modules/<release>` in the image).
    pub release: String,
    /// The host's `/lib/modules/<release>`, if there is one.
    pub modules_dir: Option<PathBuf>,
    pub test_module: Option<PathBuf>,
    /// Programs installed in `/bin`.
    pub programs: Vec<PathBuf>,
    /// Ordering scripts installed in `/scripts` (their presence makes
    /// `/init` run `amdvi-script` instead of the suite).
    pub scripts: Vec<PathBuf>,
}

/// What went into the image.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub bytes: usize,
    pub kernel_modules: Vec<String>,
    pub programs: Vec<String>,
    pub test_module: bool,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| io_err(format!("reading {}", path.display()), e))
}

/// Reads a module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` with the host's tools.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return read(path);
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|e| io_err(format!("running {tool} to decompress {name}"), e))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{tool} -dc {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Strips a compression suffix: `x.ko.xz` -> `x.ko`.
fn uncompressed_name(rel: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = rel.strip_suffix(ext) {
            return s.to_string();
        }
    }
    rel.to_string()
}

/// Kernel modules (paths relative to the modules dir) to load before the
/// test module, in order.
pub fn kernel_modules(spec: &Spec, test_module: Option<&[u8]>) -> Result<Vec<String>> {
    let mut wanted: Vec<String> = TRANSPORT_MODULES.iter().map(|s| s.to_string()).collect();
    if let Some(deps) = test_module.and_then(|ko| kmod::modinfo_field(ko, "depends")) {
        wanted.extend(
            deps.split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string),
        );
    }
    let Some(dir) = &spec.modules_dir else {
        warn!(
            "no /lib/modules/{} on the host: assuming {} built into the kernel",
            spec.release,
            wanted.join(", ")
        );
        return Ok(Vec::new());
    };
    let text = |f: &str| -> Result<String> {
        let p = dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| io_err(format!("reading {}", p.display()), e))
    };
    let dep = kmod::ModulesDep::parse(&text("modules.dep")?);
    let builtin = kmod::parse_builtin(&text("modules.builtin")?);
    let available = |m: &&&str| builtin.contains(**m) || dep.path_of(m).is_some();
    let mut wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    wanted.extend(SCENARIO_MODULES.iter().filter(available));
    kmod::load_order(&wanted, &dep, &builtin).map_err(|m| {
        Error::Setup(format!(
            "kernel {} has no module `{m}` (neither built in nor in {}/modules.dep)",
            spec.release,
            dir.display()
        ))
    })
}

/// Lists the busybox applets as paths relative to `/` (`bin/sh`, `sbin/insmod`...).
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| io_err(format!("running {} --list-full", busybox.display()), e))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "{} --list-full failed",
            busybox.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

/// Adds directory entries for every parent of every path, parents first.
fn with_parent_dirs(files: Vec<Entry>, extra_dirs: &[&str]) -> Vec<Entry> {
    let mut dirs: BTreeSet<String> = extra_dirs.iter().map(|d| d.to_string()).collect();
    for e in &files {
        let mut p = e.path.trim_start_matches('/');
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            dirs.insert(p.to_string());
        }
    }
    // Sorted by path, a parent comes before its children.
    let mut out: Vec<Entry> = dirs.iter().map(|d| Entry::dir(d)).collect();
    out.extend(files);
    out
}

/// Builds the archive into `out` (an uncompressed newc cpio; the kernel
/// accepts it as it is and TCG does not spend time on decompression).
pub fn build(spec: &Spec, out: &Path) -> Result<Summary> {
    let mut summary = Summary::default();
    let busybox = read(&spec.busybox)?;
    match kmod::exec_kind(&busybox) {
        ExecKind::StaticElf => {}
        _ => {
            return Err(Error::Setup(format!(
                "{} is not a static ELF program: install busybox-static (make deps)",
                spec.busybox.display()
            )))
        }
    }
    let mut files = vec![
        Entry::chardev("dev/console", 0o600, 5, 1),
        Entry::chardev("dev/null", 0o666, 1, 3),
        Entry::file("init", 0o755, read(&spec.init)?),
        Entry::file("bin/busybox", 0o755, busybox),
    ];
    let mut program_names = BTreeSet::new();
    for p in &spec.programs {
        let data = read(p)?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if kmod::exec_kind(&data) == ExecKind::DynamicElf {
            return Err(Error::Setup(format!(
                "{} is dynamically linked; the guest has no libc: link it with -static",
                p.display()
            )));
        }
        program_names.insert(name.clone());
        files.push(Entry::file(&format!("bin/{name}"), 0o755, data));
    }
    for applet in busybox_applets(&spec.busybox)? {
        let base = applet.rsplit('/').next().unwrap_or(&applet);
        if program_names.contains(base) {
            continue;
        }
        files.push(Entry::symlink(&applet, "/bin/busybox"));
    }
    for p in &spec.scripts {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push(Entry::file(&format!("scripts/{name}"), 0o644, read(p)?));
    }
    let test_module = spec.test_module.as_deref().map(read).transpose()?;
    let modules = kernel_modules(spec, test_module.as_deref())?;
    let mut load_list = String::new();
    for rel in &modules {
        let dir = spec
            .modules_dir
            .as_ref()
            .expect("modules come from a modules dir");
        let data = read_module(&dir.join(rel))?;
        let guest = format!("lib/modules/{}/{}", spec.release, uncompressed_name(rel));
        load_list.push_str(&format!("/{guest}\n"));
        files.push(Entry::file(&guest, 0o644, data));
        summary.kernel_modules.push(kmod::module_name(rel));
    }
    files.push(Entry::file(
        "etc/amdvi-modules",
        0o644,
        load_list.into_bytes(),
    ));
    if let Some(ko) = test_module {
        files.push(Entry::file("lib/modules/amdvi_test.ko", 0o644, ko));
        summary.test_module = true;
    }
    let entries = with_parent_dirs(
        files,
        &[
            "bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root",
            "mnt", "etc",
        ],
    );
    let bytes = cpio::write_newc(&entries);
    summary.bytes = bytes.len();
    summary.programs = program_names.into_iter().collect();
    std::fs::write(out, &bytes).map_err(|e| io_err(format!("writing {}", out.display()), e))?;
    info!(
        "initramfs {} ({} KiB): kernel modules [{}], test module {}, programs [{}]",
        out.display(),
        summary.bytes / 1024,
        summary.kernel_modules.join(" "),
        if summary.test_module {
            "yes"
        } else {
            "MISSING"
        },
        summary.programs.join(" ")
    );
    Ok(summary)
}

/// Executable regular files in `dir` (and its `bin/` and `build/`), which the
/// guest gets in `/bin`.
pub fn programs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("bin"), dir.join("build")] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                found.push(e.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first() {
        let e = with_parent_dirs(
            vec![Entry::file("lib/modules/6.1/kernel/x.ko", 0o644, vec![1])],
            &["bin"],
        );
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/x.ko"
            ]
        );
    }

    #[test]
    fn compressed_names() {
        assert_eq!(uncompressed_name("kernel/a.ko.xz"), "kernel/a.ko");
        assert_eq!(uncompressed_name("kernel/a.ko.zst"), "kernel/a.ko");
        assert_eq!(uncompressed_name("kernel/a.ko"), "kernel/a.ko");
    }
}
