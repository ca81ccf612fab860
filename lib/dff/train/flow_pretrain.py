"""FlowNet pre-training on the synthetic mini-VID, with end-point error (EPE).

The reference starts DFF training from a FlowNetS pre-trained on Flying Chairs (docs/design.md §5.4). Those
weights are not available here, so this module pre-trains DFF's FlowNet on the synthetic mini-VID
(:mod:`dff.dataset.synthetic`), whose exact backward flow is known for any two frames of a video.

Pairs ``(video, cur, key)``: the key frame is ``cur + o`` with ``o`` drawn from the offsets
``[min_offset, max_offset]`` (DFF training: ``[-9, 0]``, docs/design.md §5.2) that keep the key inside the video.
DFF clamps ``cur + o`` into the video and sends ``key == cur`` pairs around FlowNet (``eq_flag``), so
FlowNet never sees them; here such pairs are left out unless ``allow_same`` (they would only teach
zero flow).

Inputs are preprocessed exactly like the detector's (:func:`dff.utils.image.preprocess` with the
config's ``SCALES``, ``PIXEL_MEANS``, ``IMAGE_STRIDE``). The target is the ground-truth flow brought
to FlowNet's output grid (:func:`flow_target`): resized like the frame (values times the image scale),
average-pooled over 16x16 blocks to ``ceil(H/16) x ceil(W/16)`` and divided by 16, i.e. in feature
pixels, the unit of FlowNet's returned flow (``2.5 * Convolution5``, docs/design.md §2.2), which is trained
directly. The loss is the EPE on that grid: the mean over cells of ``||flow - gt||_2``.
:func:`evaluate_epe` reports it in image pixels at the network input resolution (grid EPE x 16).

Using the result in DFF: :func:`save_flownet_checkpoint` writes a native checkpoint whose keys are
``flownet.<layer>.weight|bias`` (the DFF model's names), so either::

    from dff.train.flow_pretrain import load_flownet_weights
    load_flownet_weights(dff_model.flownet, "model/flownet_synthetic.pth")

or, with the generic loader, ``dff.utils.checkpoint.load_model_weights(dff_model, path, strict=False)``
(its report then lists every non-FlowNet key as missing; :func:`load_flownet_weights` instead checks
that every ``flownet.*`` key was filled, and copies nothing if one was not). The trainer's
``network.pretrained_flow`` reads MXNet ``.params`` files: ``tools/pretrain_flownet.py --mxnet-prefix``
writes one as well.

The command (``tools/pretrain_flownet.py``) is :func:`run_pretraining`, composed of :func:`resolve_config`
(CFG, ``--set``, ``--scale``), :func:`check_data` (the train and held-out splits), :func:`build_flownet`,
:func:`measure_and_pretrain` (EPE before, training, EPE after), :func:`pretrain_report` (the JSON report)
and :func:`write_outputs` (the checkpoint, the MXNet copy, the report).
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dff.config import Config, ConfigError, load_config, parse_overrides, update_config
from dff.dataset.synthetic import GT_DIR, SyntheticVID
from dff.models.flownet import FlowNet
from dff.models.light_flow import LightFlow
from dff.models.registry import build_flow_network
from dff.utils.checkpoint import (
    CheckpointError,
    LoadReport,
    load_model_weights,
    save_checkpoint,
    save_mxnet_checkpoint,
)
from dff.utils.image import preprocess, read_image
from dff.utils.io import atomic_write_text

__all__ = [
    "FLOW_STRIDE", "EVAL_SEED", "SPLITS", "FlowPair", "list_videos", "sample_pairs", "flow_target",
    "FlowPairDataset", "epe", "init_flownet", "trainable_parameters", "pretrain", "evaluate_epe",
    "zero_flow_epe", "flownet_state_for_dff", "save_flownet_checkpoint", "load_flownet_weights",
    "TINY_CFG", "DEMO_CFG", "DEMO_SCALES", "PretrainArgumentError", "PretrainRun", "parse_scale_arg",
    "resolve_config", "check_data", "build_flownet", "measure_and_pretrain", "pretrain_report", "write_outputs",
    "run_pretraining",
]

FlowNetwork = FlowNet | LightFlow  # either flow network (network.FLOW_NETWORK)

# FlowNet's output grid has stride 16 by construction (resize_data /2, the encoder down to /128, the
# deconvs back up to Concat5 at /8, resize_concat5 /16: ceil(H/16)); it is not a config value
FLOW_STRIDE = 16
EVAL_SEED = 0
SPLITS = ("train", "val")
# layers the EPE does not reach: the scale map keeps its identity init (weight 0, bias 1, docs/design.md §2.3)
_SCALE_PREFIX = "Convolution5_scale."


class FlowPair(NamedTuple):
    """One training/evaluation pair: ``video`` relative to ``Data/VID`` (e.g. ``val/ILSVRC2015_val_00000000``)."""
    video: str
    cur: int
    key: int


# ------------------------------------------------------------------------------------------------
# pairs
# ------------------------------------------------------------------------------------------------
def _check_split(root: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    gt_dir = os.path.join(root, GT_DIR, "VID", split)
    if not os.path.isdir(gt_dir):
        raise FileNotFoundError(f"{gt_dir}: not found; is {root} a synthetic mini-VID "
                                f"(tools/make_synthetic_vid.py) with a {split} split?")
    return gt_dir


def list_videos(root: str, split: str) -> list[tuple[str, int]]:
    """``[(video, n_frames)]`` of a split of a synthetic root, sorted by video name."""
    gt_dir = _check_split(root, split)
    files = sorted(glob.glob(os.path.join(gt_dir, "**", "*.json"), recursive=True))
    if not files:
        raise FileNotFoundError(f"{gt_dir}: no video ground truth (*.json) in the {split} split")
    source = SyntheticVID(root)
    base = os.path.join(root, GT_DIR, "VID")
    out = []
    for f in files:
        video = os.path.relpath(f, base)[: -len(".json")].replace(os.sep, "/")
        out.append((video, int(source.params(video)["n_frames"])))
    return out


def sample_pairs(videos: Sequence[tuple[str, int]], n: int, rng: np.random.Generator, min_offset: int = -9,
                 max_offset: int = 0, allow_same: bool = False) -> list[FlowPair]:
    """``n`` pairs: a video uniformly, ``cur`` uniformly in it (both drawn again when no offset fits,
    e.g. ``cur = 0`` with only negative offsets), ``key = cur + o`` with ``o`` uniform among the offsets
    in ``[min_offset, max_offset]`` that keep ``key`` in the video (0 only with ``allow_same``).
    ``videos``: ``[(video, n_frames)]`` as :func:`list_videos` returns."""
    if n < 0:
        raise ValueError(f"sample_pairs: n must be >= 0, got {n}")
    if max_offset < min_offset:
        raise ValueError(f"sample_pairs: max_offset {max_offset} < min_offset {min_offset}")
    offsets = [o for o in range(min_offset, max_offset + 1) if allow_same or o != 0]
    if not offsets:
        raise ValueError(f"sample_pairs: offsets [{min_offset}, {max_offset}] contain only 0 "
                         "(key == cur); widen them or set allow_same")
    usable = [(v, L) for v, L in videos if any(0 <= t + o < L for t in range(L) for o in offsets)]
    if not usable and n:
        raise ValueError(f"sample_pairs: no video is long enough for offsets {offsets}")
    pairs = []
    while len(pairs) < n:
        video, length = usable[int(rng.integers(len(usable)))]
        cur = int(rng.integers(length))
        valid = [o for o in offsets if 0 <= cur + o < length]
        if not valid:
            continue
        pairs.append(FlowPair(video, cur, cur + valid[int(rng.integers(len(valid)))]))
    return pairs


# ------------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------------
def _resize_flow(flow: np.ndarray, scale: float, size_hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 2) flow in original image pixels -> (H', W', 2) in network-input pixels, like the frame."""
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    if scale != 1.0:
        # the same call as dff.utils.image.resize, so the flow grid lines up with the frame's pixels
        flow = cv2.resize(flow, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR) * np.float32(scale)
    h, w = flow.shape[:2]
    if (h, w) != tuple(size_hw):
        if h > size_hw[0] or w > size_hw[1]:
            raise ValueError(f"flow_target: flow of {h}x{w} after scaling by {scale} does not fit the "
                             f"{size_hw[0]}x{size_hw[1]} network input")
        # IMAGE_STRIDE padding (bottom/right, black in the frame): no motion there
        flow = np.pad(flow, ((0, size_hw[0] - h), (0, size_hw[1] - w), (0, 0)))
    return flow


