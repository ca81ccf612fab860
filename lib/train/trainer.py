"""End-to-end training of R-FCN and DFF (spec 5), faithful to the reference's optimisation.

One step = one *global batch*: ``world_size`` processes x ``accumulate`` images each (the reference: 4
GPUs x 1 image). Each image's loss is back-propagated on its own (images have different sizes); the
gradients are **summed** over the global batch (the reference's kvstore sums the 4 GPUs' gradients,
``rescale_grad`` 1), then :class:`dff.train.optim.MXNetSGD` applies MXNet's momentum update with the
lr of :func:`dff.train.optim.lr_schedule`.

Distributed runs (``torchrun``, gloo on CPU, nccl on GPU) all-reduce the gradients with a SUM here,
in buckets, after the local images' backward passes, rather than through
``DistributedDataParallel``: DDP averages (the sum would need a x world rescale), hooks only
``forward`` (training goes through ``forward_train``), and needs ``find_unused_parameters`` because
DFF's FlowNet is unused on ``eq_flag = 1`` images. A parameter without a gradient is given a zero
gradient, so every trainable parameter is updated every step as in MXNet (momentum, weight decay).
Every rank gets the same result, and ``world_size`` x ``accumulate`` images give the same weights
whatever the split (all per-sample randomness is seeded by ``(seed, epoch, roidb index)``).

Checkpoints in the output folder ``<output_path>/<cfg stem>/<image sets joined by _>/``:

* ``<prefix>-last.state.pth``: the full training state (model, optimizer momentum, update count,
  epoch, position in the epoch, RNG states, config), every ``save_every`` updates and at each epoch
  end, written atomically. ``--resume`` continues from it to the same weights as an uninterrupted run.
* ``<prefix>-NNNN.state.pth``: the state after epoch NNNN (as the reference's ``.params``+``.states``).
* ``<prefix>-NNNN.pth``: inference weights after epoch NNNN, with the R-FCN box de-normalisation
  folded into ``rfcn_bbox`` (what the test script, the demos and ``load_model_weights`` expect).
* ``<prefix>-NNNN.params``: the same epoch in MXNet format with the reference's ``_test`` keys, so the
  reference's own tools can read it.
* ``train.log``: the log (appended on resume).

A non-finite loss or gradient stops training with :class:`TrainingDiverged` naming the update; the
weights are not updated and no checkpoint is written, so the last good one stays as it was.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from tqdm import tqdm

from dff.config import Config, ConfigError, config_stem, load_config
from dff.dataset.imagenet_vid import ImageNetVID, missing_dataset_message
from dff.dataset.loader import (
    STREAM_TARGETS,
    AspectGroupedBatchSampler,
    BadSample,
    TrainDataset,
    derive_seed,
    list_collate,
    worker_init,
)
from dff.eval.tester import (
    TesterError,
    add_test_arguments,
    default_model_path,
    run_test_from_args,
    setup_console_logging,
)
from dff.models.builder import build_model, fold_bbox_state, tiled_bbox_stats, unfold_bbox_state, weights_tag
from dff.train.optim import MXNetSGD, build_param_groups, lr_schedule
from dff.utils.checkpoint import (
    CheckpointError,
    detect_format,
    load_checkpoint,
    load_model_weights,
    load_mxnet_checkpoint,
    save_checkpoint,
    save_mxnet_checkpoint,
)
from dff.utils.mxnet_params import MXNetParamsError, read_params

__all__ = [
    "TrainOptions", "TrainResult", "TrainingError", "TrainingDiverged", "METRICS",
    "train_output_dir", "load_train_roidb", "init_new_layers", "initialize", "train", "build_train_parser", "run_train_test",
]

log = logging.getLogger("dff.train")

# forward_train outputs logged and summed over the global batch (reference metric names in brackets):
# RPNLogLoss, RPNL1Loss, RCNNLogLoss, RCNNL1Loss, RPNAcc, RCNNAcc
METRICS = ("loss", "rpn_cls_loss", "rpn_bbox_loss", "rcnn_cls_loss", "rcnn_bbox_loss", "rpn_acc", "rcnn_acc")
_BUCKET_BYTES = 32 << 20
_NEW_LAYERS = ("feat_conv_3x3", "rpn_head.rpn_cls_score", "rpn_head.rpn_bbox_pred", "rfcn_head.rfcn_cls",
               "rfcn_head.rfcn_bbox")


class TrainingError(RuntimeError):
    """Training cannot start or go on; the message names the file/flag and what to do."""


class TrainingDiverged(TrainingError):
    """A non-finite loss or gradient; the message names the update and the last good checkpoint."""


@dataclasses.dataclass
class TrainOptions:
    """Run options beyond the YAML (command-line flags of the train scripts)."""
    kind: str                          # "rfcn" or "dff"
    cfg_path: str | None = None        # the YAML (its stem names the output folder)
    resume: bool = False               # continue from <prefix>-last.state.pth (also TRAIN.RESUME)
    from_scratch: bool = False         # ignore network.pretrained / pretrained_flow
    init: str | None = None            # full-model weights to start from (native or MXNet)
    frequent: int | None = None        # log every N updates (default.frequent)
    accumulate: int = 1                # images per process per update
    amp: str = "off"                   # "off", "bf16", "fp16" (CUDA only)
    max_iters: int | None = None       # stop after this many updates in total (smoke tests)
    num_workers: int = 2               # DataLoader worker processes
    seed: int = 0
    device: str | None = None
    save_every: int = 2000             # updates between <prefix>-last.state.pth saves (0: epoch ends only)
    mxnet_checkpoints: bool = True     # also write <prefix>-NNNN.params at epoch ends
    shuffle_quirk: bool = False        # the reference's no-chunk-shuffle when N % batch == 0
    progress: bool = True              # tqdm bar (rank 0)
    output_dir: str | None = None      # override <output_path>/<cfg stem>/<image sets>


@dataclasses.dataclass
class TrainResult:
    output_dir: str
    model: nn.Module
    iteration: int                     # updates done in total
    epoch: int                         # completed epochs
    weights_path: str | None           # the last inference weights written (None if none)
    state_path: str | None             # the last training state written
    history: list[dict[str, float]]    # per update (rank 0): iteration, lr, metric means, images
    bad_samples: int


# --------------------------------------------------------------------------------------------------
# model, data, initialisation
# --------------------------------------------------------------------------------------------------
def train_output_dir(cfg: Config, cfg_path: str | None) -> str:
    """``<output_path>/<cfg stem>/<image sets joined by _>`` (the reference's layout)."""
    return os.path.join(cfg.output_path or "./output", config_stem(cfg_path),
                        str(cfg.dataset.image_set).replace("+", "_"))


def load_train_roidb(cfg: Config, verbose: bool = True) -> list[dict[str, Any]]:
    """The reference's training roidb: lists of ``dataset.image_set`` with flipped copies, filtered."""
    path = str(cfg.dataset.dataset_path)
    if not os.path.isdir(path):
        raise TrainingError(missing_dataset_message(path))
    imdb = ImageNetVID(str(cfg.dataset.image_set), path, cache_dir=os.path.join(str(cfg.dataset.root_path), "cache"),
                       verbose=verbose)
    try:
        roidb = imdb.train_roidb(flip=bool(cfg.TRAIN.FLIP))
    except FileNotFoundError as e:
        raise TrainingError(str(e)) from None
    if not roidb:
        raise TrainingError(f"{cfg.dataset.image_set}: no training image with a ground-truth box under {path}")
    return roidb


@torch.no_grad()
def init_new_layers(model: nn.Module, generator: torch.Generator) -> None:
    """The reference's ``init_weight``: feat_conv / RPN / R-FCN weights N(0, 0.01), biases 0; DFF's scale
    conv weight 0, bias 1 (bias frozen)."""
    modules = dict(model.named_modules())
    for name in _NEW_LAYERS:
        conv = modules[name]
        nn.init.normal_(conv.weight, 0.0, 0.01, generator=generator)
        nn.init.zeros_(conv.bias)
    if model.kind == "dff":
        model.flownet.init_scale_identity()


def _pretrained_path(prefix: str, epoch: int) -> str:
    return f"{prefix}-{int(epoch):04d}.params"


def _load_part(model: nn.Module, path: str, part: str, exempt: Sequence[str] = ()) -> int:
    """Load the ``part`` (``backbone.`` / ``flownet.``) keys of an MXNet file; every key of that part
    (except ``exempt`` prefixes) must be filled."""
    try:
        report = load_mxnet_checkpoint(model, path, strict=False)
    except CheckpointError as e:
        raise TrainingError(str(e)) from None
    missing = [k for k in report.missing if k.startswith(part) and not any(k.startswith(e) for e in exempt)]
    bad = [m for m in report.mismatched if m.split(" ")[0].startswith(part) or f"({part}" in m]
    if missing or bad:
        raise TrainingError(f"{path}: does not fit the model's {part.rstrip('.')}: "
                            + "; ".join(x for x in (f"missing {missing[:10]}" if missing else "",
                                                      f"mismatched {bad[:10]}" if bad else "") if x))
    return sum(1 for k in report.loaded if k.startswith(part))


def _load_init(model: nn.Module, path: str, cfg: Config) -> str:
    """``--init PATH``: every model weight from a native checkpoint or an MXNet file (training form)."""
    if not os.path.isfile(path):
        raise TrainingError(f"{path}: --init file not found")
    try:
        fmt = detect_format(path)
        if fmt == "mxnet":
            # the trained (normalised-target) rfcn_bbox, not its folded *_test copy
            params = {k: v for k, v in read_params(path).items() if not k.endswith("_test")}
            load_mxnet_checkpoint(model, params, strict=True)
            return f"all weights from {path} (MXNet)"
        load_model_weights(model, path)
        kind = weights_tag(path)
    except (CheckpointError, MXNetParamsError) as e:
        raise TrainingError(f"--init: {e}") from None
    if kind != "train":
        # inference weights have the box de-normalisation folded in: undo it for training
        model.load_state_dict(unfold_bbox_state(model.state_dict(), cfg))
    return f"all weights from {path} (native, {kind or 'test'} weights)"


def initialize(model: nn.Module, cfg: Config, opts: TrainOptions) -> list[str]:
    """Initial weights (reference order: pretrained files, then ``init_weight`` for the new layers).

    Returns log lines. ``--init`` loads a full model instead. ``--from-scratch`` (or an empty
    ``network.pretrained``) keeps PyTorch's default initialisation for the backbone (and FlowNet, whose
    flow predictor ``Convolution5`` is then zeroed so that the initial flow is 0 and the key feature is
    copied unwarped, a port choice: the reference always starts from Flying-Chairs FlowNet).
    """
    lines: list[str] = []
    if opts.init:
        lines.append(_load_init(model, opts.init, cfg))
        if model.kind == "dff":
            for n in model.flownet.frozen_parameter_names():
                getattr(model.flownet, n.split(".")[0]).bias.requires_grad_(False)
        return lines
    gen = torch.Generator().manual_seed(derive_seed(opts.seed, 0, 0, 3))
    where = f" in {opts.cfg_path}" if opts.cfg_path else ""
    net = cfg.network
    parts = [("pretrained", "ResNet", "backbone.", ())]
    if model.kind == "dff":
        parts.append(("pretrained_flow", "FlowNet", "flownet.", ("flownet.Convolution5_scale",)))
    for key, what, part, exempt in parts:
        prefix = str(net.get(key, "") or "")
        if opts.from_scratch or not prefix:
            lines.append(f"{what}: random initialisation ({'--from-scratch' if opts.from_scratch else f'network.{key} is empty'})")
            if part == "flownet.":
                with torch.no_grad():
                    model.flownet.Convolution5.weight.zero_()
                    model.flownet.Convolution5.bias.zero_()
            continue
        path = _pretrained_path(prefix, int(net.pretrained_epoch))
        if not os.path.isfile(path):
            raise TrainingError(
                f"{path}: pretrained {what} weights not found (network.{key} = {prefix!r}, pretrained_epoch "
                f"{net.pretrained_epoch}{where}); put the converted MXNet file there (README 'Models'), pass "
                f"--init PATH to start from a full model, or --from-scratch to train from random initialisation")
        n = _load_part(model, path, part, exempt)
        lines.append(f"{what}: {n} tensors from {path}")
    init_new_layers(model, gen)
    lines.append("feat_conv/RPN/R-FCN: N(0, 0.01), biases 0" + ("; scale map: weight 0, bias 1 (frozen)"
                                                                  if model.kind == "dff" else ""))
    return lines


# --------------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    initialized_here: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_type: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, 0, False)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        here = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def _allreduce_sum(tensors: list[torch.Tensor], world: int) -> None:
    """Sum ``tensors`` over all ranks in place, in flat buckets (one collective per ~32 MB)."""
    if world <= 1 or not tensors:
        return
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        if not bucket:
            return
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for t, r in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            t.copy_(r)
        bucket.clear()

    for t in tensors:
        if bucket and (t.dtype != bucket[0].dtype or size + t.numel() * t.element_size() > _BUCKET_BYTES):
            flush()
            size = 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    flush()


# --------------------------------------------------------------------------------------------------
# checkpoint state
# --------------------------------------------------------------------------------------------------
def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "targets": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["targets"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link when the filesystem allows)."""
    tmp = f"{dst}.{os.getpid()}.tmp"
    try:
        if os.path.exists(tmp):
            os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _config_diff(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_config_diff(a, b, f"{prefix}{k}."))
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append(f"{prefix}{k}")
    return out


def _normalize_cfg(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _normalize_cfg(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_normalize_cfg(v) for v in d]
    return d


# --------------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------------
def _forward(model: nn.Module, s: dict[str, Any], device: torch.device,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
    return model.forward_train(batch, generator=generator)


def _setup_logging(out_dir: str, main: bool, progress: bool, rank: int
                   ) -> tuple[list[logging.Handler], list[logging.Handler]]:
    log.setLevel(logging.INFO)
    log.propagate = False
    handlers: list[logging.Handler] = []
    if main:
        fh = logging.FileHandler(os.path.join(out_dir, "train.log"))
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(fh)
    console = _TqdmHandler() if progress else logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s" if main else f"[rank {rank}] %(message)s"))
    if not main:
        console.setLevel(logging.WARNING)  # the other ranks only report problems (e.g. unreadable images)
    handlers.append(console)
    # this run's handlers replace any console handler set up before (e.g. by the entry point)
    saved = list(log.handlers)
    for h in saved:
        log.removeHandler(h)
    for h in handlers:
        log.addHandler(h)
    return handlers, saved


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover
            self.handleError(record)


def _tensorboard(out_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
    except Exception:
        return None
    try:
        return SummaryWriter(os.path.join(out_dir, "tensorboard"))
    except Exception:
        return None


def _resume_path(out_dir: str, prefix: str, cfg: Config) -> str | None:
    last = os.path.join(out_dir, f"{prefix}-last.state.pth")
    if os.path.isfile(last):
        return last
    begin = int(cfg.TRAIN.begin_epoch)
    if begin > 0:
        epoch_file = os.path.join(out_dir, f"{prefix}-{begin:04d}.state.pth")
        if os.path.isfile(epoch_file):
            return epoch_file
    return None


def train(cfg: Config, opts: TrainOptions) -> TrainResult:
    """Train ``opts.kind`` on ``cfg``'s training lists (see the module docstring). Rank 0 writes files."""
    if opts.accumulate < 1:
        raise TrainingError(f"--accumulate must be >= 1, got {opts.accumulate}")
    if int(cfg.TRAIN.BATCH_IMAGES) != 1:
        raise TrainingError(f"TRAIN.BATCH_IMAGES = {cfg.TRAIN.BATCH_IMAGES}: only 1 image per process per "
                            "forward is supported (use --accumulate K for more images per process)")
    device = torch.device(opts.device) if opts.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"--device {opts.device}: CUDA is not available on this machine")
    if opts.amp not in ("off", "bf16", "fp16"):
        raise TrainingError(f"--amp must be off, bf16 or fp16, got {opts.amp!r}")
    if opts.amp != "off" and device.type != "cuda":
        raise TrainingError(f"--amp {opts.amp} needs a CUDA device (this run is on {device})")
    if not os.path.isdir(str(cfg.dataset.dataset_path)):  # before any folder is made
        raise TrainingError(missing_dataset_message(str(cfg.dataset.dataset_path)))
    dctx = _init_distributed(device.type)
    if device.type == "cuda" and opts.device is None:
        device = torch.device("cuda", dctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _train(cfg, opts, device, dctx)
    finally:
        if dctx.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: Config, opts: TrainOptions, device: torch.device, dctx: _Dist) -> TrainResult:
    out_dir = opts.output_dir or train_output_dir(cfg, opts.cfg_path)
    os.makedirs(out_dir, exist_ok=True)
    handlers, saved = _setup_logging(out_dir, dctx.main, opts.progress, dctx.rank)
    tb = _tensorboard(out_dir) if dctx.main else None
    try:
        return _train_inner(cfg, opts, device, dctx, out_dir, log, tb)
    finally:
        if tb is not None:
            tb.close()
        for h in handlers:
            log.removeHandler(h)
            h.close()
        for h in saved:
            log.addHandler(h)


