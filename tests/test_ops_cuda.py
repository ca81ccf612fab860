"""The compiled CUDA kernels against the CPU oracles (pure-PyTorch fallback and compiled CPU kernel).

Runs only where CUDA exists; there the compiled library must be loaded with CUDA kernels (a failure,
not a skip). Every check is a function of ``device`` so the same comparisons can be dry-run on the CPU
(compiled CPU kernel vs fallback), e.g. ``check_psroi("cpu", torch.float64, "dff")``. Inputs are made
on the CPU from seeded generators and then moved, so they are the same on every machine.

Tolerances: float64 1e-12 (PSROI) / 1e-10 (warp); float32 1e-5 (warp gradients: 1e-5 abs + 1e-5 rel).
The CUDA kernels differ from the oracles only in summation order (PSROI backward and warp feat
gradient: atomicAdd; warp flow gradient: one sequential sum over the channels); the bins and bilinear
weights are the same float expressions (``--fmad=false``), so no comparison can straddle a bin edge or
a pixel. Each float32 comparison is against the oracle run in float32 (PSROI bins and warp positions
are computed in the data's dtype, so a float64 run would pool other pixels where an edge is close).
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch
from test_nms_fixed import CASES as NMS_CASES
from test_nms_fixed import check_nms_fixed
from test_nms_fixed import make_case as make_nms_case

from dff.ops import _ext, nms_fixed, psroi_pool, warp_scale

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FORWARD_OPS = ("dff::psroi_pool_forward", "dff::warp_scale_forward", "dff::nms_fixed")
BACKWARD_OPS = ("dff::psroi_pool_backward", "dff::warp_scale_backward")

# dtype -> (forward atol, gradient atol, gradient rtol)
PSROI_TOL = {torch.float64: (1e-12, 1e-12, 0.0), torch.float32: (1e-5, 1e-5, 0.0)}
# The float32 flow gradient sums 64 channels into values up to ~30: the CUDA kernel's sequential sum,
# emulated on the CPU, is 9.5e-6 off the oracles at worst, too close to a bare 1e-5; hence the relative term.
WARP_TOL = {torch.float64: (1e-10, 1e-10, 0.0), torch.float32: (1e-5, 1e-5, 1e-5)}

# R-FCN geometry: stride 16, 7x7 position-sensitive grid
SPATIAL_SCALE = 1 / 16
GROUP = POOLED = 7
# name -> (data shape (N, G*G*D, H, W), output_dim D)
PSROI_CASES = {
    "dff": ((1, 7 * 7 * 8, 38, 63), 8),  # the 600x1000 input's feature map
    "batch2": ((2, 49 * 3, 20, 30), 3),  # two images: batch indices 0 and 1
}


def kernel_problem() -> str:
    """Why the compiled CUDA kernels cannot run ("" if they can)."""
    if not _ext.compiled_available():
        return f"compiled operators not loaded ({_ext.load_error()}); run `python -m dff.ops.build`"
    missing = [op for op in FORWARD_OPS if not _ext.has_kernel(op, "cuda")]
    # has_kernel knows the forward ops only; the backward ops are asked of the dispatcher directly
    missing += [op for op in BACKWARD_OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")]
    if missing:
        return (
            f"the compiled library {_ext.library_path()} has no CUDA kernel for {', '.join(missing)}: "
            "rebuild it where nvcc and a CUDA build of torch exist (`python -m dff.ops.build`)"
        )
    return ""


def require_compiled(device: str) -> None:
    """Fail (never skip) when the compiled kernels for ``device`` are missing."""
    if device == "cuda":
        problem = kernel_problem()
    elif not _ext.compiled_available():
        problem = f"compiled operators not loaded ({_ext.load_error()})"
    else:
        problem = ""
    if problem:
        pytest.fail(problem)


def leaf(t: torch.Tensor, device: str) -> torch.Tensor:
    """A fresh leaf copy of ``t`` on ``device`` that requires grad (``.to`` alone would return ``t``
    itself when it is already there, and the runs would then share and accumulate one ``.grad``)."""
    return t.detach().to(device, copy=True).requires_grad_(True)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, what: str) -> float:
    """``|got - want| <= atol + rtol*|want|`` everywhere (shapes and dtypes equal); returns the max abs diff."""
    got, want = got.detach().cpu(), want.detach().cpu()
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
    return max_abs_diff(got, want)


# ----------------------------------------------------------------------------------------------------
# inputs (made on the CPU from seeded generators)


def psroi_rois(feature_hw: tuple[int, int], batch: int, count: int = 300, seed: int = 0) -> torch.Tensor:
    """``count`` rois [b, x1, y1, x2, y2] in image pixels (float64) for a stride-16 feature map: mostly
    R-FCN-like proposals (16..~600 px, some crossing the border), 40 with half-pixel (x.5) corners, and
    the edge cases: degenerate, inverted, partly and fully outside, the whole image, far-away boxes."""
    g = torch.Generator().manual_seed(seed)
    ih, iw = feature_hw[0] * 16.0, feature_hw[1] * 16.0
    special = torch.tensor(
        [
            [0, 0, 0, iw - 1, ih - 1],  # whole image
            [0, -500, -500, iw + 500, ih + 500],  # covers more than the image
            [0, 100, 100, 100, 100],  # single pixel
            [0, 200, 50, 200, 300],  # zero width
            [0, 50, 200, 300, 200],  # zero height
            [0, 300, 200, 100, 50],  # x1 > x2 and y1 > y2
            [0, 300, 50, 100, 200],  # x1 > x2 only
            [0, 10.5, 20.5, 150.5, 90.5],  # .5 corners: round half away from zero
            [0, -0.5, -1.5, 7.5, 15.5],  # negative .5 corners
            [0, 0.49999997, 0.5, 15.4999, 16.5],  # just below / at the half
            [0, -100, -50, 40, 30],  # partly outside, top-left
            [0, iw - 60, ih - 40, iw + 200, ih + 100],  # partly outside, bottom-right
            [0, -300, -300, -20, -20],  # fully outside, negative
            [0, iw + 10, 0, iw + 300, ih - 1],  # fully outside, right
            [0, 0, ih + 16, iw - 1, ih + 400],  # fully outside, below
            [0, 1e5, 1e5, 2e5, 2e5],  # far away
            [0, iw - 1, ih - 1, iw - 1, ih - 1],  # the last pixel
            [0, 0, 0, 15, 15],  # exactly one feature cell
        ],
        dtype=torch.float64,
    )
    n_half = 40
    n_random = count - len(special) - n_half
    centre = torch.rand(n_random + n_half, 2, generator=g, dtype=torch.float64) * torch.tensor([iw, ih])
    size = torch.exp(torch.empty(n_random + n_half, 2, dtype=torch.float64).uniform_(np.log(16), np.log(600), generator=g))
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    boxes[n_random:] = torch.floor(boxes[n_random:]) + 0.5  # half-pixel corners
    rois = torch.cat([torch.zeros(len(boxes), 1, dtype=torch.float64), boxes], 1)
    rois = torch.cat([rois, special])
    rois[:, 0] = torch.randint(0, batch, (len(rois),), generator=g).to(torch.float64)
    return rois


def psroi_inputs(case: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(data, rois, upstream gradient, output_dim) of a :data:`PSROI_CASES` case, on the CPU."""
    shape, dim = PSROI_CASES[case]
    g = torch.Generator().manual_seed(seed + 1)
    data = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    rois = psroi_rois(shape[2:], shape[0], seed=seed).to(dtype)
    grad = torch.randn(len(rois), dim, POOLED, POOLED, generator=g, dtype=torch.float64).to(dtype)
    return data, rois, grad, dim