def _pool_to_grid(flow_hw2: np.ndarray) -> Tensor:
    """(H', W', 2) network-input pixels -> (2, ceil(H'/16), ceil(W'/16)) feature pixels."""
    t = torch.from_numpy(np.ascontiguousarray(flow_hw2.transpose(2, 0, 1)))[None]
    # a partial last block is averaged over its valid pixels (PyTorch's ceil-mode divisor with padding 0)
    return F.avg_pool2d(t, FLOW_STRIDE, FLOW_STRIDE, ceil_mode=True)[0] / FLOW_STRIDE


def flow_target(flow: np.ndarray, scale: float, size_hw: tuple[int, int]) -> Tensor:
    """Ground-truth flow at FlowNet's output grid.

    Args:
        flow: (H, W, 2) backward flow of the original frame in its pixels (``SyntheticVID.gt_flow``).
        scale: the image scale of the preprocessing (``im_info[2]``).
        size_hw: (H', W') of the network input (after scaling and any ``IMAGE_STRIDE`` padding).
    Returns:
        (2, ceil(H'/16), ceil(W'/16)) float32 flow in feature pixels (channel 0 = x): the flow resized
        like the frame (values times ``scale``), averaged over each 16x16 block, divided by 16.
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow_target: flow must be (H, W, 2), got {flow.shape}")
    if not scale > 0:
        raise ValueError(f"flow_target: scale must be positive, got {scale}")
    return _pool_to_grid(_resize_flow(flow, float(scale), size_hw))


# ------------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------------
class FlowPairDataset(Dataset):
    """(cur, key, flow) triples from a synthetic mini-VID split.

    Args:
        root: the synthetic ILSVRC2015-style directory (``tools/make_synthetic_vid.py --out``).
        split: ``"train"`` or ``"val"``.
        cfg: the detector config: ``SCALES[0]``, ``network.PIXEL_MEANS``, ``network.IMAGE_STRIDE``
            and, when the offsets are not given, ``TRAIN.MIN_OFFSET``/``MAX_OFFSET``.
        pairs: a number of pairs to draw with ``seed`` (:func:`sample_pairs`), or explicit pairs.
        flip: flip each pair horizontally with probability 1/2 (drawn with ``seed``), as DFF training
            flips both frames together; the flow's x component changes sign.
    Items (a dict): ``cur``, ``key`` (3, H', W') float32 preprocessed frames, ``flow`` (2, h, w) the
    target of :func:`flow_target` with h, w = ceil(H'/16), ceil(W'/16), ``index`` the item number.
    A batch needs frames of one size (true for a synthetic set: all its videos share one size).
    """

    def __init__(self, root: str, split: str, cfg: Config, pairs: int | Sequence[FlowPair], *, seed: int = EVAL_SEED,
                 min_offset: int | None = None, max_offset: int | None = None, allow_same: bool = False,
                 flip: bool = False) -> None:
        self.root = os.fspath(root)
        self.split = split
        self.scales = tuple(int(s) for s in cfg.SCALES[0])
        self.pixel_means = [float(m) for m in cfg.network.PIXEL_MEANS]
        self.stride = int(cfg.network.IMAGE_STRIDE)
        self.source = SyntheticVID(self.root)
        rng = np.random.default_rng(seed)
        if isinstance(pairs, int):
            lo = int(cfg.TRAIN.MIN_OFFSET if min_offset is None else min_offset)
            hi = int(cfg.TRAIN.MAX_OFFSET if max_offset is None else max_offset)
            self.pairs = sample_pairs(list_videos(self.root, split), pairs, rng, lo, hi, allow_same)
        else:
            _check_split(self.root, split)
            self.pairs = [FlowPair(*p) for p in pairs]
        self.flips = rng.random(len(self.pairs)) < 0.5 if flip else np.zeros(len(self.pairs), dtype=bool)

    def __len__(self) -> int:
        return len(self.pairs)

    def frame_path(self, video: str, t: int) -> str:
        return os.path.join(self.root, "Data", "VID", video, f"{t:06d}.JPEG")

    def _frame(self, video: str, t: int) -> tuple[Tensor, float]:
        data, im_info = preprocess(read_image(self.frame_path(video, t)), self.scales, self.pixel_means, self.stride)
        return data[0], float(im_info[0, 2])

    def __getitem__(self, i: int) -> dict[str, Any]:
        video, cur, key = self.pairs[i]
        cur_data, scale = self._frame(video, cur)
        key_data, _ = self._frame(video, key)
        flow = _resize_flow(self.source.gt_flow(video, cur, key), scale, tuple(cur_data.shape[-2:]))
        if self.flips[i]:
            # pixel x' = W-1-x of the flipped frame lands at W-1-(x + fx) = x' - fx in the flipped key
            cur_data, key_data = cur_data.flip(-1), key_data.flip(-1)
            flow = flow[:, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
        return {"cur": cur_data, "key": key_data, "flow": _pool_to_grid(flow), "index": i}


# ------------------------------------------------------------------------------------------------
# loss, init, training
# ------------------------------------------------------------------------------------------------
def epe(pred: Tensor, gt: Tensor) -> Tensor:
    """End-point error: mean over (N, h, w) of the L2 norm of ``pred - gt``, both (N, 2, h, w); a scalar."""
    if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 2:
        raise ValueError(f"epe: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} must both be (N, 2, h, w)")
    return torch.linalg.vector_norm(pred - gt, dim=1).mean()


@torch.no_grad()
def init_flownet(flownet: FlowNetwork, seed: int = 0) -> None:
    """Random initialisation for training from scratch: MSRA (He) normal weights for the LeakyReLU(0.1)
    layers, zero biases, and the scale map's identity (weight 0, bias 1 frozen; docs/design.md §2.3).

    The original FlowNetS was trained from an MSRA init in Caffe; PyTorch's default (uniform, gain
    for a=sqrt(5)) shrinks activations through 10 un-normalised layers.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, m in flownet.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and not name.startswith("Convolution5_scale"):
            # fan_in of a stride-2 transposed conv: each output sums in_channels * (k/2)^2 products
            k = m.kernel_size[0] * m.kernel_size[1]
            fan_in = m.in_channels // m.groups * k / (4 if isinstance(m, nn.ConvTranspose2d) else 1)
            std = math.sqrt(2.0 / ((1 + 0.1 ** 2) * fan_in))
            m.weight.normal_(0.0, std, generator=gen)
            m.bias.zero_()
    flownet.init_scale_identity()


