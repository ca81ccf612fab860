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
