"""Plot mAP against the feature network's share of the work from tools/evaluate_intervals.py JSON files.

    python tools/plot_speed_accuracy.py --out docs/thp_speed_accuracy.png \
        "R-FCN=rfcn.json" "DFF=dff.json" "THP adaptive=thp_g0.1.json" ...

Each argument is LABEL=FILE (several files may share a label: their rows form one curve). A row's x is its
``feature_cost_fraction`` (1 for a per-frame model), y its ``mAP_present_classes`` in percent.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("series", nargs="+", metavar="LABEL=FILE")
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="mAP against feature-network cost (synthetic validation)")
    args = ap.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: needs matplotlib (pip install -e .[plot])", file=sys.stderr)
        return 2
    points: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for item in args.series:
        label, _, path = item.partition("=")
        if not path:
            print(f"error: {item!r}: expected LABEL=FILE", file=sys.stderr)
            return 2
        try:
            with open(path) as f:
                rows = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        for name, row in rows.items():
            points[label].append((float(row.get("feature_cost_fraction", 1.0)), 100 * row["mAP_present_classes"], name))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("feature-network cost relative to per-frame (key frames + updated area)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(args.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