def trainable_parameters(flownet: FlowNetwork) -> list[tuple[str, nn.Parameter]]:
    """The parameters the EPE trains: everything but the scale map (no gradient reaches it)."""
    return [(n, p) for n, p in flownet.named_parameters() if p.requires_grad and not n.startswith(_SCALE_PREFIX)]


def _device(flownet: nn.Module) -> torch.device:
    return next(flownet.parameters()).device


def _fused_if_possible(flownet: nn.Module) -> dict[str, bool]:
    """Adam's fused kernel (one pass over the 39M parameters instead of one per tensor) where it exists."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in flownet.parameters())
    return {"fused": True} if ok else {}


def pretrain(flownet: FlowNetwork, root: str, cfg: Config, iters: int, *, batch_size: int = 4, lr: float = 3e-4,
             weight_decay: float = 0.0, seed: int = 0, split: str = "train", min_offset: int | None = None,
             max_offset: int | None = None, flip: bool = True, pairs: Sequence[FlowPair] | None = None,
             progress: bool = False, on_step: Callable[[int, float], None] | None = None,
             time_limit_s: float | None = None) -> list[float]:
    """Train ``flownet`` in place with Adam on the grid EPE for ``iters`` iterations.

    Each iteration takes ``batch_size`` fresh random pairs of ``split`` (drawn with ``seed``), or, when
    ``pairs`` is given, cycles through those. Returns the per-iteration loss (grid EPE, feature pixels).
    ``on_step(iteration, loss)`` is called after every update (e.g. to log). With ``time_limit_s``
    training stops after the first iteration that ends past that many seconds (fewer than ``iters``).
    """
    if iters < 0 or batch_size < 1:
        raise ValueError(f"pretrain: iters must be >= 0 and batch_size >= 1, got {iters}, {batch_size}")
    if pairs is None:
        dataset = FlowPairDataset(root, split, cfg, iters * batch_size, seed=seed, min_offset=min_offset,
                                  max_offset=max_offset, flip=flip)
    else:
        if not pairs:
            raise ValueError("pretrain: pairs is empty")
        reps = -(-iters * batch_size // len(pairs))
        dataset = FlowPairDataset(root, split, cfg, list(pairs) * reps, seed=seed, flip=flip)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, drop_last=True)
    named = trainable_parameters(flownet)
    # weight decay only on weights, as MXNet's default (docs/design.md §5.3)
    groups = [{"params": [p for n, p in named if n.endswith(".weight")], "weight_decay": weight_decay},
              {"params": [p for n, p in named if not n.endswith(".weight")], "weight_decay": 0.0}]
    optimizer = torch.optim.Adam(groups, lr=lr, **_fused_if_possible(flownet))
    device = _device(flownet)
    flownet.train()
    losses: list[float] = []
    bar = None
    start = time.monotonic()
    if progress:
        bar = tqdm(total=iters, desc="pretrain FlowNet", unit="it", dynamic_ncols=True)
    try:
        for it, batch in enumerate(loader):
            if it >= iters:
                break
            flow, _ = flownet(batch["cur"].to(device), batch["key"].to(device))
            loss = epe(flow, batch["flow"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"pretrain: loss became {value} at iteration {it}; lower the learning rate")
            losses.append(value)
            if bar is not None:
                recent = losses[-20:]
                bar.set_postfix(epe_px=f"{FLOW_STRIDE * sum(recent) / len(recent):.3f}")
                bar.update(1)
            if on_step is not None:
                on_step(it, value)
            if time_limit_s is not None and time.monotonic() - start > time_limit_s:
                break
    finally:
        if bar is not None:
            bar.close()
    return losses


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _eval_batches(root: str, split: str, pairs: int | Sequence[FlowPair], cfg: Config, seed: int, batch_size: int,
                  min_offset: int | None, max_offset: int | None) -> Iterator[dict[str, Any]]:
    dataset = FlowPairDataset(root, split, cfg, pairs, seed=seed, min_offset=min_offset, max_offset=max_offset)
    if len(dataset) == 0:
        raise ValueError("evaluate_epe: no pairs to evaluate")
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


@torch.no_grad()
def evaluate_epe(flownet: FlowNetwork, root: str, split: str, pairs: int | Sequence[FlowPair], cfg: Config, *,
                 seed: int = EVAL_SEED, batch_size: int = 8, min_offset: int | None = None,
                 max_offset: int | None = None) -> float:
    """EPE of ``flownet`` in image pixels at the network input resolution (grid EPE x 16).

    ``pairs``: a number of held-out pairs drawn with ``seed`` (the same pairs on every call) with the
    config's (or the given) offsets, or explicit pairs. The mean is over all grid cells of all pairs.
    """
    was_training = flownet.training
    flownet.eval()
    device = _device(flownet)
    total, count = 0.0, 0
    try:
        for batch in _eval_batches(root, split, pairs, cfg, seed, batch_size, min_offset, max_offset):
            flow, _ = flownet(batch["cur"].to(device), batch["key"].to(device))
            norms = torch.linalg.vector_norm(flow.float() - batch["flow"].to(device), dim=1)
            total += float(norms.double().sum())
            count += norms.numel()
    finally:
        flownet.train(was_training)
    return FLOW_STRIDE * total / count


def zero_flow_epe(root: str, split: str, pairs: int | Sequence[FlowPair], cfg: Config, *, seed: int = EVAL_SEED,
                  min_offset: int | None = None, max_offset: int | None = None) -> float:
    """EPE of predicting no motion on the pairs of :func:`evaluate_epe` (the mean GT magnitude), image pixels."""
    total, count = 0.0, 0
    for batch in _eval_batches(root, split, pairs, cfg, seed, 8, min_offset, max_offset):
        norms = torch.linalg.vector_norm(batch["flow"], dim=1)
        total += float(norms.double().sum())
        count += norms.numel()
    return FLOW_STRIDE * total / count


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def flownet_state_for_dff(flownet: FlowNetwork) -> dict[str, Tensor]:
    """``flownet``'s state_dict under the DFF model's names: ``flownet.<layer>.weight|bias``."""
    return {f"flownet.{k}": v for k, v in flownet.state_dict().items()}


def save_flownet_checkpoint(path: str, flownet: FlowNetwork, extra: dict[str, Any] | None = None) -> None:
    """Write the FlowNet weights (only) as a native checkpoint with DFF key names, atomically.

    No config is stored: the file is not a whole model, so ``checkpoint_config`` must not offer it as
    one; ``extra`` (e.g. the pre-training settings and EPE numbers) goes in as extra keys.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    save_checkpoint(path, model_state=flownet_state_for_dff(flownet), extra=extra)


