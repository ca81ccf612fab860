"""tools/plot_speed_accuracy.py: evaluate_intervals JSONs -> one PNG of mAP against feature cost, one panel per set."""
import json
import os
import subprocess
import sys

import cv2

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "plot_speed_accuracy.py")


def _rows(path, points):
    rows = {str(k): {"mAP_present_classes": m, "feature_cost_fraction": c} for k, (c, m) in points.items()}
    path.write_text(json.dumps(rows))
    return str(path)


def test_two_panels_from_evaluation_files(tmp_path):
    dff = _rows(tmp_path / "dff.json", {1: (1.0, 0.8), 10: (0.1, 0.7)})
    thp = _rows(tmp_path / "thp.json", {"adaptive": (0.15, 0.78)})
    out = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, TOOL, "--out", str(out), "--curve", f"clean:DFF={dff}",
                        "--curve", f"clean:THP={thp}", "--curve", f"degraded:DFF={dff}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 1.5 * img.shape[0]  # two panels side by side


def test_bad_input_is_named(tmp_path):
    r = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "x.png"), "--curve", "no-panel"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "PANEL:LABEL=FILE" in r.stderr
    r = subprocess.run([sys.executable, TOOL, "--out", str(tmp_path / "x.png"), "--curve",
                        f"a:b={tmp_path / 'missing.json'}"], capture_output=True, text=True)
    assert r.returncode == 2 and "missing.json" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_fps_axis_reads_the_benchmark_run(tmp_path):
    sys.path.insert(0, os.path.dirname(TOOL))
    try:
        import plot_speed_accuracy as tool  # noqa: PLC0415 - a script, importable only from its folder
    finally:
        sys.path.pop(0)
    gru = _rows(tmp_path / "gru.json", {1: (1.0, 0.8), 10: (0.1, 0.7)})
    twin = _rows(tmp_path / "twin.json", {1: (1.0, 0.75)})
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"intervals": {"1": {"dff_fps": 20.0, "per_frame_fps": 25.0},
                                               "10": {"dff_fps": 90.0, "per_frame_fps": 26.0}}}))
    assert tool.curve_points([f"{gru}@{bench}"], "fps") == [(20.0, 80.0), (90.0, 70.0)]
    assert tool.curve_points([f"{twin}@{bench}#per_frame"], "fps") == [(25.0, 75.0)]
    for bad, named in ((gru, "EVAL@BENCH"), (f"{gru}@{bench}#x", "#per_frame"),
                       (f"{_rows(tmp_path / 'k5.json', {5: (0.2, 0.7)})}@{bench}", "key interval 5")):
        try:
            tool.curve_points([bad], "fps")
        except ValueError as e:
            assert named in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")
    out = tmp_path / "fps.png"
    r = subprocess.run([sys.executable, TOOL, "--x", "fps", "--out", str(out), "--curve", f"clean:GRU={gru}@{bench}",
                        "--curve", f"clean:twin={twin}@{bench}#per_frame"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr and cv2.imread(str(out)) is not None
