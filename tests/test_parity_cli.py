"""`python tools/parity.py [FIXTURE_DIR]`: the whole reference fixture set passes through both operator
backends, and the command fails when a fixture disagrees."""
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # tools/parity.py as subprocesses over the whole fixture set

REPO = pathlib.Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(\[(compiled|fallback)\] )?(\S+) (\S+) max_abs=\S+ max_rel=\S+ (PASS|FAIL)")


def run_parity(*args):
    p = subprocess.run([sys.executable, "tools/parity.py", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=1200)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def full_run(reference_dir):
    return run_parity(reference_dir, "--backend", "both")


def test_everything_passes_through_both_backends(full_run):
    rc, out, err = full_run
    assert rc == 0, out[-3000:] + err[-3000:]
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert m and int(m.group(1)) > 250, last
    assert "NOT-IMPLEMENTED" not in out and " FAIL" not in out


def test_every_required_case_is_covered(full_run):
    _, out, _ = full_run
    rows = [ROW.match(ln) for ln in out.splitlines()]
    seen = {(m.group(2), m.group(3)) for m in rows if m}
    cases = {c for _, c in seen}
    required = ["ops/psroipool_cls", "ops/psroipool_bbox", "ops/flow_warp_dffshape", "ops/flow_warp_big",
                "ops/rpn_inv_normalize", "params/dff_tiny-0001", "params/dff_tiny_legacy-0001",
                "model/rfcn_frame0", "model/rfcn_frame1", "model/dff_key_frame0", "model/dff_cur_frame1",
                "model/dff_cur_frame2", "eval/vid_eval"]
    required += [f"ops/proposal_{c}" for c in ("A_15x25", "B_38x63", "C_6x8", "D_minsize16", "E_multi_batch2")]
    missing = [c for c in required if not any(x == c or x.startswith(c + "/") for x in cases)]
    assert not missing, missing
    # the custom operators and the full models are checked through both implementations
    for case in ("ops/psroipool_cls", "ops/flow_warp_big", "model/rfcn_frame0", "model/dff_cur_frame1"):
        for backend in ("compiled", "fallback"):
            assert (backend, case) in seen, (backend, case)
    tensors = {m.group(4) for m in rows if m and m.group(3) == "model/rfcn_frame1"}
    for t in ("rois_output", "cls_prob_reshape_output", "bbox_pred_reshape_output", "feat_conv_3x3_relu_output",
              "im_detect_pred_boxes", "dets_cls_x1y1x2y2_score"):
        assert t in tensors, t
    tensors = {m.group(4) for m in rows if m and m.group(3) == "model/dff_cur_frame2"}
    for t in ("_mulscalar0_output", "Convolution5_scale_output", "warping_feat_output", "_mul0_output"):
        assert t in tensors, t


def test_a_wrong_fixture_fails(reference_dir, tmp_path):
    """Another fixture directory in the same format is accepted; a disagreeing tensor is a FAIL and exit 1."""
    (tmp_path / "ops").mkdir()
    shutil.copy(reference_dir / "ops" / "ops_summary.json", tmp_path / "ops")
    d = dict(np.load(reference_dir / "ops" / "rpn_inv_normalize.npz"))
    d["out"] = d["out"] + 1e-3
    np.savez(tmp_path / "ops" / "rpn_inv_normalize.npz", **d)
    rc, out, _ = run_parity(tmp_path, "--only", "ops_proposal")
    assert rc == 1
    assert re.search(r"^ops/rpn_inv_normalize out max_abs=0\.001\S* .* FAIL$", out, re.M), out
    assert out.strip().splitlines()[-1].endswith("1 failed")


def test_missing_fixture_dir():
    rc, _, err = run_parity("/nonexistent/fixtures")
    assert rc == 2 and "not found" in err


def test_default_fixture_dir_is_the_repository_copy():
    """Without FIXTURE_DIR the command checks the fixtures in the repository (tests/fixtures/reference)."""
    rc, out, err = run_parity("--only", "ops_proposal", "--backend", "fallback")
    assert rc == 0, out[-2000:] + err[-2000:]
    assert re.fullmatch(r"[1-9]\d* passed, 0 failed", out.strip().splitlines()[-1]), out[-500:]
    assert "ops/rpn_inv_normalize" in out


@pytest.mark.parametrize("only", ["ops/psroi", "ops_psroi,nonsense"])
def test_unknown_area_is_an_error(only):
    """An unknown ``--only`` area (e.g. the path-like ``ops/psroi`` for the area ``ops_psroi``) is an error that
    lists the valid areas, not a silent ``0 passed``."""
    rc, out, err = run_parity("--only", only, "--backend", "fallback")
    assert rc == 2, out[-500:] + err[-500:]
    assert "unknown area" in err and "ops_psroi" in err and "ops_proposal" in err, err
    assert "passed" not in out, out
