"""What every model of this package shares: the feature network, the capabilities and the training forward.

A model is a feature network (a backbone of :mod:`dff.models.registry` and ``feat_conv_3x3``, the layer whose
output DFF caches and warps) and a task network (detection: :class:`dff.models.rfcn.RFCN`; semantic
segmentation: :class:`dff.models.deeplab.DeepLab`). The engine, the trainer and the temporal schemes use only
this protocol, plus the task network that :attr:`FeatureModel.task` names:

* ``class_names`` (background first) and the capabilities ``has_flow``, ``has_q``, ``task``, ``scheme`` (the
  temporal scheme, :mod:`dff.temporal`) and ``loss_names``;
* :meth:`FeatureModel.extract_feature` (the feature network), split into the backbone and
  :meth:`FeatureModel.feature_from_backbone` for THP's partial update;
* :meth:`FeatureModel.forward_train` (one batch dictionary -> the losses): the scheme's training feature, then
  the task's :meth:`FeatureModel.task_loss`, then the scheme's own losses;
* what training needs to start a model: :attr:`FeatureModel.new_layers` (initialised N(0, 0.01)) and
  :attr:`FeatureModel.class_layers` (those whose shape follows the class list).
"""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dff.config import Config, class_names
from dff.models.registry import build_backbone
from dff.temporal import build_scheme
from dff.utils.checkpoint import mxnet_param_name


class FeatureModel(nn.Module):
    """The feature network of any task: ``backbone`` (stride 16) and ``feat_conv_3x3`` (3x3, dilation 6, to
    ``network.DFF_FEAT_DIM`` channels, ReLU). Subclasses set :attr:`kind`, :attr:`task`, :attr:`task_loss_names`
    and implement :meth:`task_loss`."""

    kind: ClassVar[str] = ""  # the checkpoint's ``model_kind`` (dff.models.builder.MODEL_KINDS)
    task: ClassVar[str] = ""  # "det" or "seg": which task network, engine and evaluation apply
    uses_flow: ClassVar[bool] = False
    task_loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    # layers a fresh model initialises N(0, 0.01), bias 0 (the reference's ``init_weight``)
    new_layers: ClassVar[tuple[str, ...]] = ("feat_conv_3x3",)
    # parameter-name prefixes whose shape follows the class list (re-initialised when fine-tuning to new classes)
    class_layers: tuple[str, ...] = ()

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.scheme = build_scheme(cfg, self.uses_flow)
        self.class_names = class_names(cfg)  # background first; the checkpoint's config carries it
        self.num_classes = len(self.class_names)
        self.feat_dim = int(cfg.network.DFF_FEAT_DIM)
        self.backbone = build_backbone(cfg.network)
        self.feat_conv_3x3 = nn.Conv2d(self.backbone.out_channels, self.feat_dim, 3, padding=6, dilation=6)

    # capabilities ---------------------------------------------------------------------------------
    @property
    def has_flow(self) -> bool:
        """The model holds a flow network (non-key frames can be warped from a key frame)."""
        return self.scheme.uses_flow

    @property
    def has_q(self) -> bool:
        """The flow network also predicts THP's Q (adaptive key frames, partial update)."""
        return self.scheme.has_q

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The keys of :meth:`forward_train`'s output that the trainer logs, in order: the task's, then the
        temporal scheme's own."""
        return self.task_loss_names + self.scheme.loss_names

    # feature network ------------------------------------------------------------------------------
    def extract_feature(self, data: Tensor) -> Tensor:
        """data (N, 3, H, W) -> feature (N, DFF_FEAT_DIM, ceil(H/16), ceil(W/16)) (``feat_conv_3x3_relu``)."""
        return self.feature_from_backbone(self.backbone(data))

    def feature_from_backbone(self, x: Tensor) -> Tensor:
        """The feature network's last layer: backbone output (N, C_res5, h, w) -> feature (N, DFF_FEAT_DIM, h, w).
        Split from :meth:`extract_feature` for THP's partial update, which recomputes the two halves apart."""
        return F.relu(self.feat_conv_3x3(x))

    @property
    def feature_head_reach(self) -> int:
        """How many cells away :meth:`feature_from_backbone` reads (``feat_conv_3x3``: dilation 6, 3x3)."""
        conv = self.feat_conv_3x3
        return int(conv.dilation[0]) * (int(conv.kernel_size[0]) // 2)

    # training -------------------------------------------------------------------------------------
    def task_loss(self, feat: Tensor, batch: dict[str, Tensor],
                  generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The task network's losses on the feature that carries them (``loss`` their differentiable sum)."""
        raise NotImplementedError

    def forward_train(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training forward on one image (the reference's ``get_train_symbol``); the same call for every model.

        ``batch``: ``data`` (1, 3, H, W) the preprocessed image, ``im_info`` (1, 3), the task's targets
        (detection: ``gt_boxes`` (1, G, 5) or (G, 5) in scaled-image pixels; segmentation: ``label`` (1, H, W)),
        on the model's device, plus what the temporal scheme reads (DFF: ``data_ref`` and ``eq_flag``; key-frame
        aggregation: ``data_prev`` and ``prev_flag``). Returns the dict of :meth:`task_loss` with the scheme's own
        losses added (their sum in ``loss``); call ``out["loss"].backward()``.
        """
        data = batch["data"]
        if data.dim() != 4 or data.shape[0] != 1:
            raise ValueError(f"forward_train: data must be one image (1, 3, H, W), got {tuple(data.shape)}")
        feat, scheme_losses = self.scheme.train_feature(self, batch)
        out = self.task_loss(feat, batch, generator)
        for name, value in scheme_losses.items():
            out[name] = value
            out["loss"] = out["loss"] + value
        return out

    def train_feature(self, batch: dict[str, Tensor]) -> Tensor:
        """The feature that carries the training losses (the temporal scheme's)."""
        return self.scheme.train_feature(self, batch)[0]

    def init_video_layers(self) -> None:
        """Start the temporal scheme's own layers (those a simpler model's checkpoint lacks) so that the model
        begins as that simpler model."""
        self.scheme.init_layers(self)

    def frozen_parameters(self, fixed_prefixes: Sequence[str] | None = None) -> set[str]:
        """Names of the parameters training keeps fixed: the one place this is decided.

        Those whose MXNet name starts with one of ``fixed_prefixes`` (default ``network.FIXED_PARAMS``;
        the reference matches prefixes, so ``"gamma"`` freezes nothing and ``"bn"`` every BatchNorm
        scale), plus what the model itself keeps fixed (DFF: the scale map's bias).
        """
        prefixes = tuple(str(p) for p in (self.cfg.network.FIXED_PARAMS if fixed_prefixes is None else fixed_prefixes))
        frozen = set()
        for key, _ in self.named_parameters():
            mx = mxnet_param_name(key)
            if mx is not None and mx.startswith(prefixes):
                frozen.add(key)
        return frozen
