"""The DFF demo with THP's options: ``--schedule``, the updated cells drawn, ``updated_fraction`` in the JSON lines."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from dff.apps.demo import build_parser
from dff.config import load_config
from dff.engine.video import per_frame_config
from dff.temporal import LoopOptions
from dff.utils.vis import UPDATE_COLOR, cell_pixels, draw_updated_cells, update_label

REPO = pathlib.Path(__file__).resolve().parents[1]
DFF_MODEL = REPO / "data" / "models" / "dff_rfcn_synthetic_tiny.pth"
THP_CFG = REPO / "experiments" / "dff_rfcn" / "cfgs" / "thp_rfcn_synthetic_tiny.yaml"
SCHEMA = json.loads((REPO / "docs" / "frame_result.schema.json").read_text())


def run(*args, timeout=300):
    p = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _image(h: int, w: int) -> np.ndarray:
    # values well away from the tint colour, so every tinted pixel changes
    rng = np.random.default_rng(0)
    return (np.array([40, 80, 120], np.uint8) + rng.integers(0, 50, (h, w, 3))).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# drawing


def test_updated_cells_change_exactly_their_pixels():
    im = _image(96, 160)  # scale 0.5: a cell is 32 x 32 frame pixels; a 3 x 5 grid
    mask = np.zeros((3, 5), bool)
    mask[0, 1] = mask[1, 1] = mask[2, 4] = True
    out = draw_updated_cells(im, mask, 0.5, outline=1)
    expected = np.kron(mask, np.ones((32, 32), bool))
    changed = (out != im).any(axis=2)
    assert np.array_equal(changed, expected)
    assert np.array_equal(out[~expected], im[~expected])
    # a one-pixel outline in the full colour along the region's edge, a translucent tint inside it
    assert (out[0, 32:64] == UPDATE_COLOR).all() and (out[63, 32:64] == UPDATE_COLOR).all()
    assert (out[32, 33:63] != UPDATE_COLOR).any(axis=1).all()  # the two cells are one region: no edge between
    inside = out[40, 40].astype(int)
    assert (inside != UPDATE_COLOR).any() and inside[0] > im[40, 40, 0] and inside[2] < im[40, 40, 2]


def test_cells_at_a_fractional_scale_and_past_the_frame():
    scale = 0.6  # a cell is 26.67 frame pixels; a 50 x 90 frame is an input of 30 x 54, 2 x 4 cells
    mask = np.zeros((4, 6), bool)
    mask[1, 2] = True  # frame rows 26.7 .. 53.3 (cut by the frame's end), columns 53.3 .. 80
    mask[3, 5] = True  # wholly past the frame: covers nothing
    covered = cell_pixels(mask, scale, (50, 90))
    r0, c0, c1 = int(16 / scale), int(32 / scale), int(np.ceil(48 / scale))
    assert covered[r0 + 1:, c0 + 1:c1 - 1].all()
    outside = covered.copy()
    outside[r0:, c0:c1 + 1] = False
    assert not outside.any()
    im = _image(50, 90)
    assert np.array_equal((draw_updated_cells(im, mask, scale) != im).any(axis=2), covered)


def test_no_updated_cells_leaves_the_frame_unchanged():
    im = _image(96, 160)
    out = draw_updated_cells(im, np.zeros((6, 10), bool), 1.0)
    assert out is not im and np.array_equal(out, im)


def test_update_label():
    assert update_label(0.07) == "updated 7%"
    assert update_label(0.0) == "updated 0%"
    assert update_label(0.004) == "updated <1%"


# --------------------------------------------------------------------------------------------------
# the demo


def test_schedule_flag_on_the_dff_demo_only():
    assert build_parser("d", "c.yaml", "o", dff=True).parse_args(["--schedule", "adaptive"]).schedule == "adaptive"
    assert build_parser("d", "c.yaml", "o", dff=True).parse_args([]).schedule is None
    with pytest.raises(SystemExit):
        build_parser("r", "c.yaml", "o", dff=False).parse_args(["--schedule", "adaptive"])


def test_compare_baseline_runs_without_thp():
    cfg = load_config(THP_CFG)
    assert LoopOptions.from_config(cfg).active
    assert not LoopOptions.from_config(per_frame_config(cfg)).active
    assert LoopOptions.from_config(cfg).active  # the run's own config is untouched


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> pathlib.Path:
    """Four small frames of a moving gradient."""
    folder = tmp_path_factory.mktemp("frames")
    y, x = np.mgrid[0:120, 0:200]
    for i in range(4):
        im = np.dstack([(x + 6 * i) % 200, y * 2, np.full_like(x, 150)]).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i}.png"), im)
    return folder


@pytest.mark.slow
def test_adaptive_schedule_needs_a_thp_model(frames, tmp_path):
    rc, _, err = run("dff_rfcn/demo.py", frames, "--model", DFF_MODEL, "--schedule", "adaptive", "--out", tmp_path)
    assert rc == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "network.THP" in lines[0], err


@pytest.fixture(scope="module")
def thp_model(tmp_path_factory) -> pathlib.Path:
    """A THP model of the tiny config with random weights (no THP checkpoint ships)."""
    from dff.models.builder import build_model
    from dff.utils.checkpoint import save_checkpoint

    cfg = load_config(THP_CFG)
    torch.manual_seed(0)
    model = build_model("dff", cfg).eval()
    path = tmp_path_factory.mktemp("thp") / "thp.pth"
    save_checkpoint(path, model_state=model, config=cfg, extra={"weights": "test", "model_kind": "dff"})
    return path


@pytest.mark.slow
def test_demo_draws_the_updated_cells(frames, thp_model, tmp_path):
    # THP_TAU 1 marks every cell (random weights give arbitrary Q), THP_GAMMA 1 never makes that a key frame
    rc, out, err = run("dff_rfcn/demo.py", frames, "--model", thp_model, "--schedule", "adaptive",
                       "--set", "TEST.PARTIAL_UPDATE=true", "TEST.THP_TAU=1.0", "TEST.THP_GAMMA=1.0",
                       "--out", tmp_path, "--json-out", tmp_path / "r.jsonl", "--vis-thresh", "1.0")
    assert rc == 0, err
    assert "adaptive key frames" in out and "4 frames (1 key)" in out
    assert "updated 100%" in err
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["is_key"] for r in records] == [True, False, False, False]
    assert [r["updated_fraction"] for r in records] == [0.0, 1.0, 1.0, 1.0]
    for r in records:
        assert set(SCHEMA["required"]) <= r.keys() <= SCHEMA["properties"].keys()
    assert (tmp_path / "demo.mp4").is_file()
    # the whole non-key frame is tinted cyan (its red channel drops); the key frame is not
    src = [cv2.imread(str(frames / f"{i}.png")).astype(float) for i in (0, 1)]
    drawn = [cv2.imread(str(tmp_path / f"{i}.jpg")).astype(float) for i in (0, 1)]
    red = [d[20:-20, 20:-20, 2].mean() / s[20:-20, 20:-20, 2].mean() for d, s in zip(drawn, src)]
    assert red[0] > 0.95 and red[1] < 0.8, red
