"""The training loop and optimiser (dff.train.trainer, dff.train.optim): MXNet's SGD form, weight-decay and
frozen-parameter scopes by MXNet name, the lr schedule, exact resume, and the NaN stop."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import runpy

import numpy as np
import pytest
import torch
import yaml

from dff.config import load_config
from dff.dataset.synthetic import SynthConfig, generate
from dff.train import trainer as trainer_mod
from dff.train.optim import MXNetSGD, WarmupMultiFactorSchedule, build_param_groups, lr_schedule
from dff.train.trainer import TrainingDiverged, TrainOptions, build_model, train
from dff.utils.checkpoint import load_checkpoint, load_model_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RFCN_CFG = os.path.join(REPO, "experiments/rfcn/cfgs/rfcn_synthetic_tiny.yaml")
DFF_CFG = os.path.join(REPO, "experiments/dff_rfcn/cfgs/dff_rfcn_synthetic_tiny.yaml")


def run_train_test(argv, kind):
    """The entry script ``*_end2end_train_test.py``'s main(argv), in this process."""
    script = "dff_rfcn/dff_rfcn_end2end_train_test.py" if kind == "dff" else "rfcn/rfcn_end2end_train_test.py"
    return runpy.run_path(os.path.join(REPO, "experiments", script))["main"](argv)


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine has 2 shared cores: threads fight each other and make steps 10x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# optimiser
# ------------------------------------------------------------------------------------------------
def test_mxnet_sgd_update_form():
    """v = m*v - lr*wd*w - lr*g; w += v, compared with a literal NumPy version, across an lr change."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(6)]
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = MXNetSGD([p], lr=0.1, momentum=0.9, wd=0.0005)
    w, v = w0.copy(), np.zeros_like(w0)
    for g, lr in zip(grads, lrs):
        v = np.float32(0.9) * v - np.float32(lr) * np.float32(0.0005) * w - np.float32(lr) * g
        w = w + v
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.from_numpy(g)
        opt.step()
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=1e-6, atol=1e-7)  # float32 rounding (FMA)

    # PyTorch's SGD equals it at constant lr and not after the lr drop (why MXNetSGD exists)
    q = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    sgd = torch.optim.SGD([q], lr=0.1, momentum=0.9, weight_decay=0.0005)
    r = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    mx = MXNetSGD([r], lr=0.1, momentum=0.9, wd=0.0005)
    diffs = []
    for g, lr in zip(grads, lrs):
        for o in (sgd, mx):
            for group in o.param_groups:
                group["lr"] = lr
        q.grad, r.grad = torch.from_numpy(g), torch.from_numpy(g)
        sgd.step()
        mx.step()
        diffs.append(float((q - r).detach().abs().max()))
    assert max(diffs[:3]) < 1e-6 and diffs[3] > 1e-3


def test_mxnet_sgd_updates_parameters_without_gradient():
    p = torch.nn.Parameter(torch.ones(3))
    opt = MXNetSGD([p], lr=0.5, momentum=0.9, wd=0.1)
    p.grad = torch.ones(3)
    opt.step()
    p.grad = None  # unused this step: MXNet still applies momentum and weight decay
    before = p.detach().clone()
    opt.step()
    assert not torch.equal(before, p.detach())


def test_param_groups_by_mxnet_name():
    cfg = load_config(DFF_CFG)
    model = build_model("dff", cfg)
    pg = build_param_groups(model, ["conv1", "bn_conv1", "res2", "bn2", "gamma", "beta"])
    frozen, decay, no_decay = set(pg.frozen), set(pg.decay), set(pg.no_decay)
    # prefixes of MXNet names: the stem and all of res2 (convs and BN) ...
    for name in ("backbone.conv1.weight", "backbone.bn_conv1.weight", "backbone.bn_conv1.bias",
                 "backbone.res2a.branch1.weight", "backbone.res2a.bn_branch2a.weight",
                 "backbone.res2a.bn_branch2c.bias", "flownet.Convolution5_scale.bias"):
        assert name in frozen, name
        assert not dict(model.named_parameters())[name].requires_grad
    # ... but 'gamma'/'beta' match no name as a prefix: res3-5 BN gamma/beta are trained (quirk),
    # gamma with weight decay, beta without
    assert "backbone.res3a.bn_branch2a.weight" in decay and pg.mxnet_names["backbone.res3a.bn_branch2a.weight"] == "bn3a_branch2a_gamma"
    assert "backbone.res5a.bn_branch1.bias" in no_decay
    # FlowNet's conv1 is "flow_conv1": not frozen by the "conv1" prefix
    assert "flownet.flow_conv1.weight" in decay and "flownet.flow_conv1.bias" in no_decay
    assert {"feat_conv_3x3.weight", "rfcn_head.rfcn_bbox.weight", "flownet.Convolution5_scale.weight"} <= decay
    assert {"feat_conv_3x3.bias", "rpn_head.rpn_cls_score.bias"} <= no_decay
    assert frozen.isdisjoint(decay | no_decay) and len(frozen | decay | no_decay) == len(list(model.parameters()))
    groups = pg.groups(model, 0.0005)
    assert [g["wd"] for g in groups] == [0.0005, 0.0]
    # the R-FCN model has the same scopes without FlowNet
    rfcn = build_param_groups(build_model("rfcn", load_config(RFCN_CFG)), ["conv1", "bn_conv1", "res2", "bn2"])
    assert not any(n.startswith("flownet") for n in rfcn.frozen + rfcn.decay + rfcn.no_decay)


def reference_scheduler(steps, factor, base_lr, warmup, warmup_lr, warmup_step):
    """The reference's stateful WarmupMultiFactorScheduler, as written there."""
    state = {"ind": 0, "lr": base_lr}

    def call(num_update):
        if warmup and num_update < warmup_step:
            return warmup_lr
        while state["ind"] <= len(steps) - 1:
            if num_update > steps[state["ind"]]:
                state["ind"] += 1
                state["lr"] *= factor
            else:
                return state["lr"]
        return state["lr"]
    return call


