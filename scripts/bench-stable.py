#!/usr/bin/env python3
"""Instruction counts of iommu-dev's hot paths against the checked-in ones.

Runs each operation of iommu-dev/examples/bench_stable.rs under callgrind,
counting only the instructions inside its measured function, and compares
the instructions per operation with iommu-dev/benches/stable-counts.toml.
Fails (exit 1) when one grew by more than the tolerance (10%), when an
operation has no checked-in count, or when a checked-in one is gone.

    scripts/bench-stable.py --bin target/release/examples/bench_stable
    scripts/bench-stable.py --bin ... --update     # write the new counts

Instruction counts do not drift with machine load as times do; they do
change with the compiler, the libc's memcpy and valgrind's version, which
the counts file records.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_COUNTS = os.path.join(HERE, "..", "iommu-dev", "benches", "stable-counts.toml")
# Two run lengths: the difference cancels set-up, warm-up and one-time costs.
# Multiples of 1024 (a device port flushes its ATC tallies every 1024 accesses).
N1, N2 = 1024, 3072

HEADER = """\
# Instructions (callgrind Ir) per operation of iommu-dev/examples/bench_stable.rs.
# `make bench-stable` (part of `make test`) fails when one grows by more than
# {tol}% over the value here. After a change that makes a path slower on purpose
# (a new check, a new feature), or after a toolchain update, rewrite this file
# with `make bench-stable UPDATE=1` and commit it with the change, saying why.
"""


def tool_versions(binary):
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
            return out.strip().splitlines()[0] if out.strip() else "unknown"
        except OSError:
            return "unknown"

    return {
        "rustc": first_line(["rustc", "--version"]),
        "valgrind": first_line(["valgrind", "--version"]),
        "libc": first_line(["ldd", "--version"]),
    }


def read_counts(path):
    counts, meta = {}, {}
    if not os.path.exists(path):
        return counts, meta
    section = None
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"\[(\w+)\]", line)
            if m:
                section = m.group(1)
                continue
            m = re.fullmatch(r'(\w+)\s*=\s*(.+)', line)
            if not m:
                sys.exit(f"bench-stable: cannot parse line in {path}: {line}")
            key, val = m.group(1), m.group(2).strip()
            if section == "ir_per_op":
                counts[key] = float(val)
            else:
                meta[key] = val.strip('"')
    return counts, meta


def write_counts(path, counts, binary, tol):
    v = tool_versions(binary)
    with open(path, "w") as f:
        f.write(HEADER.format(tol=tol))
        f.write("\n[measured_with]\n")
        for k in ("rustc", "valgrind", "libc"):
            f.write(f'{k} = "{v[k]}"\n')
        f.write("\n[ir_per_op]\n")
        for op, n in counts.items():
            f.write(f"{op} = {n:.1f}\n")


def collected(binary, op, n, tmp):
    out = os.path.join(tmp, f"callgrind.{op}.{n}")
    cmd = [
        "valgrind", "--tool=callgrind", "--collect-atstart=no",
        f"--toggle-collect=*stable_op_{op}", f"--callgrind-out-file={out}",
        binary, op, str(n),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"bench-stable: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    m = re.search(r"Collected\s*:\s*(\d+)", r.stderr)
    if m:
        return int(m.group(1))
    sys.exit(f"bench-stable: no instruction count in callgrind's output for {op}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the built bench_stable example")
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="checked-in counts (TOML)")
    ap.add_argument("--update", action="store_true", help="write the measured counts to --counts")
    ap.add_argument("--tolerance", type=float, default=10.0, help="allowed growth in percent")
    ap.add_argument("--ops", help="comma-separated subset of the operations")
    args = ap.parse_args()

    if subprocess.run(["valgrind", "--version"], capture_output=True, check=False).returncode != 0:
        sys.exit("bench-stable: valgrind not found (apt-get install valgrind)")
    listing = subprocess.run([args.bin, "--list"], capture_output=True, text=True, check=True).stdout
    ops = [l.split("\t")[0] for l in listing.splitlines() if l.strip()]
    if args.ops:
        wanted = args.ops.split(",")
        unknown = [o for o in wanted if o not in ops]
        if unknown:
            sys.exit(f"bench-stable: unknown operations {unknown}; known: {ops}")
        ops = wanted

    old, meta = read_counts(args.counts)
    new = {}
    with tempfile.TemporaryDirectory(prefix="bench-stable.") as tmp:
        for op in ops:
            c1, c2 = collected(args.bin, op, N1, tmp), collected(args.bin, op, N2, tmp)
            if c2 <= c1:
                sys.exit(f"bench-stable: {op}: nothing counted (did --toggle-collect match stable_op_{op}?)")
            new[op] = (c2 - c1) / (N2 - N1)

    limit = 1 + args.tolerance / 100
    failed = []
    print(f"{'operation':<20} {'checked in':>11} {'measured':>11} {'ratio':>7}  verdict")
    for op in ops:
        n = new[op]
        if op not in old:
            verdict = "NEW (no checked-in count)"
            failed.append(op)
            print(f"{op:<20} {'-':>11} {n:>11.1f} {'-':>7}  {verdict}")
            continue
        ratio = n / old[op] if old[op] else float("inf")
        if ratio > limit:
            verdict = f"FAIL: grew more than {args.tolerance:g}%"
            failed.append(op)
        elif ratio < 1 / limit:
            verdict = "ok (shrank: update the counts to keep the gain)"
        else:
            verdict = "ok"
        print(f"{op:<20} {old[op]:>11.1f} {n:>11.1f} {ratio:>7.3f}  {verdict}")
    gone = [op for op in old if op not in new and not args.ops]
    for op in gone:
        print(f"{op:<20} {old[op]:>11.1f} {'-':>11} {'-':>7}  GONE (checked in, not measured)")
        failed.append(op)

    if args.update:
        merged = dict(old) if args.ops else {}
        merged.update(new)
        write_counts(args.counts, merged, args.bin, int(args.tolerance))
        print(f"bench-stable: wrote {os.path.relpath(args.counts)}")
        return 0
    if failed:
        v = tool_versions(args.bin)
        for k in ("rustc", "valgrind", "libc"):
            if k in meta and meta[k] != v[k]:
                print(f"bench-stable: note: counts were measured with {k} '{meta[k]}', this is '{v[k]}'")
        print(f"bench-stable: FAILED: {', '.join(failed)} "
              "(a deliberate change: make bench-stable UPDATE=1, and commit the counts file)")
        return 1
    print(f"bench-stable: {len(ops)} operations within {args.tolerance:g}% of the checked-in counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
