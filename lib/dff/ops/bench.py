"""DFF's compiled operators timed against their pure-PyTorch fallbacks, at DFF's sizes (``tools/bench_ops.py``).

Sizes: a 600x1000 input gives a 38x63 feature map (stride 16). PSROI pooling of 300 R-FCN-like rois
over the class maps (31*49 = 1519 channels, output_dim 31) and the box maps (2*4*49 = 392 channels,
output_dim 8), 7x7 bins; the flow warp x scale of a (1, 1024, 38, 63) feature with its scale map, in
float32 and in float16 (which both backends run in float32); ``nms_fixed`` on the proposals' and the
detections' sizes. Each row is timed for inference (forward under ``torch.inference_mode``) and training
(forward + backward of a fixed upstream gradient), as the median of ``repeat`` runs after ``warmup`` runs;
on CUDA each run is bracketed by CUDA events.

Rows marked "for context" time ``torchvision.ops.ps_roi_pool``, ``torchvision.ops.nms`` and
``F.grid_sample`` (+ the multiply by the scale) on the same tensors: they do NOT have the operators'
semantics (torchvision bins the rois differently; grid_sample normalises the positions to [-1, 1]), they
only show what a stock kernel costs. Their time is in the "compiled ms" column.

The inputs (:func:`make_rois`, :func:`make_warp_inputs`, :func:`make_nms_boxes`), the timing
(:func:`time_ms`, :func:`try_time`, :func:`pair_rows`), one function per operator (:func:`bench_psroi`,
:func:`bench_warp`, :func:`bench_nms`), the table (:func:`table`) and :func:`run_bench_ops`, the command.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchvision
from torchvision.ops import ps_roi_pool

from dff.ops import _ext
from dff.ops.nms import nms_fixed
from dff.ops.psroi import psroi_pool
from dff.ops.warp import warp_scale
from dff.utils.hardware import describe_hardware
from dff.utils.io import atomic_write_text

__all__ = ["IMAGE_HW", "FEATURE_HW", "SPATIAL_SCALE", "POOLED", "NUM_ROIS", "PSROI_MAPS", "WARP_CHANNELS", "Row",
           "make_rois", "make_warp_inputs", "grid_from_flow", "make_nms_boxes", "synchronize", "time_ms",
           "training_step", "try_time", "pair_rows", "bench_nms", "bench_psroi", "bench_warp", "format_ms", "table",
           "check_environment", "run_bench_ops"]

IMAGE_HW = (600, 1000)
FEATURE_HW = (38, 63)  # ceil(600/16), ceil(1000/16)
SPATIAL_SCALE = 1 / 16
POOLED = 7
NUM_ROIS = 300
PSROI_MAPS = {"cls": 31, "bbox": 2 * 4}  # name -> output_dim (channels = output_dim * 49)
WARP_CHANNELS = 1024


@dataclass
class Row:
    op: str
    pass_: str  # "inference" or "training"
    compiled_ms: float | None
    fallback_ms: float | None
    context: bool = False
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.compiled_ms is None or self.fallback_ms is None or self.compiled_ms <= 0:
            return None
        return self.fallback_ms / self.compiled_ms

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pass"] = d.pop("pass_")
        d["ratio_fallback_over_compiled"] = self.ratio
        return d


# ----------------------------------------------------------------------------------------------------
# inputs


def make_rois(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 5) proposals [0, x1, y1, x2, y2] in image pixels: log-uniform sizes 16..600 px, aspect
    ratios 1:2..2:1, clipped to the image as the proposal layer clips them."""
    h, w = IMAGE_HW
    centre = torch.rand(count, 2, generator=generator) * torch.tensor([w, h])
    side = torch.exp(torch.empty(count).uniform_(math.log(16), math.log(600), generator=generator))
    aspect = torch.exp(torch.empty(count).uniform_(math.log(0.5), math.log(2.0), generator=generator))
    size = torch.stack([side * aspect.sqrt(), side / aspect.sqrt()], 1)
    lo = torch.minimum(torch.maximum(centre - size / 2, torch.zeros(2)), torch.tensor([w - 1.0, h - 1.0]))
    hi = torch.minimum(torch.maximum(centre + size / 2, lo), torch.tensor([w - 1.0, h - 1.0]))
    return torch.cat([torch.zeros(count, 1), lo, hi], 1)