def test_lr_schedule_values():
    cfg = load_config(os.path.join(REPO, "experiments/dff_rfcn/cfgs/resnet_v1_101_flownet_imagenet_vid_rfcn_end2end_ohem.yaml"))
    n = 222946
    s = lr_schedule(cfg, n, 4)
    step = int(1.333 * n / 4)
    assert s.steps == [step] == [74296]
    assert s(1) == s(step) == 0.00025
    assert s(step + 1) == pytest.approx(0.000025, rel=1e-12)
    cfg.TRAIN.lr_step = "1,1.5"
    cfg.TRAIN.warmup, cfg.TRAIN.warmup_lr, cfg.TRAIN.warmup_step = True, 1e-5, 50
    s = lr_schedule(cfg, 1000, 4)
    assert s.steps == [250, 375]
    ref = reference_scheduler([250, 375], 0.1, 0.00025, True, 1e-5, 50)
    for u in range(1, 600):
        assert s(u) == ref(u), u
    assert s(49) == 1e-5 and s(50) == 0.00025
    with pytest.raises(ValueError, match="lr_step"):
        WarmupMultiFactorSchedule(0.1, [10, 5])


# ------------------------------------------------------------------------------------------------
# training runs on a tiny generated mini-VID
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vid(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer") / "vid"
    # one 6-frame training video: 12 entries with flips, 3 updates per epoch at 4 images per update
    generate(str(root), SynthConfig(seed=4, train_videos=1, val_videos=1, frames=6, height=64, width=96,
                                    det_images=0, classes=("ellipse", "box"), max_objects=2))
    return root


def tiny_cfg(kind, root, tmp_path, **train):
    cfg = load_config(DFF_CFG if kind == "dff" else RFCN_CFG)
    cfg.dataset.dataset_path = str(root)
    cfg.dataset.root_path = str(tmp_path / "data")
    cfg.dataset.image_set = "VID_train_15frames"
    cfg.output_path = str(tmp_path / "output")
    cfg.SCALES = [(64, 96)]
    cfg.TRAIN.lr = 0.01
    cfg.TRAIN.lr_step = "1.5"  # an lr drop inside the run
    cfg.TRAIN.end_epoch = 2
    for k, v in train.items():
        cfg.TRAIN[k] = v
    return cfg


def run(cfg, out, **kw):
    opts = TrainOptions(kind=kw.pop("kind", "rfcn"), num_workers=0, progress=False,
                        mxnet_checkpoints=kw.pop("mxnet_checkpoints", False), save_every=kw.pop("save_every", 0),
                        output_dir=str(out), **kw)
    return train(cfg, opts)


def test_resume_gives_the_same_weights(tiny_vid, tmp_path):
    cfg = tiny_cfg("rfcn", tiny_vid, tmp_path)
    full = run(cfg, tmp_path / "full", accumulate=4, mxnet_checkpoints=True)
    assert full.iteration == 6 and full.epoch == 2
    lrs = [h["lr"] for h in full.history]
    assert lrs[:4] == [0.01] * 4 and lrs[4:] == pytest.approx([0.001] * 2)  # step at int(1.5 * 12 / 4) = 4
    part = run(cfg, tmp_path / "resumed", accumulate=4, max_iters=4)  # stops inside epoch 2
    assert part.iteration == 4 and os.path.isfile(part.state_path)
    ck = load_checkpoint(part.state_path)
    assert (ck["iteration"], ck["epoch"], ck["batch_in_epoch"]) == (4, 1, 1)
    rest = run(cfg, tmp_path / "resumed", accumulate=4, resume=True)
    assert rest.iteration == 6
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit on the CPU
    # the losses of the resumed updates are those of the uninterrupted run
    assert [h["loss"] for h in rest.history] == [h["loss"] for h in full.history[4:]]
    # epoch files: inference weights with the box de-normalisation folded in, the training state
    out = tmp_path / "full"
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pth") == [
        "rfcn_vid-0001.pth", "rfcn_vid-0001.state.pth", "rfcn_vid-0002.pth", "rfcn_vid-0002.state.pth",
        "rfcn_vid-last.state.pth"]
    test_model = build_model("rfcn", cfg)
    load_model_weights(test_model, out / "rfcn_vid-0002.pth")
    w_test = test_model.rfcn_head.rfcn_bbox.weight
    w_train = full.model.rfcn_head.rfcn_bbox.weight
    stds = torch.tensor([0.1, 0.1, 0.2, 0.2] * 2).repeat_interleave(49).view(-1, 1, 1, 1)
    torch.testing.assert_close(w_test, w_train * stds, rtol=1e-6, atol=0)
    # --init from the epoch's MXNet file restores the training weights exactly (its plain rfcn_bbox, not
    # the folded *_test copy); from the inference .pth up to the rounding of the unfolding
    for name, exact in (("rfcn_vid-0002.params", True), ("rfcn_vid-0002.pth", False)):
        m = build_model("rfcn", cfg)
        trainer_mod.initialize(m, cfg, TrainOptions(kind="rfcn", init=str(out / name)))
        for k, v in full.model.state_dict().items():
            if exact:
                assert torch.equal(m.state_dict()[k], v), (name, k)
            else:
                torch.testing.assert_close(m.state_dict()[k], v, rtol=1e-6, atol=1e-9, msg=f"{name} {k}")


