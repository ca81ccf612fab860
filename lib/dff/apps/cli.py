"""The command lines of the experiment scripts (``experiments/*/*.py``): their option groups and the runs.

Each script builds its own parser from these groups (each takes a parser or an argument group), each group
added once, so no option is defined twice:

* ``*_end2end_train_test.py``: :func:`add_config_options`, :func:`add_train_options` (group "training"),
  :func:`add_test_options` (group "testing"), then :func:`run_train_test`;
* ``*_test.py``: :func:`add_config_options`, :func:`add_test_options`, :func:`add_test_script_options`, then
  :func:`run_test`.

The runs set up the console log, load ``--cfg`` with the ``--set`` overrides, call
:func:`dff.train.trainer.train` / :func:`dff.eval.tester.run_test_from_args`, and turn the errors a user can
fix into one ``error:`` line and an exit status (1: training diverged, 2: anything else).
"""
from __future__ import annotations

import argparse
import os
import sys

from dff.api import auto_device
from dff.config import ConfigError, load_config
from dff.deploy import BACKENDS
from dff.engine.fastpath import FAST_NAMES
from dff.eval.tester import DEFAULT_THRESH, TesterError, default_model_path, run_test_from_args, test_overrides
from dff.models.builder import MODEL_KINDS
from dff.temporal import SCHEDULES
from dff.train.trainer import AMP_CHOICES, TrainingDiverged, TrainingError, TrainOptions, train
from dff.utils.logging import setup_logging

__all__ = ["add_set_option", "add_schedule_option", "add_device_option", "device_name", "add_fast_option", "add_backend_options",
           "add_config_options", "add_train_options", "add_test_options", "add_test_script_options",
           "train_options", "run_train_test", "run_test"]

# The options every command shares, each defined here once ------------------------------------------------
def add_set_option(ap: argparse._ActionsContainer, example: str = "TEST.KEY_FRAME_INTERVAL=5 TEST.RPN_POST_NMS_TOP_N=100",
                   what: str = "after the YAML, and after a native checkpoint's own config") -> None:
    """``--set KEY=VALUE ...``: config overrides (a list; repeatable)."""
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help=f"override config keys {what}, e.g. --set {example} (values read as YAML; repeatable; keys "
                         "that shape the network must match the checkpoint)")


def device_name(value: str | None) -> str:
    """``auto`` (or None): ``cuda`` where a GPU is available, else ``cpu``; anything else as given
    (:func:`dff.api.auto_device`, the API's rule)."""
    return value if value not in (None, "", "auto") else str(auto_device(value))


def add_device_option(ap: argparse._ActionsContainer, default: str = "auto") -> None:
    """``--device``: one default for every command, ``auto`` (cuda if available, else cpu)."""
    ap.add_argument("--device", default=default, type=device_name,
                    help="cpu, cuda, cuda:1 ... (default: %(default)s, i.e. cuda if available, else cpu)")


def add_fast_option(ap: argparse._ActionsContainer, default: str | None = None) -> None:
    """``--fast``: the engine's fast path (:class:`dff.engine.fastpath.FastPath`)."""
    what = ("none (plain float32, as the reference)" if default == "none" else
            "fp16 on CUDA (autocast, channels_last, CUDA graphs), fp32 on the CPU (oneDNN pre-packed weights)")
    ap.add_argument("--fast", default=default, choices=FAST_NAMES,
                    help=f"the engine's fast path: none, fp32, tf32, fp16 or bf16; default {what}; see "
                         "docs/benchmarks.md")


def add_backend_options(ap: argparse._ActionsContainer) -> None:
    """``--backend torch|onnxruntime`` and ``--onnx DIR``."""
    ap.add_argument("--backend", default="torch", choices=BACKENDS,
                    help="the engine: torch, or onnxruntime on the model's ONNX export (docs/onnx.md; exported to a "
                         "cache first unless --onnx is given; needs pip install -e .[deploy])")
    ap.add_argument("--onnx", default=None, metavar="DIR",
                    help="--backend onnxruntime: the export folder of tools/export_onnx.py (of the same model and settings)")


def add_schedule_option(ap: argparse._ActionsContainer) -> None:
    """The ``--schedule`` flag of the demo, tester, evaluator and benchmark."""
    ap.add_argument("--schedule", choices=SCHEDULES, default=None,
                    help="key frames: fixed (every TEST.KEY_FRAME_INTERVAL frames) or adaptive (THP models: when the "
                         "share of positions with Q <= TEST.THP_TAU exceeds TEST.THP_GAMMA); default "
                         "TEST.KEY_FRAME_SCHEDULE. Same as --set TEST.KEY_FRAME_SCHEDULE=...")



def add_config_options(ap: argparse._ActionsContainer) -> None:
    """``--cfg`` (the experiment YAML) and ``--set KEY=VALUE ...`` (overrides applied after it)."""
    ap.add_argument("--cfg", required=True, help="experiment YAML")
    add_set_option(ap, "TRAIN.lr=0.001 TEST.KEY_FRAME_INTERVAL=5")


