"""Parity of the ``.params`` reader/writer with the MXNet-written checkpoint fixtures (README section 5).

For every ``params/*.params`` file: each array against ``mx.nd.load``'s values (exact), the key
order, the per-array layout (V2 file), a byte-identical re-write, ``load_param(process=True)``, the
``do_checkpoint`` bbox folding and the section-2 weight recipe. The legacy-layout file holds the
same 14 tensors as the V2 file, so it is checked against the V2 file's expected values and layout
json (there are no separate ones).
"""
from __future__ import annotations

import json
import os
from typing import Iterator

import numpy as np

from dff.parity import Result, compare
from dff.utils.checkpoint import bbox_test_params
from dff.utils.fixture_weights import make_param
from dff.utils.mxnet_params import MXNetParamsError, encode_params, inspect_params, process_test_params


def _ok(case: str, tensor: str, passed: bool, note: str = "") -> Result:
    if passed:
        return Result(case, tensor, 0.0, 0.0, True, note)
    return Result(case, tensor, note=note or "mismatch")


def _companion(params_dir: str, stem: str, suffix: str) -> str | None:
    """``<stem><suffix>``, or for a ``*_legacy-*`` file the one of its V2 twin (same tensors)."""
    for candidate in (stem, stem.replace("_legacy", "")):
        path = os.path.join(params_dir, candidate + suffix)
        if os.path.isfile(path):
            return path
    return None


def _file_cases(params_dir: str, fname: str) -> Iterator[Result]:
    stem = fname[: -len(".params")]
    case = f"params/{stem}"
    path = os.path.join(params_dir, fname)
    try:
        parsed = inspect_params(path)
    except MXNetParamsError as e:
        yield Result(case, "read", note=str(e))
        return
    arrays = parsed.arrays

    exp_path = _companion(params_dir, stem, "_expected.npz")
    if exp_path is None:
        yield Result(case, "expected", note="MISSING")
    else:
        with np.load(exp_path) as expected:
            yield _ok(case, "keys", sorted(expected.files) == sorted(arrays),
                      "" if sorted(expected.files) == sorted(arrays) else
                      f"file keys {sorted(arrays)} != expected {sorted(expected.files)}")
            for key in expected.files:
                if key not in arrays:
                    yield Result(case, key, note="MISSING")
                elif arrays[key].dtype != expected[key].dtype:
                    yield Result(case, key, note=f"dtype {arrays[key].dtype} != expected {expected[key].dtype}")
                else:
                    yield compare(case, key, arrays[key], expected[key], atol=0.0)

    layout_path = _companion(params_dir, stem, "_layout.json")
    if layout_path is None:
        yield Result(case, "layout", note="MISSING")
    else:
        with open(layout_path) as f:
            layout = json.load(f)
        order = list(arrays)
        yield _ok(case, "key_order", order == layout["key_order_in_file"],
                  "" if order == layout["key_order_in_file"] else f"{order} != {layout['key_order_in_file']}")
        own = os.path.basename(layout_path) == stem + "_layout.json"
        if own:  # offsets only describe the file the json was made for
            bad = []
            for rec in parsed.records:
                want = layout["records"].get(rec.key)
                got = dict(offset=rec.offset, shape=list(rec.shape), ctx=list(rec.ctx), type_flag=rec.type_flag,
                           stype=rec.stype, magic=None if rec.magic is None else f"0x{rec.magic:x}")
                if want is None or any(got[k] != want[k] for k in got):
                    bad.append(rec.key)
            sizes_ok = parsed.size == layout["file_size"] and len(arrays) == layout["num_arrays"]
            yield _ok(case, "layout_records", not bad and sizes_ok,
                      "" if not bad and sizes_ok else f"records differ for {bad}; size {parsed.size}")
        processed = process_test_params(arrays)
        want = layout["load_param_process_True"]
        got_arg = [k[4:] for k in processed if k.startswith("arg:")]
        got_aux = [k[4:] for k in processed if k.startswith("aux:")]
        keys_ok = got_arg == want["arg_keys"] and got_aux == want["aux_keys"]
        yield _ok(case, "load_param_process_keys", keys_ok, "" if keys_ok else f"arg {got_arg}, aux {got_aux}")
        for name in ("rfcn_bbox_weight", "rfcn_bbox_bias"):
            flag = want.get(f"arg:{name}_is_former_test")
            if flag is not None and f"arg:{name}" in processed and f"arg:{name}_test" in arrays:
                same = np.array_equal(processed[f"arg:{name}"], arrays[f"arg:{name}_test"])
                yield _ok(case, f"load_param_process:{name}", same == flag,
                          "" if same == flag else f"is_former_test={same}, expected {flag}")
        if "arg:rfcn_bbox_weight_test" in arrays:
            wt, bt = bbox_test_params(arrays["arg:rfcn_bbox_weight"], arrays["arg:rfcn_bbox_bias"],
                                      layout["means"], layout["stds"])
            yield compare(case, "do_checkpoint:rfcn_bbox_weight_test", wt, arrays["arg:rfcn_bbox_weight_test"], 0.0)
            yield compare(case, "do_checkpoint:rfcn_bbox_bias_test", bt, arrays["arg:rfcn_bbox_bias_test"], 0.0)

    with open(path, "rb") as f:
        raw = f.read()
    if parsed.layout == "mixed":
        yield Result(case, "rewrite_bytes", note="arrays in mixed layouts; cannot re-write")
    else:
        ctxs = {r.ctx for r in parsed.records} or {(1, 0)}
        same = len(ctxs) == 1 and encode_params(arrays, parsed.layout, ctxs.pop()) == raw
        yield _ok(case, f"rewrite_bytes[{parsed.layout}]", same, "" if same else "re-written bytes differ")

    for key, value in arrays.items():
        name = key.split(":", 1)[-1]
        if "_test" in name:
            continue  # derived at save time, not drawn from the recipe
        try:
            regenerated = make_param(name, value.shape)
        except ValueError as e:
            yield Result(case, f"recipe:{key}", note=str(e))
            continue
        yield compare(case, f"recipe:{key}", regenerated, value, atol=0.0)


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    """Rows for every ``params/*.params`` file of ``fixture_dir`` (``backend`` is unused: no custom ops)."""
    params_dir = os.path.join(os.fspath(fixture_dir), "params")
    if not os.path.isdir(params_dir):
        yield Result("params", "", note=f"MISSING directory {params_dir}")
        return
    files = sorted(f for f in os.listdir(params_dir) if f.endswith(".params"))
    if not files:
        yield Result("params", "", note=f"MISSING: no .params files in {params_dir}")
    for fname in files:
        yield from _file_cases(params_dir, fname)
