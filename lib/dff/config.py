"""The configuration object: the reference's defaults, overlaid by a YAML file.

One :class:`Config` flows from the YAML to the model, the data and the trainer. Its keys are those
of the reference's ``config.py`` (Deep-Feature-Flow, ``rfcn/config/config.py`` and
``dff_rfcn/config/config.py``), so the reference's YAML files load unchanged. Unlike the reference,
an unknown key at *any* depth is an error naming the key (the reference only checked the top level,
so a typo such as ``TRAIN.lr_stpe`` was silently ignored).

Keys this port adds (not in the reference) are marked ``# port`` below. Keys of the reference that
configure nothing here are marked ``# no effect``: those in :data:`NO_EFFECT` are accepted only with
the value the port implements, the others (``MXNET_VERSION``, ``gpus``, ``CXX_PROPOSAL``) with any.

A YAML may extend another (``_BASE_: path``, relative to the YAML), and ``--set KEY=VALUE`` overrides
(:func:`parse_overrides`) go on top of the file.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

from dff.classes import BACKGROUND, VID_CLASSES


class ConfigError(ValueError):
    """A configuration file or key is invalid; the message names the file and the key."""


class Config:
    """Nested attribute dictionary (``cfg.TRAIN.lr``), also indexable as ``cfg['TRAIN']['lr']``."""

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", {})
        for k, v in (data or {}).items():
            self[k] = v

    # mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = Config(value) if isinstance(value, Mapping) and not isinstance(value, Config) else value

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self):
        return self._data.keys()

    def items(self):
        return self._data.items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    # attribute protocol -----------------------------------------------------------------------
    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __deepcopy__(self, memo: dict) -> "Config":
        return Config(copy.deepcopy(self.to_dict(), memo))

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, Config) else v) for k, v in self._data.items()}


def default_config() -> Config:
    """The reference's ``config.py`` defaults (R-FCN and DFF merged; DFF-only keys are harmless for R-FCN)."""
    c = Config()
    c.MXNET_VERSION = ""  # no effect: read from reference YAMLs (the MXNet build; none here), any value
    c.output_path = ""
    c.symbol = ""  # no effect: validated (NO_EFFECT)
    c.gpus = ""  # no effect: read from reference YAMLs (torchrun and --device choose devices), any value
    c.CLASS_AGNOSTIC = True
    # (short side, max long side); the YAML's [600, 1000] becomes [(600, 1000)]
    c.SCALES = [(600, 1000)]

    c.default = {"frequent": 20, "kvstore": "device"}  # kvstore: no effect, validated (NO_EFFECT)

    c.network = {
        "pretrained": "",
        "pretrained_flow": "",
        "pretrained_epoch": 0,
        "PIXEL_MEANS": [0.0, 0.0, 0.0],  # B, G, R
        "IMAGE_STRIDE": 0,
        "RPN_FEAT_STRIDE": 16,
        "RCNN_FEAT_STRIDE": 16,  # no effect: validated (NO_EFFECT)
        "FIXED_PARAMS": ["gamma", "beta"],
        "ANCHOR_SCALES": [8, 16, 32],
        "ANCHOR_RATIOS": [0.5, 1, 2],
        "NORMALIZE_RPN": True,
        "ANCHOR_MEANS": [0.0, 0.0, 0.0, 0.0],
        "ANCHOR_STDS": [0.1, 0.1, 0.4, 0.4],
        "NUM_ANCHORS": 9,  # no effect: validated (NO_EFFECT)
        "DFF_FEAT_DIM": 1024,
        # port: backbone depth (101 = the reference; 50; "tiny" = a small ResNet for CPU tests/demos)
        "BACKBONE": "resnet_v1_101",
        # port: FlowNet's ceil-mode average pooling divisor on a partial window (docs/design.md §3.4, AMBIGUOUS):
        # "valid" divides by the in-image count (MXNet CPU / the fixtures), "full" divides by 4 (cuDNN).
        "FLOW_AVG_POOL": "valid",
        # port: FlowNet channel multiplier (1.0 = the reference; the tiny CPU models use less)
        "FLOWNET_WIDTH": 1.0,
        # port ("Towards High Performance Video Object Detection", docs/design.md §9): DFF plus FlowNet's
        # feature temporal consistency map Q and the key frames' aggregation embedding
        "THP": False,
        "THP_EMBED_DIM": 256,  # channels of the aggregation embedding network's output
        # port ("... Video Object Detection for Mobiles", docs/design.md §10): the mobile variant's parts.
        # BACKBONE mobilenet_v2 with this width multiplier; the flow network (flownet: DFF's FlowNetS,
        # light_flow: Light Flow; FLOWNET_WIDTH multiplies either); the task head (rfcn: the reference's
        # position-sensitive score maps; light: Light-Head R-CNN's thin maps of LIGHT_HEAD_DIM x 7 x 7
        # channels and one LIGHT_HEAD_FC-wide fully connected layer); the flow-guided ConvGRU that
        # aggregates the key frames (used at test time when TEST.AGGREGATION is on)
        "MOBILENET_WIDTH": 1.0,
        "FLOW_NETWORK": "flownet",
        "HEAD": "rfcn",
        "LIGHT_HEAD_DIM": 10,
        "LIGHT_HEAD_FC": 256,
        # Light Flow's finest prediction, as a stride of its half-resolution input: 4 (the paper; one more
        # decoder stage, the averaged flow brought down to the feature's grid) or 8 (the feature's own grid:
        # the embedded models')
        "LIGHT_FLOW_OUTPUT_STRIDE": 8,
        "GRU_AGGREGATION": False,
        # port: the temporal scheme of a model with a flow network, by name (dff.temporal.registry: dff, gru,
        # thp); empty: the one THP / GRU_AGGREGATION name (dff when both are false), as the reference's YAMLs
        "TEMPORAL": "",
    }

    c.dataset = {
        "dataset": "ImageNetVID",  # no effect: validated (NO_EFFECT)
        "image_set": "DET_train_30classes+VID_train_15frames",
        "test_image_set": "VID_val_videos",
        "root_path": "./data",
        "dataset_path": "./data/ILSVRC2015",
        "NUM_CLASSES": 31,
        "proposal": "rpn",  # no effect: validated (NO_EFFECT)
        # port: the layout of dataset_path: "vid" (ILSVRC2015 folders, the reference's) or "cocovid" (a
        # COCO-video JSON per image set, mmtracking's CocoVideoDataset convention); docs/custom_data.md
        "format": "vid",
        # port: the class names by index, background excluded; empty = the 30 ImageNet VID classes. Read
        # from the training data (with NUM_CLASSES) and stored with every checkpoint's config.
        "CLASSES": [],
    }

    c.TRAIN = {
        "lr": 0.0,
        "lr_step": "",
        "lr_factor": 0.1,
        "warmup": False,
        "warmup_lr": 0.0,
        "warmup_step": 0,
        "momentum": 0.9,
        "wd": 0.0005,
        "begin_epoch": 0,
        "end_epoch": 0,
        "model_prefix": "",
        "RESUME": False,
        "FLIP": True,
        "SHUFFLE": True,
        "ENABLE_OHEM": False,
        "BATCH_IMAGES": 2,
        "END2END": False,  # no effect: validated (NO_EFFECT)
        "ASPECT_GROUPING": True,
        "BATCH_ROIS": 128,
        "BATCH_ROIS_OHEM": 128,
        "FG_FRACTION": 0.25,
        "FG_THRESH": 0.5,
        "BG_THRESH_HI": 0.5,
        "BG_THRESH_LO": 0.0,
        "BBOX_REGRESSION_THRESH": 0.5,  # no effect: validated (NO_EFFECT)
        "BBOX_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
        "RPN_BATCH_SIZE": 256,
        "RPN_FG_FRACTION": 0.5,
        "RPN_POSITIVE_OVERLAP": 0.7,
        "RPN_NEGATIVE_OVERLAP": 0.3,
        "RPN_CLOBBER_POSITIVES": False,
        "RPN_BBOX_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
        "RPN_POSITIVE_WEIGHT": -1.0,  # no effect: validated (NO_EFFECT)
        "CXX_PROPOSAL": True,  # no effect: read from reference YAMLs (MXNet's C++ or Python op, same math), any value
        "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 12000,
        "RPN_POST_NMS_TOP_N": 2000,
        "RPN_MIN_SIZE": 16,
        "BBOX_NORMALIZATION_PRECOMPUTED": False,
        "BBOX_MEANS": [0.0, 0.0, 0.0, 0.0],
        "BBOX_STDS": [0.1, 0.1, 0.2, 0.2],
        "MIN_OFFSET": -9,
        "MAX_OFFSET": 0,
        # port, THP only: the previous key frame, drawn at these offsets from the key frame (clamped to the
        # video); Q's target's width (relative feature distance, docs/design.md §9.1) and loss weight; the tau of
        # the partial update while training
        "THP_PREV_KEY_MIN_OFFSET": -10,
        "THP_PREV_KEY_MAX_OFFSET": -1,
        "THP_Q_SIGMA": 0.25,
        "THP_Q_LOSS_WEIGHT": 1.0,
        "THP_TAU": 0.3,
        # port, THP: how Q is trained. "target": regress the hand-made consistency target above; "ste": as
        # published (THP §3.2), end to end through the update mask by a straight-through estimator, with the
        # area penalty THP_AREA_LAMBDA * mean(U) and the mask forced to all-0 / all-1 a third of the time each
        # (the paper's lambda 2 is for its sum over positions and its loss scale; docs/design.md §9.1)
        "THP_Q_TRAINING": "target",
        "THP_AREA_LAMBDA": 0.05,
        # port, THP: earlier key frames per training sample (a chain, each drawn at THP_PREV_KEY_*_OFFSET from
        # the next), so the recursive aggregation is trained over that many steps; and whether non-key frames
        # are aggregated with the warped key feature in training (THP's Eq. 7; at test time TEST.AGGREGATION)
        "THP_PREV_KEYS": 1,
        "THP_AGGREGATE_NON_KEY": False,
        # port, key-frame aggregation ("... Video Object Detection for Mobiles" §3.4): a DET image (no video)
        # becomes a static clip, its chain THP_PREV_KEYS copies of the image, instead of a sample without one
        "STATIC_CLIPS": False,
    }

    c.TEST = {
        "HAS_RPN": False,  # no effect: validated (NO_EFFECT)
        "BATCH_IMAGES": 1,  # no effect: validated (NO_EFFECT)
        "CXX_PROPOSAL": True,  # no effect: any value, as TRAIN.CXX_PROPOSAL
        "RPN_NMS_THRESH": 0.7,
        "RPN_PRE_NMS_TOP_N": 6000,
        "RPN_POST_NMS_TOP_N": 300,
        "RPN_MIN_SIZE": 16,
        "NMS": 0.3,
        "max_per_image": 300,
        "test_epoch": 0,
        "KEY_FRAME_INTERVAL": 10,
        # port, THP (docs/design.md §9): "fixed" (every KEY_FRAME_INTERVAL frames, DFF) or "adaptive" (a key
        # frame when more than THP_GAMMA of the positions have Q <= THP_TAU, at the latest after
        # KEY_FRAME_MAX_INTERVAL frames); PARTIAL_UPDATE recomputes the Q <= THP_TAU positions' feature on
        # crops with PARTIAL_UPDATE_MARGIN feature cells of context; AGGREGATION blends each new key feature
        # with the previous one warped to it. The adaptive parts need a model trained with network.THP.
        "KEY_FRAME_SCHEDULE": "fixed",
        "KEY_FRAME_MAX_INTERVAL": 20,
        "THP_TAU": 0.3,
        "THP_GAMMA": 0.2,
        "PARTIAL_UPDATE": False,
        "PARTIAL_UPDATE_MARGIN": 3,
        # true: a partially updated frame becomes the reference the next frames are warped from (its updates
        # propagate); false: the next frames are warped from the key frame again
        "PARTIAL_UPDATE_PROPAGATE": True,
        "AGGREGATION": False,
        # port: also evaluate COCO AP@[.5:.95] / AP50 / AP75 (pycocotools) beside the VID mAP. Its pure-Python
        # matching is slow on the full VID val set (docs/custom_data.md): set false to skip it there.
        "COCO_AP": True,
    }
    return c


