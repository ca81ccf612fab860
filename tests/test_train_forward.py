"""Training losses (docs/design.md §1.9, 3.4), OHEM, and the training forward of R-FCN and DFF on a tiny model."""
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import dff.models.rfcn as rfcn_module
from dff.config import default_config, update_config
from dff.models.dff import DFF
from dff.models.loss import accuracy_valid, ohem_select, rcnn_losses, rpn_losses, smooth_l1, softmax_ce_valid
from dff.models.rfcn import RFCN

H, W = 192, 256  # >= 136 px per side, so some anchors lie fully inside the image


# --- losses ----------------------------------------------------------------------------------------

def _batch(data, im_info, gt, data_ref=None, eq_flag=None) -> dict:
    """The trainer's batch dictionary (DFF's reference frame in it when given)."""
    batch = {"data": data, "im_info": im_info, "gt_boxes": gt}
    if data_ref is not None:
        batch.update(data_ref=data_ref, eq_flag=eq_flag)
    return batch

def test_smooth_l1_sigma_1_and_3():
    x = torch.tensor([0.05, -0.5, 2.0, -3.0])
    torch.testing.assert_close(smooth_l1(x, 1.0), torch.tensor([0.00125, 0.125, 1.5, 2.5]))
    # sigma 3: quadratic 4.5 x^2 below 1/9, else |x| - 1/18
    torch.testing.assert_close(smooth_l1(x, 3.0), torch.tensor([0.01125, 0.5 - 1 / 18, 2 - 1 / 18, 3 - 1 / 18]))


def test_softmax_ce_valid_value_and_softmaxoutput_gradient():
    logits = torch.tensor([[0.0, math.log(3)], [1.0, 2.0], [math.log(3), 0.0], [0.3, -0.2]], requires_grad=True)
    labels = torch.tensor([1, -1, 0, -1])
    loss = softmax_ce_valid(logits, labels)
    torch.testing.assert_close(loss, torch.tensor(math.log(4 / 3)))  # both valid rows: p = 3/4
    loss.backward()
    # MXNet SoftmaxOutput(normalization='valid'): (p - onehot) / #valid on valid rows, 0 on ignored rows
    p = F.softmax(logits.detach(), dim=1)
    expect = torch.zeros(4, 2)
    expect[0] = (p[0] - torch.tensor([0.0, 1.0])) / 2
    expect[2] = (p[2] - torch.tensor([1.0, 0.0])) / 2
    torch.testing.assert_close(logits.grad, expect)
    nothing = softmax_ce_valid(logits.detach(), torch.full((4,), -1))
    assert float(nothing) == 0.0  # normaliser max(#valid, 1): no NaN


def test_rpn_losses_pair_channel_a_with_a_plus_A_and_normalise():
    # A = 2 anchors, 1 x 2 cells; labels in (a, y, x) order: [a0x0, a0x1, a1x0, a1x1]
    ln3 = math.log(3)
    score = torch.zeros(1, 4, 1, 2)
    score[0, 2, 0] = torch.tensor([ln3, -ln3])  # foreground logits of anchor 0 (channel 0 + A)
    score[0, 3, 0] = torch.tensor([-ln3, 5.0])  # foreground logits of anchor 1
    labels = torch.tensor([1, 0, 1, -1])
    pred = torch.zeros(1, 8, 1, 2)
    target = torch.zeros(1, 8, 1, 2)
    weight = torch.zeros(1, 8, 1, 2)
    pred[0, 4:8, 0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.1])  # anchor 1 at x=0, the only weighted one
    weight[0, 4:8, 0, 0] = 1
    pred[0, 0:4, 0, 1] = 9.0  # unweighted: must not count
    cls, box, acc = rpn_losses(score, pred, labels, target, weight, sigma=1.0, batch_size=256)
    torch.testing.assert_close(cls, torch.tensor((2 * math.log(4 / 3) + math.log(4)) / 3))
    torch.testing.assert_close(box, torch.tensor((0.125 + 1.5 + 0.0 + 0.005) / 256))
    torch.testing.assert_close(acc, torch.tensor(2 / 3))
    _, box3, _ = rpn_losses(score, pred, labels, target, weight, sigma=3.0, batch_size=256)
    torch.testing.assert_close(box3, torch.tensor((0.5 - 1 / 18 + 2 - 1 / 18 + 0.0 + 4.5 * 0.01) / 256))