def test_resume_refuses_another_global_batch(tiny_vid, tmp_path):
    cfg = tiny_cfg("rfcn", tiny_vid, tmp_path)
    run(cfg, tmp_path / "o", accumulate=2, max_iters=1)
    with pytest.raises(trainer_mod.TrainingError, match="global batch of 2"):
        run(cfg, tmp_path / "o", accumulate=4, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_vid, tmp_path, monkeypatch, capsys):
    cfg = tiny_cfg("rfcn", tiny_vid, tmp_path)
    from dff.models.rfcn import RFCN
    real = RFCN.forward_train
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:  # the image of update 3
            out["loss"] = out["loss"] * float("nan")
        return out

    saves = []
    real_save = trainer_mod.save_checkpoint

    def recording_save(path, **kw):
        real_save(path, **kw)
        saves.append((os.fspath(path), hashlib.sha256(open(path, "rb").read()).hexdigest()))

    monkeypatch.setattr(RFCN, "forward_train", poisoned)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", recording_save)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"update 3 .*loss is not finite") as e:
        run(cfg, out, save_every=1)
    last = str(out / "rfcn_vid-last.state.pth")
    assert last in str(e.value)
    assert saves[-1][0] == last and len(saves) == 2  # after updates 1 and 2, nothing after the NaN
    assert hashlib.sha256(open(last, "rb").read()).hexdigest() == saves[-1][1]
    ck = load_checkpoint(last)
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    model = build_model("rfcn", cfg)
    model.load_state_dict(ck["model"])

    # the command line: one clear line, exit status 1
    cfg_file = tmp_path / "nan.yaml"
    cfg_file.write_text(yaml.safe_dump({"output_path": str(tmp_path / "cli"), "dataset": {
        "dataset_path": str(tiny_vid), "root_path": str(tmp_path / "data"), "image_set": "VID_train_15frames"},
        "SCALES": [64, 96], "network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 64},
        "TRAIN": {"lr": 0.01, "end_epoch": 1, "BATCH_IMAGES": 1, "model_prefix": "rfcn_vid", "END2END": True,
                  "ENABLE_OHEM": True, "BATCH_ROIS": -1}}))
    calls["n"] = 0
    code = run_train_test(["--cfg", str(cfg_file), "--num-workers", "0", "--no-progress", "--no-test"], "rfcn")
    err = capsys.readouterr().err
    assert code == 1
    assert "error: training diverged: update 3" in err


