// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A minimal writer of the `newc` cpio format the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Written in-process so that owners, modes and device nodes come out right
//! without root on the host and the archive is reproducible (mtime 0).

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// A character device node (major, minor).
    CharDev(u32, u32),
}

/// One archive entry. `path` is relative (no leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    /// Permission bits (e.g. 0o755); the file-type bits come from `kind`.
    pub perm: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            perm: 0o755,
            kind: Kind::Dir,
        }
    }

    pub fn file(path: &str, perm: u32, data: Vec<u8>) -> Entry {
        Entry {
            path: path.to_string(),
            perm,
            kind: Kind::File(data),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry {
            path: path.to_string(),
            perm: 0o777,
            kind: Kind::Symlink(target.to_string()),
        }
    }

    pub fn chardev(path: &str, perm: u32, major: u32, minor: u32) -> Entry {
        Entry {
            path: path.to_string(),
            perm,
            kind: Kind::CharDev(major, minor),
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// Serialises `entries` in order, followed by the trailer.
pub fn write_newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let path = e.path.trim_start_matches('/');
        let perm = e.perm & 0o7777;
        match &e.kind {
            Kind::Dir => header(&mut out, ino, S_IFDIR | perm, 2, 0, (0, 0), path),
            Kind::File(data) => {
                header(&mut out, ino, S_IFREG | perm, 1, data.len(), (0, 0), path);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
            Kind::Symlink(target) => {
                header(&mut out, ino, S_IFLNK | perm, 1, target.len(), (0, 0), path);
                out.extend_from_slice(target.as_bytes());
                pad4(&mut out);
            }
            Kind::CharDev(major, minor) => {
                header(&mut out, ino, S_IFCHR | perm, 1, 0, (*major, *minor), path)
            }
        }
    }
    header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one record.
    type Record = (String, u32, (u32, u32), Vec<u8>);

    /// Reads back the records; a tiny independent reader.
    fn read_newc(mut b: &[u8]) -> Vec<Record> {
        let mut v = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (f(1), f(6) as usize, f(9), f(10), f(11) as usize);
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let mut off = 110 + namesize;
            off = off.next_multiple_of(4);
            let data = b[off..off + size].to_vec();
            off = (off + size).next_multiple_of(4);
            b = &b[off..];
            if name == "TRAILER!!!" {
                assert_eq!((total - b.len()) % 4, 0);
                assert!(b.is_empty());
                return v;
            }
            v.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn round_trip() {
        let entries = vec![
            Entry::dir("bin"),
            Entry::file("/bin/busybox", 0o755, b"\x7fELF12345".to_vec()),
            Entry::symlink("bin/sh", "/bin/busybox"),
            Entry::chardev("dev/console", 0o600, 5, 1),
            Entry::file("empty", 0o644, Vec::new()),
        ];
        let bytes = write_newc(&entries);
        assert_eq!(bytes.len() % 4, 0);
        let got = read_newc(&bytes);
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], ("bin".to_string(), 0o040755, (0, 0), vec![]));
        assert_eq!(
            got[1],
            (
                "bin/busybox".to_string(),
                0o100755,
                (0, 0),
                b"\x7fELF12345".to_vec()
            )
        );
        assert_eq!(
            got[2],
            (
                "bin/sh".to_string(),
                0o120777,
                (0, 0),
                b"/bin/busybox".to_vec()
            )
        );
        assert_eq!(
            got[3],
            ("dev/console".to_string(), 0o020600, (5, 1), vec![])
        );
        assert_eq!(got[4].3, Vec::<u8>::new());
    }

    #[test]
    fn header_layout() {
        let bytes = write_newc(&[Entry::file("a", 0o644, b"xyz".to_vec())]);
        // 110-byte header + "a\0" padded to 112, then 3 bytes of data padded to 4.
        let hdr = std::str::from_utf8(&bytes[..110]).unwrap();
        let want = [
            "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
            "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
        ]
        .concat();
        assert_eq!(hdr, want);
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(bytes[115], 0);
        assert_eq!(&bytes[116..122], b"070701");
    }
}