class _Holder(nn.Module):
    """Puts a bare FlowNet under the name ``flownet`` so its keys match the checkpoint's."""

    def __init__(self, flownet: FlowNetwork) -> None:
        super().__init__()
        self.flownet = flownet


def load_flownet_weights(flownet: nn.Module, path: str, *, allow_missing_scale: bool = True) -> LoadReport:
    """Load flow-network weights into ``flownet`` (a bare flow network, or a detector's ``model.flownet``).

    ``path``: a checkpoint of :func:`save_flownet_checkpoint`, a full DFF checkpoint (native or MXNet;
    only its ``flownet.*`` part is used), or an MXNet FlowNet ``.params`` file such as the reference's
    ``flownet-0000.params`` (mapped by :func:`dff.utils.checkpoint.mxnet_to_torch_name`). Every
    FlowNet parameter must be filled, except the scale map when ``allow_missing_scale`` (a Flying
    Chairs FlowNet has none; it then gets the training init, weight 0 / bias 1). The model's other
    parameters are left untouched, and so is FlowNet when the file does not fit (then
    :class:`CheckpointError` names the path and the keys). The report's ``unexpected`` lists the
    file's non-FlowNet keys.
    """
    target = flownet
    # load into a scratch copy first: a strict load checks everything before copying anything
    scratch = _Holder(copy.deepcopy(target))
    ignore = ("*.num_batches_tracked",) + (("flownet." + _SCALE_PREFIX + "*",) if allow_missing_scale else ())
    try:
        report = load_model_weights(scratch, path, strict=True, ignore_missing=ignore, allow_unexpected=True)
    except CheckpointError as e:
        raise CheckpointError(f"cannot initialise FlowNet: {e}") from None
    state = {k[len("flownet."):]: v for k, v in scratch.state_dict().items()}
    with torch.no_grad():
        for k, v in target.state_dict().items():
            v.copy_(state[k])
    if report.ignored_missing and any(k.startswith("flownet." + _SCALE_PREFIX) for k in report.ignored_missing):
        target.init_scale_identity()
    return report