def _train_inner(cfg: Config, opts: TrainOptions, device: torch.device, dctx: _Dist, out_dir: str,
                 logger: logging.Logger, tb: Any) -> TrainResult:
    kind = opts.kind
    prefix = str(cfg.TRAIN.model_prefix) or ("dff_rfcn_vid" if kind == "dff" else "rfcn_vid")
    global_batch = dctx.world * opts.accumulate
    frequent = int(opts.frequent or cfg.default.frequent or 20)

    random.seed(opts.seed)
    np.random.seed(opts.seed % (2 ** 32))
    torch.manual_seed(opts.seed)

    roidb = load_train_roidb(cfg, verbose=dctx.main)
    model = build_model(kind, cfg)
    resume_from = _resume_path(out_dir, prefix, cfg) if (opts.resume or bool(cfg.TRAIN.RESUME)) else None
    if (opts.resume or cfg.TRAIN.RESUME) and resume_from is None:
        logger.warning("resume: no %s-last.state.pth in %s; starting a new run", prefix, out_dir)
    ckpt = None
    if resume_from is not None:
        try:
            ckpt = load_checkpoint(resume_from)
        except CheckpointError as e:
            raise TrainingError(f"resume: {e}") from None
        if ckpt.get("model_kind") != kind or ckpt.get("weights") != "train":
            raise TrainingError(f"{resume_from}: not a {kind} training state (model_kind={ckpt.get('model_kind')!r})")
        try:
            model.load_state_dict(ckpt["model"], strict=True)
        except RuntimeError as e:
            raise TrainingError(f"{resume_from}: does not fit the model: {str(e).splitlines()[0]}") from None
        init_lines = [f"resumed from {resume_from} (update {ckpt['iteration']}, epoch {ckpt['epoch'] + 1}, "
                      f"batch {ckpt['batch_in_epoch']})"]
        diff = _config_diff(_normalize_cfg(ckpt.get("config") or {}), _normalize_cfg(cfg.to_dict()))
        if diff:
            logger.warning("resume: config differs from the checkpoint's in %s", ", ".join(diff[:20]))
    else:
        init_lines = initialize(model, cfg, opts)
    model.to(device)
    model.train()

    groups_info = build_param_groups(model, list(cfg.network.FIXED_PARAMS))
    trainable = [p for p in model.parameters() if p.requires_grad]
    if dctx.world > 1 and ckpt is None:
        # the same start on every rank, whatever each process drew (rank 0's weights win)
        for t in list(model.state_dict().values()):
            dist.broadcast(t, 0)
    optimizer = MXNetSGD(groups_info.groups(model, float(cfg.TRAIN.wd)), lr=float(cfg.TRAIN.lr),
                         momentum=float(cfg.TRAIN.momentum), wd=float(cfg.TRAIN.wd))
    schedule = lr_schedule(cfg, len(roidb), global_batch)
    generator = torch.Generator()
    scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None

    begin_epoch = int(cfg.TRAIN.begin_epoch)
    end_epoch = int(cfg.TRAIN.end_epoch)
    # a fresh run that begins at a later epoch counts the updates of the skipped epochs, so the lr steps
    # (counted from epoch 0) fall where the reference's (counted from begin_epoch) do
    iteration, epoch, batch_in_epoch = begin_epoch * (len(roidb) // global_batch), begin_epoch, 0
    bad_total = 0
    if ckpt is not None:
        saved_batch = int(ckpt["global_batch"])
        if saved_batch != global_batch:
            raise TrainingError(
                f"{resume_from}: trained with a global batch of {saved_batch} images "
                f"({ckpt['world_size']} processes x accumulate {ckpt['accumulate']}), this run has {global_batch} "
                f"({dctx.world} x {opts.accumulate}); resume with the same product (e.g. --accumulate "
                f"{max(1, saved_batch // dctx.world)})")
        if int(ckpt["seed"]) != opts.seed:
            raise TrainingError(f"{resume_from}: trained with --seed {ckpt['seed']}, this run has {opts.seed}")
        optimizer.load_state_dict(ckpt["optimizer"])
        iteration, epoch, batch_in_epoch = int(ckpt["iteration"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        bad_total = int(ckpt.get("bad_samples", 0))
        _set_rng_state(ckpt["rng"], generator)
        if scaler is not None and "grad_scaler" in ckpt:
            scaler.load_state_dict(ckpt["grad_scaler"])
        del ckpt

    dataset = TrainDataset(roidb, cfg, pairs=(kind == "dff"), seed=opts.seed)
    sampler = AspectGroupedBatchSampler([r["width"] for r in roidb], [r["height"] for r in roidb],
                                        per_rank=opts.accumulate, world_size=dctx.world, rank=dctx.rank,
                                        seed=opts.seed, shuffle=bool(cfg.TRAIN.SHUFFLE),
                                        aspect_grouping=bool(cfg.TRAIN.ASPECT_GROUPING),
                                        reference_quirk=opts.shuffle_quirk, epoch=epoch,
                                        start_batch=min(batch_in_epoch, len(roidb) // global_batch))
    per_epoch = sampler.batches_per_epoch
    if dctx.main:
        logger.info("training %s: %d images, global batch %d (%d process(es) x %d), %d updates/epoch, epochs %d..%d, "
                    "device %s%s", kind, len(roidb), global_batch, dctx.world, opts.accumulate, per_epoch,
                    begin_epoch + 1, end_epoch, device, f", amp {opts.amp}" if opts.amp != "off" else "")
        for line in init_lines:
            logger.info("init: %s", line)
        logger.info("lr: %s", schedule)
        logger.info("params: %d trained with wd, %d without, %d frozen (%s)", len(groups_info.decay),
                    len(groups_info.no_decay), len(groups_info.frozen),
                    ", ".join(groups_info.mxnet_names[n] for n in groups_info.frozen[:6])
                    + (" ..." if len(groups_info.frozen) > 6 else ""))
        logger.info("output: %s", out_dir)

    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.amp)
    history: list[dict[str, float]] = []
    weights_path: str | None = None
    state_path: str | None = None
    window: list[list[float]] = []
    t_window = time.perf_counter()
    zero = torch.zeros((), dtype=torch.float64, device=device)

    def save_state(path: str) -> None:
        extra = {
            "weights": "train", "model_kind": kind, "optimizer": optimizer.state_dict(), "iteration": iteration,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_batch": global_batch,
            "world_size": dctx.world, "accumulate": opts.accumulate, "seed": opts.seed,
            "rng": _rng_state(generator), "bad_samples": bad_total,
        }
        if scaler is not None:
            extra["grad_scaler"] = scaler.state_dict()
        save_checkpoint(path, model_state=model, extra=extra, config=cfg)

    def stop_requested() -> bool:
        return opts.max_iters is not None and iteration >= opts.max_iters

    while epoch < end_epoch and not stop_requested():
        sampler.set_epoch(epoch, batch_in_epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=list_collate, num_workers=opts.num_workers,
            worker_init_fn=worker_init if opts.num_workers else None, pin_memory=device.type == "cuda",
            prefetch_factor=2 if opts.num_workers else None)
        bar = None
        if dctx.main and opts.progress:
            bar = tqdm(total=per_epoch, initial=batch_in_epoch, desc=f"epoch {epoch + 1}/{end_epoch}", unit="it",
                       file=sys.stderr, dynamic_ncols=True)
        try:
            for samples in loader:
                stats = torch.zeros(len(METRICS) + 2, dtype=torch.float64, device=device)
                for s in samples:
                    if isinstance(s, BadSample):
                        logger.warning("warning: %s: %s (epoch %d, roidb entry %d; skipped)", s.path, s.message,
                                       s.epoch + 1, s.index)
                        stats[-1] += 1
                        continue
                    # the sample's own target-sampling stream: the same draws whatever the process layout
                    generator.manual_seed(derive_seed(opts.seed, s["epoch"], s["index"], STREAM_TARGETS))
                    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                        out = _forward(model, s, device, generator)
                    loss = out["loss"]
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                    stats[: len(METRICS)] += torch.stack([
                        out[k].detach().double().reshape(()) if k in out else zero for k in METRICS])
                    stats[-2] += 1
                for p in trainable:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                _allreduce_sum([p.grad for p in trainable] + [stats], dctx.world)
                st = stats.tolist()
                n_img, n_bad = int(st[-2]), int(st[-1])
                bad_total += n_bad
                batch_in_epoch += 1
                if bar is not None:
                    bar.update(1)
                if n_img == 0:
                    logger.warning("update %d: no readable image in the global batch; skipped", iteration + 1)
                    optimizer.zero_grad(set_to_none=False)
                    continue
                loss_finite = math.isfinite(st[0])
                grads_finite = True
                if loss_finite and scaler is None:
                    grads_finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in trainable]).all())
                if not (loss_finite and grads_finite):
                    raise TrainingDiverged(
                        f"update {iteration + 1} (epoch {epoch + 1}, batch {batch_in_epoch}): "
                        f"{'the loss' if not loss_finite else 'a gradient'} is not finite (loss sum {st[0]:.6g}; "
                        + ", ".join(f"{k} {v:.4g}" for k, v in zip(METRICS[1:], st[1:len(METRICS)]))
                        + "); training stopped before the update; last good checkpoint: "
                        + (state_path or _resume_path(out_dir, prefix, cfg) or "none written yet"))
                lr = schedule(iteration + 1)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=False)
                iteration += 1
                means = [v / n_img for v in st[: len(METRICS)]]
                if dctx.main:
                    history.append({"iteration": iteration, "epoch": epoch, "lr": lr, "images": n_img,
                                    **dict(zip(METRICS, means))})
                    window.append(means + [n_img])
                if bar is not None:
                    bar.set_postfix(loss=f"{means[0]:.3f}", lr=f"{lr:.2e}")
                if dctx.main and iteration % frequent == 0:
                    dt = time.perf_counter() - t_window
                    speed = sum(w[-1] for w in window) / max(dt, 1e-9)
                    avg = np.mean(np.asarray(window)[:, :-1], axis=0).tolist()
                    logger.info("Epoch[%d] Batch [%d] Update %d Speed: %.2f samples/sec lr %.3e Train-%s", epoch,
                                batch_in_epoch, iteration, speed, lr,
                                ", ".join(f"{k}={v:.6f}" for k, v in zip(METRICS, avg)))
                    if tb is not None:
                        for k, v in zip(METRICS, avg):
                            tb.add_scalar(f"train/{k}", v, iteration)
                        tb.add_scalar("train/lr", lr, iteration)
                        tb.add_scalar("train/samples_per_sec", speed, iteration)
                    window.clear()
                    t_window = time.perf_counter()
                if batch_in_epoch < per_epoch and (
                        (opts.save_every and iteration % opts.save_every == 0) or stop_requested()):
                    if dctx.main:
                        state_path = os.path.join(out_dir, f"{prefix}-last.state.pth")
                        save_state(state_path)
                        logger.info("update %d: saved %s", iteration, state_path)
                    if dctx.world > 1:
                        dist.barrier()
                if stop_requested():
                    break
        finally:
            if bar is not None:
                bar.close()
        if batch_in_epoch < per_epoch:
            # stopped by --max-iters inside the epoch: inference weights of this point, for the test
            if dctx.main:
                weights_path = os.path.join(out_dir, f"{prefix}-iter{iteration:08d}.pth")
                save_checkpoint(weights_path, model_state=fold_bbox_state(model.state_dict(), cfg),
                                extra={"weights": "test", "model_kind": kind, "iteration": iteration,
                                       "epoch": epoch}, config=cfg)
                logger.info("stopped after %d updates (--max-iters); weights %s", iteration, weights_path)
            break
        # epoch end; files are numbered by completed epochs, as the reference's
        epoch, batch_in_epoch = epoch + 1, 0
        if dctx.main:
            base = os.path.join(out_dir, f"{prefix}-{epoch:04d}")
            save_state(base + ".state.pth")
            state_path = os.path.join(out_dir, f"{prefix}-last.state.pth")
            _link_or_copy(base + ".state.pth", state_path)
            weights_path = base + ".pth"
            save_checkpoint(weights_path, model_state=fold_bbox_state(model.state_dict(), cfg),
                            extra={"weights": "test", "model_kind": kind, "iteration": iteration, "epoch": epoch},
                            config=cfg)
            if opts.mxnet_checkpoints:
                means_t, stds_t = tiled_bbox_stats(cfg)
                save_mxnet_checkpoint(model, base + ".params", bbox_stds=stds_t.tolist(), bbox_means=means_t.tolist())
            logger.info("epoch %d done (%d updates): %s.pth, .state.pth%s", epoch, iteration, base,
                        ", .params" if opts.mxnet_checkpoints else "")
        if dctx.world > 1:
            dist.barrier()
    if bad_total and dctx.main:
        logger.warning("%d unreadable training samples were skipped", bad_total)
    return TrainResult(out_dir, model, iteration, epoch, weights_path, state_path, history, bad_total)


