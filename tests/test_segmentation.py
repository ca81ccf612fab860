"""Semantic segmentation: the Cityscapes reader (on the fixture in tests/fixtures/cityscapes_tiny), the synthetic
Cityscapes-layout writer, the DeepLab / DFF models, their training samples and cross-task start, and the engine."""
from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from dff.api import load_detector
from dff.config import load_config, set_class_names
from dff.dataset.cityscapes import CITYSCAPES_CLASSES, CityscapesError, CityscapesVideo, read_label
from dff.dataset.loader import SegTrainDataset
from dff.dataset.synthetic import (
    SynthConfig,
    frame_annotations,
    generate,
    label_frames,
    render_frame,
    segmentation_label,
)
from dff.engine.engines import video_engine
from dff.engine.frames import Frame
from dff.engine.segment import VideoSegmenter
from dff.models.builder import build_model
from dff.models.deeplab import IGNORE_LABEL
from dff.train.trainer import TrainOptions, initialize
from dff.utils.checkpoint import save_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "cityscapes_tiny")
REPO = os.path.dirname(HERE)
SEG_CFG = os.path.join(REPO, "experiments", "dff_deeplab", "cfgs", "dff_deeplab_mobile_synthetic.yaml")
SHAPES = ("ellipse", "box", "triangle", "star", "ring")
TINY = ["network.MOBILENET_WIDTH=0.35", "network.DFF_FEAT_DIM=16", "network.FLOWNET_WIDTH=0.25",
        "SCALES=[64,96]", "network.pretrained_flow=", "TEST.KEY_FRAME_INTERVAL=3"]


def tiny_cfg(**extra: str):
    cfg = load_config(SEG_CFG, TINY + [f"{k}={v}" for k, v in extra.items()])
    set_class_names(cfg, SHAPES)
    return cfg


# --- the reader --------------------------------------------------------------------------------------------------
def test_reader_finds_the_snippets_and_shifts_cityscapes_train_ids():
    ds = CityscapesVideo("train+val", FIXTURE, verbose=False)
    assert [s.name for s in ds.snippets] == ["train/aachen/aachen_000000_000019", "val/frankfurt/frankfurt_000001_000019"]
    s = ds.snippets[0]
    assert len(s.frames) == 4 and s.annotated == 3 and s.frames[3].endswith("aachen_000000_000019_leftImg8bit.png")
    # no classes.txt: the 19 Cityscapes classes, background first and never evaluated
    assert ds.class_list.names[1:] == CITYSCAPES_CLASSES and ds.eval_classes == tuple(range(1, 20))
    lab = ds.read_label(s)
    assert lab.shape == (16, 24)
    assert (lab[:, 8:16] == 14).all()                      # car: train id 13 -> class 14
    assert lab[0, 20] == 11 and lab[0, 0] == 1              # sky 10 -> 11, road 0 -> 1
    assert (lab[12:, :4] == IGNORE_LABEL).all()             # void stays ignored
    roidb = ds.train_roidb(flip=True)
    assert len(roidb) == 4 and roidb[0]["frame_seg_id"] == 3 and roidb[0]["frame_seg_len"] == 4
    assert (roidb[0]["height"], roidb[0]["width"]) == (16, 24) and roidb[2]["flipped"]


def _copy_fixture(tmp_path) -> str:
    root = str(tmp_path / "cs")
    shutil.copytree(FIXTURE, root)
    return root


