#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Fault matrix: every planted bug (device configs, driver inv_bug and
notifier_mode rows) against the scenarios that matter for it, one VM boot
per row, each cell compared with the expected matrix in
guest-tests/faults/expected.json.

usage: matrix.py [--rows NAME,...] [--runs N] [--out DIR] [--update]

A cell is `clean` (the scenario passed), or the rules whose findings made it
fail (`r1`, `stale`, ...; `fail` when it failed without any). An expected
cell `r1|stale` matches a failure with findings of at least one of them.
Exit status 1 when a cell differs, when a planted-bug row is caught by no
scenario, or when the control row (the correct configuration, the union of
every row's scenarios) fails; 2 when a run could not be set up.
--update rewrites the expected cells from this run (review the diff).

The row and cell summarising is shared with the kernel-mutant matrix
(guest-tests/mutants/matrix.py: RULES, scenarios_of)."""

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("mutants_matrix", HERE.parent / "mutants" / "matrix.py")
_mm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mm)
RULES, scenarios_of = _mm.RULES, _mm.scenarios_of


def observed(status, counts):
    """The cell of one scenario result."""
    if status == "pass":
        return "clean"
    if status == "skip":
        return "skip"
    found = [k for k in RULES if counts.get(k)]
    return "|".join(found) if found else "fail"


def matches(expected, status, counts):
    if expected in ("clean", "skip", "fail"):
        want = {"clean": "pass", "skip": "skip", "fail": "fail"}[expected]
        return status == want
    return status == "fail" and any(counts.get(k) for k in expected.split("|"))


def cell_text(status, counts):
    if status == "pass":
        return "clean"
    if status == "skip":
        return "skip"
    found = " ".join(f"{k}={counts[k]}" for k in RULES if counts.get(k) and k not in ("r2", "r3", "r4"))
    return found or "fail"


def run_row(row, n, out, runner, kver, paging):
    scen = list(row["cells"])
    args = " ".join(f"-f {s}" for s in scen)
    cmd = runner + ["--kver", kver, "--paging", str(paging), "--build-dir", str(out / "run"),
                    "--json", str(out / f"{row['name']}-{n}.json"), "--args", args]
    if row.get("config"):
        cmd += ["--config", str(ROOT / row["config"])]
    if row.get("modparams"):
        cmd += ["--modparams", row["modparams"]]
    t0 = time.monotonic()
    with open(out / f"{row['name']}-{n}.log", "w") as logf:
        rc = subprocess.call(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    secs = time.monotonic() - t0
    try:
        run = json.loads((out / f"{row['name']}-{n}.json").read_text())
    except (OSError, ValueError):
        run = {}
    res = {name: (status, counts) for name, status, counts in scenarios_of(run)}
    problems = (run.get("verdict") or {}).get("problems", [])
    return rc, secs, res, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", help="only these rows (comma-separated), plus the control")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("RUNS", "1")))
    ap.add_argument("--out", default=str(ROOT / "build" / "matrix"))
    ap.add_argument("--expected", default=str(HERE / "expected.json"))
    ap.add_argument("--kver", default=os.environ.get("MATRIX_KVER", "6.12"))
    ap.add_argument("--paging", default=os.environ.get("PAGING", "5"))
    ap.add_argument("--update", action="store_true")
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    runner = shlex.split(os.environ.get(
        "AMDVI_RUN", f"{target}/release/amdvi-run --daemon {target}/release/vhost-device-amdvi"))
    spec = json.loads(Path(a.expected).read_text())
    rows = spec["rows"]
    if a.rows:
        keep = set(a.rows.split(","))
        unknown = keep - {r["name"] for r in rows}
        if unknown:
            print(f"matrix: unknown rows {sorted(unknown)}", file=sys.stderr)
            return 2
        rows = [r for r in rows if r["name"] in keep]
    # The control: the correct configuration on every scenario a row targets.
    union = []
    for r in rows:
        union += [s for s in r["cells"] if s not in union]
    control = {"name": "control", "kind": "control", "what": "correct device and driver",
               "cells": {s: "clean" for s in union}}
    rows = [control] + [r for r in rows if r["name"] != "control"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    t_all = time.monotonic()
    bad, setup_error, result = [], False, []
    for row in rows:
        runs = []
        for n in range(1, a.runs + 1):
            rc, secs, res, problems = run_row(row, n, out, runner, a.kver, a.paging)
            print(f"matrix: {row['name']} run {n}: exit {rc} in {secs:.0f} s", file=sys.stderr)
            if rc not in (0, 1) or problems or (rc == 1 and not res):
                setup_error = True
                bad.append(f"{row['name']}: run {n} did not complete (exit {rc}; "
                           f"{'; '.join(problems) or 'see ' + str(out / (row['name'] + f'-{n}.log'))})")
            cells = {}
            for s, want in row["cells"].items():
                status, counts = res.get(s, ("missing", {}))
                cells[s] = {"expected": want, "observed": observed(status, counts),
                            "text": cell_text(status, counts), "counts": counts,
                            "ok": matches(want, status, counts)}
            runs.append({"run": n, "exit": rc, "seconds": round(secs, 1), "cells": cells,
                         "problems": problems})
        caught = sum(any(c["observed"] not in ("clean", "skip", "missing") for c in r["cells"].values())
                     for r in runs)
        for r in runs:
            for s, c in r["cells"].items():
                if not c["ok"]:
                    bad.append(f"{row['name']} x {s} (run {r['run']}): expected {c['expected']}, "
                               f"observed {c['text']}")
        if row["kind"] not in ("control", "correct") and caught < len(runs):
            bad.append(f"{row['name']}: caught by no scenario in {len(runs) - caught} of {len(runs)} runs")
        result.append({**row, "runs": runs, "caught_runs": caught})
    total = time.monotonic() - t_all

    # The matrix: one line per row, one column per scenario.
    cols = union
    w = max(len("row"), *(len(r["name"]) for r in rows))
    cw = {s: max(len(s), 5) for s in cols}
    for r in result:
        for s, c in r["runs"][0]["cells"].items():
            cw[s] = max(cw[s], len(c["text"]) + (1 if not c["ok"] else 0))
    lines = ["  ".join(["row".ljust(w), "kind".ljust(7)] + [s.ljust(cw[s]) for s in cols] + ["boot s"])]
    for r in result:
        cells = r["runs"][0]["cells"]
        parts = [r["name"].ljust(w), r["kind"].ljust(7)]
        for s in cols:
            c = cells.get(s)
            t = "." if c is None else c["text"] + ("" if c["ok"] else "!")
            parts.append(t.ljust(cw[s]))
        parts.append(f"{r['runs'][0]['seconds']:.0f}")
        lines.append("  ".join(parts).rstrip())
    lines.append(f"({len(result)} rows, {a.runs} run(s) each, {total:.0f} s; '.' not targeted, "
                 "'!' differs from guest-tests/faults/expected.json)")
    txt = "\n".join(lines)
    print(txt)
    (out / "matrix.txt").write_text(txt + "\n")
    (out / "matrix.json").write_text(json.dumps(
        {"kernel": a.kver, "paging": a.paging, "runs": a.runs, "seconds": round(total, 1),
         "rows": result, "differences": bad}, indent=2) + "\n")
    print(f"matrix: {out / 'matrix.json'}")
    if a.update:
        by = {r["name"]: r for r in result}
        for r in spec["rows"]:
            if r["name"] in by:
                r["cells"] = {s: c["observed"] for s, c in by[r["name"]]["runs"][0]["cells"].items()}
        Path(a.expected).write_text(json.dumps(spec, indent=2) + "\n")
        print(f"matrix: expected cells rewritten in {a.expected}")
        return 0
    for b in bad:
        print(f"matrix: {b}", file=sys.stderr)
    if setup_error:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