def test_rcnn_losses_average_over_kept_rois_and_divide_box_by_128():
    cls_score = torch.tensor([[0.0, 0.0, math.log(2)], [5.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, 9.0, 0.0]])
    labels = torch.tensor([2, -1, 0, -1])  # OHEM labels: two rois kept
    pred = torch.zeros(4, 8)
    target = torch.zeros(4, 8)
    weights = torch.zeros(4, 8)
    pred[0, 4] = 1.0
    weights[0, 4:] = 1
    pred[3] = 7.0  # dropped by OHEM: weight 0
    cls, box, acc = rcnn_losses(cls_score, pred, labels, target, weights, normalizer=128)
    torch.testing.assert_close(cls, torch.tensor(math.log(2)))  # p = 2/4 for both kept rois
    torch.testing.assert_close(box, torch.tensor(0.5 / 128))
    torch.testing.assert_close(acc, torch.tensor(1.0))
    assert float(accuracy_valid(cls_score, torch.tensor([1, 1, 1, 1]))) == 0.25


def test_ohem_keeps_the_128_largest_losses():
    g = torch.Generator().manual_seed(0)
    R, C = 302, 31
    cls_score = torch.randn(R, C, generator=g) * 2
    labels = torch.randint(0, C, (R,), generator=g)
    labels[torch.rand(R, generator=g) < 0.6] = 0
    pred = torch.randn(R, 8, generator=g)
    target = torch.randn(R, 8, generator=g)
    weights = torch.zeros(R, 8)
    weights[labels > 0, 4:] = 1
    s = cls_score.double()
    ce = -np.log(F.softmax(s, dim=1).numpy()[np.arange(R), labels.numpy()] + 1e-14)
    d = (pred - target).double().abs().numpy()
    box = (weights.double().numpy() * np.where(d < 1, 0.5 * d * d, d - 0.5)).sum(1)
    total = ce + box
    srt = np.sort(total)[::-1]
    assert srt[127] - srt[128] > 1e-4  # no near-tie at the cut
    hardest = set(np.argsort(-total)[:128].tolist())
    cls_score.requires_grad_(True)
    lab_o, w_o = ohem_select(cls_score, pred, labels, target, weights, 128)
    assert not lab_o.requires_grad and not w_o.requires_grad
    kept = set(torch.nonzero(lab_o != -1).flatten().tolist())
    assert kept == hardest
    idx = torch.tensor(sorted(hardest))
    assert torch.equal(lab_o[idx], labels[idx]) and torch.equal(w_o[idx], weights[idx])
    rest = torch.tensor(sorted(set(range(R)) - hardest))
    assert (lab_o[rest] == -1).all() and (w_o[rest] == 0).all()
    assert (labels != -1).all() and weights[rest].sum() > 0  # inputs untouched
    lab_all, _ = ohem_select(cls_score[:100], pred[:100], labels[:100], target[:100], weights[:100], 128)
    assert torch.equal(lab_all, labels[:100])  # fewer rois than 128: all kept


# --- training forward --------------------------------------------------------------------------------
def _cfg(**train):
    cfg = default_config()
    update_config(cfg, {
        "network": {"BACKBONE": "resnet_v1_tiny", "DFF_FEAT_DIM": 64, "PIXEL_MEANS": [103.06, 115.90, 123.15]},
        # the shipped training YAML's values (experiments/*/cfgs/*_end2end_ohem.yaml)
        "TRAIN": {"ENABLE_OHEM": True, "BATCH_IMAGES": 1, "END2END": True, "BATCH_ROIS": -1, "BATCH_ROIS_OHEM": 128,
                  "RPN_PRE_NMS_TOP_N": 6000, "RPN_POST_NMS_TOP_N": 300, "RPN_MIN_SIZE": 0,
                  "BBOX_NORMALIZATION_PRECOMPUTED": True, **train}})
    return cfg


def _init_heads(model):
    """The reference's init_weight: N(0, 0.01) weights and zero biases for feat_conv, RPN and R-FCN."""
    with torch.no_grad():
        for m in (model.feat_conv_3x3, model.rpn_head.rpn_cls_score, model.rpn_head.rpn_bbox_pred,
                  model.rfcn_head.rfcn_cls, model.rfcn_head.rfcn_bbox):
            m.weight.normal_(0, 0.01)
            m.bias.zero_()
    return model