def test_reader_names_the_file_for_each_kind_of_bad_input(tmp_path):
    root = _copy_fixture(tmp_path)
    with pytest.raises(CityscapesError, match="leftImg8bit_sequence/test"):
        CityscapesVideo("test", root, verbose=False)
    label = os.path.join(root, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_labelTrainIds.png")
    frame = os.path.join(root, "leftImg8bit_sequence", "train", "aachen", "aachen_000000_000019_leftImg8bit.png")
    # a colour image where a train-id map belongs
    cv2.imwrite(label, np.zeros((16, 24, 3), np.uint8) + 7)
    with pytest.raises(CityscapesError, match="aachen_000000_000019_gtFine_labelTrainIds.png: a label image has one"):
        read_label(label)
    # labelIds instead of trainIds (33 = bicycle's id): not a train id of 19 classes
    cv2.imwrite(label, np.full((16, 24), 33, np.uint8))
    with pytest.raises(CityscapesError, match="label value 33 is not a train id"):
        CityscapesVideo("train", root, verbose=False).read_label(CityscapesVideo("train", root, verbose=False).snippets[0])
    with open(label, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(CityscapesError, match="cannot decode the label image"):
        read_label(label)
    os.remove(label)
    with pytest.raises(CityscapesError, match="label file not found"):
        read_label(label)
    # a label whose frame is missing
    cv2.imwrite(label, np.zeros((16, 24), np.uint8))
    os.remove(frame)
    with pytest.raises(CityscapesError, match="aachen_000000_000019_leftImg8bit.png: the frame of label"):
        CityscapesVideo("train", root, verbose=False)


def test_training_sample_keeps_label_and_frame_aligned(tmp_path):
    ds = CityscapesVideo("train", FIXTURE, verbose=False)
    cfg = tiny_cfg(**{"SCALES": "[32,48]", "TRAIN.MIN_OFFSET": -2, "TRAIN.MAX_OFFSET": -2})
    roidb = ds.train_roidb(flip=True)
    data = SegTrainDataset(roidb, cfg, pairs=True, seed=0)
    plain, flipped = data[(0, 0)], data[(0, 1)]
    assert plain["data"].shape == (1, 3, 32, 48) and plain["label"].shape == (1, 32, 48)
    assert plain["eq_flag"] == 0 and plain["ref_image"].endswith("_000017_leftImg8bit.png")
    # nearest-neighbour resize of the car column (x 8..15 of 24 -> 16..31 of 48), flipped with its frame
    assert (plain["label"][0, :, 16:32] == 14).all() and (plain["label"][0, :, :16] != 14).all()
    assert torch.equal(flipped["label"], plain["label"].flip(-1))
    assert torch.allclose(flipped["data"], plain["data"].flip(-1))


# --- the synthetic Cityscapes layout -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_seg(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("synthetic_seg"))
    generate(root, SynthConfig(seed=3, train_videos=2, val_videos=1, frames=12, height=48, width=64, det_images=0,
                               motion=0.35, seg_train_label_every=4), fmt="cityscapes")
    return root


def test_synthetic_labels_are_the_objects_classes(synthetic_seg):
    train = CityscapesVideo("train", synthetic_seg, verbose=False)
    val = CityscapesVideo("val", synthetic_seg, verbose=False)
    assert train.class_list.names[1:] == SHAPES and train.eval_classes == tuple(range(6))
    assert [s.annotated for s in train.snippets] == label_frames(12, "train", 4) * 2 == [3, 7, 11, 3, 7, 11]
    assert [s.annotated for s in val.snippets] == [11]  # a 12-frame snippet: its last frame (Cityscapes: the 20th)
    for ds, split in ((train, "train"), (val, "val")):
        for s in ds.snippets:
            k = int(os.path.basename(s.label).split("_")[1])
            params = load_video_params_cs(synthetic_seg, split, k)
            lab = ds.read_label(s)
            _, layer = render_frame(params, s.annotated)
            assert np.array_equal(lab, segmentation_label(params, layer, SHAPES))
            # every annotated object's pixels carry its class, inside its box
            for ob in frame_annotations(params, s.annotated, layer):
                x1, y1, x2, y2 = ob["box"]
                cls = SHAPES.index(ob["wnid"]) + 1
                own = layer == ob["trackid"] + 1
                assert (lab[own] == cls).all()
                ys, xs = np.nonzero(own)
                assert xs.min() >= x1 and xs.max() <= x2 and ys.min() >= y1 and ys.max() <= y2
            assert set(np.unique(lab)) <= set(range(6))


def load_video_params_cs(root: str, split: str, k: int) -> dict:
    with open(os.path.join(root, "SyntheticGT", "cityscapes", split, f"synth_{k:06d}.json")) as f:
        return json.load(f)


# --- the models, the cross-task start, the engine ----------------------------------------------------------------
def test_dff_segmentation_trains_through_the_warp_and_starts_from_a_detector(tmp_path):
    cfg = tiny_cfg()
    model = build_model("dff_deeplab", cfg)
    assert model.task == "seg" and model.has_flow and model.loss_names == ("loss", "seg_loss", "pixel_acc")
    torch.manual_seed(0)
    data, ref = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 96)
    label = torch.randint(0, 6, (1, 64, 96))
    label[:, :8] = IGNORE_LABEL
    out = model.forward_train({"data": data, "data_ref": ref, "eq_flag": 0, "label": label, "im_info": None})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and 0.0 <= float(out["pixel_acc"]) <= 1.0
    assert model.flownet.conv1.weight.grad is not None and model.backbone is not None
    assert float(model.score.weight.grad.abs().sum()) > 0
    # a detector of the same feature network gives its backbone, feat_conv_3x3 and flow network
    det_cfg = load_config(os.path.join(REPO, "experiments", "dff_rfcn", "cfgs", "dff_mobile_synthetic.yaml"),
                          [t for t in TINY if not t.startswith("TEST.")])
    set_class_names(det_cfg, SHAPES)
    det = build_model("dff", det_cfg)
    path = str(tmp_path / "det.pth")
    save_checkpoint(path, model_state=det, extra={"weights": "test", "model_kind": "dff"}, config=det_cfg)
    seg = build_model("dff_deeplab", cfg)
    lines = initialize(seg, cfg, TrainOptions(kind="dff_deeplab", init=path))
    assert "backbone, feat_conv_3x3, flownet from" in lines[0]
    det_state = det.state_dict()
    shared = [k for k in seg.state_dict() if k.startswith(("backbone.", "feat_conv_3x3.", "flownet."))
              and "Convolution5_scale" not in k]
    assert len(shared) > 100
    for k in shared:
        assert torch.equal(seg.state_dict()[k], det_state[k]), k


def test_engine_warps_key_features_and_labels_every_frame():
    cfg = tiny_cfg()
    model = build_model("dff_deeplab", cfg).eval()
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 255, (48, 72, 3)).astype(np.uint8) for _ in range(7)]
    engine = video_engine(model, cfg)
    assert isinstance(engine, VideoSegmenter)
    results = list(engine.run(Frame(i, f"{i}", im) for i, im in enumerate(images)))
    assert [r.is_key for r in results] == [True, False, False, True, False, False, True]
    assert [r.age for r in results] == [0, 1, 2, 0, 1, 2, 0]
    assert all(r.labels.shape == (48, 72) and r.labels.dtype == np.uint8 and r.detections == [] for r in results)
    assert all(int(r.labels.max()) < 6 for r in results)
    # a key frame's labels are the per-frame network's, upsampled to the frame and arg-maxed
    data, im_info = engine.prepare(images[3])
    with torch.inference_mode():
        expected = model.segment(model.extract_feature(data), (48, 72)).argmax(1)[0].numpy()
    assert np.array_equal(results[3].labels, expected)
    assert results[1].times["flow"] > 0 and results[1].times["feature"] == 0


