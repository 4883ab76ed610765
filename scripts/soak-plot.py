#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Plot a soak (amdvi-run --soak): the daemon's RSS and open descriptors
over time, from samples.csv, with the boot boundaries from boots.csv.

usage: soak-plot.py [SAMPLES_CSV [OUT_PNG]]
       defaults: build/soak/samples.csv, soak.png next to it; boots.csv is
       read from the same directory when it is there.

Each boot starts at a dotted vertical line (red for a boot that failed).
The dots on the fd panel are the counts after each boot's disconnect, the
ones the soak's leak verdict compares. Exit status: 0 written, 1 bad input,
3 matplotlib is not installed (scripts/deps.sh --plot installs it; a
python3 without it hands over to /usr/bin/python3 when that is another).
The soak's verdict never depends on this picture."""

import csv
import os
import sys
from pathlib import Path

SAMPLES_HEADER = ["elapsed_s", "boot", "rss_kib", "fds"]


def read_samples(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != SAMPLES_HEADER:
        raise ValueError(f"{path}: header {rows[0] if rows else None}, expected {SAMPLES_HEADER}")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if not r:
            continue
        if len(r) != 4:
            raise ValueError(f"{path}: line {n}: {len(r)} fields, expected 4")
        out.append((float(r[0]), int(r[1]), int(r[2]), int(r[3])))
    if not out:
        raise ValueError(f"{path}: no samples")
    return out


def read_boots(path):
    """Per boot: (boot, config, start_s, end_s, ok, fds_after)."""
    if not path.is_file():
        return []
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            ok = r["failed"] == "0" and r["problems"] == "0"
            fds = int(r["fds_after"]) if r["fds_after"] else None
            out.append((int(r["boot"]), r["config"], float(r["start_s"]), float(r["end_s"]), ok, fds))
    return out


def main(argv):
    samples_csv = Path(argv[1]) if len(argv) > 1 else Path("build/soak/samples.csv")
    out_png = Path(argv[2]) if len(argv) > 2 else samples_csv.with_name("soak.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        # The python3 on the PATH may not be Debian's (pyenv, a venv), while
        # Debian's python3-matplotlib serves /usr/bin/python3.
        system = "/usr/bin/python3"
        if (os.access(system, os.X_OK) and not os.environ.get("SOAK_PLOT_SYSTEM_PYTHON")
                and os.path.realpath(sys.executable) != os.path.realpath(system)):
            os.environ["SOAK_PLOT_SYSTEM_PYTHON"] = "1"
            os.execv(system, [system, os.path.abspath(__file__)] + argv[1:])
        print("soak-plot: matplotlib is not installed (scripts/deps.sh --plot, or "
              "apt-get install python3-matplotlib): no plot", file=sys.stderr)
        return 3
    try:
        samples = read_samples(samples_csv)
        boots = read_boots(samples_csv.with_name("boots.csv"))
    except (OSError, ValueError, KeyError) as e:
        print(f"soak-plot: {e}", file=sys.stderr)
        return 1

    t = [s[0] / 60 for s in samples]
    rss = [s[2] / 1024 for s in samples]
    fds = [s[3] for s in samples]
    fig, (ax_rss, ax_fd) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5))
    ax_rss.plot(t, rss, lw=1, color="tab:blue")
    ax_rss.set_ylabel("daemon RSS (MiB)")
    ax_rss.set_ylim(bottom=0)
    ax_fd.step(t, fds, where="post", lw=1, color="tab:green", label="sampled")
    ax_fd.set_ylabel("daemon open fds")
    ax_fd.set_ylim(bottom=0, top=max(fds) * 1.15 + 1)
    ax_fd.set_xlabel("minutes since the daemon started")
    after = [(b[3] / 60, b[5]) for b in boots if b[5] is not None]
    if after:
        ax_fd.plot([a[0] for a in after], [a[1] for a in after], "o", ms=3, color="black",
                   label="after each disconnect")
        ax_fd.legend(loc="lower right", fontsize="small")
    for b in boots:
        for ax in (ax_rss, ax_fd):
            ax.axvline(b[2] / 60, ls=":", lw=0.8, color="gray" if b[4] else "red")
    failed = sum(1 for b in boots if not b[4])
    configs = sorted({b[1] for b in boots})
    title = (f"soak: {len(boots)} boots ({', '.join(configs)}), {failed} failed; "
             f"RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB (max {max(rss):.1f}); "
             f"fds {fds[0]} -> {fds[-1]} (max {max(fds)})")
    fig.suptitle(title, fontsize="medium")
    for ax in (ax_rss, ax_fd):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    print(f"soak-plot: {out_png} ({len(samples)} samples, {len(boots)} boots)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
