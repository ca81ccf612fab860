"""Deterministic weights of the reference fixtures (``tests/fixtures/reference/README.md`` section 2).

Every parameter is drawn from a ``numpy.random.RandomState`` seeded with the CRC-32 of its MXNet name,
so the weights the MXNet fixtures were made with can be regenerated bit for bit with numpy alone.
The gains keep activations O(1) through 33 residual additions; they make no trained model, only one
whose numbers are comparable with the reference's.
"""
from __future__ import annotations

import zlib
from typing import Iterable, Mapping

import numpy as np
import torch

from dff.utils.checkpoint import torch_to_mxnet_name

_GAINS = {
    "conv1_weight": 0.01,
    "rpn_cls_score_weight": 0.5,
    "rpn_bbox_pred_weight": 0.1,
    "rfcn_cls_weight": 2.0,
    "rfcn_bbox_weight": 0.5,
    "Convolution5_weight": 3.0,
    "Convolution5_scale_weight": 0.5,
}


def weight_gain(name: str) -> float:
    if name.startswith("res") and name.endswith("_branch2c_weight"):
        return 0.2
    return _GAINS.get(name, 1.0)


def bias_offset(name: str) -> float:
    return {"Convolution5_scale_bias": 1.0}.get(name, 0.0)


def make_param(name: str, shape: Iterable[int]) -> np.ndarray:
    """The fixture value of MXNet parameter ``name`` (no ``arg:``/``aux:`` prefix) as float32."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.RandomState(zlib.crc32(name.encode("utf-8")) & 0xFFFFFFFF)
    # the expression order matters for bit-exactness: float64 math, then one cast
    if name.endswith("_moving_var"):
        v = rng.uniform(0.5, 1.5, size=shape)
    elif name.endswith("_moving_mean"):
        v = rng.standard_normal(size=shape) * 0.1
    elif name.endswith("_gamma"):
        v = rng.standard_normal(size=shape) * 0.1 + 1.0
    elif name.endswith("_beta"):
        v = rng.standard_normal(size=shape) * 0.1
    elif name.endswith("_bias") or name.endswith("_bias_test"):
        v = rng.standard_normal(size=shape) * 0.01 + bias_offset(name)
    elif name.endswith("_weight") or name.endswith("_weight_test"):
        fan_in = int(np.prod(shape[1:]))
        std = weight_gain(name) * float(np.sqrt(2.0 / fan_in))
        v = rng.standard_normal(size=shape) * std
    else:
        raise ValueError("no fixture recipe for parameter " + name)
    return np.ascontiguousarray(v.astype(np.float32))


def make_params(shapes: Mapping[str, Iterable[int]]) -> dict[str, np.ndarray]:
    """``{'arg:NAME' | 'aux:NAME' | 'NAME': shape}`` -> the same keys with fixture values."""
    return {key: make_param(key.split(":", 1)[-1], shape) for key, shape in shapes.items()}


def fixture_state_dict(model) -> dict:
    """A state dict for ``model`` filled by the recipe, keyed like ``model.state_dict()``.

    The values depend only on the MXNet name and the shape (the parity fixtures, a demo or benchmark run that only
    checks the pipeline or times it). The port's own layers (the mobile variant's, docs/design.md §10) have no
    MXNet name: they get the recipe of :func:`_port_name`'s stand-in, a name made from the PyTorch key.
    """

    out = {}
    for key, value in model.state_dict().items():
        name = torch_to_mxnet_name(key)
        if name is None and key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
            continue
        name = name.split(":", 1)[-1] if name is not None else _port_name(key, value.dim())
        out[key] = torch.from_numpy(make_param(name, value.shape))
    return out


def _port_name(key: str, ndim: int) -> str:
    """A recipe name for a PyTorch key without an MXNet one: BatchNorm statistics as MXNet's moving ones, a 1-D
    ``weight`` as a BatchNorm scale (gamma), any other ``weight`` or ``bias`` as such."""
    stem, _, leaf = key.rpartition(".")
    stem = stem.replace(".", "_")
    leaf = {"running_mean": "moving_mean", "running_var": "moving_var"}.get(leaf, leaf)
    if leaf == "weight" and ndim == 1:
        leaf = "gamma"
    return f"{stem}_{leaf}"
