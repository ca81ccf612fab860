"""The reference's optimiser: MXNet SGD with momentum, its weight-decay scope, frozen parameters and the
``WarmupMultiFactorScheduler`` learning-rate schedule (docs/design.md §5.3, 5.4).

Update (MXNet ``sgd_mom_update``, ``rescale_grad`` 1, no clipping), per parameter w with gradient g::

    v <- momentum * v - (lr * wd) * w - lr * g
    w <- w + v

PyTorch's ``torch.optim.SGD`` keeps ``b <- momentum * b + (g + wd * w)`` and steps ``w <- w - lr * b``:
the two agree while lr is constant (v = -lr * b) but not right after an lr change, where MXNet's
velocity keeps the momentum accumulated at the *old* rate while PyTorch rescales it by the new one.
:class:`MXNetSGD` implements the MXNet form, so the step after the x0.1 drop matches the reference.

Weight decay (MXNet ``Optimizer.set_wd_mult``): only parameters whose MXNet name ends in ``_weight`` or
``_gamma``; biases and BN betas get none. Frozen (never updated, no gradient): every parameter whose
MXNet name *starts with* one of ``network.FIXED_PARAMS`` (**QUIRK**: the reference's ``gamma``/``beta``
entries match nothing, so BN gamma/beta of res3-res5 are trained) and FlowNet's
``Convolution5_scale_bias`` (lr_mult 0 in the reference).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from dff.utils.checkpoint import mxnet_param_name

__all__ = ["MXNetSGD", "ParamGroups", "build_param_groups", "WarmupMultiFactorSchedule", "lr_schedule"]


class MXNetSGD(Optimizer):
    """SGD with momentum in MXNet's update form (see the module docstring).

    Args:
        params: parameters or groups (a group may set its own ``wd``, e.g. 0 for biases).
        lr: learning rate (the trainer sets it per step from the schedule).
        momentum: 0.9 in the reference.
        wd: weight decay of groups that do not set one.

    State per parameter: ``momentum_buffer`` (the velocity v, same shape as the parameter). A parameter
    without a gradient (``.grad is None``) is still updated with g = 0, as MXNet updates every
    trainable parameter each step (momentum keeps moving it and weight decay applies).
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9, wd: float = 0.0) -> None:
        if lr < 0 or momentum < 0 or wd < 0:
            raise ValueError(f"MXNetSGD: lr={lr}, momentum={momentum}, wd={wd} must be >= 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "wd": wd})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"]]
            if not params:
                continue
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            # MXNet multiplies the float32 scalars lr * wd before touching the weights
            lr = float(np.float32(group["lr"]))
            lr_wd = float(np.float32(group["lr"]) * np.float32(group["wd"]))
            torch._foreach_mul_(bufs, float(group["momentum"]))
            if lr_wd != 0.0:
                torch._foreach_add_(bufs, params, alpha=-lr_wd)
            torch._foreach_add_(bufs, grads, alpha=-lr)
            torch._foreach_add_(params, bufs)
        return loss


@dataclasses.dataclass
class ParamGroups:
    """Which parameters are trained, with or without weight decay, or frozen (torch names)."""
    decay: list[str]
    no_decay: list[str]
    frozen: list[str]
    mxnet_names: dict[str, str]

    def groups(self, model: nn.Module, wd: float) -> list[dict[str, Any]]:
        """Optimizer groups: ``decay`` with ``wd``, ``no_decay`` with 0 (in model order)."""
        params = dict(model.named_parameters())
        out = [{"params": [params[n] for n in self.decay], "wd": wd, "name": "decay"},
               {"params": [params[n] for n in self.no_decay], "wd": 0.0, "name": "no_decay"}]
        return [g for g in out if g["params"]]