def add_train_options(ap: argparse._ActionsContainer) -> None:
    """The training flags (:class:`dff.train.trainer.TrainOptions`), with ``--num-workers``, ``--device`` and
    ``--no-test``."""
    ap.add_argument("--resume", action="store_true", help="continue from <prefix>-last.state.pth in the output folder")
    ap.add_argument("--from-scratch", action="store_true",
                    help="do not load network.pretrained/pretrained_flow: random initialisation")
    ap.add_argument("--init", default=None, metavar="PATH",
                    help="start from these full-model weights (native or MXNet)")
    ap.add_argument("--frequent", type=int, default=None, help="log every N updates (default: default.frequent)")
    ap.add_argument("--accumulate", type=int, default=1,
                    help="images per process per update, gradients summed (4 emulates the reference's 4 GPUs)")
    ap.add_argument("--amp", choices=AMP_CHOICES, default="off", help="mixed precision (CUDA)")
    ap.add_argument("--max-iters", type=int, default=None, help="stop after N updates in total (smoke tests)")
    ap.add_argument("--num-workers", type=int, default=2, help="data loading worker processes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data order, key frames and target sampling")
    add_device_option(ap)
    ap.add_argument("--save-every", type=int, default=2000,
                    help="updates between resumable checkpoints (0: epoch ends)")
    ap.add_argument("--no-mxnet", action="store_true", help="do not write <prefix>-NNNN.params (MXNet format)")
    ap.add_argument("--shuffle-quirk", action="store_true",
                    help="the reference's shuffle bug: no batch shuffling when the roidb size is a multiple of the batch")
    ap.add_argument("--no-test", action="store_true", help="train only")


def add_test_options(ap: argparse._ActionsContainer, kind: str) -> None:
    """The test flags of both scripts (``--key-interval`` for DFF only) and ``--no-progress``."""
    if kind in DEFAULT_THRESH:  # detectors
        ap.add_argument("--thresh", type=float, default=None,
                        help=f"score threshold (default {DEFAULT_THRESH[kind]:g}, as the reference)")
    ap.add_argument("--ignore-cache", "--ignore_cache", dest="ignore_cache", action="store_true",
                    help="run every video again, even those with finished detections in the output folder")
    if MODEL_KINDS[kind].uses_flow:
        ap.add_argument("--key-interval", type=int, default=None,
                        help="key frame every N frames (default TEST.KEY_FRAME_INTERVAL)")
        add_schedule_option(ap)
    ap.add_argument("--max-videos", type=int, default=None, help="test only the first N videos (smoke tests)")
    add_fast_option(ap, "none")
    add_backend_options(ap)
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_test_script_options(ap: argparse._ActionsContainer) -> None:
    """The test script's own flags: ``--model``, and ``--num-workers`` / ``--device`` (which the train script
    has among its training flags)."""
    ap.add_argument("--num-workers", type=int, default=2, help="frame decoding threads / loader workers")
    add_device_option(ap)
    ap.add_argument("--model", default=None,
                    help="weights to test (native .pth or MXNet .params; default: "
                         "<output>/<cfg stem>/<train sets>/<prefix>-<TEST.test_epoch>.pth, else .params)")


def train_options(args: argparse.Namespace, kind: str) -> TrainOptions:
    """The :class:`~dff.train.trainer.TrainOptions` of :func:`add_train_options`' flags."""
    return TrainOptions(kind=kind, cfg_path=args.cfg, resume=args.resume, from_scratch=args.from_scratch,
                        init=args.init, frequent=args.frequent, accumulate=args.accumulate, amp=args.amp,
                        max_iters=args.max_iters, num_workers=args.num_workers, seed=args.seed, device=args.device,
                        save_every=args.save_every, mxnet_checkpoints=not args.no_mxnet,
                        shuffle_quirk=args.shuffle_quirk, progress=not args.no_progress)


def _error(e: Exception, prefix: str = "") -> None:
    print(f"error: {prefix}{e}", file=sys.stderr)


def run_train_test(args: argparse.Namespace, kind: str) -> int:
    """``*_end2end_train_test.py``: train, then (unless ``--no-test``) test on rank 0. Returns the exit status."""
    setup_logging()
    try:
        cfg = load_config(args.cfg, test_overrides(args))
        result = train(cfg, train_options(args, kind))
        if args.no_test or int(os.environ.get("RANK", "0")) != 0:
            return 0
        # the training's processes are done: rank 0 tests alone, not sharded
        run_test_from_args(args, kind, cfg, args.cfg, result.weights_path or default_model_path(cfg, args.cfg),
                           shard=False)
    except TrainingDiverged as e:
        _error(e, "training diverged: ")
        return 1
    except (ConfigError, TrainingError, TesterError, FileNotFoundError, ValueError) as e:
        _error(e)
        return 2
    return 0


def run_test(args: argparse.Namespace, kind: str) -> int:
    """``*_test.py``: test the ``TEST.test_epoch`` checkpoint (or ``--model``) and evaluate. Returns the exit status."""
    setup_logging()
    try:
        cfg = load_config(args.cfg, test_overrides(args))
        run_test_from_args(args, kind, cfg, args.cfg, args.model)
    except (ConfigError, TesterError, FileNotFoundError, ValueError) as e:
        _error(e)
        return 2
    return 0
