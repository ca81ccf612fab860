"""Segmentation evaluation (dff.eval.seg_eval): the confusion counting and IoU rules on hand-counted cases, an
independent brute-force check, and the DFF paper's key-distance protocol on a tiny random DFFDeepLab over a
synthetic Cityscapes-layout set."""
from __future__ import annotations

import argparse
import copy
import json
import math
import pathlib
import runpy
import shutil

import numpy as np
import pytest
import torch

from dff.config import load_config
from dff.dataset.cityscapes import CityscapesVideo
from dff.dataset.synthetic import SynthConfig, generate
from dff.engine.segment import class_fractions
from dff.eval import seg_eval
from dff.eval.seg_eval import (
    accumulate_key_distances,
    confusion_matrix,
    evaluate_key_distances,
    iou_from_confusion,
    predict_labels,
)
from dff.eval.tester import TesterError, run_test_from_args
from dff.models.builder import build_model
from dff.utils.checkpoint import save_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]
DFF_DEEPLAB_CFG = REPO / "experiments/dff_deeplab/cfgs/dff_deeplab_mobile_synthetic.yaml"
CLASSES = ["ellipse", "box", "triangle", "star", "ring"]
FRAMES = 8  # per snippet; a val snippet is labelled at its last frame (7), a train one (label every 3) at 2 and 5


# --------------------------------------------------------------------------------------------------
# counting and IoU, by hand
# --------------------------------------------------------------------------------------------------
def test_confusion_matrix_hand_counted_with_ignore():
    gt = np.array([[0, 1, 1], [2, 255, 1]])
    pred = np.array([[0, 1, 2], [2, 0, 0]])
    conf = confusion_matrix(pred, gt, 3)
    assert conf.dtype == np.int64
    # rows ground truth, columns prediction; the ignored pixel (predicted 0) is not counted
    np.testing.assert_array_equal(conf, [[1, 0, 0], [1, 1, 1], [0, 0, 1]])
    per_class, miou = iou_from_confusion(conf, (0, 1, 2))
    # class 0: TP 1, FP 1 (a 1 predicted 0); class 1: TP 1, FN 2; class 2: TP 1, FP 1
    assert per_class == pytest.approx({0: 1 / 2, 1: 1 / 3, 2: 1 / 2})
    assert miou == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_absent_class_is_nan_and_left_out_but_a_predicted_absent_class_is_zero():
    gt = np.array([[0, 0, 1], [1, 1, 0]])
    pred = np.array([[0, 2, 1], [1, 1, 0]])
    per_class, miou = iou_from_confusion(confusion_matrix(pred, gt, 4), (0, 1, 2, 3))
    assert per_class[0] == pytest.approx(2 / 3) and per_class[1] == 1.0
    assert per_class[2] == 0.0  # no ground truth, one predicted pixel: a false positive, IoU 0, in the mean
    assert math.isnan(per_class[3])  # neither: undefined, not in the mean
    assert miou == pytest.approx((2 / 3 + 1 + 0) / 3)
    _, none = iou_from_confusion(np.zeros((3, 3), np.int64), (0, 1, 2))
    assert math.isnan(none)


def test_iou_counts_only_the_evaluated_classes_rows():
    gt = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[1, 1, 0], [1, 2, 1]])
    per_class, miou = iou_from_confusion(confusion_matrix(pred, gt, 3), (1, 2))
    assert set(per_class) == {1, 2}
    # class 1: TP 1; FN 1 (its pixel predicted as class 0, not evaluated); FP 1 (a class-2 pixel). The two
    # class-0 pixels predicted 1 are not false positives: class 0 is not evaluated (Cityscapes' void)
    assert per_class[1] == pytest.approx(1 / 3)
    assert per_class[2] == pytest.approx(1 / 2)
    assert miou == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_confusion_matrix_rejects_what_would_be_miscounted():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="prediction has class 3"):
        confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3)
    with pytest.raises(ValueError, match="ground truth has class 7"):
        confusion_matrix(np.array([[0, 1]]), np.array([[7, 1]]), 3)
    # an out-of-range prediction on an ignored pixel counts for nothing
    np.testing.assert_array_equal(confusion_matrix(np.array([[9, 1]]), np.array([[255, 1]]), 2), [[0, 0], [0, 1]])


