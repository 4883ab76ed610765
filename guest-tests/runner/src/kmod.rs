// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Kernel-module and ELF helpers for building the initramfs: which modules of
//! the guest kernel must be loaded (and in which order) before the test
//! module, what a `.ko` says about itself, and whether a program is static.

use std::collections::{HashMap, HashSet};

/// Module name as the kernel knows it: file stem without `.ko*`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.find(".ko").map_or(base, |i| &base[..i]);
    stem.replace('-', "_")
}

/// `modules.dep`: for each module name, its path and its dependencies'
/// paths (relative to `/lib/modules/<ver>`).
#[derive(Debug, Default, Clone)]
pub struct ModulesDep {
    entries: HashMap<String, (String, Vec<String>)>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> ModulesDep {
        let mut entries = HashMap::new();
        for line in text.lines() {
            let Some((module, deps)) = line.split_once(':') else {
                continue;
            };
            let module = module.trim();
            if module.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(str::to_string).collect();
            entries.insert(module_name(module), (module.to_string(), deps));
        }
        ModulesDep { entries }
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.entries
            .get(&name.replace('-', "_"))
            .map(|(p, _)| p.as_str())
    }
}

/// Names of the built-in modules listed in `modules.builtin`.
pub fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// Paths of the modules to insmod, in order, so that every name in `wanted`
/// is available. Built-in modules need nothing. `modules.dep` lists the full
/// dependency closure of each module with the deepest last, so the reverse of
/// that list followed by the module itself is a valid load order (what
/// modprobe does).
pub fn load_order(
    wanted: &[&str],
    dep: &ModulesDep,
    builtin: &HashSet<String>,
) -> Result<Vec<String>, String> {
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        let name = name.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let Some((path, deps)) = dep.entries.get(&name) else {
            return Err(name);
        };
        for d in deps.iter().rev().chain(std::iter::once(path)) {
            if !order.contains(d) {
                order.push(d.clone());
            }
        }
    }
    Ok(order)
}

/// A field of a module's `.modinfo` section (`vermagic`, `depends`, ...),
/// found by scanning the file for `\0field=`.
pub fn modinfo_field(ko: &[u8], field: &str) -> Option<String> {
    let needle = format!("\0{field}=");
    let needle = needle.as_bytes();
    let start = ko.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let len = ko[start..].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&ko[start..start + len]).into_owned())
}

/// Kernel release a module was built for: the first word of its vermagic.
pub fn module_release(ko: &[u8]) -> Option<String> {
    modinfo_field(ko, "vermagic").and_then(|v| v.split_whitespace().next().map(str::to_string))
}

/// What an executable file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecKind {
    StaticElf,
    /// Has a program interpreter (dynamically linked): unusable in the guest.
    DynamicElf,
    NotElf,
}

/// Classifies a file by its ELF64 program headers (PT_INTERP = dynamic).
pub fn exec_kind(data: &[u8]) -> ExecKind {
    const PT_INTERP: u32 = 3;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return ExecKind::NotElf;
    }
    // Only ELF64 little-endian (x86-64) is expected here.
    if data[4] != 2 || data[5] != 1 {
        return ExecKind::NotElf;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(h) = data.get(o..o + 4) else {
            break;
        };
        if u32::from_le_bytes(h.try_into().expect("4 bytes")) == PT_INTERP {
            return ExecKind::DynamicElf;
        }
    }
    ExecKind::StaticElf
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP_61: &str = "\
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_balloon.ko.xz: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
        assert_eq!(module_name("a/b/snd-hda-intel.ko.zst"), "snd_hda_intel");
        assert_eq!(module_name("x.ko.xz"), "x");
    }

    #[test]
    fn virtio_order_on_61() {
        let dep = ModulesDep::parse(DEP_61);
        let order = load_order(&["virtio_pci"], &dep, &HashSet::new()).unwrap();
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci"
            ]
        );
        // The test module's own dependencies add nothing already loaded.
        let order2 = load_order(
            &["virtio_pci", "virtio", "virtio-ring"],
            &dep,
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(order2, order);
        assert_eq!(
            dep.path_of("virtio_balloon"),
            Some("kernel/drivers/virtio/virtio_balloon.ko.xz")
        );
    }

    #[test]
    fn builtin_needs_nothing_and_unknown_fails() {
        let builtin =
            parse_builtin("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n");
        let dep = ModulesDep::parse("");
        assert_eq!(
            load_order(&["virtio_pci", "virtio"], &dep, &builtin).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            load_order(&["nope"], &dep, &builtin),
            Err("nope".to_string())
        );
    }

    #[test]
    fn modinfo() {
        let mut ko = b"\x7fELF....junk\0license=GPL\0vermagic=6.12.117+deb12-cloud-amd64 SMP preempt mod_unload modversions \0depends=virtio,virtio_ring\0name=amdvi_test\0".to_vec();
        ko.extend_from_slice(&[0u8; 16]);
        assert_eq!(
            module_release(&ko).as_deref(),
            Some("6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(
            modinfo_field(&ko, "depends").as_deref(),
            Some("virtio,virtio_ring")
        );
        assert_eq!(modinfo_field(&ko, "name").as_deref(), Some("amdvi_test"));
        assert_eq!(modinfo_field(&ko, "author"), None);
    }

    fn elf_with_phdrs(types: &[u32]) -> Vec<u8> {
        let mut d = vec![0u8; 64 + 56 * types.len()];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        d[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        d[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            d[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        d
    }

    #[test]
    fn static_or_dynamic() {
        assert_eq!(exec_kind(&elf_with_phdrs(&[6, 1, 1])), ExecKind::StaticElf);
        assert_eq!(exec_kind(&elf_with_phdrs(&[6, 3, 1])), ExecKind::DynamicElf);
        assert_eq!(exec_kind(b"#!/bin/sh\necho hi\n"), ExecKind::NotElf);
        // The host's own shell is dynamic on Debian; busybox-static is not.
        if let Ok(sh) = std::fs::read("/bin/bash") {
            assert_eq!(exec_kind(&sh), ExecKind::DynamicElf);
        }
    }
}
