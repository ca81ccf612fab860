"""Fused flow warp x scale: MXNet parity, exact identity/shifts, the floor convention of the flow
gradient at integer positions, gradcheck, agreement with grid_sample, both backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dff.ops import _ext, warp_scale
from dff.ops.build import find_cxx

BACKENDS = ["compiled", "fallback"]


def require(backend: str) -> None:
    """The compiled backend must be there wherever it can be built (CI runs init.sh first)."""
    if backend == "compiled" and not _ext.compiled_available():
        if find_cxx() is None:
            pytest.skip("no C++ compiler on this machine: the compiled operators cannot be built")
        pytest.fail(f"compiled operators not loaded ({_ext.load_error()}); run `python -m dff.ops.build`")


def random_feat(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return torch.where(x < -1, torch.zeros((), dtype=dtype), x)  # some exact zeros, as after a ReLU


def fractional_flow(n, h, w, dtype=torch.float64, seed=0, reach=3):
    """Flows whose sampling positions are >= 0.2 px away from any integer; many cross the border."""
    g = torch.Generator().manual_seed(seed)
    whole = torch.randint(-reach, reach + 1, (n, 2, h, w), generator=g).to(dtype)
    frac = 0.2 + 0.6 * torch.rand(n, 2, h, w, generator=g, dtype=dtype)
    return whole + frac


def grid_from_flow(flow):
    _, _, h, w = flow.shape
    px = torch.arange(w, dtype=flow.dtype) + flow[:, 0]
    py = torch.arange(h, dtype=flow.dtype)[:, None] + flow[:, 1]
    return torch.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], dim=-1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_mxnet_fixtures(reference_dir, backend):
    require(backend)
    from dff.parity import ops_warp

    rows = list(ops_warp.cases(str(reference_dir), backend))
    assert len(rows) == 6, [r.line() for r in rows]  # dffshape and big: out, feat_grad, flow_grad
    assert all(r.passed for r in rows), "\n".join(r.line() for r in rows)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 16, 15, 25), (2, 64, 38, 63)])
def test_zero_flow_is_exact_identity(backend, shape):
    require(backend)
    feat = random_feat(shape)
    flow = torch.zeros(shape[0], 2, shape[2], shape[3])
    assert torch.equal(warp_scale(feat, flow, backend=backend), feat)
    scale = torch.rand(shape) + 0.5
    assert torch.equal(warp_scale(feat, flow, scale, backend=backend), feat * scale)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_flow_is_exact_shift(backend):
    require(backend)
    feat = random_feat((1, 8, 15, 25))
    for dx, dy in [(3, -2), (-1, 0), (0, 14), (-25, 0), (24, -14)]:
        flow = torch.empty(1, 2, 15, 25)
        flow[:, 0], flow[:, 1] = dx, dy
        want = torch.zeros_like(feat)  # out[y, x] = feat[y + dy, x + dx], zero outside
        ys, xs = slice(max(0, -dy), min(15, 15 - dy)), slice(max(0, -dx), min(25, 25 - dx))
        want[:, :, ys, xs] = feat[:, :, ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
        assert torch.equal(warp_scale(feat, flow, backend=backend), want), (dx, dy)


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_outside_gives_zero(backend):
    """Far outside -> 0. Huge and non-finite flows read nothing out of bounds; a non-finite position
    has no bilinear weights, so it gives NaN (garbage in, visibly garbage out)."""
    require(backend)
    feat = random_feat((1, 4, 6, 7)).abs() + 1
    flow = torch.tensor([40.0, -30.0]).view(1, 2, 1, 1).expand(1, 2, 6, 7).contiguous()
    flow[0, :, 3, 3] = torch.tensor([-40.0, 30.0])
    flow[0, 0, 2, 2] = -1e30
    flow[0, 0, 0, 0] = float("inf")
    flow[0, 1, 1, 1] = float("nan")
    out = warp_scale(feat, flow, backend=backend)
    finite = torch.ones(6, 7, dtype=torch.bool)
    finite[0, 0] = finite[1, 1] = False
    assert out[:, :, finite].eq(0).all()
    assert out[:, :, ~finite].isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_gradient_at_integer_positions_follows_floor_convention(backend):
    """At an exactly integer position x0 the sample is feat[x0] with weight 1 and d/du is the one-sided
    difference feat[x0+1] - feat[x0] (MXNet: top-left neighbour = floor(x)), zero outside the map.
    (gradcheck cannot check these points: the function has a kink there.)"""
    require(backend)
    h, w = 5, 6
    f = random_feat((1, 1, h, w), dtype=torch.float64, seed=3)
    g = torch.Generator().manual_seed(4)
    flow = torch.randint(-3, 4, (1, 2, h, w), generator=g).double().requires_grad_(True)
    flow.data[0, :, 0, 0] = torch.tensor([-1.0, 0.0])  # lands exactly at x = -1
    flow.data[0, :, 1, 1] = torch.tensor([w - 2.0, 0.0])  # exactly the last column
    flow.data[0, :, 2, 2] = torch.tensor([0.0, h - 3.0])  # exactly the last row
    out = warp_scale(f, flow, backend=backend)
    out.backward(torch.ones_like(out))

    def at(y, x):  # feature with zero padding
        return float(f[0, 0, y, x]) if 0 <= y < h and 0 <= x < w else 0.0

    want = np.zeros((2, h, w))
    for y in range(h):
        for x in range(w):
            px, py = x + int(flow[0, 0, y, x]), y + int(flow[0, 1, y, x])
            want[0, y, x] = at(py, px + 1) - at(py, px)
            want[1, y, x] = at(py + 1, px) - at(py, px)
    np.testing.assert_allclose(flow.grad[0].numpy(), want, rtol=0, atol=1e-12)
    assert want[0, 0, 0] == at(0, 0) != 0  # x = -1: only the +1 neighbour (column 0) is inside
    assert want[0, 1, 1] == -at(1, w - 1)  # last column: the +1 neighbour is outside


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    """feat, flow and scale gradients at non-integer positions (>= 0.2 px from any integer, so the
    finite differences never cross a pixel edge); many positions are outside or straddle the border."""
    require(backend)
    n, c, h, w = 2, 2, 4, 5
    feat = random_feat((n, c, h, w), torch.float64, seed=1).requires_grad_(True)
    flow = fractional_flow(n, h, w, seed=2).requires_grad_(True)
    scale = (torch.rand(n, c, h, w, dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, s: warp_scale(a, b, s, backend=backend), (feat, flow, scale))
    # broadcast scale (1, C, 1, 1): an expanded view, its gradient reduced back to its shape
    scale_c = torch.rand(1, c, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: warp_scale(a, b, s, backend=backend), (feat, flow, scale_c))
    assert torch.autograd.gradcheck(lambda a, b: warp_scale(a, b, None, backend=backend), (feat, flow))


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_grid_sample_align_corners_zeros(backend):
    """The documented equivalence: grid_sample(align_corners=True, padding_mode='zeros') at p + flow
    (float64, so its [-1, 1] round trip is exact to ~1e-15), times scale."""
    require(backend)
    feat = random_feat((2, 5, 7, 9), torch.float64, seed=5)
    flow = fractional_flow(2, 7, 9, seed=6)
    scale = torch.rand(2, 1, 7, 9, dtype=torch.float64)
    want = F.grid_sample(feat, grid_from_flow(flow), mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(warp_scale(feat, flow, scale, backend=backend), want * scale, rtol=0, atol=1e-12)


def test_backends_agree_on_random_inputs():
    require("compiled")
    feat = random_feat((2, 32, 15, 25), seed=7)
    flow = (torch.randn(2, 2, 15, 25, generator=torch.Generator().manual_seed(8)) * 3).float()
    scale = torch.rand(2, 32, 15, 25) + 0.5
    res = {}
    for backend in BACKENDS:
        a, b, s = (t.clone().requires_grad_(True) for t in (feat, flow, scale))
        out = warp_scale(a, b, s, backend=backend)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        res[backend] = (out.detach(), a.grad, b.grad, s.grad)
    c, fb = res["compiled"], res["fallback"]
    assert torch.equal(c[0], fb[0])  # same float expressions in the same order
    for x, y in zip(c[1:], fb[1:]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_broadcasting(backend):
    require(backend)
    feat = random_feat((2, 4, 5, 6), seed=9)
    flow = fractional_flow(2, 5, 6, torch.float32, seed=10)
    plain = warp_scale(feat, flow, backend=backend)
    for shape in [(2, 1, 5, 6), (1, 4, 1, 1), (6,)]:
        s = (torch.rand(shape) + 0.5).requires_grad_(True)
        out = warp_scale(feat, flow, s, backend=backend)
        assert torch.equal(out, plain * s.detach())
        out.sum().backward()
        want = (plain.detach()).sum_to_size(s.shape) if len(shape) == 4 else plain.detach().sum((0, 1, 2))
        assert s.grad.shape == s.shape
        torch.testing.assert_close(s.grad, want.reshape(shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_clear_errors(backend):
    require(backend)
    feat = torch.zeros(1, 3, 5, 6)
    with pytest.raises(ValueError, match=r"flow must be \(N, 2, H, W\) = \(1, 2, 5, 6\)"):
        warp_scale(feat, torch.zeros(1, 2, 6, 5), backend=backend)
    with pytest.raises(ValueError, match="does not broadcast"):
        warp_scale(feat, torch.zeros(1, 2, 5, 6), torch.ones(2, 3, 5, 6), backend=backend)
    with pytest.raises(ValueError, match="must match feat"):
        warp_scale(feat, torch.zeros(1, 2, 5, 6, dtype=torch.float64), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """Fake kernels + registered autograd let torch.compile trace the op in one graph (aot_eager: the
    tracing machinery without inductor's C++ code generation, which is slow on 2 cores)."""
    require(backend)
    feat = random_feat((1, 4, 5, 6), seed=11)
    flow = fractional_flow(1, 5, 6, torch.float32, seed=12)
    scale = torch.rand(1, 4, 5, 6) + 0.5

    def f(a, b, s):
        return warp_scale(a, b, s, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    ins1 = [t.clone().requires_grad_(True) for t in (feat, flow, scale)]
    ins2 = [t.clone().requires_grad_(True) for t in (feat, flow, scale)]
    y1, y2 = f(*ins1), compiled(*ins2)
    torch.testing.assert_close(y2, y1)
    y1.backward()
    y2.backward()
    for a, b in zip(ins1, ins2):
        torch.testing.assert_close(b.grad, a.grad)


def test_torch_compile_default_backend_first_load_while_tracing(monkeypatch):
    """The lazy library load may first happen inside torch.compile's trace (it runs eagerly there)."""
    require("compiled")
    from dff.ops import backend

    monkeypatch.setattr(_ext, "_loaded", None)  # as in a fresh process (restored afterwards)
    monkeypatch.setattr(backend, "_default", None)
    monkeypatch.setenv(backend.ENV_VAR, "auto")
    feat = random_feat((1, 4, 5, 6), seed=15)
    flow = fractional_flow(1, 5, 6, torch.float32, seed=16)
    compiled = torch.compile(lambda a, b: warp_scale(a, b), fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(feat, flow), warp_scale(feat, flow, backend="compiled"))
    assert _ext._loaded is True


def test_compiled_op_runs_float32_under_autocast():
    """The kernels are float32/float64 only; inside autocast the raw op casts its inputs to float32
    (the Python API already upcasts half inputs itself, see the next test)."""
    require("compiled")
    feat = random_feat((1, 4, 5, 6), seed=13)
    flow = fractional_flow(1, 5, 6, torch.float32, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.dff.warp_scale_forward(feat.bfloat16(), flow.bfloat16(), None)
    assert out.dtype == torch.float32
    assert torch.equal(out, warp_scale(feat.bfloat16().float(), flow.bfloat16().float(), backend="compiled"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_is_warped_in_float32(backend):
    require(backend)
    feat = random_feat((1, 4, 38, 63), seed=17).half()
    flow = (fractional_flow(1, 38, 63, torch.float32, seed=18) * 3).half()
    got = warp_scale(feat, flow, backend=backend)
    assert got.dtype == torch.float16
    assert torch.equal(got, warp_scale(feat.float(), flow.float(), backend=backend).half())
