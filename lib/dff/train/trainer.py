"""End-to-end training of R-FCN and DFF (docs/design.md §5), faithful to the reference's optimisation.

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

The code, in the spirit of torchvision's detection references: :func:`train` (checks, devices, process
group) -> ``_set_up`` (seeds, data, model, initialisation or resume, optimizer) -> ``_train_loop`` (epochs,
``_save_epoch_end``) -> ``_train_one_epoch`` (loader, progress bar, ``_save_last_state``) -> ``_train_step``
(one update); ``_MetricLog`` keeps the history and writes the metric lines. The command line that calls
:func:`train` is :mod:`dff.apps.cli` (its flags fill :class:`TrainOptions`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from tqdm import tqdm

from dff.classes import VID_CLASSES, format_class_diff
from dff.config import Config, class_names, config_from_dict, config_stem, mobile_parts
from dff.dataset.cocovid import CocoVideoError
from dff.dataset.factory import ClassListMismatch, adopt_class_list, image_set_name, open_dataset
from dff.dataset.imagenet_vid import missing_dataset_message
from dff.dataset.loader import (
    STREAM_TARGETS,
    TRAIN_DATASETS,
    AspectGroupedBatchSampler,
    BadSample,
    TrainDataset,
    derive_seed,
    list_collate,
    worker_init,
)
from dff.models.builder import (
    MODEL_KINDS,
    build_model,
    fold_bbox_state,
    is_model_kind,
    tiled_bbox_stats,
    unfold_bbox_state,
    weights_tag,
)
from dff.train.flow_pretrain import init_flownet, load_flownet_weights
from dff.train.optim import MXNetSGD, ParamGroups, build_param_groups, lr_schedule
from dff.utils.checkpoint import (
    DEFAULT_IGNORE_MISSING,
    CheckpointError,
    checkpoint_config,
    detect_format,
    load_checkpoint,
    load_model_weights,
    load_mxnet_checkpoint,
    save_checkpoint,
    save_mxnet_checkpoint,
)
from dff.utils.logging import progress_logging, setup_logging
from dff.utils.mxnet_params import MXNetParamsError, read_params

__all__ = [
    "TrainOptions", "TrainResult", "TrainingError", "TrainingDiverged",
    "AMP_CHOICES", "train_output_dir", "load_train_roidb", "init_new_layers", "initialize", "train",
]

log = logging.getLogger("dff.train")

_BUCKET_BYTES = 32 << 20
_DEFAULT_PREFIX = {False: "rfcn_vid", True: "dff_rfcn_vid"}  # by model.has_flow, when TRAIN.model_prefix is empty
AMP_CHOICES = ("off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
                        image_set_name(cfg.dataset.image_set))


def load_train_roidb(cfg: Config, verbose: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """The reference's training roidb (lists of ``dataset.image_set`` with flipped copies, filtered) in the
    ``dataset.format`` of the config, which takes the data's class list (``dataset.CLASSES`` / ``NUM_CLASSES``,
    stored with every checkpoint). Returns the roidb and log lines saying what the class list changed."""
    path = str(cfg.dataset.dataset_path)
    try:
        imdb = open_dataset(cfg, str(cfg.dataset.image_set), verbose=verbose)
        roidb = imdb.train_roidb(flip=bool(cfg.TRAIN.FLIP))
        lines = adopt_class_list(cfg, imdb.class_list, f"the data ({imdb!r})")
    except (FileNotFoundError, ClassListMismatch, CocoVideoError) as e:
        raise TrainingError(str(e)) from None
    if not roidb:
        raise TrainingError(f"{cfg.dataset.image_set}: no training image with a ground-truth box under {path}")
    return roidb, lines


@torch.no_grad()
def init_new_layers(model: nn.Module, generator: torch.Generator) -> None:
    """The reference's ``init_weight``: the model's new layers (``model.new_layers``; R-FCN: feat_conv / RPN /
    R-FCN) weights N(0, 0.01), biases 0; DFF's scale conv weight 0, bias 1 (bias frozen)."""
    modules = dict(model.named_modules())
    for name in model.new_layers:
        conv = modules[name]
        nn.init.normal_(conv.weight, 0.0, 0.01, generator=generator)
        nn.init.zeros_(conv.bias)
    if model.has_flow:
        model.flownet.init_scale_identity()
    model.init_video_layers()


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


