"""Parity of PSROIPooling with the MXNet fixtures ``ops/psroipool_*.npz`` (README section 4).

Each file holds ``data, rois, out, head_grad, data_grad``; the operator parameters (spatial_scale,
group_size, pooled_size, output_dim) are read from ``ops/ops_summary.json``, never assumed.

Tolerances (README section 7: op fixtures "exact up to about 1e-6; PSROI forward is exact"):

* ``out``: atol 1e-6. Both backends reproduce it bit for bit (the fixture data are k/64, so every
  bin sum is exact and only the division rounds).
* ``data_grad``: atol 1e-6 + rtol 1e-6. The reference accumulates ``head_grad/area`` into each pixel
  sequentially in float32. The compiled CPU kernel keeps that order and is bit-exact; the CUDA kernel
  (atomicAdd) and the fallback (float64 integral image) sum in another order, which moves a value by
  a float32 ulp or two: 9.5e-7 at the fixtures' largest gradients (~15), hence the relative term.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import torch

from dff.ops import psroi_pool
from dff.parity import TOL_EXACT, Result, compare, op_fixture_files

TOL_OUT = TOL_EXACT
TOL_GRAD = dict(atol=1e-6, rtol=1e-6)
_PARAMS = ("spatial_scale", "group_size", "pooled_size", "output_dim")


def _params(summary: dict, stem: str) -> dict:
    entry = summary.get(stem, {}).get("params")
    if entry is None or any(k not in entry for k in _PARAMS):
        raise KeyError(f"ops/ops_summary.json has no {'/'.join(_PARAMS)} params for {stem}")
    return dict(
        spatial_scale=float(entry["spatial_scale"]),
        group_size=int(entry["group_size"]),
        pooled_size=int(entry["pooled_size"]),
        output_dim=int(entry["output_dim"]),
    )


def _case(path: str, summary: dict, backend: str) -> Iterator[Result]:
    stem = os.path.splitext(os.path.basename(path))[0]
    case = f"ops/{stem}"
    d = np.load(path)
    p = _params(summary, stem)
    data = torch.from_numpy(d["data"]).requires_grad_(True)
    rois = torch.from_numpy(d["rois"])
    out = psroi_pool(data, rois, backend=backend, **p)
    yield compare(case, "out", out, d["out"], **TOL_OUT)
    out.backward(torch.from_numpy(d["head_grad"]))
    yield compare(case, "data_grad", data.grad, d["data_grad"], **TOL_GRAD)


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    files, problems = op_fixture_files(fixture_dir, "psroipool_*.npz", backend)
    yield from problems
    try:
        with open(os.path.join(fixture_dir, "ops", "ops_summary.json")) as fh:
            summary = json.load(fh)
    except (OSError, ValueError) as e:
        for f in files:
            yield Result(f"ops/{os.path.basename(f)[:-4]}", "", note=f"error: ops/ops_summary.json: {e}")
        return
    for f in files:
        try:
            yield from _case(f, summary, backend)
        except Exception as e:  # one failed row per broken case; the other cases still run
            yield Result(f"ops/{os.path.basename(f)[:-4]}", "run", note=f"error: {type(e).__name__}: {e}")