def _make(cls, seed=0, **train):
    torch.manual_seed(seed)
    model = _init_heads(cls(_cfg(**train))).train()
    if isinstance(model, DFF):
        model.flownet.init_scale_identity()
    return model


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(1, 3, H, W, generator=g) * 50
    data_ref = data + torch.randn(1, 3, H, W, generator=g) * 10
    im_info = torch.tensor([[H, W, 1.0]])
    gt = torch.tensor([[[30.0, 20.0, 170.0, 160.0, 3.0], [120.0, 60.0, 250.0, 180.0, 12.0]]])
    return data, im_info, gt, data_ref


KEYS = {"loss", "rpn_cls_loss", "rpn_bbox_loss", "rcnn_cls_loss", "rcnn_bbox_loss", "rpn_acc", "rcnn_acc"}
TRAINED = ["backbone.conv1.weight", "backbone.res3a.branch2a.weight", "backbone.res5a.branch2c.weight",
           "backbone.res4a.bn_branch2b.weight", "feat_conv_3x3.weight", "rpn_head.rpn_cls_score.weight",
           "rpn_head.rpn_bbox_pred.weight", "rfcn_head.rfcn_cls.weight", "rfcn_head.rfcn_bbox.weight"]


def _grad_norms(model):
    return {n: (None if p.grad is None else float(p.grad.abs().sum())) for n, p in model.named_parameters()}


def _values(out):
    return {k: float(v.detach()) for k, v in out.items()}


def test_rfcn_forward_train_losses_and_gradients():
    model = _make(RFCN)
    data, im_info, gt, _ = _inputs()
    out = model.forward_train(_batch(data, im_info, gt), torch.Generator().manual_seed(0))
    assert set(out) == KEYS
    vals = _values(out)
    for k, v in out.items():
        assert v.dim() == 0 and math.isfinite(vals[k]), k
    assert not out["rpn_acc"].requires_grad and not out["rcnn_acc"].requires_grad
    assert 0 <= vals["rpn_acc"] <= 1 and 0 <= vals["rcnn_acc"] <= 1
    parts = out["rpn_cls_loss"] + out["rpn_bbox_loss"] + out["rcnn_cls_loss"] + out["rcnn_bbox_loss"]
    torch.testing.assert_close(out["loss"], parts)
    # near-zero heads: RPN CE ~ ln 2, R-FCN CE ~ ln 31, box losses positive (there are positives)
    assert abs(vals["rpn_cls_loss"] - math.log(2)) < 0.05
    assert abs(vals["rcnn_cls_loss"] - math.log(31)) < 0.05
    assert vals["rpn_bbox_loss"] > 0 and vals["rcnn_bbox_loss"] > 0
    out["loss"].backward()
    grads = _grad_norms(model)
    for name in TRAINED:
        assert grads[name] is not None and grads[name] > 0, name


def test_forward_train_is_reproducible_given_the_generator():
    model = _make(RFCN)
    data, im_info, gt, _ = _inputs()
    a = _values(model.forward_train(_batch(data, im_info, gt), torch.Generator().manual_seed(5)))
    b = _values(model.forward_train(_batch(data, im_info[0], gt[0]), torch.Generator().manual_seed(5)))
    assert a == b


def test_ohem_off_divides_the_box_loss_by_the_roi_count(monkeypatch):
    seen = {}
    real = rfcn_module.rcnn_losses

    def spy(*args, normalizer):
        seen["normalizer"] = normalizer
        seen["labels"] = args[2]
        return real(*args, normalizer=normalizer)

    monkeypatch.setattr(rfcn_module, "rcnn_losses", spy)
    data, im_info, gt, _ = _inputs()
    _make(RFCN, ENABLE_OHEM=False).forward_train(_batch(data, im_info, gt))
    assert seen["normalizer"] == 300 + 2 and (seen["labels"] >= 0).all()  # all 300 proposals + 2 gt
    _make(RFCN).forward_train(_batch(data, im_info, gt))
    assert seen["normalizer"] == 128 and int((seen["labels"] != -1).sum()) == 128