def test_public_api_segments_and_reports_class_fractions(tmp_path):
    cfg = tiny_cfg()
    model = build_model("dff_deeplab", cfg).eval()
    path = str(tmp_path / "seg.pth")
    save_checkpoint(path, model_state=model, extra={"weights": "test", "model_kind": "dff_deeplab"}, config=cfg)
    schema = json.loads(open(os.path.join(REPO, "docs", "frame_result.schema.json")).read())
    rng = np.random.RandomState(1)
    images = [rng.randint(0, 255, (48, 72, 3)).astype(np.uint8) for _ in range(4)]
    with load_detector(path, device="cpu") as seg:
        frames = list(seg.detect(images))
    assert [f.is_key for f in frames] == [True, False, False, True]
    for f in frames:
        assert f.boxes == [] and f.labels.shape == (48, 72)
        counts = np.bincount(f.labels.ravel(), minlength=6)
        assert f.class_fractions == {n: round(c / f.labels.size, 5) for n, c in zip(f.class_names, counts) if c}
        record = f.to_json()
        assert record["class_fractions"] == f.class_fractions and record["detections"] == []
        assert set(schema["required"]) <= set(record) <= set(schema["properties"])
        assert sum(record["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)


def test_frames_are_normalised_by_their_own_statistics():
    model = build_model("deeplab", tiny_cfg())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(m.affine and not m.track_running_stats for m in norms)
    # a frame's features do not depend on the other frames of a batch, nor on training or test mode
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        alone = model.eval().extract_feature(x[1:2])
        batch = model.train().extract_feature(x)[1:2]
    assert torch.allclose(alone, batch, atol=1e-4)  # batched convolutions round differently
