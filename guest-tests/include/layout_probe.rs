//! Test helper shared by the layout tests of the crates that mirror these
//! headers in Rust (`guest-tests/script/tests/uapi_layout.rs`,
//! `vhost-user/tests/proto_layout.rs`): the C compiler is the authority on
//! what a header means, so each test lists what the Rust side believes
//! (struct sizes, field offsets and sizes, constant values), this module
//! writes a C program that prints the same expressions from the header,
//! builds it with the system `cc`, runs it and reports every difference.
//!
//! A field renamed or removed in the header stops the probe compiling; a
//! field added, widened or moved changes a size or an offset; a constant
//! changed on either side changes a value. Each case fails the test.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One fact to check: a C expression and the value Rust has for it.
pub struct Check {
    label: String,
    c_expr: String,
    string: bool,
    rust: String,
}

/// The struct size, `sizeof(<c_type>)`.
pub fn size(c_type: &str, rust: usize) -> Check {
    Check {
        label: format!("sizeof({c_type})"),
        c_expr: format!("sizeof({c_type})"),
        string: false,
        rust: rust.to_string(),
    }
}

/// Offset and size of one field: two checks.
pub fn field(c_type: &str, c_field: &str, offset: usize, size: usize) -> [Check; 2] {
    [
        Check {
            label: format!("offsetof({c_type}, {c_field})"),
            c_expr: format!("offsetof({c_type}, {c_field})"),
            string: false,
            rust: offset.to_string(),
        },
        Check {
            label: format!("sizeof({c_type}.{c_field})"),
            c_expr: format!("sizeof(((const {c_type} *)0)->{c_field})"),
            string: false,
            rust: size.to_string(),
        },
    ]
}

/// An integer constant (macro or enumerator).
pub fn int(c_name: &str, rust: u64) -> Check {
    Check {
        label: c_name.to_string(),
        c_expr: c_name.to_string(),
        string: false,
        rust: rust.to_string(),
    }
}

/// A string constant.
pub fn string(c_name: &str, rust: &str) -> Check {
    Check {
        label: c_name.to_string(),
        c_expr: c_name.to_string(),
        string: true,
        rust: rust.to_string(),
    }
}

/// The size of the field `f` picks out of a `T`, without a value of `T`.
pub fn size_of_field<T, F>(_pick: fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// Offset and size of a Rust field, checked against the C field of the
/// same struct: `fields!("struct amdvi_info", Info, efr, flags, ...)`
/// (C and Rust field names equal), or `Rust => "c_name"` for a rename.
macro_rules! fields {
    ($c_type:expr, $t:ty, $($f:ident $(=> $c:expr)?),+ $(,)?) => {{
        let mut v = Vec::new();
        $(
            let c_name = $crate::layout_probe::pick(stringify!($f), &[$($c)?]);
            v.extend($crate::layout_probe::field(
                $c_type,
                c_name,
                std::mem::offset_of!($t, $f),
                $crate::layout_probe::size_of_field(|s: &$t| &s.$f),
            ));
        )+
        v.push($crate::layout_probe::size($c_type, std::mem::size_of::<$t>()));
        v
    }};
}

/// The C name of a field: the override if given, else the Rust name.
pub fn pick<'a>(rust: &'a str, over: &[&'a str]) -> &'a str {
    over.first().copied().unwrap_or(rust)
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("guest-tests/include").is_dir())
        .expect("workspace root with guest-tests/include")
        .join("guest-tests/include")
}

/// Compile and run the probe for `headers` (names inside
/// `guest-tests/include`) in `work`, and panic listing every check whose C
/// value differs from the Rust one.
pub fn run(name: &str, headers: &[&str], checks: &[Check], work: &Path) {
    let mut src = String::from("#include <stddef.h>\n#include <stdio.h>\n");
    for h in headers {
        writeln!(src, "#include \"{h}\"").unwrap();
    }
    src.push_str("int main(void)\n{\n");
    for c in checks {
        if c.string {
            writeln!(src, "\tprintf(\"%s\\n\", {});", c.c_expr).unwrap();
        } else {
            writeln!(
                src,
                "\tprintf(\"%llu\\n\", (unsigned long long)({}));",
                c.c_expr
            )
            .unwrap();
        }
    }
    src.push_str("\treturn 0;\n}\n");

    std::fs::create_dir_all(work).unwrap();
    let c_file = work.join(format!("{name}.c"));
    let exe = work.join(name);
    std::fs::write(&c_file, &src).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-I"])
        .arg(include_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&c_file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        out.status.success(),
        "the C probe {} does not compile against {headers:?} (a field or constant the Rust side names is gone?):\n{}",
        c_file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success(), "the C probe {} failed", exe.display());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), checks.len(), "probe output:\n{stdout}");

    let diffs: Vec<String> = checks
        .iter()
        .zip(&lines)
        .filter(|(c, v)| c.rust != **v)
        .map(|(c, v)| format!("{}: C {} but Rust {}", c.label, v, c.rust))
        .collect();
    assert!(
        diffs.is_empty(),
        "{} of {} checks differ between {headers:?} and the Rust side:\n  {}",
        diffs.len(),
        checks.len(),
        diffs.join("\n  ")
    );
}
