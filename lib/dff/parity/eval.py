"""Parity of the ImageNet VID evaluation with the reference (fixtures README section 6).

Fixture files (``eval/``): ``vid_eval_inputs.json`` (image-set lines, verbatim annotation XMLs, class
lists, the results-file lines the reference wrote), ``vid_eval_all_boxes.npz`` (``all_boxes[cls][img]``
as ``clsCC_imgII``, img 0-based, empty cells omitted) and ``vid_eval_outputs.json`` (APs, mAP, counts,
printed report). Everything is read from the files, so another data set in the same format works.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Iterator

import numpy as np

from dff.eval.vid_eval import format_info_str, parse_vid_xml, read_image_set, vid_eval, write_vid_results
from dff.parity import Result, compare

CASE = "eval/vid_eval"
_AP_ATOL = 1e-9
_XML_KEY = re.compile(r"^(?:.*/)?Annotations/VID/(.+)\.xml$")
_BOX_KEY = re.compile(r"^cls(\d+)_img(\d+)$")


def _text_diff(case: str, tensor: str, got: list[str], exp: list[str]) -> Result:
    """Exact text comparison: max_abs = number of differing lines (a length mismatch counts too)."""
    n = sum(a != b for a, b in zip(got, exp)) + abs(len(got) - len(exp))
    note = "" if n == 0 else f"{n} of {len(exp)} lines differ"
    if n:
        i = next((i for i, (a, b) in enumerate(zip(got, exp)) if a != b), min(len(got), len(exp)))
        a = got[i] if i < len(got) else "<missing>"
        b = exp[i] if i < len(exp) else "<missing>"
        note += f"; first at line {i + 1}: {a!r} != {b!r}"
    return Result(case, tensor, float(n), float(n) / max(len(exp), 1), n == 0, note)


def cases(fixture_dir: str, backend: str) -> Iterator[Result]:
    """(a) results file written from ``all_boxes`` vs the reference's lines; (b) APs, mAP, counts and
    the printed report from the fixture's XMLs, image set and results lines. ``backend`` is unused."""
    d = os.path.join(fixture_dir, "eval")
    paths = {k: os.path.join(d, f"vid_eval_{k}") for k in ("inputs.json", "all_boxes.npz", "outputs.json")}
    missing = [os.path.basename(p) for p in paths.values() if not os.path.isfile(p)]
    if missing:
        yield Result(CASE, "", note="MISSING " + ", ".join(missing))
        return
    with open(paths["inputs.json"]) as f:
        inp = json.load(f)
    with open(paths["outputs.json"]) as f:
        out = json.load(f)

    # (a) results file
    _, frame_ids = read_image_set(inp["image_set_file_lines"])
    num_classes = len(inp["classes"])
    empty = np.zeros((0, 5), np.float32)
    all_boxes = [[empty] * len(frame_ids) for _ in range(num_classes)]
    with np.load(paths["all_boxes.npz"]) as z:
        for key in z.files:
            m = _BOX_KEY.match(key)
            if m is None:
                raise ValueError(f"{paths['all_boxes.npz']}: unexpected key {key!r} (want clsCC_imgII)")
            all_boxes[int(m.group(1))][int(m.group(2))] = z[key]
    with tempfile.TemporaryDirectory() as tmp:
        det_path = os.path.join(tmp, "det_VID_val_frames_all.txt")
        write_vid_results(det_path, all_boxes, frame_ids)
        with open(det_path) as f:
            written = f.read().splitlines()
    yield _text_diff(CASE, "det_file_lines", written, list(inp["det_file_lines"]))

    # (b) evaluation of the reference's own results lines
    annotations = {}
    for key, text in inp["annotation_xml"].items():
        m = _XML_KEY.match(key)
        if m is None:
            raise ValueError(f"{paths['inputs.json']}: annotation key {key!r} is not Annotations/VID/<index>.xml")
        annotations[m.group(1)] = parse_vid_xml(text, name=key)
    res = vid_eval(inp["det_file_lines"], inp["image_set_file_lines"], annotations, inp["classes_map"],
                   class_names=inp["classes"])
    exp_ap = np.asarray(out["ap_vector_classes_1_to_30"], dtype=np.float64)
    yield compare(CASE, "ap_per_class", np.asarray(res["ap"]), exp_ap, atol=_AP_ATOL)
    named = [out["ap_per_class"][n] for n in res["classes"]]
    yield compare(CASE, "ap_per_class_by_name", np.asarray(res["ap"]), np.asarray(named), atol=_AP_ATOL)
    yield compare(CASE, "mAP", res["mAP"], out["mAP"], atol=_AP_ATOL)
    got_counts = [res["num_images"], res["num_gt_objects"], res["num_detections"],
                  *[res["num_gt_per_class"][n] for n in res["classes"]]]
    exp_counts = [out["num_images"], out["num_gt_objects"], out["num_detections"],
                  *out["num_gt_per_class"][1:num_classes]]
    yield compare(CASE, "counts", np.asarray(got_counts), np.asarray(exp_counts), atol=0.0)
    yield _text_diff(CASE, "info_str", format_info_str(res).split("\n"), out["info_str"].split("\n"))
