"""The one way to make a detector: :func:`build_model` from a config, :func:`load_model` from a file.

Every caller (trainer, tester, demos, benchmark, evaluation, parity) goes through these two, so the
model kind is decided in one place: a native checkpoint names it (``model_kind``), an MXNet file or
the fixture weights need it from the caller, and a model tells its own kind by ``model.kind``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from dff.config import MODEL_KEYS, Config, config_from_dict, load_config, parse_overrides, update_config
from dff.models.base import FeatureModel
from dff.models.deeplab import DeepLab, DFFDeepLab
from dff.models.dff import DFF
from dff.models.rfcn import RFCN
from dff.utils.checkpoint import (
    CheckpointError,
    bbox_test_params,
    detect_format,
    load_checkpoint,
    load_model_weights,
)
from dff.utils.fixture_weights import fixture_state_dict

__all__ = ["MODEL_KINDS", "FIXTURE", "build_model", "load_model", "load_run_model", "is_model_kind", "weights_tag",
           "tiled_bbox_stats", "fold_bbox_state",
           "unfold_bbox_state"]

MODEL_KINDS: dict[str, type[FeatureModel]] = {"rfcn": RFCN, "dff": DFF, "deeplab": DeepLab, "dff_deeplab": DFFDeepLab}
FIXTURE = "fixture"  # load_model's name for the deterministic weights of the parity fixtures


def build_model(kind: str, cfg: Config) -> FeatureModel:
    """``"rfcn"`` -> :class:`~dff.models.rfcn.RFCN`, ``"dff"`` -> :class:`~dff.models.dff.DFF`, ``"deeplab"`` ->
    :class:`~dff.models.deeplab.DeepLab`, ``"dff_deeplab"`` -> :class:`~dff.models.deeplab.DFFDeepLab`, randomly
    initialised."""
    try:
        cls = MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}") from None
    return cls(cfg)


def weights_tag(path: str | os.PathLike) -> str | None:
    """``"train"`` or ``"test"`` for a native checkpoint, read lazily (mmap); None otherwise."""
    if detect_format(path) != "native":
        return None
    meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return meta.get("weights") if isinstance(meta, dict) else None


def load_model(path: str | os.PathLike, cfg: Config | None = None, *, kind: str | None = None,
               device: str | torch.device = "cpu", overrides: Sequence[str] = ()) -> tuple[FeatureModel, Config]:
    """A detector with the test weights of ``path``, in eval mode on ``device``, and its config.

    Args:
        path: a native checkpoint (``.pth``; carries its config and ``model_kind``), an MXNet
            ``.params`` file, or ``"fixture"`` (the deterministic weights of the parity fixtures: the
            real pipeline, meaningless detections). The format is read from the content, not the name.
        cfg: the config to build with. A native checkpoint's own config wins when it has one: weights
            are only meaningful with the config they were trained with.
        kind: ``"rfcn"`` or ``"dff"``; required for MXNet files and the fixture weights, checked
            against a native checkpoint's ``model_kind``.
        overrides: ``--set KEY=VALUE`` items. ``cfg`` is expected to carry them already; they are applied
            to a native checkpoint's own config when it replaces ``cfg``, where keys the weights depend
            on (:data:`dff.config.MODEL_KEYS`) are refused.

    A training state (``*.state.pth``, ``weights: train``) gets the box de-normalisation folded in,
    as the reference's ``do_checkpoint``; MXNet files bring their own ``*_test`` keys. Raises
    :class:`~dff.utils.checkpoint.CheckpointError` naming the file for anything that does not fit.
    """
    path = os.fspath(path)
    if path == FIXTURE:
        if cfg is None or kind is None:
            raise ValueError("load_model('fixture') needs the config and the model kind")
        model = build_model(kind, cfg)
        model.load_state_dict(fixture_state_dict(model))
        return model.to(device).eval(), cfg
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: model file not found")
    # a native file names its kind, config and weights form; read once (validated), before building
    meta = load_checkpoint(path) if detect_format(path) == "native" else {}
    saved_kind = meta.get("model_kind") if meta.get("model_kind") in MODEL_KINDS else None
    if saved_kind is not None and kind is not None and saved_kind != kind:
        raise CheckpointError(f"{path}: is a {saved_kind} checkpoint, not a {kind} one")
    kind = saved_kind or kind
    if kind is None:
        raise CheckpointError(f"{path}: the file does not say which model it holds; give the model kind "
                              f"({' or '.join(MODEL_KINDS)})")
    if isinstance(meta.get("config"), dict):
        cfg = config_from_dict(meta["config"], f"{path} (its config)")
        if overrides:
            update_config(cfg, parse_overrides(overrides), "--set", fixed=MODEL_KEYS)
    if cfg is None:
        raise CheckpointError(f"{path}: carries no config; pass one (--cfg)")
    model = build_model(kind, cfg)
    load_model_weights(model, path)
    if meta.get("weights") == "train":
        model.load_state_dict(fold_bbox_state(model.state_dict(), cfg))
    return model.to(device).eval(), cfg


def is_model_kind(model: FeatureModel, saved_kind: object) -> bool:
    """Whether a checkpoint's recorded ``model_kind`` is ``model``'s (the registry's name for its class)."""
    return saved_kind in MODEL_KINDS and type(model) is MODEL_KINDS[saved_kind]


def load_run_model(path: str | os.PathLike, cfg_path: str | os.PathLike | None, overrides: Sequence[str] = (), *,
                   kind: str | None = None, device: str | torch.device = "cpu") -> tuple[FeatureModel, Config]:
    """A run's model: :func:`load_model` of ``path`` with the config ``cfg_path`` (with ``overrides``) for files that
    carry none, and ``overrides`` (``--set``) applied to the config a native checkpoint brings: the one loading
    idiom of the demos, the benchmark, the tester and the export."""
    return load_model(path, load_config(cfg_path, overrides), kind=kind, device=device, overrides=overrides)


def tiled_bbox_stats(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    reps = 2 if cfg.CLASS_AGNOSTIC else int(cfg.dataset.NUM_CLASSES)
    return (np.tile(np.asarray(cfg.TRAIN.BBOX_MEANS, dtype=np.float32), reps),
            np.tile(np.asarray(cfg.TRAIN.BBOX_STDS, dtype=np.float32), reps))


def fold_bbox_state(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Training weights -> test weights: fold the box-target de-normalisation (``TRAIN.BBOX_STDS``/``MEANS``
    tiled per regression class) into ``rfcn_head.rfcn_bbox``, as the reference's ``do_checkpoint``. A model
    without a box regressor (segmentation) has nothing to fold: its state is returned as it is."""
    out = dict(state)
    if "rfcn_head.rfcn_bbox.weight" not in state:
        return out
    means, stds = tiled_bbox_stats(cfg)
    w, b = state["rfcn_head.rfcn_bbox.weight"], state["rfcn_head.rfcn_bbox.bias"]
    wt, bt = bbox_test_params(w.detach().cpu().float().numpy(), b.detach().cpu().float().numpy(), means, stds)
    out["rfcn_head.rfcn_bbox.weight"] = torch.from_numpy(wt).to(w.dtype)
    out["rfcn_head.rfcn_bbox.bias"] = torch.from_numpy(bt).to(b.dtype)
    return out


def unfold_bbox_state(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """Inverse of :func:`fold_bbox_state` (test weights -> training weights), up to float rounding."""
    out = dict(state)
    if "rfcn_head.rfcn_bbox.weight" not in state:
        return out
    means, stds = tiled_bbox_stats(cfg)
    w, b = state["rfcn_head.rfcn_bbox.weight"], state["rfcn_head.rfcn_bbox.bias"]
    rep = w.shape[0] // len(stds)
    std = torch.from_numpy(np.repeat(stds, rep)).to(w.dtype)
    mean = torch.from_numpy(np.repeat(means, rep)).to(b.dtype)
    out["rfcn_head.rfcn_bbox.weight"] = w / std.view(-1, *([1] * (w.dim() - 1)))
    out["rfcn_head.rfcn_bbox.bias"] = (b - mean) / std
    return out