def _anchor_count(cfg: Config, value: Any) -> str | None:
    n = len(cfg.network.ANCHOR_SCALES) * len(cfg.network.ANCHOR_RATIOS)
    return None if value == n else (f"the RPN has len(ANCHOR_SCALES) * len(ANCHOR_RATIOS) = {n} anchors per "
                                    f"position, not {value!r}; set it to {n} or remove it")


def _symbol(cfg: Config, value: Any) -> str | None:
    b = str(cfg.network.BACKBONE)
    names = ("", f"{b}_rfcn", f"{b}_flownet_rfcn", f"{b}_deeplab", f"{b}_flownet_deeplab")
    return None if value in names else (f"network.BACKBONE ({b}) and the entry point choose the network; "
                                        f"{value!r} names another: use one of {', '.join(map(repr, names))}")


def _regression_thresh(cfg: Config, value: Any) -> str | None:
    fg = cfg.TRAIN.FG_THRESH
    return None if value == fg else (f"box targets are trained for the foreground rois, IoU >= TRAIN.FG_THRESH "
                                     f"({fg}), as in the reference's end-to-end training; set it to {fg} or remove it")


def _equals(expected: Any, why: str) -> Callable[[Config, Any], str | None]:
    def check(cfg: Config, value: Any) -> str | None:
        same = value is expected if isinstance(expected, bool) else value == expected
        return None if same else f"{why}; only {expected!r} is accepted, got {value!r}"
    return check