def _class_layers(model: nn.Module) -> list[str]:
    """The parameters whose shape follows the class list (``model.class_layers``: the R-FCN score maps and the
    box maps unless class-agnostic; a segmentation model's score layer)."""
    return [k for k, _ in model.named_parameters() if k.startswith(tuple(model.class_layers))]


def _init_other_classes(model: nn.Module, path: str, saved: dict[str, Any], cfg: Config,
                        generator: torch.Generator) -> str:
    """``--init`` from a checkpoint with another class list: every weight but the class-dependent layers,
    which get the new layers' initialisation N(0, 0.01), bias 0."""
    layers = _class_layers(model)
    state = model.state_dict()
    for k, v in load_checkpoint(path)["model"].items():
        if k in state and k not in layers:
            if tuple(v.shape) != tuple(state[k].shape):
                raise TrainingError(f"--init {path}: {k} is {tuple(v.shape)} there, {tuple(state[k].shape)} here")
            state[k] = v.to(state[k].dtype)
    model.load_state_dict(state)
    if weights_tag(path) != "train":  # inference weights: the box de-normalisation is folded in, undo it
        model.load_state_dict(unfold_bbox_state(model.state_dict(), cfg))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k in layers:
            if k.endswith(".weight"):
                nn.init.normal_(params[k], 0.0, 0.01, generator=generator)
            else:
                nn.init.zeros_(params[k])
    names = list(saved.get("dataset", {}).get("CLASSES") or VID_CLASSES[1:])
    return (f"weights from {path} except the class-dependent layers {sorted({k.rsplit('.', 1)[0] for k in layers})}, "
            f"re-initialised: the checkpoint's {len(names)} classes are not the data's {model.num_classes - 1} "
            f"({format_class_diff(names, model.class_names, path, 'the data')})")


def _init_flow_network(model: nn.Module, cfg: Config, generator: torch.Generator) -> str:
    """The flow network from ``network.pretrained_flow`` when that is a native checkpoint (``tools/pretrain_flownet.py
    --out``), else from scratch with the flow at 0 (a DFF model started from its per-frame twin). Returns the log line."""
    path = str(cfg.network.get("pretrained_flow", "") or "")
    if path.endswith(".pth"):
        try:
            load_flownet_weights(model.flownet, path)
        except (CheckpointError, OSError) as e:
            raise TrainingError(f"network.pretrained_flow: {e}") from None
        model.flownet.init_scale_identity()
        return f"flow network from {path}"
    init_flownet(model.flownet, int(generator.initial_seed()) % (2 ** 31))
    model.flownet.zero_flow_output()
    return "flow network from scratch (flow 0; network.pretrained_flow names no .pth)"


# the parts a model of one task can take from a model of another: the feature network and the flow network
_SHARED_PARTS = ("backbone.", "feat_conv_3x3.", "flownet.")


def _init_from_other_task(model: nn.Module, path: str, saved_kind: str, cfg: Config, generator: torch.Generator) -> str:
    """``--init`` from a model of another task (a segmentation model started from a detector trained on the same
    images): its feature network and, when both have one, its flow network; the rest as a fresh model's. The
    tensors of those parts must all be there with this model's shapes."""
    init_new_layers(model, generator)
    state = model.state_dict()
    saved = load_checkpoint(path)["model"]
    loaded: set[str] = set()
    for k, v in saved.items():
        if k in state and k.startswith(_SHARED_PARTS):
            if tuple(v.shape) != tuple(state[k].shape):
                raise TrainingError(f"--init {path}: {k} is {tuple(v.shape)} there, {tuple(state[k].shape)} here "
                                    "(the feature networks differ: network.BACKBONE / DFF_FEAT_DIM)")
            state[k] = v.to(state[k].dtype)
            loaded.add(k)
    parts = [p for p in _SHARED_PARTS if any(k.startswith(p) for k in state)]
    missing = [k for k in state if k.startswith(parts[0]) or k.startswith("feat_conv_3x3.")]
    missing = [k for k in missing if k not in loaded and not k.endswith("num_batches_tracked")]
    if missing:
        raise TrainingError(f"--init {path}: the {saved_kind} checkpoint lacks {missing[:5]} of this model's feature "
                            "network")
    model.load_state_dict(state)
    taken = [p.rstrip(".") for p in parts if any(k.startswith(p) for k in loaded)]
    line = f"{', '.join(taken)} from {path} (a {saved_kind} model); the {model.task} layers initialised N(0, 0.01)"
    if model.has_flow and not any(k.startswith("flownet.") for k in loaded):
        line += f"; {_init_flow_network(model, cfg, generator)}"
    elif model.has_flow:
        model.flownet.init_scale_identity()
    return line


