// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which guest kernel a run boots, and where its build tree and modules are:
//! your own (`--kernel`), the kernel cache (`scripts/kernel-cache.sh`), or an
//! installed kernel under /boot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use log::{info, warn};
use serde::Serialize;

use crate::cli::Args;
use crate::error::{io_err, Error, Result};
use crate::kernel;

/// Where the guest kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `--kernel`.
    Own,
    /// The kernel cache, with the Debian packages it was unpacked from.
    Cache { packages: BTreeMap<String, String> },
    /// An installed kernel under /boot.
    Boot,
}

/// The guest kernel of a run.
#[derive(Debug, Clone, Serialize)]
pub struct GuestKernel {
    pub release: String,
    pub image: PathBuf,
    /// The kbuild tree the test module is built against.
    pub headers: PathBuf,
    /// `lib/modules/<release>` with a modules.dep, when there is one.
    pub modules: Option<PathBuf>,
    pub origin: Origin,
}

/// The cache directory: $AMDVI_CACHE, else $XDG_CACHE_HOME/amdvi-bench, else
/// ~/.cache/amdvi-bench (the same rule as scripts/kernel-cache.sh).
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("AMDVI_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("amdvi-bench")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/amdvi-bench")))
}

/// Complete releases in the cache (those with a manifest).
pub fn cached_releases(cache: &Path) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(cache.join("kernels")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect()
}

/// The release of `series` pinned in `pins` (KVER: space-separated releases).
pub fn pinned<'a>(pins: &'a str, series: &str) -> Option<&'a str> {
    pins.split_whitespace()
        .find(|r| kernel::in_series(r, series))
}

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(default)]
    packages: BTreeMap<String, String>,
}

fn from_cache(cache: &Path, release: &str) -> Option<GuestKernel> {
    let dir = cache.join("kernels").join(release);
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).ok()?).ok()?;
    let modules = dir.join("modules");
    Some(GuestKernel {
        release: release.to_string(),
        image: dir.join("vmlinuz"),
        headers: dir.join("headers"),
        modules: modules.join("modules.dep").is_file().then_some(modules),
        origin: Origin::Cache {
            packages: manifest.packages,
        },
    })
}

fn from_boot(release: &str) -> GuestKernel {
    let modules = PathBuf::from(format!("/lib/modules/{release}"));
    GuestKernel {
        release: release.to_string(),
        image: PathBuf::from(format!("/boot/vmlinuz-{release}")),
        headers: modules.join("build"),
        modules: modules.join("modules.dep").is_file().then_some(modules),
        origin: Origin::Boot,
    }
}

fn boot_releases() -> Vec<String> {
    std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `scripts/kernel-cache.sh fetch KVER` so that the cache holds the
/// kernel asked for. Failure is not fatal: an older cached release, or one
/// under /boot, may still do.
fn fetch(root: &Path, kver: &str) {
    let script = root.join("scripts/kernel-cache.sh");
    if !script.is_file() {
        return;
    }
    info!("{} fetch {kver}", script.display());
    match Command::new(&script).arg("fetch").arg(kver).status() {
        Ok(st) if st.success() => {}
        Ok(st) => warn!("{} fetch {kver} failed ({st})", script.display()),
        Err(e) => warn!("cannot run {}: {e}", script.display()),
    }
}

fn read_release(image: &Path) -> Result<Option<String>> {
    let data = std::fs::read(image).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (Debian installs /boot/vmlinuz-* readable by root only)"
        } else {
            ""
        };
        io_err(format!("reading {}{hint}", image.display()), e)
    })?;
    Ok(kernel::bzimage_release(&data))
}

/// `--kernel IMAGE`: the release comes from --kver or the image's header.
fn own(args: &Args, image: &Path, cache: Option<&Path>) -> Result<GuestKernel> {
    let from_header = read_release(image)?;
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
    // A cached Debian kernel passed by path keeps its tree and modules.
    let mut k = cache
        .and_then(|c| from_cache(c, &release))
        .unwrap_or_else(|| from_boot(&release));
    k.image = image.to_path_buf();
    k.origin = Origin::Own;
    Ok(k)
}

/// Resolves the guest kernel of a run.
pub fn resolve(args: &Args, root: &Path) -> Result<GuestKernel> {
    let cache = cache_dir();
    let mut k = if let Some(image) = &args.kernel {
        own(args, image, cache.as_deref())?
    } else {
        let kver = args.kver.as_deref().unwrap_or("6.12");
        let pins = std::env::var("KVER").unwrap_or_default();
        let want = if kernel::is_series(kver) {
            pinned(&pins, kver).unwrap_or(kver).to_string()
        } else {
            kver.to_string()
        };
        fetch(root, &want);
        let cached = cache.as_deref().map(cached_releases).unwrap_or_default();
        let boot = boot_releases();
        let pick = |list: &[String]| -> Option<String> {
            if kernel::is_series(&want) {
                kernel::newest_in_series(list, &want).map(str::to_string)
            } else {
                list.iter().find(|r| **r == want).cloned()
            }
        };
        if let Some(r) = pick(&cached) {
            from_cache(cache.as_deref().expect("cached implies a cache"), &r)
                .expect("listed releases have a manifest")
        } else if let Some(r) = pick(&boot) {
            from_boot(&r)
        } else {
            return Err(Error::Setup(format!(
                "no {want} guest kernel in the kernel cache ({}) or /boot: \
                 run `scripts/kernel-cache.sh fetch {want}` or pass --kernel",
                cache.map_or_else(|| "unset".to_string(), |c| c.display().to_string())
            )));
        }
    };
    if let Some(h) = &args.headers {
        k.headers = h.clone();
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_pick_their_series() {
        let pins = "6.1.0-41-cloud-amd64 6.12.117+deb12-cloud-amd64";
        assert_eq!(pinned(pins, "6.12"), Some("6.12.117+deb12-cloud-amd64"));
        assert_eq!(pinned(pins, "6.1"), Some("6.1.0-41-cloud-amd64"));
        assert_eq!(pinned("6.12.117+deb12-cloud-amd64", "6.1"), None);
        assert_eq!(pinned("", "6.12"), None);
    }

    #[test]
    fn cache_lists_only_complete_releases() {
        let dir = std::env::temp_dir().join(format!("amdvi-kcache-{}", std::process::id()));
        let k = dir.join("kernels");
        std::fs::create_dir_all(k.join("6.12.1+deb12-cloud-amd64/modules")).unwrap();
        std::fs::create_dir_all(k.join(".tmp-6.12.2+deb12-cloud-amd64-1")).unwrap();
        std::fs::create_dir_all(k.join("6.12.3+deb12-cloud-amd64")).unwrap();
        std::fs::write(
            k.join("6.12.1+deb12-cloud-amd64/manifest.json"),
            r#"{"release": "6.12.1+deb12-cloud-amd64", "packages": {"linux-headers-6.12.1+deb12-cloud-amd64": "6.12.1-1"}}"#,
        )
        .unwrap();
        assert_eq!(cached_releases(&dir), vec!["6.12.1+deb12-cloud-amd64"]);
        let g = from_cache(&dir, "6.12.1+deb12-cloud-amd64").unwrap();
        assert_eq!(g.image, k.join("6.12.1+deb12-cloud-amd64/vmlinuz"));
        assert_eq!(g.modules, None, "no modules.dep, no modules dir");
        match g.origin {
            Origin::Cache { packages } => assert_eq!(packages.len(), 1),
            o => panic!("origin {o:?}"),
        }
        assert!(from_cache(&dir, "6.12.3+deb12-cloud-amd64").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
