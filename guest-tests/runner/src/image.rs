// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The guest image: the test module built against the guest kernel's tree,
//! the test programs, the ordering scripts, and the initramfs holding them.

use std::path::{Path, PathBuf};
use std::process::Command;

use log::{info, warn};

use crate::cli::Args;
use crate::error::{io_err, Error, Result};
use crate::guest_kernel::GuestKernel;
use crate::initramfs;
use crate::kmod;
use crate::plan::{short, Plan};
use crate::scripts;

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

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The compiler a Debian headers tree asks for (`CC = ... gcc-12` in its
/// .kernelvariables), when this host does not have it.
fn missing_debian_cc(headers: &Path) -> Option<String> {
    let vars = std::fs::read_to_string(headers.join(".kernelvariables")).ok()?;
    let cc = vars
        .lines()
        .find_map(|l| l.trim().strip_prefix("CC ="))?
        .split_whitespace()
        .last()?
        .replace("$(CROSS_COMPILE)", "x86_64-linux-gnu-");
    (!on_path(&cc)).then_some(cc)
}

/// Make variables for building an out-of-tree module against `headers` on
/// this host.
fn kbuild_vars(k: &GuestKernel) -> Result<Vec<String>> {
    let headers = &k.headers;
    if !headers.join("Makefile").is_file() {
        return Err(Error::Setup(format!(
            "kernel build tree {} not found: `scripts/kernel-cache.sh fetch {}`, or pass --headers",
            headers.display(),
            k.release
        )));
    }
    if !headers.join("Module.symvers").is_file() {
        return Err(Error::Setup(format!(
            "{} has no Module.symvers, so modpost cannot resolve the module's symbols: \
             the tree was built with `make bzImage` only; run `make modules` (or plain `make`) in it, \
             or `make kernel` for the project's own tree",
            headers.display()
        )));
    }
    let mut vars = vec![
        format!("KVER={}", k.release),
        format!("KDIR={}", headers.display()),
    ];
    if let Some(cc) = missing_debian_cc(headers) {
        info!(
            "{cc} (the compiler of {}) is not installed: building the test module with gcc",
            k.release
        );
        vars.push("CC=gcc".into());
    }
    if !on_path("pahole") {
        info!("pahole is not installed: the test module is built without BTF");
        vars.push("CONFIG_DEBUG_INFO_BTF_MODULES=".into());
    }
    Ok(vars)
}

/// The test module: --module, or built from guest-tests/module. `None` when
/// there is no module source yet (the guest then reports it).
fn test_module(args: &Args, root: &Path, k: &GuestKernel) -> Result<Option<PathBuf>> {
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
        make(&dir, &kbuild_vars(k)?)?;
        dir.join("amdvi_test.ko")
    };
    let data = std::fs::read(&ko).map_err(|e| io_err(format!("reading {}", ko.display()), e))?;
    match kmod::module_release(&data) {
        Some(r) if r == k.release => Ok(Some(ko)),
        Some(r) => Err(Error::Setup(format!(
            "{} was built for {r}, the guest runs {}",
            ko.display(),
            k.release
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

/// The amdvi-script binary, after checking every --scripts file loads.
fn script_runner(args: &Args, root: &Path) -> Result<PathBuf> {
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
    Ok(bin)
}

/// Builds the module and programs and writes the initramfs to `plan.initrd`.
pub fn build(args: &Args, plan: &Plan) -> Result<()> {
    let module = test_module(args, &plan.root, &plan.kernel)?;
    let mut programs = test_programs(args, &plan.root)?;
    if !args.scripts.is_empty() {
        programs.push(script_runner(args, &plan.root)?);
    }
    let spec = initramfs::Spec {
        busybox: PathBuf::from("/bin/busybox"),
        init: plan.root.join("guest-tests/initramfs/init"),
        release: plan.kernel.release.clone(),
        modules_dir: plan.kernel.modules.clone(),
        test_module: module,
        programs,
        scripts: args.scripts.clone(),
    };
    initramfs::build(&spec, &plan.initrd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_cc_is_read_from_kernelvariables() {
        let dir = std::env::temp_dir().join(format!("amdvi-kv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(".kernelvariables"),
            "CC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) $(CROSS_COMPILE)gcc-99\n",
        )
        .unwrap();
        assert_eq!(
            missing_debian_cc(&dir).as_deref(),
            Some("x86_64-linux-gnu-gcc-99")
        );
        std::fs::remove_file(dir.join(".kernelvariables")).unwrap();
        assert_eq!(
            missing_debian_cc(&dir),
            None,
            "no .kernelvariables: the tree's own CC"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_tree_without_module_symvers_is_named() {
        let dir = std::env::temp_dir().join(format!("amdvi-symvers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Makefile"), "").unwrap();
        let k = GuestKernel {
            release: "6.12.0".into(),
            image: dir.join("bzImage"),
            headers: dir.clone(),
            modules: None,
            origin: crate::guest_kernel::Origin::Own,
        };
        let e = kbuild_vars(&k).unwrap_err().to_string();
        assert!(
            e.contains("no Module.symvers") && e.contains("make modules"),
            "{e}"
        );
        std::fs::write(dir.join("Module.symvers"), "").unwrap();
        let v = kbuild_vars(&k).unwrap();
        assert!(v.contains(&format!("KDIR={}", dir.display())), "{v:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