def test_dff_eq_flag_1_uses_the_unwarped_key_feature_and_never_runs_flownet():
    model = _make(DFF)
    calls = []
    model.flownet.register_forward_hook(lambda *a: calls.append(1))
    data, im_info, gt, data_ref = _inputs()
    out = model.forward_train(_batch(data, im_info, gt, data_ref, torch.tensor([1.0])), torch.Generator().manual_seed(0))
    assert calls == []
    # = the per-frame R-FCN on the key frame's feature with the current frame's gt and im_info
    ref = RFCN.task_losses(model, model.extract_feature(data_ref), im_info, gt, torch.Generator().manual_seed(0))
    assert _values(out) == _values(ref)
    out["loss"].backward()
    grads = _grad_norms(model)
    assert all(v is None for n, v in grads.items() if n.startswith("flownet."))
    for name in TRAINED:
        assert grads[name] is not None and grads[name] > 0, name


def test_dff_eq_flag_0_with_zero_flow_equals_eq_flag_1_and_trains_flow_and_scale():
    model = _make(DFF)
    with torch.no_grad():  # flow = 0 and scale = 1: the warp must give the key feature back exactly
        model.flownet.Convolution5.weight.zero_()
        model.flownet.Convolution5.bias.zero_()
    data, im_info, gt, data_ref = _inputs()
    warped = model.forward_train(_batch(data, im_info, gt, data_ref, 0), torch.Generator().manual_seed(0))
    same = model.forward_train(_batch(data, im_info, gt, data_ref, 1), torch.Generator().manual_seed(0))
    assert _values(warped) == _values(same)
    warped["loss"].backward()
    grads = _grad_norms(model)
    for name in ["flownet.Convolution5.weight", "flownet.Convolution5.bias", "flownet.Convolution5_scale.weight"]:
        assert grads[name] is not None and grads[name] > 0, name
    assert grads["flownet.Convolution5_scale.bias"] is None  # frozen at 1 (lr_mult 0 in the reference)
    assert not model.flownet.Convolution5_scale.bias.requires_grad
    for name in TRAINED:  # the ResNet is reached through the bilinear warp
        assert grads[name] is not None and grads[name] > 0, name


def test_dff_eq_flag_0_gradients_reach_all_of_flownet():
    model = _make(DFF)
    data, im_info, gt, data_ref = _inputs()
    out = model.forward_train(_batch(data, im_info, gt, data_ref, torch.tensor([0.0])), torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in _values(out).values())
    out["loss"].backward()
    grads = _grad_norms(model)
    flow = {n: v for n, v in grads.items() if n.startswith("flownet.") and n != "flownet.Convolution5_scale.bias"}
    assert len(flow) > 40 and all(v is not None and v > 0 for v in flow.values()), \
        [n for n, v in flow.items() if not v]
    assert grads["flownet.Convolution5_scale.bias"] is None


def test_a_few_sgd_steps_on_one_image_reduce_the_loss():
    model = _make(RFCN, seed=1)
    data, im_info, gt, _ = _inputs(1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        out = model.forward_train(_batch(data, im_info, gt), torch.Generator().manual_seed(0))
        losses.append(float(out["loss"].detach()))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    final = float(model.forward_train(_batch(data, im_info, gt), torch.Generator().manual_seed(0))["loss"].detach())
    # ~0.79 in practice (the R-FCN CE starts at ln 31 and moves slowly from the N(0, 0.01) init)
    assert final < 0.85 * losses[0], losses + [final]


def test_forward_train_bad_input_names_the_problem():
    model = _make(DFF)
    data, im_info, gt, data_ref = _inputs()
    with pytest.raises(ValueError, match="one image"):
        model.forward_train(_batch(data.repeat(2, 1, 1, 1), im_info, gt, data_ref.repeat(2, 1, 1, 1), 1))
    with pytest.raises(ValueError, match="gt_boxes"):
        model.forward_train(_batch(data, im_info, gt[..., :4], data_ref, 1))
    with pytest.raises(ValueError, match="im_info"):
        model.forward_train(_batch(data, im_info[:, :2], gt, data_ref, 1))
    with pytest.raises(ValueError, match="eq_flag"):
        model.forward_train(_batch(data, im_info, gt, data_ref, 2))
    with pytest.raises(ValueError, match="data_ref"):
        model.forward_train(_batch(data, im_info, gt, data_ref[..., :-16], 0))