# ------------------------------------------------------------------------------------------------
# the command (tools/pretrain_flownet.py)
# ------------------------------------------------------------------------------------------------
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TINY_CFG = os.path.join(_REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_synthetic_tiny.yaml")
DEMO_CFG = os.path.join(_REPO, "experiments", "dff_rfcn", "cfgs", "dff_rfcn_vid_demo.yaml")
DEMO_SCALES = [160, 256]


class PretrainArgumentError(ValueError):
    """A command-line value the pre-training cannot use; the message starts with the option's name."""


class PretrainRun(NamedTuple):
    """What :func:`measure_and_pretrain` measured: EPEs in image pixels, the per-iteration losses (grid EPE)."""
    epe_zero: float
    epe_before: float
    epe_after: float
    losses: list[float]
    train_seconds: float
    total_seconds: float


def parse_scale_arg(text: str) -> list[int]:
    """``--scale SHORT,MAX_LONG`` as ``[short, long]`` (an argparse ``type``)."""
    try:
        short, long = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scale must be SHORT,MAX_LONG (two integers), got {text!r}") from None
    if short < 16 or long < short:
        raise argparse.ArgumentTypeError(f"--scale {text}: need 16 <= SHORT <= MAX_LONG")
    return [short, long]


def resolve_config(cfg_arg: str | None, overrides: Sequence[str], scale: list[int] | None) -> tuple[str, Config]:
    """The config file (``cfg_arg``, else the synthetic tiny config if present, else the DFF demo config)
    loaded with ``overrides``; SCALES from ``scale``, or [160, 256] for the demo config chosen by default
    unless ``overrides`` set SCALES. Raises :class:`~dff.config.ConfigError`."""
    cfg_path = cfg_arg or (TINY_CFG if os.path.isfile(TINY_CFG) else DEMO_CFG)
    cfg = load_config(cfg_path, overrides)
    demo_default = cfg_arg is None and cfg_path == DEMO_CFG and "SCALES" not in parse_overrides(overrides)
    scales = scale or (DEMO_SCALES if demo_default else None)
    if scales:
        update_config(cfg, {"SCALES": scales}, source="--scale")
    return cfg_path, cfg


def check_data(data: str, eval_data: str | None) -> tuple[int, int]:
    """Videos in the train split of ``data`` and in the val split of ``eval_data`` (default ``data``);
    :class:`PretrainArgumentError` naming the option when a split is missing or empty."""
    try:
        n_train = len(list_videos(data, "train"))
    except (FileNotFoundError, ValueError) as e:
        raise PretrainArgumentError(f"--data: {e}") from None
    try:
        n_val = len(list_videos(eval_data or data, "val"))
    except (FileNotFoundError, ValueError) as e:
        raise PretrainArgumentError(f"{'--eval-data' if eval_data else '--data'}: {e}") from None
    return n_train, n_val


def _torch_device(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise PretrainArgumentError(f"--device {name!r}: {e}") from None


def build_flownet(cfg: Config, seed: int, init: str | None = None) -> tuple[FlowNetwork, LoadReport | None]:
    """The flow network of ``cfg`` (``FLOW_NETWORK``; ``DFF_FEAT_DIM`` scale channels, ``FLOW_AVG_POOL``,
    ``FLOWNET_WIDTH``) with the MSRA init of ``seed``, then the weights of ``init`` if given (with their load
    report)."""
    torch.manual_seed(seed)
    flownet = build_flow_network(cfg)
    init_flownet(flownet, seed)
    report = None
    if init:
        try:
            report = load_flownet_weights(flownet, init)
        except (CheckpointError, OSError) as e:
            raise PretrainArgumentError(f"--init: {e}") from None
    return flownet, report


def measure_and_pretrain(flownet: FlowNetwork, args: argparse.Namespace, cfg: Config, eval_data: str) -> PretrainRun:
    """The held-out EPE of zero flow and of ``flownet``, :func:`pretrain` with the command's options, the
    held-out EPE again; prints the EPE before training (stderr)."""
    ev = {"seed": args.eval_seed, "min_offset": args.min_offset, "max_offset": args.max_offset}
    t0 = time.time()
    zero = zero_flow_epe(eval_data, "val", args.eval_pairs, cfg, **ev)
    before = evaluate_epe(flownet, eval_data, "val", args.eval_pairs, cfg, **ev)
    print(f"val EPE before: {before:.3f} px (zero flow: {zero:.3f} px) on {args.eval_pairs} pairs", file=sys.stderr)
    t1 = time.time()
    losses = pretrain(flownet, args.data, cfg, args.iters, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, seed=args.seed, min_offset=args.min_offset,
                      max_offset=args.max_offset, flip=not args.no_flip, progress=not args.no_progress,
                      time_limit_s=args.time_limit)
    train_s = time.time() - t1
    after = evaluate_epe(flownet, eval_data, "val", args.eval_pairs, cfg, **ev)
    return PretrainRun(zero, before, after, losses, train_s, time.time() - t0)


def _mean_px(xs: list[float]) -> float | None:
    return FLOW_STRIDE * sum(xs) / len(xs) if xs else None


def pretrain_report(args: argparse.Namespace, cfg_path: str, cfg: Config, eval_data: str, device: torch.device,
                    run: PretrainRun) -> dict[str, Any]:
    """The JSON report (also stored in the checkpoint as ``flow_pretrain``): settings, EPEs, timings, paths."""
    losses = run.losses
    window = max(1, min(20, len(losses) // 5 or 1))
    return {
        "data": os.path.abspath(args.data), "config": os.path.abspath(cfg_path), "scales": list(cfg.SCALES[0]),
        "pixel_means": list(cfg.network.PIXEL_MEANS), "init": args.init or f"msra(seed={args.seed})",
        "iters": len(losses), "iters_requested": args.iters, "time_limit_s": args.time_limit,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "seed": args.seed, "flip": not args.no_flip,
        "offsets": [cfg.TRAIN.MIN_OFFSET if args.min_offset is None else args.min_offset,
                    cfg.TRAIN.MAX_OFFSET if args.max_offset is None else args.max_offset],
        "eval": {"data": os.path.abspath(eval_data), "split": "val", "pairs": args.eval_pairs, "seed": args.eval_seed},
        "units": "EPE in image pixels at the network input resolution (grid EPE x 16)",
        "epe_before": run.epe_before, "epe_after": run.epe_after, "epe_zero_flow": run.epe_zero,
        "train_epe_first": _mean_px(losses[:window]), "train_epe_last": _mean_px(losses[-window:]),
        "train_seconds": round(run.train_seconds, 1), "total_seconds": round(run.total_seconds, 1),
        "device": str(device), "checkpoint": os.path.abspath(args.out),
    }


def write_outputs(flownet: FlowNetwork, report: dict[str, Any], out: str, json_path: str | None = None,
                  mxnet_prefix: str | None = None) -> str:
    """Move ``flownet`` to the CPU and write, each atomically: ``mxnet_prefix``-0000.params when given (its
    path goes into ``report`` as ``mxnet_params``), the checkpoint ``out`` with ``report`` as
    ``flow_pretrain``, and ``report`` as JSON to ``json_path`` (default: ``out`` with .json), returned."""
    flownet.cpu()
    if mxnet_prefix:
        mx_path = f"{mxnet_prefix}-0000.params"
        os.makedirs(os.path.dirname(os.path.abspath(mx_path)), exist_ok=True)
        save_mxnet_checkpoint(flownet_state_for_dff(flownet), mx_path)  # atomic (write_params)
        report["mxnet_params"] = os.path.abspath(mx_path)
    save_flownet_checkpoint(out, flownet, extra={"flow_pretrain": report})
    json_path = json_path or os.path.splitext(out)[0] + ".json"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    return json_path


def run_pretraining(args: argparse.Namespace) -> int:
    """``tools/pretrain_flownet.py``: pre-train FlowNet with the command's options, report the held-out EPE
    before and after, write the checkpoint, the MXNet copy and the JSON report; 0, or 2 after one ``error:``
    line."""
    if args.iters < 0 or args.batch_size < 1 or args.eval_pairs < 1:
        print("error: --iters must be >= 0, --batch-size and --eval-pairs >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg_path, cfg = resolve_config(args.cfg, args.set, args.scale)
        n_train, n_val = check_data(args.data, args.eval_data)
        device = _torch_device(args.device)
        flownet, init_report = build_flownet(cfg, args.seed, args.init)
    except (ConfigError, PretrainArgumentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if init_report is not None:
        print(init_report.summary(), file=sys.stderr)
    eval_data = args.eval_data or args.data
    flownet.to(device)
    print(f"config {cfg_path}, SCALES {list(cfg.SCALES[0])}; data {args.data}: {n_train} train videos; "
          f"held-out EPE on {eval_data}: {n_val} val videos; "
          f"device {device}", file=sys.stderr)

    run = measure_and_pretrain(flownet, args, cfg, eval_data)
    report = pretrain_report(args, cfg_path, cfg, eval_data, device, run)
    json_path = write_outputs(flownet, report, args.out, args.json, args.mxnet_prefix)
    print(f"val EPE: before {run.epe_before:.3f} px, after {run.epe_after:.3f} px, zero flow {run.epe_zero:.3f} px "
          f"({len(run.losses)} iterations, {run.train_seconds:.0f} s)")
    print(f"wrote {args.out}{' and ' + report['mxnet_params'] if args.mxnet_prefix else ''} and {json_path}")
    return 0
