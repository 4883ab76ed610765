// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Choosing the guest kernel: version ordering, the newest kernel of a series
//! under /boot, and the release string inside a bzImage.

use std::cmp::Ordering;

/// Compares version strings like `sort -V`: digit runs numerically, the rest
/// byte-wise.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut v = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                v.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        v
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let o = match (x, y) {
            ((true, p), (true, q)) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            ((_, p), (_, q)) => p.cmp(q),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// True when `release` belongs to `series` ("6.1" matches "6.1.0-56-..." but
/// not "6.12.117...").
pub fn in_series(release: &str, series: &str) -> bool {
    release
        .strip_prefix(series)
        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-') || rest.starts_with('+'))
}

/// True for a series like `6.12` or `6.1` (as opposed to a full release).
pub fn is_series(kver: &str) -> bool {
    let mut parts = kver.split('.');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The newest release of `series` among `releases`, preferring Debian cloud
/// kernels (the ones the project tests on) over other flavours.
pub fn newest_in_series<'a>(releases: &'a [String], series: &str) -> Option<&'a str> {
    let pick = |cloud_only: bool| {
        releases
            .iter()
            .filter(|r| in_series(r, series))
            .filter(|r| !cloud_only || r.ends_with("-cloud-amd64"))
            .max_by(|a, b| version_cmp(a, b))
            .map(String::as_str)
    };
    pick(true).or_else(|| pick(false))
}

/// The release string of a bzImage (setup header field `kernel_version`,
/// boot protocol 2.00+), e.g. `6.12.117+deb12-cloud-amd64`.
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize;
    let start = ptr + 0x200;
    let s = image.get(start..start.saturating_add(256).min(image.len()))?;
    let end = s.iter().position(|&b| b == 0 || b == b' ')?;
    let r = std::str::from_utf8(&s[..end]).ok()?;
    (!r.is_empty()).then(|| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert_eq!(
            version_cmp("6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            version_cmp("6.12.117+deb12-cloud-amd64", "6.12.99+deb12-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(version_cmp("6.12.1", "6.12.1"), Ordering::Equal);
        assert_eq!(version_cmp("6.12", "6.12.1"), Ordering::Less);
        assert_eq!(version_cmp("10.0.2", "9.2.0"), Ordering::Greater);
    }

    #[test]
    fn series() {
        assert!(in_series("6.1.0-56-cloud-amd64", "6.1"));
        assert!(!in_series("6.12.117+deb12-cloud-amd64", "6.1"));
        assert!(in_series("6.12.117+deb12-cloud-amd64", "6.12"));
        assert!(is_series("6.12"));
        assert!(is_series("6.1"));
        assert!(!is_series("6.1.0-56-cloud-amd64"));
        assert!(!is_series("6"));
        assert!(!is_series("6.x"));
    }

    #[test]
    fn newest() {
        let rel: Vec<String> = [
            "6.1.0-9-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.1.0-60-amd64",
            "6.12.99+deb12-cloud-amd64",
            "6.12.117+deb12-cloud-amd64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(newest_in_series(&rel, "6.1"), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            newest_in_series(&rel, "6.12"),
            Some("6.12.117+deb12-cloud-amd64")
        );
        assert_eq!(newest_in_series(&rel, "6.6"), None);
        let plain: Vec<String> = vec!["6.6.1-amd64".into()];
        assert_eq!(newest_in_series(&plain, "6.6"), Some("6.6.1-amd64"));
    }

    #[test]
    fn bzimage_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x0300u16.to_le_bytes());
        let v = b"6.12.117+deb12-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        img[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(
            bzimage_release(&img).as_deref(),
            Some("6.12.117+deb12-cloud-amd64")
        );
        img[0x202] = b'X';
        assert_eq!(bzimage_release(&img), None);
    }

    #[test]
    fn real_images_if_present() {
        // Checks the parser against the kernels installed on this machine.
        let Ok(dir) = std::fs::read_dir("/boot") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(release) = name.strip_prefix("vmlinuz-") {
                let Ok(img) = std::fs::read(e.path()) else {
                    continue;
                };
                assert_eq!(bzimage_release(&img).as_deref(), Some(release), "{name}");
            }
        }
    }
}
