"""Plot mAP against the feature network's cost or against frames per second, one curve per method, one panel per
data set (THP's Figs. 3-7; the mobile paper's Table 5).

    python tools/plot_speed_accuracy.py --out docs/thp_speed_accuracy.png \\
        --curve "clean:DFF=e/dff_clean.json" --curve "clean:c3 (adaptive)=e/c3_g01.json,e/c3_g02.json" \\
        --curve "degraded:DFF=e/dff_vid.json" ...

Each ``--curve PANEL:LABEL=FILE[,FILE...]`` reads ``tools/evaluate_intervals.py --json`` files; every row of every
file (an interval, or the adaptive schedule) is one point: x = ``feature_cost_fraction``, y = the mAP over the
classes present. Panels appear in the order first named. A missing file or row field is an error that names it.

``--x fps`` puts the measured speed on x instead: each FILE is ``EVAL@BENCH``, an evaluation and a
``tools/benchmark.py --json`` run on this machine; a row of key interval k gets the run's DFF fps at interval k, or
with ``EVAL@BENCH#per_frame`` the run's per-frame fps (the twin)::

    python tools/plot_speed_accuracy.py --x fps --out docs/mobile_speed_accuracy.png \
        --curve "clean:twin=e/twin.json@b/bench.json#per_frame" --curve "clean:GRU on=e/gru.json@b/bench.json"
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dff.utils.io import atomic_write_bytes  # noqa: E402


def parse_curve(spec: str) -> tuple[str, str, list[str]]:
    """``PANEL:LABEL=F1,F2`` -> (panel, label, files)."""
    if ":" not in spec or "=" not in spec:
        raise ValueError(f"--curve {spec!r}: expected PANEL:LABEL=FILE[,FILE...]")
    panel, rest = spec.split(":", 1)
    label, files = rest.split("=", 1)
    return panel.strip(), label.strip(), [f for f in files.split(",") if f]


def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such {what}")
    with open(path) as f:
        return json.load(f)


def _fps(bench: dict, path: str, row: dict, name: str, per_frame: bool) -> float:
    """The benchmark run's per-frame fps, or its DFF fps at the row's key interval."""
    intervals = bench.get("intervals", {})
    if per_frame:
        if not intervals:
            raise ValueError(f"{path}: no timed intervals")
        return float(next(iter(intervals.values()))["per_frame_fps"])
    k = str(row.get("key_interval", name))
    if k not in intervals:
        raise ValueError(f"{path}: no run at key interval {k} (tools/benchmark.py --key-intervals ...,{k})")
    return float(intervals[k]["dff_fps"])


def curve_points(files: list[str], x: str = "cost") -> list[tuple[float, float]]:
    """(feature cost or fps, mAP in %) of every row of the files, by x."""
    points = []
    for spec in files:
        path, bench_path, per_frame = spec, None, False
        if x == "fps":
            if "@" not in spec:
                raise ValueError(f"{spec!r}: --x fps needs EVAL@BENCH[#per_frame]")
            path, bench_path = spec.split("@", 1)
            bench_path, _, tag = bench_path.partition("#")
            if tag not in ("", "per_frame"):
                raise ValueError(f"{spec!r}: the only tag is #per_frame, got #{tag}")
            per_frame = tag == "per_frame"
        rows = _read_json(path, "evaluation (tools/evaluate_intervals.py --json)")
        bench = _read_json(bench_path, "benchmark run (tools/benchmark.py --json)") if bench_path else None
        for name, row in rows.items():
            if "feature_cost_fraction" not in row or "mAP_present_classes" not in row:
                raise ValueError(f"{path}: row {name!r} has no feature_cost_fraction / mAP_present_classes")
            xv = _fps(bench, bench_path, row, name, per_frame) if bench is not None else float(row["feature_cost_fraction"])
            points.append((xv, 100.0 * float(row["mAP_present_classes"])))
    return sorted(points)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--curve", action="append", required=True, help="PANEL:LABEL=FILE[,FILE...]")
    ap.add_argument("--x", choices=("cost", "fps"), default="cost",
                    help="x axis: the feature network's cost fraction, or fps measured by tools/benchmark.py")
    ap.add_argument("--title", default=None, help="default: names the x axis")
    args = ap.parse_args(argv)
    try:
        panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
        for spec in args.curve:
            panel, label, files = parse_curve(spec)
            panels.setdefault(panel, []).append((label, curve_points(files, args.x)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False, sharey=True)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for label, pts in curves:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=4, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("feature network cost (fraction of per-frame)" if args.x == "cost" else
                      "frames per second, network only (tools/benchmark.py, this CPU)")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("mAP (%)")
    fig.suptitle(args.title or ("mAP against the feature network's cost" if args.x == "cost" else
                                "mAP against frames per second"))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