def random_feat(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return torch.where(x < -1, torch.zeros((), dtype=x.dtype), x).to(dtype)  # some exact zeros, as after a ReLU


def fractional_flow(n: int, h: int, w: int, dtype: torch.dtype = torch.float64, seed: int = 0, reach: int = 3) -> torch.Tensor:
    """Flows whose sampling positions are >= 0.2 px away from any integer; many cross the border."""
    g = torch.Generator().manual_seed(seed)
    whole = torch.randint(-reach, reach + 1, (n, 2, h, w), generator=g).to(torch.float64)
    frac = 0.2 + 0.6 * torch.rand(n, 2, h, w, generator=g, dtype=torch.float64)
    return (whole + frac).to(dtype)


def mixed_flow(n: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Fractional positions, plus a quarter of the pixels at integer positions (exact taps), some zero
    flows, and some positions far outside the map (zero)."""
    flow = fractional_flow(n, h, w, torch.float64, seed=seed, reach=4)
    g = torch.Generator().manual_seed(seed + 100)
    pick = torch.rand(n, 1, h, w, generator=g)
    flow = torch.where(pick < 0.25, flow.round(), flow)
    flow = torch.where((pick >= 0.25) & (pick < 0.3), torch.zeros(()), flow)
    far = torch.tensor([60.0, -45.0], dtype=torch.float64).view(1, 2, 1, 1)
    flow = torch.where((pick >= 0.3) & (pick < 0.35), far, flow)
    return flow.to(dtype)


WARP_SHAPE = (2, 64, 38, 63)
SCALE_KINDS = (None, "full", "pixel")  # no scale, (N, C, H, W), (N, 1, H, W) broadcast over channels


def warp_inputs(
    dtype: torch.dtype, flow_kind: str, scale_kind: str | None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(feat, flow, scale, upstream gradient) on the CPU; flow_kind "mixed" or "fractional"."""
    n, c, h, w = WARP_SHAPE
    feat = random_feat(WARP_SHAPE, dtype, seed=seed)
    flow = (mixed_flow if flow_kind == "mixed" else fractional_flow)(n, h, w, dtype, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    scale = None
    if scale_kind is not None:
        shape = WARP_SHAPE if scale_kind == "full" else (n, 1, h, w)
        scale = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    grad = torch.randn(WARP_SHAPE, generator=g, dtype=torch.float64).to(dtype)
    return feat, flow, scale, grad


# ----------------------------------------------------------------------------------------------------
# runs and checks (each takes the device it runs the compiled kernels on)


def run_psroi(
    data: torch.Tensor, rois: torch.Tensor, grad: torch.Tensor, dim: int, device: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and data gradient of :func:`psroi_pool` on ``device``, returned on the CPU."""
    d = leaf(data, device)
    out = psroi_pool(d, rois.to(device), SPATIAL_SCALE, GROUP, POOLED, dim, backend=backend)
    assert out.device.type == torch.device(device).type and out.dtype == data.dtype
    out.backward(grad.to(device))
    return out.detach().cpu(), d.grad.cpu()


def check_psroi(device: str, dtype: torch.dtype, case: str) -> dict[str, float]:
    """Compiled kernel on ``device`` vs the CPU fallback and the compiled CPU kernel (same dtype: the bin
    edges are computed in the data's dtype, so a float32 run has float32 bins). Returns max abs diffs."""
    require_compiled(device)
    data, rois, grad, dim = psroi_inputs(case, dtype)
    out, gdata = run_psroi(data, rois, grad, dim, device, "compiled")
    atol, gatol, grtol = PSROI_TOL[dtype]
    diffs = {}
    for oracle in ("fallback", "compiled"):
        want_out, want_grad = run_psroi(data, rois, grad, dim, "cpu", oracle)
        diffs[f"out vs cpu {oracle}"] = assert_close(out, want_out, atol, 0.0, f"psroi {case} {dtype} out vs cpu {oracle}")
        diffs[f"data_grad vs cpu {oracle}"] = assert_close(
            gdata, want_grad, gatol, grtol, f"psroi {case} {dtype} data_grad vs cpu {oracle}"
        )
    # the case must exercise real pooling and empty bins, and reach every image of the batch
    assert (out != 0).float().mean() > 0.5 and (out == 0).any()
    assert all(bool(gdata[b].abs().sum() > 0) for b in range(data.shape[0]))
    return diffs


def run_warp(
    feat: torch.Tensor, flow: torch.Tensor, scale: torch.Tensor | None, grad: torch.Tensor, device: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Output and the feat, flow, scale gradients of :func:`warp_scale` on ``device``, on the CPU."""
    f, u = leaf(feat, device), leaf(flow, device)
    s = None if scale is None else leaf(scale, device)
    out = warp_scale(f, u, s, backend=backend)
    assert out.device.type == torch.device(device).type and out.dtype == feat.dtype
    out.backward(grad.to(device))
    return out.detach().cpu(), f.grad.cpu(), u.grad.cpu(), None if s is None else s.grad.cpu()


def check_warp(device: str, dtype: torch.dtype, flow_kind: str, scale_kind: str | None) -> dict[str, float]:
    """Compiled kernel on ``device`` vs the CPU fallback and compiled CPU kernel: output, feat and scale
    gradients always; the flow gradient only for "fractional" flows (it is discontinuous at integer
    positions, where a one-sided derivative is a convention). Returns max abs diffs."""
    require_compiled(device)
    feat, flow, scale, grad = warp_inputs(dtype, flow_kind, scale_kind)
    got = run_warp(feat, flow, scale, grad, device, "compiled")
    atol, gatol, grtol = WARP_TOL[dtype]
    names = ("out", "feat_grad", "flow_grad", "scale_grad")
    diffs = {}
    for oracle in ("fallback", "compiled"):
        want = run_warp(feat, flow, scale, grad, "cpu", oracle)
        for name, a, b in zip(names, got, want):
            if b is None or (name == "flow_grad" and flow_kind != "fractional"):
                continue
            tol = (atol, 0.0) if name == "out" else (gatol, grtol)
            what = f"warp {dtype} {flow_kind} scale={scale_kind} {name} vs cpu {oracle}"
            diffs[f"{name} vs cpu {oracle}"] = assert_close(a, b, *tol, what)
    assert (got[0] != 0).float().mean() > 0.5 and (got[0] == 0).any()  # real samples and outside zeros
    return diffs


def check_warp_identity_and_shifts(device: str, dtype: torch.dtype) -> None:
    """A zero flow returns feat (times scale) exactly; an integer flow is an exact shift, zero outside."""
    require_compiled(device)
    n, c, h, w = WARP_SHAPE
    feat = random_feat(WARP_SHAPE, dtype, seed=5)
    scale = (torch.rand(WARP_SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64) + 0.5).to(dtype)
    zero = torch.zeros(n, 2, h, w, dtype=dtype)
    fd, sd, zd = feat.to(device), scale.to(device), zero.to(device)
    assert torch.equal(warp_scale(fd, zd, backend="compiled").cpu(), feat)
    assert torch.equal(warp_scale(fd, zd, sd, backend="compiled").cpu(), (fd * sd).cpu())
    for dx, dy in [(3, -2), (-1, 0), (0, 37), (-63, 0), (62, -37), (5, 5)]:
        flow = torch.empty(n, 2, h, w, dtype=dtype)
        flow[:, 0], flow[:, 1] = dx, dy
        want = torch.zeros_like(feat)  # out[y, x] = feat[y + dy, x + dx], zero outside
        ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
        want[:, :, ys, xs] = feat[:, :, ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
        got = warp_scale(fd, flow.to(device), backend="compiled").cpu()
        assert torch.equal(got, want), (dtype, dx, dy)


def check_gradcheck(device: str) -> None:
    """float64 gradcheck of both compiled ops on small sizes. ``nondet_tol``: the CUDA backward scatters
    with atomicAdd, so two backward passes may differ in the last bit."""
    require_compiled(device)
    g = torch.Generator().manual_seed(7)
    data = leaf(torch.randn(2, 18, 6, 7, generator=g, dtype=torch.float64), device)
    rois = torch.tensor(
        [
            [0, 0, 0, 27, 23],  # whole map (stride 4)
            [1, 2.5, 4.5, 17.5, 13.5],  # .5 corners
            [0, -12, -8, 9, 11],  # partly outside
            [1, 30, 30, 50, 50],  # fully outside
            [0, 20, 18, 4, 3],  # inverted
            [1, 8, 8, 8, 8],  # one pixel
            [0, 3, 1, 22, 6],
            [1, 10, 2, 26, 21],
        ],
        dtype=torch.float64,
    ).to(device)
    assert torch.autograd.gradcheck(
        lambda d: psroi_pool(d, rois, 0.25, 3, 3, 2, backend="compiled"), (data,), eps=1e-6, atol=1e-8, nondet_tol=1e-12
    )
    n, c, h, w = 2, 3, 5, 6
    feat = leaf(random_feat((n, c, h, w), torch.float64, seed=8), device)
    flow = leaf(fractional_flow(n, h, w, seed=9), device)
    for shape in [(n, c, h, w), (1, c, 1, 1)]:
        scale = leaf(torch.rand(shape, generator=g, dtype=torch.float64) + 0.5, device)
        assert torch.autograd.gradcheck(
            lambda a, b, s: warp_scale(a, b, s, backend="compiled"), (feat, flow, scale), nondet_tol=1e-12
        )
    assert torch.autograd.gradcheck(
        lambda a, b: warp_scale(a, b, None, backend="compiled"), (feat, flow), nondet_tol=1e-12
    )


def check_autocast(device: str, amp_dtype: torch.dtype = torch.float16) -> None:
    """Inside ``torch.autocast`` half-precision inputs give the float32-computed result cast back (the
    kernels are float32/float64 only); float32 inputs are untouched; the raw ops return float32."""
    require_compiled(device)
    data, rois, grad, dim = psroi_inputs("dff", torch.float32, seed=11)
    feat, flow, scale, wgrad = warp_inputs(torch.float32, "fractional", "full", seed=12)
    data, rois, feat, flow, scale = (t.to(device) for t in (data, rois, feat, flow, scale))
    half = [t.to(amp_dtype) for t in (data, feat, flow, scale)]
    data_h, feat_h, flow_h, scale_h = (leaf(t, device) for t in half)

    def psroi(d: torch.Tensor) -> torch.Tensor:
        return psroi_pool(d, rois, SPATIAL_SCALE, GROUP, POOLED, dim, backend="compiled")

    with torch.autocast(device, dtype=amp_dtype):
        p_half = psroi(data_h)
        w_half = warp_scale(feat_h, flow_h, scale_h, backend="compiled")
        p_f32 = psroi(data)
        w_f32 = warp_scale(feat, flow, scale, backend="compiled")
        raw_p, raw_map = torch.ops.dff.psroi_pool_forward(half[0], rois.to(amp_dtype), SPATIAL_SCALE, GROUP, POOLED, dim)
        raw_w = torch.ops.dff.warp_scale_forward(half[1], half[2], half[3])
    p_want = psroi(half[0].float())
    w_want = warp_scale(half[1].float(), half[2].float(), half[3].float(), backend="compiled")
    assert p_half.dtype == amp_dtype and torch.equal(p_half, p_want.to(amp_dtype))
    assert w_half.dtype == amp_dtype and torch.equal(w_half, w_want.to(amp_dtype))
    assert p_f32.dtype == torch.float32 and torch.equal(p_f32, psroi(data))
    assert w_f32.dtype == torch.float32 and torch.equal(w_f32, warp_scale(feat, flow, scale, backend="compiled"))
    # the raw op casts everything (rois included) to float32: same as running it on the upcast inputs
    assert raw_p.dtype == torch.float32 and raw_map.dtype == torch.int32
    want_raw_p, _ = torch.ops.dff.psroi_pool_forward(
        half[0].float(), rois.to(amp_dtype).float(), SPATIAL_SCALE, GROUP, POOLED, dim
    )
    assert torch.equal(raw_p, want_raw_p)
    assert raw_w.dtype == torch.float32 and torch.equal(raw_w, w_want)

    # gradients reach the half inputs in their dtype: the float32 gradients, rounded
    p_half.backward(grad.to(device, amp_dtype))
    w_half.backward(wgrad.to(device, amp_dtype))
    d32, f32, u32, s32 = (leaf(t.float(), device) for t in half)
    psroi(d32).backward(grad.to(device, amp_dtype).float())
    warp_scale(f32, u32, s32, backend="compiled").backward(wgrad.to(device, amp_dtype).float())
    for name, h, f in [("data", data_h, d32), ("feat", feat_h, f32), ("flow", flow_h, u32), ("scale", scale_h, s32)]:
        assert h.grad.dtype == amp_dtype, name
        # atomicAdd order can move a float32 gradient across a half rounding boundary: one half ulp
        torch.testing.assert_close(h.grad.float(), f.grad.to(amp_dtype).float(), rtol=2e-3, atol=1e-3, msg=name)


def fixture_rows(device: str, reference_dir: str | os.PathLike) -> list:
    """The MXNet op fixtures (``ops/psroipool_*.npz``, ``ops/flow_warp_*.npz``) run on ``device`` with the
    compiled backend, compared with the tolerances and keys of :mod:`dff.parity.ops_psroi` / ``ops_warp``."""
    from dff.parity import compare, ops_psroi, ops_warp

    require_compiled(device)
    ops_dir = pathlib.Path(reference_dir) / "ops"
    summary = json.loads((ops_dir / "ops_summary.json").read_text())
    rows = []
    for path in sorted(ops_dir.glob("psroipool_*.npz")):
        d = np.load(path)
        p = summary[path.stem]["params"]
        data = torch.from_numpy(d["data"]).to(device).requires_grad_(True)
        out = psroi_pool(
            data,
            torch.from_numpy(d["rois"]).to(device),
            float(p["spatial_scale"]),
            int(p["group_size"]),
            int(p["pooled_size"]),
            int(p["output_dim"]),
            backend="compiled",
        )
        rows.append(compare(f"ops/{path.stem}", "out", out, d["out"], **ops_psroi.TOL_OUT))
        out.backward(torch.from_numpy(d["head_grad"]).to(device))
        rows.append(compare(f"ops/{path.stem}", "data_grad", data.grad, d["data_grad"], **ops_psroi.TOL_GRAD))
    for path in sorted(ops_dir.glob("flow_warp_*.npz")):
        d = np.load(path)
        feat = torch.from_numpy(d["feat"]).to(device).requires_grad_(True)
        flow = torch.from_numpy(d["flow"]).to(device).requires_grad_(True)
        out = warp_scale(feat, flow, None, backend="compiled")
        rows.append(compare(f"ops/{path.stem}", "out", out, d["out"], **ops_warp.TOL_OUT))
        out.backward(torch.from_numpy(d["head_grad"]).to(device))
        rows.append(compare(f"ops/{path.stem}", "feat_grad", feat.grad, d["feat_grad"], **ops_warp.TOL_GRAD))
        got, exp = flow.grad.detach().cpu().numpy(), d["flow_grad"]
        if "grid" in d.files:  # pixels where the reference's own grid round trip crossed a pixel edge
            moved = np.broadcast_to(ops_warp.reference_cell_moved(d["flow"], d["grid"])[:, None], exp.shape)
            got, exp = np.where(moved, 0.0, got), np.where(moved, 0.0, exp)
        rows.append(compare(f"ops/{path.stem}", "flow_grad", got, exp, **ops_warp.TOL_GRAD))
    return rows


# ----------------------------------------------------------------------------------------------------
# tests


def test_compiled_library_has_cuda_kernels():
    """Where CUDA exists the compiled library must be loaded and carry CUDA kernels for all four ops."""
    if not _ext.compiled_available():
        pytest.fail(f"compiled operators not loaded: {_ext.load_error()}; run `python -m dff.ops.build`")
    for op in FORWARD_OPS:
        assert _ext.has_kernel(op, "cuda"), f"{op}: no CUDA kernel in {_ext.library_path()}"
    assert kernel_problem() == ""


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", sorted(PSROI_CASES))
def test_psroi_matches_cpu(case, dtype):
    check_psroi("cuda", dtype, case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("flow_kind", ["mixed", "fractional"])
@pytest.mark.parametrize("scale_kind", SCALE_KINDS, ids=["noscale", "scale", "pixelscale"])
def test_warp_matches_cpu(flow_kind, scale_kind, dtype):
    check_warp("cuda", dtype, flow_kind, scale_kind)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_warp_zero_flow_identity_and_integer_shifts_are_exact(dtype):
    check_warp_identity_and_shifts("cuda", dtype)


def test_gradcheck_float64():
    check_gradcheck("cuda")


def test_autocast_float16():
    check_autocast("cuda", torch.float16)


def test_mxnet_fixtures(reference_dir):
    rows = fixture_rows("cuda", reference_dir)
    assert len(rows) == 10, [r.line() for r in rows]  # psroi cls, bbox: 2 each; warp dffshape, big: 3 each
    assert all(r.passed for r in rows), "\n".join(r.line() for r in rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", NMS_CASES)
def test_nms_fixed_matches_cpu(case, dtype):
    check_nms_fixed("cuda", dtype, case)


def test_nms_fixed_in_a_cuda_graph():
    """Captured once, replayed on other boxes of the same shape: the eager keeps of those boxes."""
    device = torch.device("cuda")
    first = {k: v.to(device) if isinstance(v, torch.Tensor) else v
             for k, v in make_nms_case("detections", torch.float64).items()}
    second = make_nms_case("detections_nocap", torch.float64)  # same shapes, other data
    static = {k: v.clone() for k, v in first.items() if isinstance(v, torch.Tensor)}
    options = {"iou_threshold": first["iou_threshold"], "max_keep": first["max_keep"], "cap": 300}
    nms_fixed(**static, **options)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        keep, count = nms_fixed(**static, **options)
    for data in (second, first):
        for k, v in static.items():
            v.copy_(data[k])
        graph.replay()
        exp_keep, exp_count = nms_fixed(**{k: data[k].to(device) for k in static}, **options)
        assert int(count) == int(exp_count) > 0
        assert torch.equal(keep, exp_keep)
