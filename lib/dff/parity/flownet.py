"""Parity of :class:`dff.models.flownet.FlowNet` with the DFF non-key-frame fixtures (README section 3).

For every ``model/dff_cur_frame{K}.npz``: FlowNet with the fixture weights (README section 2, checked
against the SHA-1 of ``model/dff_cur_params.json``) runs on cur = ``inputs_frame{K}.npz['data']`` and
key = the key frame's ``data`` (frame 0 in the fixtures), and is compared with ``Convolution5_output``,
``_mulscalar0_output`` (flow), ``Convolution5_scale_output`` (scale map) and every FlowNet probe
``NAME__slice`` (= ``out[0, 0:4]``) of ``dff_cur_frame{K}_probes.npz``. FlowNet has no custom
operator, so ``backend`` is ignored.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Iterator, Optional

import numpy as np
import torch

from dff.models.flownet import FlowNet
from dff.parity import TOL_FEATURE, Result, compare
from dff.utils.fixture_weights import make_param

OUTPUTS = ("Convolution5_output", "_mulscalar0_output", "Convolution5_scale_output")
_CUR_RE = re.compile(r"dff_cur_frame(\d+)\.npz$")
_KEY_RE = re.compile(r"dff_key_frame(\d+)\.npz$")
_README_KEY_FRAME = 0  # README section 3: data_key = frame 0 for both non-key frames


def fixture_flownet(model_dir: pathlib.Path, avg_pool: str = "valid") -> tuple[FlowNet, list[str]]:
    """FlowNet holding the fixture weights of ``model_dir/dff_cur_params.json`` (in eval mode).

    Returns the network and a list of problems (missing parameters, shape or SHA-1 mismatches); the
    network is only usable when the list is empty.
    """
    net = FlowNet(avg_pool=avg_pool).eval()
    params_file = model_dir / "dff_cur_params.json"
    entries = {e["key"]: e for e in json.loads(params_file.read_text())}
    problems: list[str] = []
    state: dict[str, torch.Tensor] = {}
    for key, current in net.state_dict().items():
        name = FlowNet.mxnet_name(key)
        entry = entries.get("arg:" + name)
        if entry is None:
            problems.append(f"{params_file}: no entry arg:{name}")
            continue
        if tuple(entry["shape"]) != tuple(current.shape):
            problems.append(f"{params_file}: arg:{name} has shape {entry['shape']}, FlowNet needs {list(current.shape)}")
            continue
        value = make_param(name, entry["shape"])
        if hashlib.sha1(value.astype("<f4").tobytes()).hexdigest() != entry["sha1"]:
            problems.append(f"{params_file}: regenerated arg:{name} does not match its sha1")
            continue
        state[key] = torch.from_numpy(value)
    if not problems:
        net.load_state_dict(state)
    return net, problems


def _frame_data(model_dir: pathlib.Path, index: int) -> Optional[np.ndarray]:
    f = model_dir / f"inputs_frame{index}.npz"
    if not f.is_file():
        return None
    with np.load(f) as z:
        return z["data"] if "data" in z.files else None


def _key_frame_index(model_dir: pathlib.Path) -> int:
    found = [int(m.group(1)) for p in model_dir.iterdir() if (m := _KEY_RE.match(p.name))]
    return found[0] if len(found) == 1 else _README_KEY_FRAME


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    del backend  # no custom operators in FlowNet
    model_dir = pathlib.Path(fixture_dir) / "model"
    frames = sorted(int(m.group(1)) for p in model_dir.glob("dff_cur_frame*.npz") if (m := _CUR_RE.match(p.name)))
    if not frames:
        yield Result("model/dff_cur_frame*/flownet", "", note="MISSING")
        return
    try:
        net, problems = fixture_flownet(model_dir)
    except Exception as e:  # an unreadable params file: report it as a row, as the other areas do
        yield Result("model/dff_cur_params/flownet", "params", note=f"error: {type(e).__name__}: {e}")
        return
    if problems:
        for problem in problems:
            yield Result("model/dff_cur_params/flownet", "params", note=problem)
        return
    key_index = _key_frame_index(model_dir)
    key = _frame_data(model_dir, key_index)
    for k in frames:
        case = f"model/dff_cur_frame{k}/flownet"
        cur = _frame_data(model_dir, k)
        if cur is None or key is None:
            missing = k if cur is None else key_index
            yield Result(case, f"inputs_frame{missing}.npz['data']", note="MISSING")
            continue
        try:
            with torch.no_grad():
                got = net.forward_probes(torch.from_numpy(cur), torch.from_numpy(key))
        except Exception as e:
            yield Result(case, "run", note=f"error: {type(e).__name__}: {e}")
            continue
        with np.load(model_dir / f"dff_cur_frame{k}.npz") as expected:
            for name in OUTPUTS:
                if name not in expected.files:
                    yield Result(case, name, note="MISSING")
                else:
                    yield compare(case, name, got[name], expected[name], **TOL_FEATURE)
        probes_file = model_dir / f"dff_cur_frame{k}_probes.npz"
        if not probes_file.is_file():
            yield Result(case, probes_file.name, note="MISSING")
            continue
        with np.load(probes_file) as probes:
            for slice_name in probes.files:
                name = slice_name.removesuffix("__slice")
                if name in got:  # the file also probes the R-FCN heads
                    yield compare(case, slice_name, got[name][0, 0:4], probes[slice_name], **TOL_FEATURE)
