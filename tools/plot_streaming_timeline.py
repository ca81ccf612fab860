"""Draw a stream's timeline from tools/evaluate_streaming.py --records files: for each processed frame, when it
arrived and when its result finished, and which key frame it used; one panel per run.

    python tools/evaluate_streaming.py MODEL --dataset-path D --records sync.jsonl
    python tools/evaluate_streaming.py MODEL --dataset-path D --async-keys --records async.jsonl
    python tools/plot_streaming_timeline.py sync.jsonl async.jsonl --labels "synchronous|asynchronous" --out docs/img/streaming_timeline.png
"""
from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)


def read_records(path: str, video: str | None) -> tuple[str, list[dict]]:
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise ValueError(f"{path}: no records (write them with tools/evaluate_streaming.py --records)")
    video = video or records[0]["video"]
    chosen = [r for r in records if r["video"] == video]
    if not chosen:
        raise ValueError(f"{path}: no records of video {video}")
    return video, chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", help="--records files of tools/evaluate_streaming.py")
    ap.add_argument("--labels", default=None, help="panel titles separated by | (default: the file names)")
    ap.add_argument("--video", default=None, help="the video to draw (default: the first one in each file)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    labels = args.labels.split("|") if args.labels else args.records
    if len(labels) != len(args.records):
        print(f"error: {len(labels)} labels for {len(args.records)} files", file=sys.stderr)
        return 2
    fig, axes = plt.subplots(len(args.records), 1, figsize=(12, 3.2 * len(args.records)), sharex=True, squeeze=False)
    frames = int(args.seconds * args.fps)
    for ax, path, label in zip(axes[:, 0], args.records, labels):
        try:
            video, records = read_records(path, args.video)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        records = [r for r in records if r["arrival"] < args.seconds]
        processed = {r["index"] for r in records}
        dropped = [i / args.fps for i in range(frames) if i not in processed]
        ax.scatter(dropped, [0.0] * len(dropped), marker="|", color="0.6", s=60, label="arrived, dropped")
        keys = sorted({r["key_index"] for r in records})
        colors = plt.get_cmap("tab10")
        for r in records:
            c = colors(keys.index(r["key_index"]) % 10)
            y = 1.0 + (keys.index(r["key_index"]) % 2) * 0.25
            ax.plot([r["arrival"], r["finish"]], [y, y], color=c, lw=1.5)
            ax.scatter([r["arrival"]], [y], color=c, s=12, marker="o")
            ax.scatter([r["finish"]], [y], color=c, s=22, marker="x" if r["is_key"] else ">")
        for i in range(frames + 1):
            ax.axvline(i / args.fps, color="0.92", lw=0.5, zorder=0)
        lat = sorted(1000 * (r["finish"] - r["arrival"]) for r in records)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        ax.set_title(f"{label}: {len(records)} of {frames} frames processed, latency p50 {p50:.0f} ms, max "
                     f"{max(lat):.0f} ms; colour = the key frame used ({len(keys)} keys; x = computed in line)",
                     fontsize=9)
        ax.set_yticks([0, 1, 1.25])
        ax.set_yticklabels(["dropped", "result", ""])
        ax.set_ylim(-0.5, 1.75)
    axes[-1, 0].set_xlabel(f"seconds from the stream's start ({video}); o = frame arrives, > / x = its result is out")
    axes[-1, 0].set_xlim(0, args.seconds)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