def _load_init(model: nn.Module, path: str, cfg: Config, generator: torch.Generator) -> str:
    """``--init PATH``: every model weight from a native checkpoint or an MXNet file (training form). A native
    checkpoint with another class list (fine-tuning to new classes) gives all but the class-dependent layers."""
    if not os.path.isfile(path):
        raise TrainingError(f"{path}: --init file not found")
    saved = checkpoint_config(path) if detect_format(path) == "native" else None
    saved_kind = load_checkpoint(path).get("model_kind") if saved is not None else None
    if saved_kind in MODEL_KINDS and MODEL_KINDS[saved_kind].task != model.task:
        return _init_from_other_task(model, path, saved_kind, cfg, generator)
    if saved is not None and tuple(class_names(config_from_dict(saved, path))) != tuple(model.class_names):
        return _init_other_classes(model, path, saved, cfg, generator)
    try:
        fmt = detect_format(path)
        if fmt == "mxnet":
            # the trained (normalised-target) rfcn_bbox, not its folded *_test copy
            params = {k: v for k, v in read_params(path).items() if not k.endswith("_test")}
            load_mxnet_checkpoint(model, params, strict=True)
            return f"all weights from {path} (MXNet)"
        # a THP or ConvGRU model fine-tuned from a DFF checkpoint: the video layers start from their
        # initialisation; a DFF model from its per-frame twin (an R-FCN checkpoint): the flow network too
        video_new = model.scheme.new_layer_patterns
        from_twin = model.has_flow and fmt == "native" and saved_kind in MODEL_KINDS and not MODEL_KINDS[saved_kind].uses_flow
        report = load_model_weights(model, path, ignore_missing=(*DEFAULT_IGNORE_MISSING, *video_new,
                                                                 *(("flownet.*",) if from_twin else ())))
        tag = weights_tag(path)
    except (CheckpointError, MXNetParamsError) as e:
        raise TrainingError(f"--init: {e}") from None
    if tag != "train":
        # inference weights have the box de-normalisation folded in: undo it for training
        model.load_state_dict(unfold_bbox_state(model.state_dict(), cfg))
    source = f"the per-frame twin, {tag or 'test'} weights" if from_twin else f"native, {tag or 'test'} weights"
    line = f"all weights from {path} ({source})"
    fresh = [k for k in report.ignored_missing if not k.endswith("num_batches_tracked") and not k.startswith("flownet.")]
    if fresh:
        model.init_video_layers()
        line += (f" but the video layers {sorted({k.rsplit('.', 1)[0] for k in fresh})}, initialised (THP's Q high "
                 f"everywhere, the ConvGRU as the identity)")
    if from_twin:
        line += f"; {_init_flow_network(model, cfg, generator)}"
    return line