# Keys of the reference that configure nothing in this port, each with the rule its value must meet
# when a YAML or --set gives it (None = accepted, else why not). The reference's YAMLs hold them, so
# they must load; but a value that asks for something the port does not do must not be silently
# ignored. Keys whose value could never change anything (MXNET_VERSION, gpus, CXX_PROPOSAL) are not
# here: any value is accepted (see default_config). A checkpoint's saved config is not re-checked.
NO_EFFECT: dict[str, Callable[[Config, Any], str | None]] = {
    # MXNet built the network from this module name; here BACKBONE does, so a symbol naming another
    # backbone would train or test a network other than the one the YAML seems to ask for.
    "symbol": _symbol,
    # MXNet's kvstore only chose where the gradients are summed, except the asynchronous ones, which
    # update with stale gradients: DDP here always sums synchronously.
    "default.kvstore": lambda cfg, v: (f"gradients are always summed synchronously (DDP); MXNet's asynchronous "
                                       f"kvstore {v!r} is not implemented") if "async" in str(v) else None,
    # the head's PS-RoI pooling uses the fixed stride-16 feature map (spatial scale 1/16)
    "network.RCNN_FEAT_STRIDE": _equals(16, "the R-FCN head pools the stride-16 feature map (spatial scale 1/16)"),
    # the RPN head is sized from the two anchor lists; a different count describes another model
    "network.NUM_ANCHORS": _anchor_count,
    # one dataset class (the ILSVRC2015 layout, which the synthetic mini-VID copies)
    "dataset.dataset": _equals("ImageNetVID", "the only dataset here is ImageNetVID (the ILSVRC2015 layout)"),
    # proposals always come from the network's own RPN; precomputed proposal files are not read
    "dataset.proposal": _equals("rpn", "proposals always come from the network's RPN"),
    # only end-to-end training exists (the reference's alternate RPN / R-FCN training does not)
    "TRAIN.END2END": _equals(True, "training is always end to end (RPN and R-FCN jointly)"),
    # end-to-end, box targets go to the foreground rois (>= FG_THRESH), never by this threshold
    "TRAIN.BBOX_REGRESSION_THRESH": _regression_thresh,
    # the RPN loss weighs anchors uniformly (divided by RPN_BATCH_SIZE), py-faster-rcnn's "< 0";
    # a positive-anchor weight in [0, 1] is not implemented (the reference's MXNet code ignores it too)
    "TRAIN.RPN_POSITIVE_WEIGHT": lambda cfg, v: None if isinstance(v, (int, float)) and v < 0 else (
        f"the RPN loss weighs all sampled anchors alike (a negative value); a weight {v!r} for the positive "
        f"anchors is not implemented"),
    # test-time proposals always come from the RPN (no precomputed proposals)
    "TEST.HAS_RPN": _equals(True, "test-time proposals always come from the network's RPN"),
    # the video engine runs one frame at a time (key frame, then the frames warped from it)
    "TEST.BATCH_IMAGES": _equals(1, "the video engine tests one frame at a time"),
}

