"""PSROIPooling: MXNet parity, rounding/bin semantics, gradients, both backends (compiled, fallback)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dff.ops import _ext, ops_backend, psroi_pool
from dff.ops.build import find_cxx
from dff.ops.psroi import round_half_away

BACKENDS = ["compiled", "fallback"]


def require(backend: str) -> None:
    """The compiled backend must be there wherever it can be built (CI runs init.sh first)."""
    if backend == "compiled" and not _ext.compiled_available():
        if find_cxx() is None:
            pytest.skip("no C++ compiler on this machine: the compiled operators cannot be built")
        pytest.fail(f"compiled operators not loaded ({_ext.load_error()}); run `python -m dff.ops.build`")


def naive_psroi(data: np.ndarray, rois: np.ndarray, s: float, G: int, P: int, D: int) -> np.ndarray:
    """docs/design.md §3.1 written out as scalar loops in float32 (an independent transcription for the tests)."""
    f32 = np.float32
    _, _, H, W = data.shape

    def c_round(v: np.float32) -> np.float32:  # half away from zero; float64 is exact for float32 input
        return f32(np.sign(float(v)) * np.floor(abs(float(v)) + 0.5))

    out = np.zeros((len(rois), D, P, P), np.float32)
    for n, roi in enumerate(rois.astype(np.float32)):
        b = int(roi[0])
        sw, sh = c_round(roi[1]) * f32(s), c_round(roi[2]) * f32(s)
        ew, eh = (c_round(roi[3]) + f32(1)) * f32(s), (c_round(roi[4]) + f32(1)) * f32(s)
        bw, bh = max(ew - sw, f32(0.1)) / f32(P), max(eh - sh, f32(0.1)) / f32(P)
        for c in range(D):
            for i in range(P):
                hs = min(max(int(np.floor(f32(i) * bh + sh)), 0), H)
                he = min(max(int(np.ceil(f32(i + 1) * bh + sh)), 0), H)
                for j in range(P):
                    ws = min(max(int(np.floor(f32(j) * bw + sw)), 0), W)
                    we = min(max(int(np.ceil(f32(j + 1) * bw + sw)), 0), W)
                    if he <= hs or we <= ws:
                        continue
                    ch = (c * G + i * G // P) * G + j * G // P
                    out[n, c, i, j] = data[b, ch, hs:he, ws:we].astype(np.float64).mean()
    return out


def small_case(dtype=torch.float32, seed: int = 0):
    """data (2, 18, 10, 12) for D=2, G=P=3, spatial_scale 1/4; random rois plus edge cases."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 18, 10, 12, generator=g, dtype=dtype)
    xy = torch.rand(24, 4, generator=g, dtype=dtype) * torch.tensor([56.0, 48.0, 56.0, 48.0], dtype=dtype) - 4
    rnd = torch.cat([torch.randint(0, 2, (24, 1), generator=g).to(dtype), xy], 1)
    special = torch.tensor(
        [
            [0, 0, 0, 47, 39],  # whole map
            [1, 10.5, 6.5, 30.5, 22.5],  # .5 coordinates
            [0, -20, -20, -8, -8],  # fully outside (negative)
            [1, 60, 0, 80, 39],  # fully outside (right)
            [0, 30, 20, 10, 5],  # x1 > x2 and y1 > y2
            [1, 8, 8, 8, 8],  # single pixel
            [0, -9, -9, 6, 7],  # partly outside
            [1, 0, 17, 47, 18],  # thin
        ],
        dtype=dtype,
    )
    return data, torch.cat([rnd, special])


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_mxnet_fixtures(reference_dir, backend):
    require(backend)
    from dff.parity import ops_psroi

    rows = list(ops_psroi.cases(str(reference_dir), backend))
    assert len(rows) == 4, [r.line() for r in rows]  # cls and bbox: out, data_grad
    assert all(r.passed for r in rows), "\n".join(r.line() for r in rows)
    if backend == "compiled":  # the CPU kernel keeps MXNet's float32 order: bit-exact, gradient included
        assert all(r.max_abs == 0.0 for r in rows), "\n".join(r.line() for r in rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_spec_transcription(backend):
    require(backend)
    data, rois = small_case()
    got = psroi_pool(data, rois, 0.25, 3, 3, 2, backend=backend)
    want = naive_psroi(data.numpy(), rois.numpy(), 0.25, 3, 3, 2)
    assert got.shape == (len(rois), 2, 3, 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6)
    assert np.count_nonzero(want) > 0.5 * want.size  # the case pools real data, not just empty bins


def test_round_half_away_from_zero():
    v = torch.tensor([-2.5, -1.5, -0.5, -0.49999997, 0.49999997, 0.5, 1.5, 2.5, 3.2, -3.7])
    want = torch.tensor([-3.0, -2.0, -1.0, -0.0, 0.0, 1.0, 2.0, 3.0, 3.0, -4.0])
    assert torch.equal(round_half_away(v), want)
    assert not torch.equal(torch.round(v), want)  # torch.round is half-to-even: the reason for the helper


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_coordinates_round_away_from_zero(backend):
    """rois at .5 where half-to-even rounding pools different pixels (the fixtures cannot tell them apart)."""
    require(backend)
    h, w = torch.meshgrid(torch.arange(4.0), torch.arange(6.0), indexing="ij")
    data = (w + 10 * h + 1)[None, None]  # value = col + 10*row + 1
    rois = torch.tensor(
        [
            # away: cols round(0.5)=1 .. round(2.5)+1=4 -> 1,2,3; rows 1 .. round(1.5)+1=3 -> 1,2: mean 2+15+1 = 18
            # half-even would pool cols 0..2 and rows 0..2: 1+10+1 = 12
            [0, 0.5, 0.5, 2.5, 1.5],
            # away: x2 = -0.5 -> -1, end = 0: cols [-2, 0) clipped -> empty -> 0
            # half-even: x2 -> 0, end = 1: col 0 of row 0 -> 1
            [0, -1.5, 0, -0.5, 0],
        ]
    )
    out = psroi_pool(data, rois, 1.0, 1, 1, 1, backend=backend)
    assert out.flatten().tolist() == [18.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_outside_rois_give_zero(backend):
    require(backend)
    data, _ = small_case()
    data = data.abs() + 1  # no zero can come from the data itself
    data.requires_grad_(True)
    rois = torch.tensor([[0, -20, -20, -8, -8], [1, 60, 0, 80, 39], [0, 200, 200, 100, 100]])
    out = psroi_pool(data, rois, 0.25, 3, 3, 2, backend=backend)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(data.grad, torch.zeros_like(data))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_bins_inside_partly_outside_roi(backend):
    """A roi hanging over the top-left corner: its outside bins are 0 and its inside bins are not."""
    require(backend)
    data = torch.ones(1, 9, 8, 8)
    out = psroi_pool(data, torch.tensor([[0.0, -24, -24, 7, 7]]), 0.25, 3, 3, 1, backend=backend)
    # columns: start round(-24)/4 = -6, end 8/4 = 2, bin 8/3: bins [-6,-3), [-4,0) clip to empty, [-1,2) -> [0,2)
    assert out[0, 0].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64_wrt_data(backend):
    """Data gradient only: rois get none (as in MXNet; the bin edges are piecewise constant in them).
    With the rois fixed the op is linear in data, so the finite differences never cross a kink."""
    require(backend)
    data, rois = small_case(torch.float64, seed=1)
    data = data[:, :, :6, :7].contiguous().requires_grad_(True)
    rois = rois[[0, 1, 2, 24, 25, 28, 29, 30]]

    def f(d):
        return psroi_pool(d, rois, 0.25, 3, 3, 2, backend=backend)

    assert torch.autograd.gradcheck(f, (data,), eps=1e-6, atol=1e-8)


def test_backends_agree_on_random_inputs():
    require("compiled")
    for seed in range(3):
        data, rois = small_case(seed=seed + 10)
        outs, grads = [], []
        for backend in BACKENDS:
            d = data.clone().requires_grad_(True)
            out = psroi_pool(d, rois, 0.25, 3, 3, 2, backend=backend)
            out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
            outs.append(out.detach())
            grads.append(d.grad)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=2e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=2e-6)


def test_dff_size_float64_and_defaults():
    """R-FCN test-time size (300 rois over 1519 channels at 38x63) through the default backend, and the
    float64 path; only checks agreement with the fallback, the timing is in the report."""
    g = torch.Generator().manual_seed(3)
    data = torch.randn(1, 31 * 49, 38, 63, generator=g)
    xy = torch.rand(300, 4, generator=g) * torch.tensor([1000.0, 600.0, 1000.0, 600.0])
    rois = torch.cat([torch.zeros(300, 1), torch.minimum(xy[:, :2], xy[:, 2:]), torch.maximum(xy[:, :2], xy[:, 2:])], 1)
    with ops_backend("auto"):
        out = psroi_pool(data, rois, 1 / 16, 7, 7, 31)
    ref = psroi_pool(data.double(), rois, 1 / 16, 7, 7, 31, backend="fallback")
    assert out.dtype == torch.float32 and out.shape == (300, 31, 7, 7)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise_clear_errors(backend):
    require(backend)
    data, rois = small_case()
    with pytest.raises(ValueError, match="18 channels, expected"):
        psroi_pool(data, rois, 0.25, 3, 3, 3, backend=backend)
    with pytest.raises(ValueError, match=r"rois must be \(R, 5\)"):
        psroi_pool(data, rois[:, :4], 0.25, 3, 3, 2, backend=backend)
    bad = rois.clone()
    bad[3, 0] = 2  # batch of 2 images
    with pytest.raises((ValueError, RuntimeError), match=r"rois\[3, 0\] = 2.* not a batch index"):
        psroi_pool(data, bad, 0.25, 3, 3, 2, backend=backend)
    with pytest.raises(ValueError, match="unknown operator backend"):
        psroi_pool(data, rois, 0.25, 3, 3, 2, backend="gpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    """Fake kernels + registered autograd let torch.compile trace the op in one graph (aot_eager: the
    tracing machinery without inductor's C++ code generation, which takes minutes on 2 cores)."""
    require(backend)
    data, rois = small_case()

    def f(d, r):
        return psroi_pool(d, r, 0.25, 3, 3, 2, backend=backend).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    d1, d2 = data.clone().requires_grad_(True), data.clone().requires_grad_(True)
    y1, y2 = f(d1, rois), compiled(d2, rois)
    torch.testing.assert_close(y2, y1)
    y1.backward()
    y2.backward()
    torch.testing.assert_close(d2.grad, d1.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_data_is_pooled_in_float32(backend):
    """float16 cannot hold roi coordinates (999.3 -> 999.5, which rounds to 1000): pooled in float32."""
    require(backend)
    data = torch.randn(1, 9, 70, 70)
    rois = torch.tensor([[0.0, 999.3, 10.2, 1100.0, 300.4], [0.0, 0.0, 0.0, 1119.0, 1119.0]])
    got = psroi_pool(data.half(), rois, 1 / 16, 3, 3, 1, backend=backend)
    want = psroi_pool(data.half().float(), rois, 1 / 16, 3, 3, 1, backend=backend).half()
    assert got.dtype == torch.float16 and torch.equal(got, want)