def test_missing_pretrained_file_names_it_and_the_flag(tiny_vid, tmp_path):
    cfg = tiny_cfg("rfcn", tiny_vid, tmp_path)
    cfg.network.pretrained = str(tmp_path / "model" / "resnet_v1_101")
    with pytest.raises(trainer_mod.TrainingError) as e:
        run(cfg, tmp_path / "o", max_iters=1)
    msg = str(e.value)
    assert str(tmp_path / "model" / "resnet_v1_101-0000.params") in msg and "--from-scratch" in msg
    assert "\n" not in msg
    assert run(cfg, tmp_path / "o", max_iters=1, from_scratch=True).iteration == 1


def test_missing_dataset_is_one_clear_line(tmp_path, capsys):
    cfg_file = tmp_path / "x.yaml"
    cfg_file.write_text(yaml.safe_dump({"dataset": {"dataset_path": str(tmp_path / "nowhere")},
                                        "TRAIN": {"BATCH_IMAGES": 1}, "output_path": str(tmp_path / "out")}))
    assert run_train_test(["--cfg", str(cfg_file), "--no-progress"], "dff") == 2
    assert not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0]
    assert "make_synthetic_vid.py" in err[0] and "make_imagesets.py" in err[0]


def test_dff_trains_and_resumes(tiny_vid, tmp_path):
    cfg = tiny_cfg("dff", tiny_vid, tmp_path, end_epoch=1, wd=0.0)  # no wd: weights move only by gradients
    full = run(cfg, tmp_path / "full", kind="dff", accumulate=4)
    part = run(cfg, tmp_path / "res", kind="dff", accumulate=4, max_iters=2)
    rest = run(cfg, tmp_path / "res", kind="dff", accumulate=4, resume=True)
    assert full.iteration == rest.iteration == 3 and part.iteration == 2
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(math.isfinite(h["loss"]) for h in full.history)
    # FlowNet was trained (some pairs had a key frame before the current one), its scale bias not
    torch.manual_seed(0)  # the trainer's start (seed 0)
    init = build_model("dff", cfg)
    trainer_mod.initialize(init, cfg, TrainOptions(kind="dff"))
    assert not torch.equal(init.flownet.Convolution5.weight, full.model.flownet.Convolution5.weight)
    assert torch.equal(full.model.flownet.Convolution5_scale.bias, torch.ones_like(init.flownet.Convolution5_scale.bias))


def test_unreadable_training_image_is_skipped_and_counted(tiny_vid, tmp_path):
    import shutil
    root = tmp_path / "vid"
    shutil.copytree(tiny_vid, root)
    broken = root / "Data" / "VID" / "train" / "ILSVRC2015_VID_train_0000" / "ILSVRC2015_train_00000000" / "000002.JPEG"
    broken.write_bytes(b"\xff\xd8 not really")
    cfg = tiny_cfg("rfcn", root, tmp_path, end_epoch=1)
    res = run(cfg, tmp_path / "o", accumulate=4)
    # frame 2 and its flipped copy are skipped; the epoch runs to its end
    assert res.bad_samples == 2 and res.epoch == 1 and res.iteration == 3
    assert sum(h["images"] for h in res.history) == 10
    log = (tmp_path / "o" / "train.log").read_text()
    assert f"warning: {broken}: cannot decode" in log and "2 unreadable training samples were skipped" in log


def test_set_overrides_reach_the_trainer(tmp_path, capsys):
    cfg_file = tmp_path / "x.yaml"
    cfg_file.write_text(yaml.safe_dump({"dataset": {"dataset_path": str(tmp_path / "nowhere")},
                                        "TRAIN": {"BATCH_IMAGES": 1}, "output_path": str(tmp_path / "out")}))
    assert run_train_test(["--cfg", str(cfg_file), "--set", "TRAIN.BATCH_IMAGES=2", "--no-progress"], "rfcn") == 2
    assert "TRAIN.BATCH_IMAGES = 2" in capsys.readouterr().err
    assert run_train_test(["--cfg", str(cfg_file), "--set", "TRAIN.nope=1", "--no-progress"], "rfcn") == 2
    assert "TRAIN.nope" in capsys.readouterr().err


def test_a_run_undoes_its_log_set_up(tiny_vid, tmp_path):
    logger = logging.getLogger("dff")
    before = list(logger.handlers)
    cfg = tiny_cfg("rfcn", tiny_vid, tmp_path)
    run(cfg, tmp_path / "o", max_iters=1, frequent=1)
    assert logger.handlers == before
    lines = (tmp_path / "o" / "train.log").read_text().splitlines()
    assert any(" Epoch[0] Batch [1] Update 1 Speed: " in ln for ln in lines)
    assert all(ln[:4].isdigit() and ln[4] == "-" for ln in lines)  # "%(asctime)s %(message)s"