# Keys read once, when a model is built or its weights are loaded (parameter shapes, the class list,
# the box statistics folded into the last layer, FlowNet's pooling): on a built model's config a new
# value would be ignored or contradict the weights, so update_config(..., fixed=MODEL_KEYS) refuses it.
MODEL_KEYS = ("CLASS_AGNOSTIC", "dataset.NUM_CLASSES", "dataset.CLASSES", "network.BACKBONE", "network.DFF_FEAT_DIM",
              "network.FLOWNET_WIDTH", "network.FLOW_AVG_POOL", "network.THP", "network.THP_EMBED_DIM",
              "network.MOBILENET_WIDTH", "network.FLOW_NETWORK", "network.HEAD", "network.LIGHT_HEAD_DIM",
              "network.LIGHT_HEAD_FC", "network.LIGHT_FLOW_OUTPUT_STRIDE", "network.GRU_AGGREGATION", "network.TEMPORAL",
              "network.ANCHOR_SCALES", "network.ANCHOR_RATIOS", "TRAIN.BBOX_MEANS", "TRAIN.BBOX_STDS")


def _lookup(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _check_no_effect(cfg: Config, given: Mapping[str, str]) -> None:
    """``given``: dotted key -> the file (or ``--set``) that gave it, checked against the final ``cfg``."""
    for key, source in given.items():
        rule = NO_EFFECT.get(key)
        why = rule(cfg, _lookup(cfg, key)) if rule else None
        if why:
            raise ConfigError(f"{source}: {key}: has no effect in this port ({why})")


def _merge(dst: Config, src: Mapping[str, Any], path: str, file: str, given: dict[str, str] | None = None) -> None:
    for key, value in src.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in dst:
            near = [k for k in dst.keys() if k.lower() == str(key).lower()]
            hint = f" (did you mean {path + '.' if path else ''}{near[0]}?)" if near else ""
            raise ConfigError(f"{file}: unknown config key '{where}'{hint}")
        if isinstance(dst[key], Config):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{file}: config key '{where}' must be a mapping, got {value!r}")
            _merge(dst[key], value, where, file, given)
            continue
        if key == "SCALES" and not path:
            # the reference turns SCALES: [600, 1000] into [(600, 1000)]; a saved config has that form already
            if (isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple))):
                value = value[0]
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)):
                raise ConfigError(f"{file}: SCALES must be [short_side, max_long_side], got {value!r}")
            dst[key] = [(int(value[0]), int(value[1]))]
        else:
            dst[key] = value
        if given is not None:
            given[where] = file


