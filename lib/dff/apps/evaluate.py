"""mAP (detection) or mIoU (segmentation) of one model at several key-frame intervals and schedules
(``tools/evaluate_intervals.py``, ``tools/benchmark.py --eval``).

:func:`evaluate_intervals` runs the config's test set once per interval; :func:`evaluate_schedules` adds THP's
adaptive schedule; :func:`evaluate_seg_intervals` is the segmentation counterpart (the DFF paper's key-distance
protocol, :mod:`dff.eval.seg_eval`); :func:`run_evaluate_intervals` is the command: the checkpoint's own config
(with ``--set``, ``--schedule`` and ``--dataset-path``), one line per interval or schedule with the mAP over the
classes present, FGFA's motion breakdown and the feature network's share of the work (segmentation: the mIoU, by
key distance and per class), and the rows as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from typing import Any, Iterator, Sequence

import torch

from dff.config import Config, update_config
from dff.engine.fastpath import FastPath
from dff.engine.video import SCHEDULES
from dff.eval.seg_eval import format_seg_result, run_seg_test_set
from dff.eval.tester import TesterError, run_test_set
from dff.models.builder import load_model
from dff.utils.checkpoint import CheckpointError
from dff.utils.io import atomic_write_text

__all__ = ["evaluate_intervals", "evaluate_schedules", "interval_row", "format_interval_row", "evaluate_seg_intervals",
           "seg_interval_row", "format_seg_interval_row", "load_for_dataset", "run_evaluate_intervals"]


def evaluate_intervals(model: torch.nn.Module, cfg: Config, intervals: Sequence[int], output_dir: str, *,
                       kind: str = "dff", device: str | torch.device = "cpu",
                       fast: FastPath | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Accuracy per key interval: the config's test set detected at each interval ``k`` (outputs in
    ``output_dir/interval_<k>``, cached per video) and evaluated; yields ``(k, evaluation)`` as each finishes,
    the evaluation being :func:`dff.eval.tester.run_test_set`'s dict (``mAP``, ``mAP_present_classes``,
    ``motion``, ...)."""
    for k in intervals:
        yield k, run_test_set(model, cfg, kind=kind, output_dir=os.path.join(output_dir, f"interval_{k}"),
                              key_interval=k, device=device, progress=False, fast=fast)


def evaluate_schedules(model: torch.nn.Module, cfg: Config, schedules: Sequence[str], intervals: Sequence[int],
                       output_dir: str, *, kind: str = "dff", device: str | torch.device = "cpu",
                       fast: FastPath | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`evaluate_intervals` for ``"fixed"`` (rows named by the interval) and one run of the adaptive
    schedule (row ``"adaptive"``, outputs in ``output_dir/adaptive``) for ``"adaptive"``; the other ``TEST``
    keys (partial update, aggregation, tau, gamma) as ``cfg`` has them."""
    for schedule in schedules:
        if schedule not in SCHEDULES:
            raise ValueError(f"--schedule must name {' or '.join(SCHEDULES)}, got {schedule!r}")
        run_cfg = copy.deepcopy(cfg)
        update_config(run_cfg, {"TEST": {"KEY_FRAME_SCHEDULE": schedule}}, source="--schedule")
        if schedule == "fixed":
            for k, evaluation in evaluate_intervals(model, run_cfg, intervals, output_dir, kind=kind, device=device,
                                                    fast=fast):
                yield str(k), evaluation
        else:
            yield schedule, run_test_set(model, run_cfg, kind=kind, output_dir=os.path.join(output_dir, schedule),
                                         device=device, progress=False, fast=fast)


def interval_row(evaluation: dict[str, Any]) -> dict[str, Any]:
    """One interval's (or schedule's) JSON row: the mAP over the classes present and over all the model's
    classes, the mAP per motion speed (slow, medium, fast), COCO AP@[.5:.95] / AP50 / AP75 (when evaluated), and
    ``key_fraction``, ``updated_area_fraction``, ``feature_cost_fraction``
    (:func:`dff.eval.tester.schedule_stats`)."""
    motion = {m: v.get("mAP") if isinstance(v, dict) else v for m, v in evaluation.get("motion", {}).items()}
    row = {"mAP_present_classes": evaluation["mAP_present_classes"], "mAP": evaluation["mAP"], "motion": motion}
    for key in ("key_fraction", "updated_area_fraction", "feature_cost_fraction"):
        if key in evaluation.get("schedule", {}):
            row[key] = evaluation["schedule"][key]
    if "coco" in evaluation:
        row["coco"] = {k: evaluation["coco"][k] for k in ("AP", "AP50", "AP75")}
    return row


def format_interval_row(kind: str, k: int | str, row: dict[str, Any]) -> str:
    """The printed line of one interval's (or the adaptive schedule's) row."""
    coco = f", COCO AP {row['coco']['AP']:.4f}" if "coco" in row else ""
    cost = (f", key frames {row['key_fraction']:.3f}, updated area {row['updated_area_fraction']:.3f}, feature cost "
            f"{row['feature_cost_fraction']:.3f}") if "feature_cost_fraction" in row else ""
    what = f"interval {k:>2}" if str(k).isdigit() else f"schedule {k}"
    return (f"{kind} {what}: mAP {row['mAP_present_classes']:.4f} (classes present), "
            f"motion {json.dumps(row['motion'])}{coco}{cost}")


def evaluate_seg_intervals(model: torch.nn.Module, cfg: Config, intervals: Sequence[int], output_dir: str | None, *,
                           scale_map: bool = True, device: str | torch.device = "cpu"
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Segmentation accuracy per key interval: :func:`dff.eval.seg_eval.run_seg_test_set` on the config's test set at
    each interval ``k`` (its JSON in ``output_dir/interval_<k>/results`` when ``output_dir`` is given), the key
    frame warped with or without the scale map; yields ``(k, evaluation)`` as each finishes."""
    for k in intervals:
        yield k, run_seg_test_set(model, cfg, output_dir=None if output_dir is None else
                                  os.path.join(output_dir, f"interval_{k}"), key_interval=k, scale_map=scale_map,
                                  device=device, progress=False)


