"""THP ("Towards High Performance Video Object Detection", docs/design.md §9): Q, the flow network's
estimate of how good the warped feature is at each position, drives adaptive key frames and the partial
feature update; key frames aggregate recursively with FGFA's embedding weights."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.config import Config
from dff.temporal.aggregation import AGGREGATION, RecursiveAggregation
from dff.temporal.base import LoopOptions, batch_flag, check_same_shape
from dff.temporal.registry import register

# Q's initial bias: sigmoid(3) = 0.95, "the warped feature is as good" everywhere, so an untrained Q head
# neither triggers key frames nor updates (the model starts as the DFF it is fine-tuned from).
Q_INIT_BIAS = 3.0
# trained end to end (TRAIN.THP_Q_TRAINING ste) Q starts inside the straight-through window (logit within 1 of
# tau's) and below tau: every position recomputed, and the area penalty drives Q up where recomputing does not
# lower the task loss. Started above tau, no position was ever updated: the task loss's gradient per position is
# far below the penalty's, and Q drifted out of the window (docs/design.md §9.1)
Q_INIT_BIAS_STE = -0.5
FORCED_MASK_STREAM = 5  # the sample-seed stream of the forced masks (the loader's use 0 and 1)


class KeyFrameAggregation(nn.Module):
    """Embedding ``em_conv1`` (1x1) -> ReLU -> ``em_conv2`` (3x3) -> ReLU -> ``em_conv3`` (1x1), as FGFA; the
    weight of a source is ``exp(cos(e_source, e_key))`` normalised over the two sources (the key frame's own
    feature has cosine 1 with itself).

    Args:
        feat_dim: channels of the feature (``DFF_FEAT_DIM``).
        embed_dim: channels of the embedding (``network.THP_EMBED_DIM``); the hidden layers have half.
    """

    def __init__(self, feat_dim: int, embed_dim: int) -> None:
        super().__init__()
        if embed_dim < 2:
            raise ValueError(f"network.THP_EMBED_DIM must be at least 2, got {embed_dim}")
        hidden = embed_dim // 2
        self.em_conv1 = nn.Conv2d(feat_dim, hidden, 1)
        self.em_conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.em_conv3 = nn.Conv2d(hidden, embed_dim, 1)

    def embed(self, feat: Tensor) -> Tensor:
        """feat (N, C, h, w) -> unit-length embedding (N, embed_dim, h, w)."""
        x = F.relu(self.em_conv1(feat))
        x = F.relu(self.em_conv2(x))
        return F.normalize(self.em_conv3(x), dim=1)

    def weights(self, key_feat: Tensor, prev_warped: Tensor) -> tuple[Tensor, Tensor]:
        """(weight of the key frame's own feature, weight of the warped previous one), each (N, 1, h, w),
        summing to 1 at every position."""
        cos = (self.embed(key_feat) * self.embed(prev_warped)).sum(dim=1, keepdim=True)
        w = torch.softmax(torch.cat((torch.ones_like(cos), cos), dim=1), dim=1)
        return w[:, :1], w[:, 1:]

    def forward(self, key_feat: Tensor, prev_warped: Tensor) -> Tensor:
        """key_feat, prev_warped (N, C, h, w) -> the aggregated key feature (N, C, h, w)."""
        w_key, w_prev = self.weights(key_feat, prev_warped)
        return w_key * key_feat + w_prev * prev_warped


def feature_consistency(warped: Tensor, own: Tensor, sigma: float) -> Tensor:
    """Q's training target, (N, C, h, w) x 2 -> (N, 1, h, w) in (0, 1]: ``exp(-(r / sigma)^2)`` with ``r`` the
    distance of the warped key feature from the frame's own feature at a position, relative to the own
    feature's mean norm over the frame (1 = identical; docs/design.md §9.1 says why not the cosine)."""
    dist = (warped - own).norm(dim=1, keepdim=True)
    ref = own.norm(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return torch.exp(-(dist / (ref * sigma)) ** 2)


@register("thp")
class THP(RecursiveAggregation):
    """All of THP's options: ``TEST.KEY_FRAME_SCHEDULE`` adaptive, ``PARTIAL_UPDATE``, ``AGGREGATION``."""

    has_q = True
    new_layer_patterns = ("flownet.Convolution5_q*", f"{AGGREGATION}.*")
    loss_names = ("q_loss",)

    def build_modules(self, feat_dim: int) -> dict[str, nn.Module]:
        return {AGGREGATION: KeyFrameAggregation(feat_dim, int(self.cfg.network.THP_EMBED_DIM))}

    @torch.no_grad()
    def init_layers(self, model: nn.Module) -> None:
        """Q's head weight 0 and bias :data:`Q_INIT_BIAS` (Q starts high everywhere), or trained end to end, tau's
        logit plus :data:`Q_INIT_BIAS_STE`; the embedding keeps PyTorch's default initialisation."""
        q_head = model.flownet.Convolution5_q
        q_head.weight.zero_()
        ste = str(self.cfg.TRAIN.THP_Q_TRAINING) == "ste"
        q_head.bias.fill_(Q_INIT_BIAS_STE + math.log(self.cfg.TRAIN.THP_TAU / (1 - self.cfg.TRAIN.THP_TAU))
                          if ste else Q_INIT_BIAS)

    def options(self, cfg: Config) -> LoopOptions:
        return LoopOptions.from_config(cfg)

    def train_feature(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """THP's training feature and Q's loss (docs/design.md §9.4).

        1. key feature: :meth:`key_frame_feature` (aggregated recursively over the earlier key frames unless
           ``prev_flag``);
        2. with ``eq_flag`` 1 that is the feature (Q is not trained on the pair); else FlowNet(data, data_ref)
           gives flow, scale and Q, the key feature is warped, the frame's own feature is computed, and the mask U
           of the partial update takes the own feature where it is 1 (``TRAIN.THP_TAU``). How Q learns is
           ``TRAIN.THP_Q_TRAINING``:

           * ``ste`` (THP §3.2): the task loss reaches Q through U by the straight-through estimator
             (:func:`straight_through_mask`), plus the area penalty ``THP_AREA_LAMBDA * mean(U)`` (the ``q_loss``);
             U is all-0 for a third of the samples and all-1 for another third (:func:`forced_update`), so both
             the propagated and the recomputed paths are trained;
           * ``target``: Q regresses the consistency of the two features (:func:`feature_consistency`, binary
             cross-entropy, ``THP_Q_LOSS_WEIGHT``); U carries no gradient.
        3. with ``TRAIN.THP_AGGREGATE_NON_KEY`` the updated feature is aggregated with the warped key feature
           (THP's Eq. 7), as the loop does on non-key frames with ``TEST.AGGREGATION``.
        """
        data, data_ref = batch["data"], batch["data_ref"]
        check_same_shape(data, data_ref)
        key_feat = self.key_frame_feature(model, batch)
        if batch_flag(batch["eq_flag"], "eq_flag"):
            return key_feat, {"q_loss": key_feat.new_zeros(())}
        flow, scale, q = model.estimate_flow_q(data, data_ref)
        warped = model.warp(key_feat, flow, scale)
        tr = self.cfg.TRAIN
        tau = float(tr.THP_TAU)
        training = str(tr.THP_Q_TRAINING)
        if training == "ste":
            forced = forced_update(batch)
            if forced is None:
                update = straight_through_mask(q, tau)
                q_loss = update.mean() * float(tr.THP_AREA_LAMBDA)
                feat = update * model.extract_feature(data) + (1.0 - update) * warped
            else:  # all warped or all recomputed: the other feature is not needed, and Q takes no gradient
                feat = model.extract_feature(data) if forced else warped
                q_loss = q.sum() * 0.0  # stays in the graph
        elif training == "target":
            own = model.extract_feature(data)
            target = feature_consistency(warped.detach(), own.detach(), float(tr.THP_Q_SIGMA))
            q_loss = F.binary_cross_entropy(q.float(), target.float()) * float(tr.THP_Q_LOSS_WEIGHT)
            feat = torch.where(q.detach() <= tau, own, warped)
        else:
            raise ValueError(f"TRAIN.THP_Q_TRAINING must be ste or target, got {training!r}")
        if bool(tr.THP_AGGREGATE_NON_KEY):
            feat = model.aggregate(feat, warped)
        return feat, {"q_loss": q_loss}


def straight_through_mask(q: Tensor, tau: float) -> Tensor:
    """THP's update mask U = 1[Q <= tau] (N, 1, h, w), with the straight-through gradient dU/dz = -1 where
    |z - logit(tau)| <= 1 and 0 elsewhere, z being Q's logit: the paper's Q is the conv's raw output with tau 0;
    ours is its sigmoid, so the window is set on the logit and tau 0.5 is the paper's threshold."""
    z = torch.logit(q.clamp(1e-6, 1.0 - 1e-6))
    z_tau = math.log(tau / (1.0 - tau))
    hard = (z <= z_tau).to(q.dtype)
    window = ((z - z_tau).abs() <= 1.0).to(q.dtype)
    return hard - (z - z.detach()) * window


def forced_update(batch: dict[str, Tensor]) -> int | None:
    """THP's forced masks: 0 (all warped) for a third of the samples, 1 (all recomputed) for another third, None
    (Q's own mask) for the rest; drawn from the sample's (epoch, index), so a resumed run draws the same."""
    epoch = int(torch.as_tensor(batch.get("epoch", 0)).reshape(-1)[0])
    index = int(torch.as_tensor(batch.get("index", 0)).reshape(-1)[0])
    draw = int(np.random.default_rng([epoch, index, FORCED_MASK_STREAM]).integers(3))
    return None if draw == 2 else draw