def initialize(model: nn.Module, cfg: Config, opts: TrainOptions) -> list[str]:
    """Initial weights (reference order: pretrained files, then ``init_weight`` for the new layers).

    Returns log lines. ``--init`` loads a full model instead. ``--from-scratch`` (or an empty
    ``network.pretrained``) keeps PyTorch's default initialisation for the backbone (and FlowNet, whose
    flow predictor ``Convolution5`` is then zeroed so that the initial flow is 0 and the key feature is
    copied unwarped, a port choice: the reference always starts from Flying-Chairs FlowNet).
    """
    lines: list[str] = []
    gen = torch.Generator().manual_seed(derive_seed(opts.seed, 0, 0, 3))
    if opts.init:
        lines.append(_load_init(model, opts.init, cfg, gen))  # frozen parameters: build_param_groups, after this
        return lines
    where = f" in {opts.cfg_path}" if opts.cfg_path else ""
    net = cfg.network
    parts = [("pretrained", "ResNet", "backbone.", ())]
    if model.has_flow:
        parts.append(("pretrained_flow", "FlowNet", "flownet.", ("flownet.Convolution5_scale",)))
    for key, what, part, exempt in parts:
        prefix = str(net.get(key, "") or "")
        if opts.from_scratch or not prefix:
            lines.append(f"{what}: random initialisation ({'--from-scratch' if opts.from_scratch else f'network.{key} is empty'})")
            if part == "flownet.":
                model.flownet.zero_flow_output()
            continue
        if part == "flownet." and prefix.endswith(".pth"):  # a native flow pre-training (tools/pretrain_flownet.py)
            lines.append(_init_flow_network(model, cfg, gen))
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
    lines.append(f"{'/'.join(model.new_layers)}: N(0, 0.01), biases 0" + ("; scale map: weight 0, bias 1 (frozen)"
                                                                  if model.has_flow else ""))
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
# set-up: model, optimizer, data, resume
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    """One training run: what :func:`_set_up` builds, :func:`_train_step` advances and the checkpoints save."""
    cfg: Config
    opts: TrainOptions
    device: torch.device
    dctx: _Dist
    out_dir: str
    prefix: str                        # checkpoint file prefix (TRAIN.model_prefix)
    model: nn.Module
    trainable: list[nn.Parameter]
    optimizer: MXNetSGD
    scaler: torch.amp.GradScaler | None
    schedule: Callable[[int], float]   # lr of update n (counted from 1)
    generator: torch.Generator         # the per-sample target-sampling stream
    end_epoch: int
    iteration: int                     # updates done in total
    epoch: int                         # completed epochs
    batch_in_epoch: int                # global batches done in the current epoch
    bad_total: int = 0                 # unreadable samples skipped
    state_path: str | None = None      # the last training state written (rank 0)
    weights_path: str | None = None    # the last inference weights written (rank 0)
    dataset: TrainDataset = dataclasses.field(init=False)
    sampler: AspectGroupedBatchSampler = dataclasses.field(init=False)

    @property
    def metrics(self) -> tuple[str, ...]:
        """What each update logs and sums over the global batch: the model's loss names."""
        return self.model.loss_names

    @property
    def global_batch(self) -> int:
        return self.dctx.world * self.opts.accumulate

    @property
    def per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def stop_requested(self) -> bool:
        return self.opts.max_iters is not None and self.iteration >= self.opts.max_iters


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


