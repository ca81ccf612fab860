"""Plot mAP against the feature network's cost, one curve per method, one panel per data set (THP's Figs. 3-7).

    python tools/plot_speed_accuracy.py --out docs/thp_speed_accuracy.png \\
        --curve "clean:DFF=e/dff_clean.json" --curve "clean:c3 (adaptive)=e/c3_g01.json,e/c3_g02.json" \\
        --curve "degraded:DFF=e/dff_vid.json" ...

Each ``--curve PANEL:LABEL=FILE[,FILE...]`` reads ``tools/evaluate_intervals.py --json`` files; every row of every
file (an interval, or the adaptive schedule) is one point: x = ``feature_cost_fraction``, y = the mAP over the
classes present. Panels appear in the order first named. A missing file or row field is an error that names it.
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


def curve_points(files: list[str]) -> list[tuple[float, float]]:
    """(feature cost, mAP in %) of every row of the files, by cost."""
    points = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such evaluation (tools/evaluate_intervals.py --json)")
        with open(path) as f:
            rows = json.load(f)
        for name, row in rows.items():
            if "feature_cost_fraction" not in row or "mAP_present_classes" not in row:
                raise ValueError(f"{path}: row {name!r} has no feature_cost_fraction / mAP_present_classes")
            points.append((float(row["feature_cost_fraction"]), 100.0 * float(row["mAP_present_classes"])))
    return sorted(points)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--curve", action="append", required=True, help="PANEL:LABEL=FILE[,FILE...]")
    ap.add_argument("--title", default="mAP against the feature network's cost")
    args = ap.parse_args(argv)
    try:
        panels: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
        for spec in args.curve:
            panel, label, files = parse_curve(spec)
            panels.setdefault(panel, []).append((label, curve_points(files)))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False, sharey=True)
    for ax, (panel, curves) in zip(axes[0], panels.items()):
        for label, pts in curves:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=4, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("feature network cost (fraction of per-frame)")
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("mAP (%)")
    fig.suptitle(args.title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
