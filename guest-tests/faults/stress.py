#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Catch-rate table for the stress configs (configs/stress-*.toml): delay
rules that widen race windows without being bugs. For each stress config
(and none), each weak negative control runs RUNS times on its scenario; a
run catches it when the scenario fails with a bug finding (r1, stale,
freed). Each stress config also runs once with the correct driver on the
same scenarios, which must stay clean (a delay is not a bug).

usage: stress.py [--runs N] [--out DIR]
Writes OUT/catch-rate.{txt,json}; exit 1 when a stress config makes the
correct configuration fail, 2 when a run could not be set up."""

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("fault_matrix", HERE / "matrix.py")
_fm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fm)

# Weak negative controls: planted bugs that their scenario catches only
# sometimes (measured with make matrix), so a wider window shows.
WEAK = [
    {"name": "inv-no-wait", "modparams": "inv_bug=no_wait", "scenario": "cow_fork"},
    {"name": "broken-atc-late", "config": "configs/broken-atc-late.toml", "scenario": "cow_fork"},
]
BUG_RULES = ("r1", "stale", "freed")


def merged_config(out, stress, base):
    """A config holding the weak control's rules and the stress rules."""
    text = ""
    for p in (base, stress):
        if p:
            text += (ROOT / p).read_text() + "\n"
    if not text:
        return None
    path = out / f"cfg-{Path(base or 'none').stem}-{Path(stress or 'none').stem}.toml"
    path.write_text(text)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "build" / "matrix-stress"))
    ap.add_argument("--kver", default=os.environ.get("MATRIX_KVER", "6.12"))
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    runner = shlex.split(os.environ.get(
        "AMDVI_RUN", f"{target}/release/amdvi-run --daemon {target}/release/vhost-device-amdvi"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stresses = [None] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("stress-*.toml"))
    scen = sorted({w["scenario"] for w in WEAK})
    table, bad, setup = [], [], False
    t0 = time.monotonic()
    for st in stresses:
        sname = Path(st).stem if st else "none"
        entry = {"stress": sname, "config": st, "controls": {}}
        # the correct driver under this stress must stay clean
        row = {"name": f"correct-{sname}", "config": merged_config(out, st, None),
               "cells": {s: "clean" for s in scen}}
        rc, secs, res, problems = _fm.run_row(row, 1, out, runner, a.kver, 5)
        clean = rc == 0 and not problems
        if rc not in (0, 1) or problems:
            setup = True
        if not clean:
            bad.append(f"{sname}: the correct configuration failed ({_fm.cell_text(*res.get(scen[0], ('missing', {})))})")
        entry["correct_clean"] = clean
        for w in WEAK:
            caught = 0
            for n in range(1, a.runs + 1):
                row = {"name": f"{w['name']}-{sname}", "config": merged_config(out, st, w.get("config")),
                       "modparams": w.get("modparams"), "cells": {w["scenario"]: "r1|stale|freed"}}
                rc, secs, res, problems = _fm.run_row(row, n, out, runner, a.kver, 5)
                if rc not in (0, 1) or problems:
                    setup = True
                    bad.append(f"{row['name']} run {n}: exit {rc} {'; '.join(problems)}")
                status, counts = res.get(w["scenario"], ("missing", {}))
                caught += status == "fail" and any(counts.get(k) for k in BUG_RULES)
            entry["controls"][w["name"]] = {"caught": caught, "of": a.runs}
            print(f"stress: {sname} x {w['name']}: {caught}/{a.runs}", file=sys.stderr)
        table.append(entry)
    secs = time.monotonic() - t0
    base = {w["name"]: table[0]["controls"][w["name"]]["caught"] for w in WEAK}
    hdr = "| stress config | correct config | " + " | ".join(
        f"{w['name']} on {w['scenario']}" for w in WEAK) + " |"
    lines = [hdr, "|" + "---|" * (2 + len(WEAK))]
    for e in table:
        cells = []
        for w in WEAK:
            c = e["controls"][w["name"]]
            d = c["caught"] - base[w["name"]]
            cells.append(f"{c['caught']}/{c['of']}" + ("" if e["stress"] == "none" else f" ({d:+d})"))
        lines.append(f"| {e['stress']} | {'clean' if e['correct_clean'] else 'FAILS'} | " + " | ".join(cells) + " |")
    lines.append(f"\n{a.runs} runs per cell, {a.kver}, {secs:.0f} s")
    txt = "\n".join(lines)
    print(txt)
    (out / "catch-rate.txt").write_text(txt + "\n")
    (out / "catch-rate.json").write_text(json.dumps(
        {"runs": a.runs, "kernel": a.kver, "seconds": round(secs, 1), "weak_controls": WEAK,
         "table": table, "problems": bad}, indent=2) + "\n")
    for b in bad:
        print(f"stress: {b}", file=sys.stderr)
    return 2 if setup else (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())
