"""Parity of the flow warp with the MXNet fixtures ``ops/flow_warp_*.npz`` (README section 4).

Each file holds ``feat, flow, grid, out, head_grad, feat_grad, flow_grad`` (and ``grid_grad``) from
MXNet's ``GridGenerator(warp)`` + ``BilinearSampler``. :func:`dff.ops.warp_scale` (no scale) is run
from ``flow`` and differentiated with the stored ``head_grad``.

Tolerances:

* ``out``: atol 1e-4, the README's tolerance when starting from ``flow``: the reference normalises
  ``x + u`` to [-1, 1] and back in float32, which moves each sampling position by up to ~4e-6 px
  (about 1e-5 in the output); this port samples at ``x + u`` directly.
* ``feat_grad``, ``flow_grad``: atol 1e-4 + rtol 1e-4 (the README's feature tolerance). They inherit
  the same position error (measured up to 4e-5), and the flow gradient is a float32 sum over channels
  whose values reach ~17, hence the relative term.

Where that round trip moved a sampling position across a pixel edge (the reference's own ``grid``,
unnormalised as its sampler does, ``(g + 1) * (size - 1) / 2``, has a different ``floor`` than
``x + u``), the reference's flow gradient is the one-sided difference of the neighbouring cell: an
artefact of the float round trip, e.g. a zero flow sampled at 5.9999995 instead of 6. Those pixels
(typically 1-3 per file, all at exact integer positions, where the one-sided derivative is a matter of
convention) are left out of ``flow_grad`` and counted in the row's note. Everywhere else, and in
``out`` and ``feat_grad`` at all pixels, the comparison is complete.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from dff.ops import warp_scale
from dff.parity import TOL_FEATURE, Result, compare, op_fixture_files

TOL_OUT = dict(atol=1e-4, rtol=0.0)
TOL_GRAD = TOL_FEATURE


def reference_cell_moved(flow: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: the reference sampled pixel (y, x) in another cell than ``floor(p + flow)``."""
    _, _, h, w = flow.shape
    px = np.arange(w, dtype=np.float32) + flow[:, 0]
    py = np.arange(h, dtype=np.float32)[:, None] + flow[:, 1]
    # MXNet BilinearSampler: x_real = (grid_x + 1) * (W - 1) / 2, in float32, in this order
    ix = (grid[:, 0] + np.float32(1)) * np.float32(w - 1) / np.float32(2)
    iy = (grid[:, 1] + np.float32(1)) * np.float32(h - 1) / np.float32(2)
    return (np.floor(ix) != np.floor(px)) | (np.floor(iy) != np.floor(py))


def _case(path: str, backend: str) -> Iterator[Result]:
    case = f"ops/{os.path.splitext(os.path.basename(path))[0]}"
    d = np.load(path)
    feat = torch.from_numpy(d["feat"]).requires_grad_(True)
    flow = torch.from_numpy(d["flow"]).requires_grad_(True)
    out = warp_scale(feat, flow, None, backend=backend)
    yield compare(case, "out", out, d["out"], **TOL_OUT)
    out.backward(torch.from_numpy(d["head_grad"]))
    yield compare(case, "feat_grad", feat.grad, d["feat_grad"], **TOL_GRAD)

    got, exp = flow.grad.detach().numpy(), d["flow_grad"]
    note = "no grid in the file: all pixels compared"
    if "grid" in d.files:
        moved = np.broadcast_to(reference_cell_moved(d["flow"], d["grid"])[:, None], exp.shape)
        got, exp = np.where(moved, 0.0, got), np.where(moved, 0.0, exp)
        note = f"{int(moved[:, 0].sum())} pixels left out: the reference's grid round trip crossed a pixel edge"
    r = compare(case, "flow_grad", got, exp, **TOL_GRAD)
    r.note = note
    yield r


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    files, problems = op_fixture_files(fixture_dir, "flow_warp_*.npz", backend)
    yield from problems
    for f in files:
        try:
            yield from _case(f, backend)
        except Exception as e:  # one failed row per broken case; the other cases still run
            yield Result(f"ops/{os.path.basename(f)[:-4]}", "run", note=f"error: {type(e).__name__}: {e}")