def make_warp_inputs(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """feat (1, 1024, 38, 63) (ReLU-like), flow ~ N(0, 2^2) px (fractional, some outside), scale ~ 1."""
    h, w = FEATURE_HW
    feat = torch.randn(1, WARP_CHANNELS, h, w, generator=generator).clamp(min=0)
    flow = torch.randn(1, 2, h, w, generator=generator) * 2
    scale = torch.rand(1, WARP_CHANNELS, h, w, generator=generator) + 0.5
    return feat, flow, scale


def grid_from_flow(flow: torch.Tensor) -> torch.Tensor:
    """grid_sample's (N, H, W, 2) grid for sampling at p + flow, align_corners=True."""
    _, _, h, w = flow.shape
    px = torch.arange(w, dtype=flow.dtype, device=flow.device) + flow[:, 0]
    py = torch.arange(h, dtype=flow.dtype, device=flow.device)[:, None] + flow[:, 1]
    return torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)


# ----------------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int, grad: bool) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on CUDA, perf_counter on the CPU)."""
    with torch.set_grad_enabled(True) if grad else torch.inference_mode():
        for _ in range(warmup):
            fn()
        synchronize(device)
        times = []
        for _ in range(repeat):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def training_step(forward: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad_out: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of a fixed upstream gradient; the leaves' grads are dropped first so every
    run allocates them afresh (no accumulation into an old buffer)."""

    def step() -> None:
        for t in leaves:
            t.grad = None
        forward().backward(grad_out)

    return step


def try_time(fn: Callable[[], object], device: torch.device, repeat: int, warmup: int, grad: bool) -> tuple[float | None, str]:
    """:func:`time_ms`, or (None, why) when the op fails here (e.g. a stock op without a float16 CPU
    kernel): one failing row must not lose the others' timings."""
    try:
        return time_ms(fn, device, repeat, warmup, grad), ""
    except Exception as e:  # reported in the row's note; run_bench_ops() exits non-zero if a DFF row failed
        lines = str(e).strip().splitlines() or [""]
        return None, f"{type(e).__name__}: {lines[0][:160]}"


def pair_rows(
    label: str, fns: dict[tuple[str, str], Callable[[], object]], device: torch.device, repeat: int, warmup: int
) -> list[Row]:
    """The inference and training rows of one DFF operator: ``fns[(backend, pass)]`` timed for both backends."""
    rows = []
    for pass_ in ("inference", "training"):
        ms, notes = {}, []
        for backend in ("compiled", "fallback"):
            ms[backend], why = try_time(fns[backend, pass_], device, repeat, warmup, grad=pass_ == "training")
            if why:
                notes.append(f"{backend} failed: {why}")
        rows.append(Row(label, pass_, ms["compiled"], ms["fallback"], note="; ".join(notes)))
    return rows


def make_nms_boxes(count: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """``count`` boxes in clusters over the 600x1000 image (so NMS suppresses), sizes 8-200 px."""
    centre = torch.rand(count // 15 + 1, 2, generator=generator, dtype=torch.float64) * torch.tensor([1000.0, 600.0])
    ctr = centre[torch.randint(0, centre.shape[0], (count,), generator=generator)]
    ctr = ctr + 12 * torch.randn(count, 2, generator=generator, dtype=torch.float64)
    wh = 8 + 192 * torch.rand(count, 2, generator=generator, dtype=torch.float64)
    return torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1).to(dtype)


# ----------------------------------------------------------------------------------------------------
# benchmarks


def bench_nms(device: torch.device, repeat: int, warmup: int, generator: torch.Generator) -> list[Row]:
    """``nms_fixed`` as the engine calls it (inference only: NMS has no gradient): the proposals' 6000
    sorted candidates -> 300 keeps at IoU 0.7 (float32), and the detections' 300 rois x 30 classes in
    one call (float64, class labels, threshold mask, cap 300)."""
    rows = []
    props = make_nms_boxes(6000, generator, torch.float32).to(device)
    rows.append(Row("nms_fixed proposals (6000 -> 300)", "inference",
                    *(try_time(lambda b=b: nms_fixed(props, 0.7, 300, backend=b), device, repeat, warmup, False)[0]
                      for b in ("compiled", "fallback"))))
    rois, classes = NUM_ROIS, 30
    scores = (torch.rand(rois * classes, generator=generator, dtype=torch.float64) ** 6).to(device)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = make_nms_boxes(rois, generator, torch.float64).to(device)[order // classes]
    kw = dict(valid=scores[order] > 1e-4, labels=order % classes + 1, scores=scores[order], cap=300)
    rows.append(Row(f"nms_fixed detections ({rois} rois x {classes} classes)", "inference",
                    *(try_time(lambda b=b: nms_fixed(boxes, 0.3, rois * classes, backend=b, **kw), device, repeat,
                               warmup, False)[0] for b in ("compiled", "fallback"))))

    rank = -torch.arange(props.shape[0], device=device, dtype=props.dtype)
    ms, note = try_time(lambda: torchvision.ops.nms(props, rank, 0.7), device, repeat, warmup, False)
    rows.append(Row("torchvision nms, the 6000 proposals (all keeps)", "inference", ms, None, True, note))
    return rows


def bench_psroi(device: torch.device, repeat: int, warmup: int, generator: torch.Generator) -> list[Row]:
    rows = []
    rois = make_rois(NUM_ROIS, generator).to(device)
    h, w = FEATURE_HW
    for name, dim in PSROI_MAPS.items():
        data = torch.randn(1, dim * POOLED * POOLED, h, w, generator=generator).to(device)
        grad_out = torch.randn(NUM_ROIS, dim, POOLED, POOLED, generator=generator).to(device)
        leaf = data.clone().requires_grad_(True)
        label = f"psroi_pool {name} ({dim * 49}ch, {NUM_ROIS} rois)"

        def run(backend: str, d: torch.Tensor, dim: int = dim) -> torch.Tensor:
            return psroi_pool(d, rois, SPATIAL_SCALE, POOLED, POOLED, dim, backend=backend)

        fns = {
            (backend, pass_): fn
            for backend in ("compiled", "fallback")
            for pass_, fn in (
                ("inference", lambda b=backend: run(b, data)),
                ("training", training_step(lambda b=backend: run(b, leaf), [leaf], grad_out)),
            )
        }
        rows += pair_rows(label, fns, device, repeat, warmup)

        def tv(d: torch.Tensor) -> torch.Tensor:
            return ps_roi_pool(d, rois, POOLED, SPATIAL_SCALE)

        for pass_, fn in (("inference", lambda: tv(data)), ("training", training_step(lambda: tv(leaf), [leaf], grad_out))):
            t, why = try_time(fn, device, repeat, warmup, grad=pass_ == "training")
            rows.append(Row(f"torchvision ps_roi_pool {name} [for context]", pass_, t, None, True, why))
    return rows


def bench_warp(device: torch.device, repeat: int, warmup: int, generator: torch.Generator) -> list[Row]:
    rows = []
    feat0, flow0, scale0 = make_warp_inputs(generator)
    grad0 = torch.randn(feat0.shape, generator=generator)
    for dtype in (torch.float32, torch.float16):
        feat, flow, scale, grad_out = (t.to(device, dtype) for t in (feat0, flow0, scale0, grad0))
        leaves = [t.clone().requires_grad_(True) for t in (feat, flow, scale)]
        short = "fp32" if dtype == torch.float32 else "fp16 (runs in fp32)"
        label = f"warp_scale {short} (1x{WARP_CHANNELS}x{FEATURE_HW[0]}x{FEATURE_HW[1]})"

        fns = {
            (backend, pass_): fn
            for backend in ("compiled", "fallback")
            for pass_, fn in (
                ("inference", lambda b=backend: warp_scale(feat, flow, scale, backend=b)),
                ("training", training_step(lambda b=backend: warp_scale(*leaves, backend=b), leaves, grad_out)),
            )
        }
        rows += pair_rows(label, fns, device, repeat, warmup)

        def gs(f: torch.Tensor, u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            grid = grid_from_flow(u)
            return F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=True) * s

        dt = "fp32" if dtype == torch.float32 else "fp16"
        ctx = f"grid_sample x scale {dt} [for context]"
        for pass_, fn in (
            ("inference", lambda: gs(feat, flow, scale)),
            ("training", training_step(lambda: gs(*leaves), leaves, grad_out)),
        ):
            t, why = try_time(fn, device, repeat, warmup, grad=pass_ == "training")
            rows.append(Row(ctx, pass_, t, None, True, why))
    return rows


# ----------------------------------------------------------------------------------------------------
# report


def format_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(rows: list[Row]) -> str:
    header = ("op", "pass", "compiled ms", "fallback ms", "fallback/compiled")
    body = [
        (r.op, r.pass_, format_ms(r.compiled_ms), format_ms(r.fallback_ms), "-" if r.ratio is None else f"{r.ratio:.1f}x")
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*b) for b in body]
    lines += [f"  note: {r.op} {r.pass_}: {r.note}" for r in rows if r.note]
    return "\n".join(lines)


def check_environment(device: torch.device) -> str:
    """"" if the compiled operators can run on ``device``, else the error to exit with."""
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device is available to torch (use --device cpu)"
    with warnings.catch_warnings():  # the loader's fallback warning would only repeat the error below
        warnings.simplefilter("ignore", _ext.CompiledOpsWarning)
        loaded = _ext.compiled_available()
    if not loaded:
        return (
            f"the compiled operators are not loaded ({_ext.load_error()}); "
            "build them with `python -m dff.ops.build` (or `sh init.sh`)"
        )
    missing = [op for op in ("dff::psroi_pool_forward", "dff::warp_scale_forward") if not _ext.has_kernel(op, device.type)]
    if missing:
        return (
            f"the compiled library {_ext.library_path()} has no {device.type} kernel for {', '.join(missing)}; "
            "rebuild it with `python -m dff.ops.build` where nvcc and a CUDA build of torch exist"
        )
    return ""


def run_bench_ops(args: argparse.Namespace) -> int:
    """``tools/bench_ops.py``: every row on ``args.device`` (``args.repeat`` timed runs after ``args.warmup``,
    inputs drawn with ``args.seed``), the table, and the JSON report to ``args.json`` if given; 0, 1 when a DFF
    operator row failed, 2 when the compiled operators cannot run there."""
    device = torch.device(args.device)
    problem = check_environment(device)
    if problem:
        print(f"bench_ops: error: {problem}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)  # inputs are made on the CPU, then moved
    hw = describe_hardware(device)
    print(f"# {hw}; torch {torch.__version__}; device {device}; median of {args.repeat} after {args.warmup} warm-up runs")
    rows = bench_psroi(device, args.repeat, args.warmup, generator)
    rows += bench_warp(device, args.repeat, args.warmup, generator)
    rows += bench_nms(device, args.repeat, args.warmup, generator)
    print(table(rows))
    print("# [for context]: stock kernels with other semantics (see the module docstring); time in the compiled column")
    failed = [r for r in rows if not r.context and r.note]
    if args.json:
        result = {
            "device": str(device),
            "hardware": hw,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "sizes": {
                "image": list(IMAGE_HW),
                "feature": list(FEATURE_HW),
                "rois": NUM_ROIS,
                "psroi_output_dims": PSROI_MAPS,
                "warp_channels": WARP_CHANNELS,
            },
            "rows": [r.as_dict() for r in rows],
        }
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"# wrote {args.json}")
    if failed:
        print(f"bench_ops: error: {len(failed)} operator row(s) failed (see the notes)", file=sys.stderr)
        return 1
    return 0