def test_against_brute_force_per_class_masks():
    """An independent count: per class, boolean masks over the valid pixels (no bincount, no confusion)."""
    rng = np.random.default_rng(3)
    k, eval_classes = 6, (1, 2, 3, 5)  # class 4 is never drawn: NaN; class 0 predicted but not evaluated
    gt = rng.choice([0, 1, 2, 3, 5, 255], size=(37, 53))
    pred = rng.choice([0, 1, 2, 3, 5], size=gt.shape)
    conf = confusion_matrix(pred, gt, k)
    assert conf.sum() == (gt != 255).sum()
    per_class, miou = iou_from_confusion(conf, eval_classes + (4,))
    valid = (gt != 255) & np.isin(gt, eval_classes + (4,))
    expected = {}
    for c in eval_classes + (4,):
        g, p = (gt == c) & valid, (pred == c) & valid
        union = (g | p).sum()
        expected[c] = (g & p).sum() / union if union else float("nan")
    assert math.isnan(per_class[4]) and math.isnan(expected[4])
    for c in eval_classes:
        assert per_class[c] == pytest.approx(expected[c])
    assert miou == pytest.approx(np.mean([expected[c] for c in eval_classes]))


def test_class_fractions():
    labels = np.array([[0, 0, 2, 255], [2, 2, 0, 0]])
    # an index past the class list (the ignore label) is named by its number; the fractions sum to 1
    assert class_fractions(labels, ["bg", "a", "b"]) == {"bg": 0.5, "b": 0.375, "255": 0.125}


# --------------------------------------------------------------------------------------------------
# the key-distance protocol on a tiny random model
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg") / "cityscapes"
    generate(str(root), SynthConfig(seed=2, train_videos=1, val_videos=2, frames=FRAMES, height=64, width=96,
                                    seg_train_label_every=3), fmt="cityscapes")
    return root