def build_param_groups(model: nn.Module, fixed_prefixes: Sequence[str] | None = None,
                       freeze: bool = True) -> ParamGroups:
    """Split ``model``'s parameters by the reference's rules (module docstring).

    The frozen ones are the model's :meth:`~dff.models.rfcn.RFCN.frozen_parameters` (``fixed_prefixes``
    defaults to ``network.FIXED_PARAMS``). With ``freeze`` they get ``requires_grad=False``. A parameter with neither an MXNet name nor a ``.weight``/``.bias`` name is an error
    (its weight-decay scope would be undefined).
    """
    frozen_names = model.frozen_parameters(fixed_prefixes)
    decay: list[str] = []
    no_decay: list[str] = []
    frozen: list[str] = []
    names: dict[str, str] = {}
    unnamed: list[str] = []
    for key, p in model.named_parameters():
        mx = mxnet_param_name(key)
        if mx is None:
            # layers the reference never had (the mobile variant's): PyTorch's names, by the same rule
            # (weights and BatchNorm scales decay, biases do not)
            if not key.endswith((".weight", ".bias")):
                unnamed.append(key)
                continue
            mx = key.rsplit(".", 1)[0] + ("_weight" if key.endswith(".weight") else "_bias")
        names[key] = mx
        if key in frozen_names:
            frozen.append(key)
            if freeze:
                p.requires_grad_(False)
        elif mx.endswith("_weight") or mx.endswith("_gamma"):
            decay.append(key)
        else:
            no_decay.append(key)
    if unnamed:
        raise ValueError(f"parameters without an MXNet name (weight-decay scope unknown): {', '.join(unnamed)}")
    return ParamGroups(decay, no_decay, frozen, names)


class WarmupMultiFactorSchedule:
    """The reference's ``WarmupMultiFactorScheduler`` as a pure function of the update count.

    ``schedule(num_update)`` is the lr of update ``num_update`` (1-based, MXNet's ``num_update``):
    ``warmup_lr`` while ``warmup`` and ``num_update < warmup_step``; otherwise
    ``base_lr * factor ** k`` with k the number of ``steps`` that ``num_update`` exceeds (strictly).
    """

    def __init__(self, base_lr: float, steps: Sequence[int], factor: float = 0.1, warmup: bool = False,
                 warmup_lr: float = 0.0, warmup_step: int = 0) -> None:
        steps = [int(s) for s in steps]
        for i, s in enumerate(steps):
            if s < 1 or (i and s <= steps[i - 1]):
                raise ValueError(f"lr schedule: steps must be increasing integers >= 1, got {steps} "
                                 "(TRAIN.lr_step is too small for this dataset size)")
        if factor > 1.0:
            raise ValueError(f"lr schedule: factor {factor} > 1 (TRAIN.lr_factor must reduce the lr)")
        self.base_lr = float(base_lr)
        self.steps = steps
        self.factor = float(factor)
        self.warmup = bool(warmup)
        self.warmup_lr = float(warmup_lr)
        self.warmup_step = int(warmup_step)

    def __call__(self, num_update: int) -> float:
        if self.warmup and num_update < self.warmup_step:
            return self.warmup_lr
        lr = self.base_lr
        for s in self.steps:
            if num_update > s:
                lr *= self.factor  # repeated multiplication, as the reference accumulates it
        return lr

    def __repr__(self) -> str:
        return (f"WarmupMultiFactorSchedule(base_lr={self.base_lr}, steps={self.steps}, factor={self.factor}, "
                f"warmup={self.warmup}, warmup_lr={self.warmup_lr}, warmup_step={self.warmup_step})")


def lr_schedule(cfg: Any, num_images: int, global_batch: int) -> WarmupMultiFactorSchedule:
    """The schedule of a whole run from epoch 0: ``TRAIN.lr_step`` epochs -> update counts
    ``int(epoch * num_images / global_batch)`` (the reference's expression), ``TRAIN.lr_factor``, warm-up.

    The reference computes the steps relative to ``begin_epoch`` and restarts its update counter when it
    resumes from an epoch checkpoint; this port resumes the exact update counter instead, so the steps
    are always counted from epoch 0 (the lr of every update equals an uninterrupted reference run; a
    fresh run that begins at ``begin_epoch`` > 0 starts its counter at the skipped epochs' updates).
    A step at an epoch <= 0 is folded into the initial lr, as the reference does.
    """
    t = cfg.TRAIN
    text = str(t.lr_step).strip()
    try:
        epochs = [float(e) for e in text.split(",") if e.strip()] if text else []
    except ValueError:
        raise ValueError(f"TRAIN.lr_step: {t.lr_step!r} is not a comma-separated list of epochs") from None
    base_lr = float(t.lr)
    # a step at epoch <= 0 is already passed at the start: the reference folds it into the initial lr
    for e in epochs:
        if e <= 0:
            base_lr *= float(t.lr_factor)
    steps = [int(e * num_images / global_batch) for e in epochs if e > 0]
    return WarmupMultiFactorSchedule(base_lr, steps, float(t.lr_factor), bool(t.warmup), float(t.warmup_lr),
                                     int(t.warmup_step))
