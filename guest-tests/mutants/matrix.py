#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Summarises a matrix.sh run: one row per mutant (and the control), one
column per scenario, each cell the rules and counts that caught the mutant
or `clean`; catch rate and timings per row. Writes the same as JSON.

usage: matrix.py MUTANTS_DIR ROWS_TSV BUILDS_TSV OUT_JSON
Exit status 1 when the control fails or a mutant escapes in any run."""

import json
import sys
from collections import OrderedDict
from pathlib import Path

RULES = ("r1", "r2", "r3", "r4", "stale", "freed")


def header(patch, key):
    for line in patch.read_text().splitlines():
        if line.startswith(f"# {key}:"):
            return line.split(":", 1)[1].strip()
    return ""


def scenarios_of(run):
    """(name, status, {rule: count}) of each top-level scenario of a run."""
    out = []
    for s in run.get("scenarios", []):
        r = s.get("result", s)
        a = r.get("amdvi") or {}
        counts = {k: a.get(k) or 0 for k in RULES}
        out.append((r.get("name", "?"), str(r.get("status", "?")).lower(), counts))
    return out


def main():
    mdir, rows_tsv, builds_tsv, out_json = map(Path, sys.argv[1:5])
    builds = {}
    for line in builds_tsv.read_text().splitlines():
        name, secs = line.split("\t")
        builds[name] = int(secs)
    rows = OrderedDict()
    for line in rows_tsv.read_text().splitlines():
        row, n, rc, secs, jpath = line.split("\t")
        try:
            run = json.loads(Path(jpath).read_text())
        except (OSError, ValueError):
            run = {}
        rows.setdefault(row, []).append(
            {"run": int(n), "exit": int(rc), "seconds": int(secs), "json": jpath,
             "scenarios": scenarios_of(run),
             "problems": (run.get("verdict") or {}).get("problems", [])})

    bad = False
    result = []
    lines = []
    fmt = "{:<38} {:<42} {:>7} {:>7} {:>7}  {}"
    lines.append(fmt.format("mutant", "expected scenarios", "caught", "build s", "run s",
                            "caught by (scenario: rule=count) / why not"))
    for row, runs in rows.items():
        escapes = ""
        if row == "control":
            expect, rules = "whole suite (must pass)", []
        else:
            p = mdir / f"{row}.patch"
            expect, rules = header(p, "Scenarios"), header(p, "Rules").split(",")
            escapes = header(p, "Escapes")
        caught_runs, cells = 0, []
        for r in runs:
            hits = []
            for name, status, counts in r["scenarios"]:
                found = {k: v for k, v in counts.items() if v and (not rules or k in rules)}
                if status == "fail" and (found or not rules):
                    hits.append(f"{name}: " + (" ".join(f"{k}={v}" for k, v in found.items())
                                               or "fail"))
            if row == "control":
                ok = r["exit"] == 0
                caught_runs += ok
                cell = "pass" if ok else "FAIL " + "; ".join(hits + r["problems"])
            else:
                ok = r["exit"] == 0
                caught_runs += ok
                cell = "; ".join(hits) if ok else ("clean" if not r["problems"] else
                                                   "inconclusive: " + "; ".join(r["problems"]))
            cells.append(cell)
            r["verdict"] = cell
        n = len(runs)
        # a documented escape (`# Escapes:` in the patch header) is reported,
        # not failed; being caught anyway is reported too
        known = bool(escapes) and caught_runs == 0
        if caught_runs != n and not known:
            bad = True
        secs = sorted(r["seconds"] for r in runs)
        first = next((r["seconds"] for r in runs if r["exit"] == 0), None)
        result.append({"mutant": row, "expected": expect, "rules": rules, "runs": runs,
                       "caught": caught_runs, "of": n, "build_seconds": builds.get(row),
                       "documented_escape": escapes or None,
                       "first_catch_seconds": first})
        label = "pass" if row == "control" else "caught"
        lines.append(fmt.format(row, expect[:42], f"{caught_runs}/{n}",
                                str(builds.get(row, "-")), str(secs[len(secs) // 2]),
                                cells[0] if n == 1 else " | ".join(cells)).rstrip()
                     + ("   (escape documented in the patch header)" if known else
                        "" if caught_runs == n else f"   <-- not {label} in every run"))
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(lines))
    print(f"matrix: {out_json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