@pytest.fixture(scope="module")
def seg_cfg(seg_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "dff_deeplab_tiny.yaml"
    shutil.copy(DFF_DEEPLAB_CFG, path)
    return load_config(path, ["network.MOBILENET_WIDTH=0.25", f"dataset.NUM_CLASSES={len(CLASSES) + 1}", "network.FLOWNET_WIDTH=0.25",
                              "network.DFF_FEAT_DIM=16", "SCALES=[64,96]", f"dataset.dataset_path={seg_root}",
                              f"dataset.CLASSES=[{','.join(CLASSES)}]"])


def _spread(model, x):
    """A random backbone's output is tiny (~1e-5 after 17 blocks), so the feature is its layer's bias and the
    scores favour one class everywhere: scale the feature layer to unit-size features (no bias) and centre the
    scores on this frame's mean feature, so the predicted labels vary from pixel to pixel and frame to frame
    (otherwise every property below would hold trivially)."""
    model.eval()
    with torch.no_grad():
        conv = model.feat_conv_3x3
        std = float(model.backbone(x).std())
        torch.nn.init.normal_(conv.weight, std=1.0 / (std * conv.weight[0].numel() ** 0.5))
        conv.bias.zero_()
        torch.nn.init.normal_(model.score.weight, std=1.0)
        mean = model.extract_feature(x).mean((0, 2, 3))
        model.score.bias.copy_(-(model.score.weight[:, :, 0, 0] @ mean))
    return model


def _data(cfg, snippet, index):
    return seg_eval._FrameCache(cfg, torch.device("cpu")).get(snippet, index)[0]


@pytest.fixture(scope="module")
def val_set(seg_root):
    return CityscapesVideo("val", str(seg_root), verbose=False)


@pytest.fixture(scope="module")
def dff_model(seg_cfg, val_set):
    torch.manual_seed(0)
    return _spread(build_model("dff_deeplab", seg_cfg), _data(seg_cfg, val_set.snippets[0], 0))


def _per_frame_labels(model, cfg, snippet):
    return [predict_labels(model, None, _data(cfg, snippet, t), (64, 96)) for t in range(len(snippet.frames))]


def test_per_frame_prediction_is_the_models_forward(dff_model, seg_cfg, val_set):
    x = _data(seg_cfg, val_set.snippets[0], 7)
    with torch.no_grad():
        expected = dff_model.segment(dff_model.extract_feature(x), (64, 96))[0].argmax(0).numpy()
    labels = predict_labels(dff_model, x, x, (64, 96))  # key frame = the frame itself: per frame
    assert labels.shape == (64, 96) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1  # the spread model predicts several classes
    # another frame as key: the flow path, a different map (random flow and scale)
    other = predict_labels(dff_model, _data(seg_cfg, val_set.snippets[0], 3), x, (64, 96))
    assert not np.array_equal(other, labels)


def test_frames_per_distance_follow_the_protocol(dff_model, seg_cfg, val_set):
    r5 = evaluate_key_distances(dff_model, seg_cfg, val_set, 5, progress=False)
    assert r5["frames_by_distance"] == [2] * 5 and r5["key_positions_skipped"] == 0
    assert len(r5["mIoU_by_distance"]) == 5 and r5["key_interval"] == 5
    assert r5["snippets"] == r5["frames_evaluated"] == 2
    assert r5["classes_evaluated"] == ["__background__", *CLASSES]
    assert r5["mIoU"] == pytest.approx(np.mean(r5["mIoU_by_distance"]), abs=1e-3)
    json.dumps(r5, allow_nan=False)  # JSON-serialisable, no NaN
    # l = 10 on 8-frame snippets labelled at frame 7: keys at -1 and -2 do not exist, 2 per snippet
    r10 = evaluate_key_distances(dff_model, seg_cfg, val_set, 10, progress=False)
    assert r10["frames_by_distance"] == [2] * 8 + [0, 0] and r10["key_positions_skipped"] == 4
    assert r10["mIoU_by_distance"][8:] == [None, None] and None not in r10["mIoU_by_distance"][:8]
    assert r10["mIoU_by_distance"][:5] == r5["mIoU_by_distance"]  # the same predictions at d = 0..4
    r1 = evaluate_key_distances(dff_model, seg_cfg, val_set, 1, progress=False)
    assert r1["frames_by_distance"] == [2] and r1["mIoU_by_distance"] == [r5["mIoU_by_distance"][0]]
    assert r1["mIoU"] == r1["pooled_mIoU"] == r5["mIoU_by_distance"][0]


def test_a_per_frame_model_evaluates_distance_zero_only(seg_cfg, val_set):
    torch.manual_seed(1)
    model = _spread(build_model("deeplab", seg_cfg), _data(seg_cfg, val_set.snippets[0], 0))
    r = evaluate_key_distances(model, seg_cfg, val_set, 5, progress=False)
    assert r["key_interval"] == 1 and r["frames_by_distance"] == [2] and len(r["mIoU_by_distance"]) == 1


def test_zero_flow_identity_scale_gives_the_key_frames_own_prediction(dff_model, seg_cfg, val_set):
    """With no flow and a scale map of ones, frame i predicted from key k is k's per-frame prediction: the
    confusion at distance d must be that of the per-frame labels of frame i - d against frame i's label."""
    model = copy.deepcopy(dff_model)
    model.flownet.zero_flow_output()
    model.flownet.init_scale_identity()
    acc = accumulate_key_distances(model, seg_cfg, val_set, 5, progress=False)
    expected = np.zeros_like(acc.confusion)
    for s in val_set.snippets:
        per_frame = _per_frame_labels(model, seg_cfg, s)
        gt = val_set.read_label(s)
        for d in range(5):
            expected[d] += confusion_matrix(per_frame[s.annotated - d], gt, val_set.num_classes)
    np.testing.assert_array_equal(acc.confusion, expected)
    assert len({acc.confusion[d].tobytes() for d in range(5)}) > 1  # the key frames' predictions differ
    # zero flow, random scale map: without the scale map the same; with it (the default) not
    with torch.no_grad():
        torch.nn.init.normal_(model.flownet.Convolution5_scale.weight, std=1.0)
    unscaled = accumulate_key_distances(model, seg_cfg, val_set, 5, scale_map=False, progress=False)
    np.testing.assert_array_equal(unscaled.confusion, expected)
    scaled = accumulate_key_distances(model, seg_cfg, val_set, 5, progress=False)
    np.testing.assert_array_equal(scaled.confusion[0], expected[0])  # distance 0: the frame's own feature
    assert not np.array_equal(scaled.confusion[1:], expected[1:])


def test_distance_zero_is_per_frame_whatever_the_flow(dff_model, seg_cfg, val_set):
    acc = accumulate_key_distances(dff_model, seg_cfg, val_set, 3, progress=False)
    expected = sum(confusion_matrix(_per_frame_labels(dff_model, seg_cfg, s)[s.annotated], val_set.read_label(s),
                                    val_set.num_classes) for s in val_set.snippets)
    np.testing.assert_array_equal(acc.confusion[0], expected)


def test_each_frame_is_read_once_and_early_labels_skip_missing_keys(dff_model, seg_cfg, seg_root, monkeypatch):
    train = CityscapesVideo("train", str(seg_root), verbose=False)
    assert [s.annotated for s in train.snippets] == [2, 5]  # two labels of one snippet
    reads = []
    real = seg_eval.read_image
    monkeypatch.setattr(seg_eval, "read_image", lambda p: reads.append(p) or real(p))
    acc = accumulate_key_distances(dff_model, seg_cfg, train, 5, progress=False)
    # frame 2: keys 2, 1, 0 (-1 and -2 skipped); frame 5: keys 5 .. 1; frames 0 .. 5 read once each
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 6
    assert acc.frames.tolist() == [2, 2, 2, 1, 1] and acc.skipped.tolist() == [0, 0, 0, 1, 1]
    assert acc.snippets == acc.frames_evaluated == 2
    r = evaluate_key_distances(dff_model, seg_cfg, train, 5, max_snippets=1, progress=False)
    assert r["frames_by_distance"] == [1, 1, 1, 0, 0] and r["snippets"] == 1


# --------------------------------------------------------------------------------------------------
# the commands: tools/evaluate_intervals.py and the test scripts' run_test_from_args
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_checkpoint(dff_model, seg_cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "dff_deeplab_tiny.pth"
    save_checkpoint(path, model_state=dff_model, config=seg_cfg,
                    extra={"model_kind": "dff_deeplab", "weights": "test"})
    return path


def test_evaluate_intervals_reports_miou_per_interval(seg_checkpoint, seg_root, dff_model, seg_cfg, val_set,
                                                      tmp_path, capsys):
    main = runpy.run_path(str(REPO / "tools" / "evaluate_intervals.py"))["main"]
    out_json = tmp_path / "rows.json"
    assert main([str(seg_checkpoint), "--dataset-path", str(seg_root), "--intervals", "1,3", "--json",
                 str(out_json), "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["dff_deeplab interval  1", "dff_deeplab interval  3"]
    assert "mIoU" in lines[1] and "mAP" not in lines[1]
    rows = json.loads(out_json.read_text())
    assert list(rows) == ["1", "3"] and "mAP" not in rows["3"]
    assert rows["3"]["frames_by_distance"] == [2, 2, 2] and rows["3"]["scale_map"] is True
    # the same numbers as the library call on the model that was saved
    assert rows["3"] == {k: v for k, v in evaluate_key_distances(dff_model, seg_cfg, val_set, 3, progress=False).items()
                         if k in rows["3"]}
    assert json.loads((tmp_path / "out" / "interval_3" / "results" / "eval_val.json").read_text())["mIoU"] == \
        rows["3"]["mIoU"]
    assert main([str(seg_checkpoint), "--dataset-path", str(seg_root), "--intervals", "3", "--no-scale-map",
                 "--json", str(out_json)]) == 0
    unscaled = json.loads(out_json.read_text())["3"]
    assert unscaled["scale_map"] is False and unscaled["mIoU_by_distance"][0] == rows["3"]["mIoU_by_distance"][0]
    capsys.readouterr()
    assert main([str(seg_checkpoint), "--dataset-path", str(seg_root), "--schedule", "adaptive"]) == 2
    assert "fixed key intervals" in capsys.readouterr().err


def test_evaluate_intervals_no_scale_map_is_segmentation_only(capsys):
    main = runpy.run_path(str(REPO / "tools" / "evaluate_intervals.py"))["main"]
    assert main([str(REPO / "data" / "models" / "rfcn_synthetic_tiny.pth"), "--no-scale-map"]) == 2
    assert "segmentation models only" in capsys.readouterr().err


def test_run_test_from_args_writes_the_seg_json(seg_checkpoint, seg_cfg, tmp_path):
    cfg = copy.deepcopy(seg_cfg)
    cfg.output_path = str(tmp_path / "output")
    args = argparse.Namespace(device="cpu", no_progress=True, key_interval=3, max_videos=None, ignore_cache=False,
                              num_workers=0, set=[], schedule=None, fast="none", backend="torch")
    result = run_test_from_args(args, "dff_deeplab", cfg, "dff_deeplab_tiny.yaml", str(seg_checkpoint))
    path = tmp_path / "output" / "dff_deeplab_tiny" / "val" / "results" / "eval_val.json"
    assert result["results_file"] == str(path) and result["key_interval"] == 3
    assert json.loads(path.read_text()) == result
    args.key_interval = None  # TEST.KEY_FRAME_INTERVAL (5)
    assert run_test_from_args(args, "dff_deeplab", cfg, "dff_deeplab_tiny.yaml",
                              str(seg_checkpoint))["frames_by_distance"] == [2] * 5
    args.fast = "fp16"
    with pytest.raises(TesterError, match="--fast fp16"):
        run_test_from_args(args, "dff_deeplab", cfg, "dff_deeplab_tiny.yaml", str(seg_checkpoint))