# --------------------------------------------------------------------------------------------------
# command line: *_end2end_train_test.py
# --------------------------------------------------------------------------------------------------
def build_train_parser(kind: str, prog: str | None = None) -> argparse.ArgumentParser:
    name = "DFF (R-FCN + FlowNet)" if kind == "dff" else "R-FCN"
    ap = argparse.ArgumentParser(prog=prog, description=f"Train {name} end to end, then test and evaluate it.")
    ap.add_argument("--cfg", required=True, help="experiment YAML")
    g = ap.add_argument_group("training")
    g.add_argument("--resume", action="store_true", help="continue from <prefix>-last.state.pth in the output folder")
    g.add_argument("--from-scratch", action="store_true",
                   help="do not load network.pretrained/pretrained_flow: random initialisation")
    g.add_argument("--init", default=None, metavar="PATH", help="start from these full-model weights (native or MXNet)")
    g.add_argument("--frequent", type=int, default=None, help="log every N updates (default: default.frequent)")
    g.add_argument("--accumulate", type=int, default=1,
                   help="images per process per update, gradients summed (4 emulates the reference's 4 GPUs)")
    g.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="mixed precision (CUDA)")
    g.add_argument("--max-iters", type=int, default=None, help="stop after N updates in total (smoke tests)")
    g.add_argument("--num-workers", type=int, default=2, help="data loading worker processes")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order, key frames and target sampling")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--save-every", type=int, default=2000, help="updates between resumable checkpoints (0: epoch ends)")
    g.add_argument("--no-mxnet", action="store_true", help="do not write <prefix>-NNNN.params (MXNet format)")
    g.add_argument("--shuffle-quirk", action="store_true",
                   help="the reference's shuffle bug: no batch shuffling when the roidb size is a multiple of the batch")
    g.add_argument("--no-test", action="store_true", help="train only")
    t = ap.add_argument_group("testing")
    add_test_arguments(t, kind)
    return ap


def run_train_test(argv: Sequence[str] | None, kind: str, prog: str | None = None) -> int:
    """``*_end2end_train_test.py --cfg X.yaml``: train, then test on rank 0. Returns the exit code."""

    args = build_train_parser(kind, prog).parse_args(argv)
    setup_console_logging()
    try:
        cfg = load_config(args.cfg)
        opts = TrainOptions(kind=kind, cfg_path=args.cfg, resume=args.resume, from_scratch=args.from_scratch,
                            init=args.init, frequent=args.frequent, accumulate=args.accumulate, amp=args.amp,
                            max_iters=args.max_iters, num_workers=args.num_workers, seed=args.seed,
                            device=args.device, save_every=args.save_every, mxnet_checkpoints=not args.no_mxnet,
                            shuffle_quirk=args.shuffle_quirk, progress=not args.no_progress)
        result = train(cfg, opts)
        if args.no_test or int(os.environ.get("RANK", "0")) != 0:
            return 0
        model_path = result.weights_path
        if model_path is None:
            model_path = default_model_path(cfg, args.cfg)
        run_test_from_args(args, kind, cfg, args.cfg, model_path)
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except (ConfigError, TrainingError, TesterError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
