"""The fleet start's CDF (agent/benches/fleet.rs): the share of agents ready against time since the
fleet's start, one step line per pass, with the floor (N - burst)/R, 1.2 x the floor, and the
ideal curve (the first `burst` agents at once, the rest at R per second).

    tests/.venv/bin/python tests/fleet/plot.py OUT.png SUMMARY.json READY.csv [SUMMARY.json READY.csv ...]

SUMMARY.json holds a pass's figures (fleet::summary, and the bench's `label`, which the legend
shows when set), READY.csv one row per agent (agent,ready_s; empty when it never got ready).
matplotlib's Agg backend brings its own font: no display, no system fonts.
"""

import csv
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)


def read_ready(path):
    with open(path, newline="") as f:
        return sorted(float(r["ready_s"]) for r in csv.DictReader(f) if r["ready_s"])


def label(s):
    mode = "sidecar (serve)" if s["mode"] == "serve" else "init (--once)"
    if s.get("label"):
        mode = f"{s['label']}, {mode}"
    last = f"{s['last_s']:.2f} s" if s["last_s"] is not None else "-"
    return (
        f"{mode}: last {last} ({s['last_s'] / s['floor_s']:.2f} x floor), "
        f"{s['token_requests']} requests ({s['token_requests'] / s['n']:.2f} x N), "
        f"{s['rate_limited']} x 429, {s['failed']} failed"
        if s["last_s"] is not None and s["floor_s"] > 0
        else f"{mode}: last {last}, {s['token_requests']} requests, {s['failed']} failed"
    )


def main(argv):
    if len(argv) < 4 or len(argv) % 2 != 0:
        sys.exit(__doc__)
    out, pairs = argv[1], list(zip(argv[2::2], argv[3::2]))
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    first = None
    for summary_path, csv_path in pairs:
        with open(summary_path) as f:
            s = json.load(f)
        first = first or s
        ready = read_ready(csv_path)
        n = s["n"]
        xs = [0.0] + ready
        ys = [0.0] + [(i + 1) / n for i in range(len(ready))]
        ax.step(xs, ys, where="post", label=label(s))
    n, rate, burst, floor = first["n"], first["rate"], first["burst"], first["floor_s"]
    ideal_x = [0.0] + [max(0.0, (k + 1 - burst) / rate) for k in range(n)]
    ideal_y = [0.0] + [(k + 1) / n for k in range(n)]
    ax.step(ideal_x, ideal_y, where="post", color="grey", linestyle=":", label="ideal: burst at once, then R/s")
    ax.axvline(floor, color="black", linestyle="--", linewidth=1, label=f"floor (N - burst)/R = {floor:.1f} s")
    ax.axvline(1.2 * floor, color="red", linestyle="--", linewidth=1, label="1.2 x floor (target)")
    ax.set_xlabel("seconds since the fleet's first agent started")
    ax.set_ylabel("share of agents ready (token file written)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(
        f"Fleet start: N = {n} agents started within {first['started_within_s']:.1f} s, "
        f"IdP limit {rate:g}/s burst {burst}, 429 Retry-After {first['retry_after']} s"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    main(sys.argv)