def seg_interval_row(evaluation: dict[str, Any]) -> dict[str, Any]:
    """One interval's JSON row for a segmentation model: ``mIoU`` (percent, the mean over the key distances),
    ``mIoU_by_distance``, ``per_class_IoU``, ``pooled_mIoU``, ``scale_map`` and the frame counts."""
    keys = ("mIoU", "mIoU_by_distance", "per_class_IoU", "pooled_mIoU", "key_interval", "scale_map", "snippets",
            "frames_evaluated", "frames_by_distance", "key_positions_skipped")
    return {k: evaluation[k] for k in keys}


def format_seg_interval_row(kind: str, k: int, row: dict[str, Any]) -> str:
    """The printed line of one interval's segmentation row."""
    return f"{kind} interval {k:>2}: {format_seg_result(row)}"


def load_for_dataset(path: str, overrides: Sequence[str], dataset_path: str | None) -> tuple[torch.nn.Module, Config]:
    """The checkpoint ``path`` with its own config, ``overrides`` (``--set``) and ``dataset_path`` (``--dataset-path``)
    applied to that config."""
    model, cfg = load_model(path, overrides=overrides)
    if dataset_path:
        if not os.path.isdir(dataset_path):
            raise OSError(f"--dataset-path {dataset_path}: no such directory")
        update_config(cfg, {"dataset": {"dataset_path": dataset_path}}, source="--dataset-path")
    return model, cfg


def _load(args: argparse.Namespace) -> tuple[torch.nn.Module, Config]:
    model, cfg = load_for_dataset(args.model, args.set, args.dataset_path)
    if not model.has_flow and getattr(args, "schedule", None) not in (None, "fixed"):
        raise ValueError(f"{args.model}: a per-frame R-FCN has no key frames to schedule; leave out --schedule")
    return model, cfg


def _evaluate_rows(model: torch.nn.Module, cfg: Config,
                   args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(row name, JSON row, printed line) per interval or schedule: the one place where the model's task
    (``model.task``) picks the evaluation: detection (:func:`evaluate_schedules`, mAP) or segmentation
    (:func:`evaluate_seg_intervals`, mIoU; fixed key intervals only)."""
    kind = model.kind
    intervals = [int(v) for v in args.intervals.split(",")] if model.has_flow else [1]
    if model.task == "seg":
        schedule = getattr(args, "schedule", None)
        if schedule not in (None, "fixed"):
            raise ValueError(f"--schedule {schedule}: a segmentation model is evaluated at fixed key intervals only")
        for k, evaluation in evaluate_seg_intervals(model, cfg, intervals, args.out,
                                                    scale_map=not getattr(args, "no_scale_map", False)):
            row = seg_interval_row(evaluation)
            yield str(k), row, format_seg_interval_row(kind, k, row)
        return
    if getattr(args, "no_scale_map", False):
        raise ValueError("--no-scale-map: segmentation models only (a detector always warps with its scale map)")
    schedule = getattr(args, "schedule", None) or str(cfg.TEST.KEY_FRAME_SCHEDULE)
    schedules = [s for s in schedule.split(",") if s] if model.has_flow else ["fixed"]
    out = args.out or tempfile.mkdtemp(prefix="dff_eval_")
    for k, evaluation in evaluate_schedules(model, cfg, schedules, intervals, out, kind=kind):
        row = interval_row(evaluation)
        yield k, row, format_interval_row(kind, k, row)


def run_evaluate_intervals(args: argparse.Namespace) -> int:
    """``tools/evaluate_intervals.py``: evaluate ``args.model`` at each of ``args.intervals`` (per-frame models:
    interval 1 only), print a line per interval, write the rows to ``args.json``; 0, or 2 after one ``error:``
    line. A segmentation model's rows hold its mIoU (:func:`seg_interval_row`), a detector's its mAP."""
    try:
        model, cfg = _load(args)
        rows = {}
        for k, row, line in _evaluate_rows(model, cfg, args):
            rows[k] = row
            print(line, flush=True)
    except (CheckpointError, TesterError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0