def _load_resume_weights(model: nn.Module, path: str, cfg: Config) -> tuple[dict[str, Any], list[str]]:
    """The training state at ``path`` (checked to be this model's) with its weights loaded into ``model``."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise TrainingError(f"resume: {e}") from None
    if not is_model_kind(model, ckpt.get("model_kind")) or ckpt.get("weights") != "train":
        raise TrainingError(f"{path}: not a {model.kind} training state (model_kind={ckpt.get('model_kind')!r})")
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise TrainingError(f"{path}: does not fit the model: {str(e).splitlines()[0]}") from None
    lines = [f"resumed from {path} (update {ckpt['iteration']}, epoch {ckpt['epoch'] + 1}, "
             f"batch {ckpt['batch_in_epoch']})"]
    diff = _config_diff(_normalize_cfg(ckpt.get("config") or {}), _normalize_cfg(cfg.to_dict()))
    if diff:
        log.warning("resume: config differs from the checkpoint's in %s", ", ".join(diff[:20]))
    return ckpt, lines


def _restore_progress(run: _Run, ckpt: dict[str, Any], path: str) -> None:
    """Optimizer momentum, position (update, epoch, batch), bad-sample count, RNG streams and loss scale
    of a training state; it must have the same global batch and seed as this run."""
    saved_batch = int(ckpt["global_batch"])
    if saved_batch != run.global_batch:
        raise TrainingError(
            f"{path}: trained with a global batch of {saved_batch} images "
            f"({ckpt['world_size']} processes x accumulate {ckpt['accumulate']}), this run has {run.global_batch} "
            f"({run.dctx.world} x {run.opts.accumulate}); resume with the same product (e.g. --accumulate "
            f"{max(1, saved_batch // run.dctx.world)})")
    if int(ckpt["seed"]) != run.opts.seed:
        raise TrainingError(f"{path}: trained with --seed {ckpt['seed']}, this run has {run.opts.seed}")
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.iteration, run.epoch, run.batch_in_epoch = int(ckpt["iteration"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
    run.bad_total = int(ckpt.get("bad_samples", 0))
    _set_rng_state(ckpt["rng"], run.generator)
    if run.scaler is not None and "grad_scaler" in ckpt:
        run.scaler.load_state_dict(ckpt["grad_scaler"])


def _set_up(cfg: Config, opts: TrainOptions, device: torch.device, dctx: _Dist, out_dir: str) -> _Run:
    """Seeds, training roidb, model (initialised, or resumed), optimizer, lr schedule, data sampler; logs
    the run's summary. The order of the random draws is part of the reproducibility contract."""
    random.seed(opts.seed)
    np.random.seed(opts.seed % (2 ** 32))
    torch.manual_seed(opts.seed)

    roidb, class_lines = load_train_roidb(cfg, verbose=dctx.main)
    model = build_model(opts.kind, cfg)
    prefix = str(cfg.TRAIN.model_prefix) or _DEFAULT_PREFIX[model.has_flow]
    resume = opts.resume or bool(cfg.TRAIN.RESUME)
    resume_from = _resume_path(out_dir, prefix, cfg) if resume else None
    if resume and resume_from is None:
        log.warning("resume: no %s-last.state.pth in %s; starting a new run", prefix, out_dir)
    ckpt = None
    if resume_from is not None:
        ckpt, init_lines = _load_resume_weights(model, resume_from, cfg)
        init_lines = class_lines + init_lines
    else:
        init_lines = class_lines + initialize(model, cfg, opts)
    model.to(device)
    model.train()

    groups_info = build_param_groups(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if dctx.world > 1 and ckpt is None:
        # the same start on every rank, whatever each process drew (rank 0's weights win)
        for t in list(model.state_dict().values()):
            dist.broadcast(t, 0)
    optimizer = MXNetSGD(groups_info.groups(model, float(cfg.TRAIN.wd)), lr=float(cfg.TRAIN.lr),
                         momentum=float(cfg.TRAIN.momentum), wd=float(cfg.TRAIN.wd))
    global_batch = dctx.world * opts.accumulate
    schedule = lr_schedule(cfg, len(roidb), global_batch)
    generator = torch.Generator()
    scaler = torch.amp.GradScaler("cuda") if opts.amp == "fp16" else None

    begin_epoch = int(cfg.TRAIN.begin_epoch)
    # a fresh run that begins at a later epoch counts the updates of the skipped epochs, so the lr steps
    # (counted from epoch 0) fall where the reference's (counted from begin_epoch) do
    run = _Run(cfg, opts, device, dctx, out_dir, prefix, model, trainable, optimizer, scaler, schedule, generator,
               end_epoch=int(cfg.TRAIN.end_epoch), iteration=begin_epoch * (len(roidb) // global_batch),
               epoch=begin_epoch, batch_in_epoch=0)
    if ckpt is not None:
        _restore_progress(run, ckpt, resume_from)
        del ckpt
    run.dataset = TRAIN_DATASETS[model.task](roidb, cfg, pairs=model.has_flow, seed=opts.seed)
    run.sampler = AspectGroupedBatchSampler(
        [r["width"] for r in roidb], [r["height"] for r in roidb], per_rank=opts.accumulate, world_size=dctx.world,
        rank=dctx.rank, seed=opts.seed, shuffle=bool(cfg.TRAIN.SHUFFLE), aspect_grouping=bool(cfg.TRAIN.ASPECT_GROUPING),
        reference_quirk=opts.shuffle_quirk, epoch=run.epoch,
        start_batch=min(run.batch_in_epoch, len(roidb) // global_batch))
    if dctx.main:
        _log_start(run, len(roidb), begin_epoch, init_lines, groups_info)
    return run


def _log_start(run: _Run, images: int, begin_epoch: int, init_lines: list[str], groups: ParamGroups) -> None:
    opts = run.opts
    log.info("training %s: %d images, global batch %d (%d process(es) x %d), %d updates/epoch, epochs %d..%d, "
             "device %s%s", run.model.kind, images, run.global_batch, run.dctx.world, opts.accumulate, run.per_epoch,
             begin_epoch + 1, run.end_epoch, run.device, f", amp {opts.amp}" if opts.amp != "off" else "")
    for line in init_lines:
        log.info("init: %s", line)
    log.info("lr: %s", run.schedule)
    log.info("params: %d trained with wd, %d without, %d frozen (%s)", len(groups.decay), len(groups.no_decay),
             len(groups.frozen), ", ".join(groups.mxnet_names[n] for n in groups.frozen[:6])
             + (" ..." if len(groups.frozen) > 6 else ""))
    log.info("output: %s", run.out_dir)


# --------------------------------------------------------------------------------------------------
# one training step
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Step:
    """What one update did: its lr, the readable images of the global batch, the metric means over them."""
    lr: float
    images: int
    means: list[float]                 # in run.metrics order


def _forward_backward(run: _Run, samples: Sequence[dict[str, Any] | BadSample]) -> torch.Tensor:
    """Forward and backward of each local image (gradients summed into ``.grad``); returns the local sums
    of ``run.metrics`` (the model's loss names), then the image count and the unreadable-sample count (float64)."""
    metrics = run.metrics
    stats = torch.zeros(len(metrics) + 2, dtype=torch.float64, device=run.device)
    zero = torch.zeros((), dtype=torch.float64, device=run.device)
    autocast_dtype = _AMP_DTYPES.get(run.opts.amp)
    for s in samples:
        if isinstance(s, BadSample):
            log.warning("warning: %s: %s (epoch %d, roidb entry %d; skipped)", s.path, s.message, s.epoch + 1, s.index)
            stats[-1] += 1
            continue
        # the sample's own target-sampling stream: the same draws whatever the process layout
        run.generator.manual_seed(derive_seed(run.opts.seed, s["epoch"], s["index"], STREAM_TARGETS))
        with torch.autocast(run.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            batch = {k: v.to(run.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
            out = run.model.forward_train(batch, generator=run.generator)
        loss = out["loss"]
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        stats[: len(metrics)] += torch.stack([out[k].detach().double().reshape(()) if k in out else zero for k in metrics])
        stats[-2] += 1
    return stats


def _check_finite(run: _Run, sums: list[float]) -> None:
    """:class:`TrainingDiverged` (before the update, nothing written) on a non-finite loss or gradient."""
    loss_finite = math.isfinite(sums[0])
    grads_finite = True
    if loss_finite and run.scaler is None:  # the fp16 scaler skips non-finite steps itself
        grads_finite = bool(torch.stack([torch.isfinite(p.grad).all() for p in run.trainable]).all())
    if loss_finite and grads_finite:
        return
    raise TrainingDiverged(
        f"update {run.iteration + 1} (epoch {run.epoch + 1}, batch {run.batch_in_epoch}): "
        f"{'the loss' if not loss_finite else 'a gradient'} is not finite (loss sum {sums[0]:.6g}; "
        + ", ".join(f"{k} {v:.4g}" for k, v in zip(run.metrics[1:], sums[1:len(run.metrics)]))
        + "); training stopped before the update; last good checkpoint: "
        + (run.state_path or _resume_path(run.out_dir, run.prefix, run.cfg) or "none written yet"))


def _train_step(run: _Run, samples: Sequence[dict[str, Any] | BadSample]) -> _Step | None:
    """One update on one global batch: forward and backward over the local images, gradients summed over
    all ranks, non-finite check, optimizer step at the schedule's lr. None (no update) when no image of the
    global batch could be read."""
    stats = _forward_backward(run, samples)
    for p in run.trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _allreduce_sum([p.grad for p in run.trainable] + [stats], run.dctx.world)
    sums = stats.tolist()
    n_img, n_bad = int(sums[-2]), int(sums[-1])
    run.bad_total += n_bad
    run.batch_in_epoch += 1
    if n_img == 0:
        log.warning("update %d: no readable image in the global batch; skipped", run.iteration + 1)
        run.optimizer.zero_grad(set_to_none=False)
        return None
    _check_finite(run, sums)
    lr = run.schedule(run.iteration + 1)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=False)
    run.iteration += 1
    return _Step(lr, n_img, [v / n_img for v in sums[: len(run.metrics)]])


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
def _tensorboard(out_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package
    except Exception:
        return None
    try:
        return SummaryWriter(os.path.join(out_dir, "tensorboard"))
    except Exception:
        return None


class _MetricLog:
    """Rank 0's metrics: every update in ``history``; every ``frequent`` updates the reference's Speedometer
    line (means over the updates since the last line) and, with tensorboard installed, its scalars."""

    def __init__(self, frequent: int, tb: Any) -> None:
        self.frequent, self.tb = frequent, tb
        self.history: list[dict[str, float]] = []
        self._window: list[list[float]] = []
        self._t0 = time.perf_counter()

    def update(self, run: _Run, step: _Step) -> None:
        self.history.append({"iteration": run.iteration, "epoch": run.epoch, "lr": step.lr, "images": step.images,
                             **dict(zip(run.metrics, step.means))})
        self._window.append(step.means + [step.images])
        if run.iteration % self.frequent == 0:
            self._emit(run, step.lr)

    def _emit(self, run: _Run, lr: float) -> None:
        dt = time.perf_counter() - self._t0
        speed = sum(w[-1] for w in self._window) / max(dt, 1e-9)
        avg = np.mean(np.asarray(self._window)[:, :-1], axis=0).tolist()
        log.info("Epoch[%d] Batch [%d] Update %d Speed: %.2f samples/sec lr %.3e Train-%s", run.epoch,
                 run.batch_in_epoch, run.iteration, speed, lr, ", ".join(f"{k}={v:.6f}" for k, v in zip(run.metrics, avg)))
        if self.tb is not None:
            for k, v in zip(run.metrics, avg):
                self.tb.add_scalar(f"train/{k}", v, run.iteration)
            self.tb.add_scalar("train/lr", lr, run.iteration)
            self.tb.add_scalar("train/samples_per_sec", speed, run.iteration)
        self._window.clear()
        self._t0 = time.perf_counter()


# --------------------------------------------------------------------------------------------------
# checkpoints (rank 0 writes)
# --------------------------------------------------------------------------------------------------
def _save_state(run: _Run, path: str) -> None:
    """The full training state (resumable: weights, momentum, position, RNG streams, config)."""
    extra = {
        "weights": "train", "model_kind": run.model.kind, "optimizer": run.optimizer.state_dict(),
        "iteration": run.iteration, "epoch": run.epoch, "batch_in_epoch": run.batch_in_epoch,
        "global_batch": run.global_batch, "world_size": run.dctx.world, "accumulate": run.opts.accumulate,
        "seed": run.opts.seed, "rng": _rng_state(run.generator), "bad_samples": run.bad_total,
    }
    if run.scaler is not None:
        extra["grad_scaler"] = run.scaler.state_dict()
    save_checkpoint(path, model_state=run.model, extra=extra, config=run.cfg)


def _save_weights(run: _Run, path: str) -> None:
    """Inference weights (the box de-normalisation folded into ``rfcn_bbox``)."""
    save_checkpoint(path, model_state=fold_bbox_state(run.model.state_dict(), run.cfg),
                    extra={"weights": "test", "model_kind": run.model.kind, "iteration": run.iteration,
                           "epoch": run.epoch}, config=run.cfg)


def _save_last_state(run: _Run) -> None:
    """``<prefix>-last.state.pth`` inside an epoch (every ``save_every`` updates and at --max-iters)."""
    if run.dctx.main:
        run.state_path = os.path.join(run.out_dir, f"{run.prefix}-last.state.pth")
        _save_state(run, run.state_path)
        log.info("update %d: saved %s", run.iteration, run.state_path)
    if run.dctx.world > 1:
        dist.barrier()


def _save_stopped(run: _Run) -> None:
    """Stopped by --max-iters inside an epoch: inference weights of this point, for the test."""
    if run.dctx.main:
        run.weights_path = os.path.join(run.out_dir, f"{run.prefix}-iter{run.iteration:08d}.pth")
        _save_weights(run, run.weights_path)
        log.info("stopped after %d updates (--max-iters); weights %s", run.iteration, run.weights_path)


def _save_epoch_end(run: _Run) -> None:
    """``<prefix>-NNNN.state.pth`` (also as ``-last``), ``.pth`` and ``.params`` after epoch NNNN (numbered
    by completed epochs, as the reference's)."""
    if run.dctx.main:
        base = os.path.join(run.out_dir, f"{run.prefix}-{run.epoch:04d}")
        _save_state(run, base + ".state.pth")
        run.state_path = os.path.join(run.out_dir, f"{run.prefix}-last.state.pth")
        _link_or_copy(base + ".state.pth", run.state_path)
        run.weights_path = base + ".pth"
        _save_weights(run, run.weights_path)
        # the mobile variant's layers have no MXNet counterpart: its weights are native only
        mxnet = run.opts.mxnet_checkpoints and not mobile_parts(run.cfg)
        if mxnet:
            means_t, stds_t = tiled_bbox_stats(run.cfg)
            save_mxnet_checkpoint(run.model, base + ".params", bbox_stds=stds_t.tolist(), bbox_means=means_t.tolist())
        log.info("epoch %d done (%d updates): %s.pth, .state.pth%s", run.epoch, run.iteration, base,
                 ", .params" if mxnet else "")
    if run.dctx.world > 1:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def _train_one_epoch(run: _Run, metrics: _MetricLog) -> None:
    """The rest of the current epoch (from ``run.batch_in_epoch``), or up to --max-iters."""
    run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
    loader = torch.utils.data.DataLoader(
        run.dataset, batch_sampler=run.sampler, collate_fn=list_collate, num_workers=run.opts.num_workers,
        worker_init_fn=worker_init if run.opts.num_workers else None, pin_memory=run.device.type == "cuda",
        prefetch_factor=2 if run.opts.num_workers else None)
    bar = None
    if run.dctx.main and run.opts.progress:
        bar = tqdm(total=run.per_epoch, initial=run.batch_in_epoch, desc=f"epoch {run.epoch + 1}/{run.end_epoch}",
                   unit="it", file=sys.stderr, dynamic_ncols=True)
    try:
        with progress_logging(bar is not None):
            for samples in loader:
                step = _train_step(run, samples)
                if bar is not None:
                    bar.update(1)
                if step is None:
                    continue
                if run.dctx.main:
                    metrics.update(run, step)
                if bar is not None:
                    bar.set_postfix(loss=f"{step.means[0]:.3f}", lr=f"{step.lr:.2e}")
                if run.batch_in_epoch < run.per_epoch and (
                        (run.opts.save_every and run.iteration % run.opts.save_every == 0) or run.stop_requested()):
                    _save_last_state(run)
                if run.stop_requested():
                    break
    finally:
        if bar is not None:
            bar.close()


def _train_loop(run: _Run, metrics: _MetricLog) -> None:
    """Epochs until ``TRAIN.end_epoch`` or --max-iters, with the checkpoints of each end."""
    while run.epoch < run.end_epoch and not run.stop_requested():
        _train_one_epoch(run, metrics)
        if run.batch_in_epoch < run.per_epoch:
            _save_stopped(run)
            break
        run.epoch, run.batch_in_epoch = run.epoch + 1, 0
        _save_epoch_end(run)


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
    if opts.amp not in AMP_CHOICES:
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
    # rank 0 logs to train.log and the console; the other ranks only report problems (e.g. unreadable images)
    logs = setup_logging(os.path.join(out_dir, "train.log") if dctx.main else None,
                         console_level=logging.NOTSET if dctx.main else logging.WARNING,
                         console_prefix="" if dctx.main else f"[rank {dctx.rank}] ")
    tb = _tensorboard(out_dir) if dctx.main else None
    try:
        run = _set_up(cfg, opts, device, dctx, out_dir)
        metrics = _MetricLog(int(opts.frequent or cfg.default.frequent or 20), tb)
        _train_loop(run, metrics)
        if run.bad_total and dctx.main:
            log.warning("%d unreadable training samples were skipped", run.bad_total)
        return TrainResult(out_dir, run.model, run.iteration, run.epoch, run.weights_path, run.state_path,
                           metrics.history, run.bad_total)
    finally:
        if tb is not None:
            tb.close()
        logs.close()