BASE_KEY = "_BASE_"


def _read_yaml(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """The YAML at ``path`` with its ``_BASE_`` chain folded in (a relative base is relative to the file)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{chain[-1]}: base config {path} not found" if chain else f"{path}: config file not found")
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"{path}: {BASE_KEY} cycle: {' -> '.join(chain + (real,))}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    data = dict(data)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be the path of the YAML this one extends, got {base!r}")
    merged = _read_yaml(os.path.join(os.path.dirname(path), base), chain + (real,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), Mapping):
            dst[k] = dict(dst[k])
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["TRAIN.lr=0.001", "SCALES=[320,512]"]`` -> a nested mapping; values are read as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. TEST.KEY_FRAME_INTERVAL=5")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from None
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} was set to a value above")
        node[leaf] = parsed
    return out


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML file (and the ``_BASE_`` files it extends) over the defaults, then the ``--set``
    ``overrides`` (``KEY=VALUE`` strings). Raises :class:`ConfigError` naming the file and the key."""
    path = os.fspath(path)
    data = _read_yaml(path, ())
    cfg = default_config()
    given: dict[str, str] = {}
    _merge(cfg, data, "", path, given)
    if overrides:
        _merge(cfg, parse_overrides(overrides), "", "--set", given)
    _check_no_effect(cfg, given)
    return cfg


def config_from_dict(data: Mapping[str, Any], source: str) -> Config:
    """A saved config (a checkpoint's) over the defaults: keys added since it was saved get their defaults."""
    cfg = default_config()
    try:
        _merge(cfg, data, "", source)
    except ConfigError as e:
        raise ConfigError(f"{e} (a config saved by another version of this project?)") from None
    return cfg


def update_config(cfg: Config, overrides: Mapping[str, Any], source: str = "overrides", *,
                  fixed: Sequence[str] = ()) -> Config:
    """Overlay a mapping (same strict rules as a YAML file) on ``cfg`` in place and return it.

    ``fixed``: dotted keys whose value must not change (e.g. :data:`MODEL_KEYS` on the config of a
    model already built); a change is a :class:`ConfigError` and ``cfg`` is left as it was.
    """
    trial = copy.deepcopy(cfg)
    given: dict[str, str] = {}
    _merge(trial, overrides, "", source, given)
    _check_no_effect(trial, given)
    for key in fixed:
        if _lookup(trial, key) != _lookup(cfg, key):
            raise ConfigError(f"{source}: {key}: the model is already built with {_lookup(cfg, key)!r} (its "
                              f"checkpoint's config); a new value cannot change it")
    _merge(cfg, overrides, "", source)
    return cfg


DATASET_FORMATS = ("vid", "cocovid", "cityscapes")


def class_names(cfg: Config) -> tuple[str, ...]:
    """The config's class list with the background first: ``dataset.CLASSES`` (default the 30 VID
    classes). Raises :class:`ConfigError` when ``dataset.NUM_CLASSES`` does not count them."""
    names = tuple(str(c) for c in (cfg.dataset.CLASSES or VID_CLASSES[1:]))
    if len(set(names)) != len(names) or BACKGROUND in names:
        raise ConfigError(f"dataset.CLASSES: names must be distinct and not {BACKGROUND!r}: {list(names)}")
    if int(cfg.dataset.NUM_CLASSES) != len(names) + 1:
        raise ConfigError(f"dataset.NUM_CLASSES = {cfg.dataset.NUM_CLASSES} but dataset.CLASSES names "
                          f"{len(names)} classes (NUM_CLASSES counts the background too: {len(names) + 1})")
    return (BACKGROUND, *names)


def set_class_names(cfg: Config, names: Sequence[str]) -> list[str]:
    """Give ``cfg`` the class list of a dataset (``names`` with or without the background first) in place:
    ``dataset.CLASSES`` and ``dataset.NUM_CLASSES``. Returns log lines saying what changed (the YAML's
    ``NUM_CLASSES`` 31 of the reference's configs gives way to the data's count)."""
    names = [str(n) for n in names if str(n) != BACKGROUND]
    vid = list(VID_CLASSES[1:])
    old = list(cfg.dataset.CLASSES or vid)
    lines = []
    if int(cfg.dataset.NUM_CLASSES) != len(names) + 1:
        lines.append(f"dataset.NUM_CLASSES {cfg.dataset.NUM_CLASSES} -> {len(names) + 1} (the data's {len(names)} "
                     "classes and the background)")
    if old != names and cfg.dataset.CLASSES:
        lines.append(f"dataset.CLASSES {old} -> {names} (the data's)")
    cfg.dataset.CLASSES = [] if names == vid else names
    cfg.dataset.NUM_CLASSES = len(names) + 1
    return lines


def config_stem(cfg_path: str | os.PathLike | None) -> str:
    """The YAML's file name without extension: it names the experiment's output folder."""
    return os.path.splitext(os.path.basename(os.fspath(cfg_path)))[0] if cfg_path else "config"


def mobile_parts(cfg: Config) -> list[str]:
    """The parts of ``cfg``'s network that the reference does not have (the mobile variant's, docs/design.md §10):
    they have no MXNet parameter names (their checkpoints are native only)."""
    net = cfg.network
    return [part for part, on in (("network.BACKBONE mobilenet_v2", str(net.BACKBONE) == "mobilenet_v2"),
                                  ("network.HEAD light", str(net.HEAD) != "rfcn"),
                                  ("network.FLOW_NETWORK light_flow", str(net.FLOW_NETWORK) != "flownet"),
                                  ("network.GRU_AGGREGATION", bool(net.GRU_AGGREGATION) or str(net.TEMPORAL) == "gru"))
            if on]
