"""tools/benchmark.py's THP measurements: the partial update forced to given areas, the adaptive schedule's row,
and the errors of THP options without a THP model or on the onnxruntime engine."""
import json
import os
import runpy

import pytest
import torch

from dff.apps.benchmark import load_bench, parse_fractions, time_partial_update

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFGS = os.path.join(REPO, "experiments", "dff_rfcn", "cfgs")
DFF_TINY = os.path.join(CFGS, "dff_rfcn_synthetic_tiny.yaml")
THP_TINY = os.path.join(CFGS, "thp_rfcn_synthetic_tiny.yaml")
# fixture weights, a generated clip, a small input: speed does not matter here, only the fields
SMALL = ["--frames", "3", "--scale", "64,96", "--device", "cpu", "--no-end-to-end"]


@pytest.fixture(scope="module")
def main():
    return runpy.run_path(os.path.join(REPO, "tools", "benchmark.py"))["main"]


def test_time_partial_update_reports_the_forced_areas():
    bench = load_bench(DFF_TINY, ["SCALES=[160,256]"], None, torch.device("cpu"), None, None, None, 1)
    result = time_partial_update(bench, [0.1, 0.25], repeats=1)
    h, w = result["feature_map"]
    assert (h, w) == (10, 14) and result["full_feature_ms"] > 0 and result["repeats"] == 1
    assert result["margin"] == int(bench.cfg.TEST.PARTIAL_UPDATE_MARGIN)
    for f in ("0.1", "0.25"):
        row = result["fractions"][f]
        assert row["area_fraction"] == pytest.approx(float(f), abs=0.03)
        assert row["area_fraction"] <= row["crop_cells_fraction"] <= 1.0 and row["crops"] >= 1
        assert row["ms"] > 0 and row["ratio"] == pytest.approx(row["ms"] / result["full_feature_ms"])


def test_parse_fractions():
    assert parse_fractions("0.1,0.25") == [0.1, 0.25]
    for bad in ("0", "0.5,1.5", "a", ""):
        with pytest.raises(ValueError, match="--partial-area"):
            parse_fractions(bad)


def test_cli_partial_area_writes_the_report(main, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--cfg", DFF_TINY, *SMALL, "--key-intervals", "1", "--partial-area", "0.25",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "partial feature update" in text and "update" not in text.splitlines()[2]  # plain DFF's table as before
    report = json.loads(out.read_text())
    assert set(report["partial_update"]["fractions"]) == {"0.25"} and "thp" not in report
    assert set(report["intervals"]["1"]["stages"]) == {"feature_ms", "flow_ms", "warp_ms", "head_ms", "post_ms"}
    assert main(["--cfg", DFF_TINY, *SMALL, "--partial-area", "0,2"]) == 2
    assert "(0, 1]" in capsys.readouterr().err


def test_cli_adaptive_needs_a_thp_model(main, capsys):
    assert main(["--cfg", DFF_TINY, *SMALL, "--schedule", "adaptive"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "network.THP" in err


def test_cli_thp_options_refuse_the_onnxruntime_engine(main, capsys):
    assert main(["--cfg", THP_TINY, *SMALL, "--backend", "onnxruntime"]) == 2
    assert "PyTorch engine only" in capsys.readouterr().err


def test_cli_adaptive_reports_per_frame_and_the_adaptive_row(main, tmp_path, capsys):
    out = tmp_path / "b.json"
    # the fixture weights with the THP networks, from the DFF YAML and --set (the fixture uses the YAML's config)
    argv = ["--cfg", DFF_TINY, "--set", "network.THP=true", "network.THP_EMBED_DIM=16", *SMALL,
            "--schedule", "adaptive", "--key-intervals", "2,5", "--json", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "adaptive" in text and "updated" in text
    report = json.loads(out.read_text())
    assert list(report["intervals"]) == ["1", "adaptive"]  # --key-intervals has no meaning here
    assert report["thp"]["schedule"] == "adaptive"
    per_frame, adaptive = report["intervals"]["1"], report["intervals"]["adaptive"]
    assert per_frame["key_frames"] == 3 and per_frame["updated_area_fraction"] == 0.0
    assert 1 <= adaptive["key_frames"] <= 3 and 0.0 <= adaptive["updated_area_fraction"] <= 1.0
    assert adaptive["mean_key_interval"] == pytest.approx(3 / adaptive["key_frames"])
    assert {"update_ms", "aggregate_ms"} <= set(adaptive["stages"])
