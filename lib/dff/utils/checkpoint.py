"""Checkpoints: MXNet ``.params`` <-> PyTorch state_dict, and this port's native checkpoint files.

MXNet names map to PyTorch state_dict keys by a pure string rule, because the PyTorch modules are
named after the MXNet layers (docs/design.md §4.3-4.6):

=================================  ===========================================
MXNet layer                        PyTorch module
=================================  ===========================================
``conv1``, ``bn_conv1``            ``backbone.conv1``, ``backbone.bn_conv1``
``res{B}_branch{K}``               ``backbone.res{B}.branch{K}``
``bn{B}_branch{K}``                ``backbone.res{B}.bn_branch{K}``
``feat_conv_3x3``                  ``feat_conv_3x3``
``rpn_cls_score``/``rpn_bbox_pred`` ``rpn_head.<layer>``
``rfcn_cls``/``rfcn_bbox``         ``rfcn_head.<layer>``
FlowNet layers (docs/design.md §4.5)          ``flownet.<layer>``
=================================  ===========================================

with B a block id (``2a``, ``3b1``, ``4b22``, ``5c``) and K in ``1, 2a, 2b, 2c``. Parameter
suffixes: convolutions ``_weight``/``_bias`` -> ``.weight``/``.bias``; BatchNorm ``_gamma``,
``_beta`` -> ``.weight``, ``.bias`` and the ``aux:`` statistics ``_moving_mean``, ``_moving_var``
-> ``.running_mean``, ``.running_var``. Array layouts are identical in both frameworks (conv
(out, in, kh, kw), transposed conv (in, out, kh, kw)), so arrays are copied unchanged.
"""
from __future__ import annotations

import collections
import dataclasses
import fnmatch
import os
import re
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dff.utils.io import atomic_open
from dff.utils.mxnet_params import LIST_MAGIC, MXNetParamsError, process_test_params, read_params, write_params

NATIVE_FORMAT = "dff-native"
NATIVE_VERSION = 1
RESERVED_KEYS = ("format", "version", "model", "config")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) container
# BatchNorm2d's step counter has no MXNet counterpart and is unused with frozen (eval-mode) BN
DEFAULT_IGNORE_MISSING: tuple[str, ...] = ("*.num_batches_tracked",)

FLOWNET_LAYERS: tuple[str, ...] = (
    "flow_conv1", "conv2", "conv3", "conv3_1", "conv4", "conv4_1", "conv5", "conv5_1", "conv6", "conv6_1",
    "Convolution1", "Convolution2", "Convolution3", "Convolution4", "Convolution5", "Convolution5_scale",
    "deconv5", "deconv4", "deconv3", "deconv2",
    "upsample_flow6to5", "upsample_flow5to4", "upsample_flow4to3", "upsample_flow3to2",
)
THP_FLOWNET_LAYERS: tuple[str, ...] = ("Convolution5_q_hidden", "Convolution5_q")
THP_AGGREGATION_LAYERS: tuple[str, ...] = ("em_conv1", "em_conv2", "em_conv3")
# layers outside the residual stages: MXNet layer -> (torch module path, kind)
_FIXED_LAYERS: dict[str, tuple[str, str]] = {
    "conv1": ("backbone.conv1", "conv"),
    "bn_conv1": ("backbone.bn_conv1", "bn"),
    "feat_conv_3x3": ("feat_conv_3x3", "conv"),
    "rpn_cls_score": ("rpn_head.rpn_cls_score", "conv"),
    "rpn_bbox_pred": ("rpn_head.rpn_bbox_pred", "conv"),
    "rfcn_cls": ("rfcn_head.rfcn_cls", "conv"),
    "rfcn_bbox": ("rfcn_head.rfcn_bbox", "conv"),
    **{layer: (f"flownet.{layer}", "conv") for layer in FLOWNET_LAYERS},
    # THP (network.THP): FlowNet's Q head and the key-frame aggregation's embedding network (FGFA's names)
    **{layer: (f"flownet.{layer}", "conv") for layer in THP_FLOWNET_LAYERS},
    **{layer: (f"aggregation.{layer}", "conv") for layer in THP_AGGREGATION_LAYERS},
}
_FIXED_MODULES = {module: (layer, kind) for layer, (module, kind) in _FIXED_LAYERS.items()}
_BLOCK = r"(?P<block>[2-5][a-z]\d*)"
_BRANCH = r"(?P<branch>1|2[a-c])"
_RES_LAYER = re.compile(rf"res{_BLOCK}_branch{_BRANCH}")
_BN_LAYER = re.compile(rf"bn{_BLOCK}_branch{_BRANCH}")
_RES_MODULE = re.compile(rf"backbone\.res{_BLOCK}\.branch{_BRANCH}")
_BN_MODULE = re.compile(rf"backbone\.res{_BLOCK}\.bn_branch{_BRANCH}")

# (MXNet suffix, torch attribute, MXNet key prefix) per layer kind
_SUFFIXES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "conv": (("_weight", "weight", "arg"), ("_bias", "bias", "arg")),
    "bn": (("_gamma", "weight", "arg"), ("_beta", "bias", "arg"),
           ("_moving_mean", "running_mean", "aux"), ("_moving_var", "running_var", "aux")),
}


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the keys."""


# --------------------------------------------------------------------------------------------
# name mapping
# --------------------------------------------------------------------------------------------
def _layer_to_module(layer: str) -> tuple[str, str] | None:
    if layer in _FIXED_LAYERS:
        return _FIXED_LAYERS[layer]
    m = _RES_LAYER.fullmatch(layer)
    if m:
        return f"backbone.res{m['block']}.branch{m['branch']}", "conv"
    m = _BN_LAYER.fullmatch(layer)
    if m:
        return f"backbone.res{m['block']}.bn_branch{m['branch']}", "bn"
    return None


def _module_to_layer(module: str) -> tuple[str, str] | None:
    if module in _FIXED_MODULES:
        return _FIXED_MODULES[module]
    m = _RES_MODULE.fullmatch(module)
    if m:
        return f"res{m['block']}_branch{m['branch']}", "conv"
    m = _BN_MODULE.fullmatch(module)
    if m:
        return f"bn{m['block']}_branch{m['branch']}", "bn"
    return None


def mxnet_to_torch_name(name: str) -> str | None:
    """``'arg:res4b22_branch2c_weight'`` (or the bare name) -> ``'backbone.res4b22.branch2c.weight'``.

    Returns None for names outside the DFF/R-FCN model (e.g. an ImageNet ``fc1000``), for the
    ``_test`` keys (fold them first with :func:`process_test_params`), for a suffix that does not
    fit the layer kind (``bn_conv1_weight``) and for a prefix that does not fit the suffix (BN
    moving statistics are ``aux:``, everything else ``arg:``).
    """
    prefix = None
    if ":" in name:
        prefix, name = name.split(":", 1)
        if prefix not in ("arg", "aux"):
            return None
    for kind in ("conv", "bn"):
        for suffix, attr, want_prefix in _SUFFIXES[kind]:
            if not name.endswith(suffix):
                continue
            found = _layer_to_module(name[: -len(suffix)])
            if found is None or found[1] != kind or (prefix is not None and prefix != want_prefix):
                continue
            return f"{found[0]}.{attr}"
    return None


def torch_to_mxnet_name(key: str) -> str | None:
    """``'backbone.bn_conv1.running_var'`` -> ``'aux:bn_conv1_moving_var'`` (with its ``arg:``/``aux:`` prefix).

    The inverse of :func:`mxnet_to_torch_name`; None for keys with no MXNet counterpart
    (e.g. ``num_batches_tracked``).
    """
    if "." not in key:
        return None
    module, attr = key.rsplit(".", 1)
    found = _module_to_layer(module)
    if found is None:
        return None
    layer, kind = found
    for suffix, want_attr, prefix in _SUFFIXES[kind]:
        if attr == want_attr:
            return f"{prefix}:{layer}{suffix}"
    return None


# --------------------------------------------------------------------------------------------
# loading into a model
# --------------------------------------------------------------------------------------------
def mxnet_param_name(torch_name: str) -> str | None:
    """MXNet argument name of a parameter (``'backbone.res3a.bn_branch2a.weight'`` -> ``'bn3a_branch2a_gamma'``)."""
    name = torch_to_mxnet_name(torch_name)
    if name is None:
        return None
    return name.split(":", 1)[1] if ":" in name else name


@dataclasses.dataclass
class LoadReport:
    """What a load did. Names in ``unexpected`` are the file's keys; all others are the model's keys."""

    source: str
    format: str  # "mxnet" | "native" | "arrays"
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    ignored_missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every model key was filled (apart from ``ignored_missing``) with a fitting array."""
        return not self.missing and not self.mismatched

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {len(self.loaded)} tensors ({self.format})"]
        if self.missing:
            parts.append(f"missing {_listing(self.missing)}")
        if self.mismatched:
            parts.append(f"shape/dtype mismatches {_listing(self.mismatched)}")
        if self.unexpected:
            parts.append(f"unused file keys {_listing(self.unexpected)}")
        if self.ignored_missing:
            parts.append(f"{len(self.ignored_missing)} model keys ignored by pattern")
        return "; ".join(parts)


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} [{shown}{more}]"


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def _is_float(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def _apply_state(model: nn.Module, entries: Iterable[tuple[str, str | None, Any]], *, source: str, fmt: str,
                 strict: bool, ignore_missing: Sequence[str], allow_unexpected: bool) -> LoadReport:
    """Check ``(file_key, model_key or None, array)`` entries against ``model.state_dict()``, then copy.

    Nothing is copied when a strict check fails, so a failed load leaves the model untouched.
    """
    state = model.state_dict()
    report = LoadReport(source, fmt)
    to_copy: list[tuple[str, Any]] = []
    covered: set[str] = set()
    for file_key, key, value in entries:
        if key is None or key not in state:
            report.unexpected.append(file_key if key is None or key == file_key else f"{file_key} (-> {key})")
            continue
        covered.add(key)
        target = state[key]
        name = key if file_key == key else f"{file_key} ({key})"  # MXNet files: name both
        if _shape(value) != _shape(target):
            report.mismatched.append(f"{name}: file {_shape(value)} vs model {_shape(target)}")
        elif _is_float(value) != target.is_floating_point():
            dtype = value.dtype if isinstance(value, torch.Tensor) else np.asarray(value).dtype
            report.mismatched.append(f"{name}: file dtype {dtype} vs model {target.dtype}")
        else:
            to_copy.append((key, value))
    for key in state:
        if key not in covered:
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore_missing):
                report.ignored_missing.append(key)
            else:
                report.missing.append(key)
    if strict and (report.missing or report.mismatched or (report.unexpected and not allow_unexpected)):
        problems = []
        if report.missing:
            if fmt == "mxnet":  # name what the user should find in the file, and where it goes
                missing = [f"{torch_to_mxnet_name(k) or '?'} ({k})" for k in report.missing]
            else:
                missing = report.missing
            problems.append(f"missing {_listing(missing)}")
        if report.mismatched:
            problems.append(f"mismatched {_listing(report.mismatched)}")
        if report.unexpected and not allow_unexpected:
            problems.append(f"unexpected {_listing(report.unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not fit the model: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in to_copy:
            src = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            state[key].copy_(src)  # copy_ casts to the model tensor's dtype and device
            report.loaded.append(key)
    return report


def load_mxnet_checkpoint(model: nn.Module, path_or_params: str | os.PathLike | Mapping[str, np.ndarray], *,
                          strict: bool = True, ignore_missing: Sequence[str] = DEFAULT_IGNORE_MISSING,
                          allow_unexpected: bool = True) -> LoadReport:
    """Load an MXNet checkpoint (a ``.params`` path or ``read_params`` output) into ``model``.

    Applies the reference's ``load_param(process=True)`` (``*_test`` keys replace the plain ones),
    maps names with :func:`mxnet_to_torch_name` and copies arrays into the model's tensors (keeping
    their dtype and device). Like MXNet, file keys the model does not take (e.g. ``fc1000`` of an
    ImageNet ResNet) are allowed and listed in ``report.unexpected``; with ``strict`` a model key
    the file lacks (unless it matches a glob in ``ignore_missing``) or a shape mismatch raises
    :class:`CheckpointError` listing the keys.
    """
    if isinstance(path_or_params, Mapping):
        source, params = "<mxnet params>", path_or_params
    else:
        source = os.fspath(path_or_params)
        try:
            params = read_params(source)
        except MXNetParamsError as e:
            raise CheckpointError(str(e)) from e
    try:
        params = process_test_params(params)
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e
    entries = [(k, mxnet_to_torch_name(k), v) for k, v in params.items()]
    return _apply_state(model, entries, source=source, fmt="mxnet", strict=strict, ignore_missing=ignore_missing,
                        allow_unexpected=allow_unexpected)


def detect_format(path: str | os.PathLike) -> str:
    """``"mxnet"`` or ``"native"`` from the file's first bytes (never from its extension)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror or e})") from None
    if len(head) == 8 and int.from_bytes(head, "little") == LIST_MAGIC:
        return "mxnet"
    if head.startswith(_ZIP_MAGIC):
        return "native"
    raise CheckpointError(f"{path}: unknown checkpoint format (first bytes {head.hex() or 'none'}; expected an "
                          f"MXNet .params file or a native torch.save checkpoint)")


def load_model_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True,
                       ignore_missing: Sequence[str] = DEFAULT_IGNORE_MISSING,
                       allow_unexpected: bool | None = None, map_location: str | torch.device = "cpu") -> LoadReport:
    """Load model weights from an MXNet ``.params`` file or a native checkpoint, whichever ``path`` is.

    ``allow_unexpected`` defaults to True for MXNet files (the reference ignores extra keys, such as a
    pretrained classifier) and to False for native checkpoints (written from this very model, so an
    extra key means a different model).
    """
    fmt = detect_format(path)
    if fmt == "mxnet":
        return load_mxnet_checkpoint(model, path, strict=strict, ignore_missing=ignore_missing,
                                     allow_unexpected=True if allow_unexpected is None else allow_unexpected)
    ckpt = load_checkpoint(path, map_location=map_location)
    entries = [(k, k, v) for k, v in ckpt["model"].items()]
    return _apply_state(model, entries, source=os.fspath(path), fmt="native", strict=strict,
                        ignore_missing=ignore_missing,
                        allow_unexpected=False if allow_unexpected is None else allow_unexpected)


# --------------------------------------------------------------------------------------------
# writing MXNet checkpoints
# --------------------------------------------------------------------------------------------
def bbox_test_params(weight: np.ndarray, bias: np.ndarray, means: Sequence[float] | np.ndarray,
                     stds: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ``do_checkpoint`` folding of the bbox de-normalisation into ``rfcn_bbox``.

    ``weight`` (C, 512, 1, 1), ``bias`` (C,) with C = 392 for DFF. ``means``/``stds`` are the per-class
    tiled values the reference passes (8 for class-agnostic: ``np.tile(BBOX_STDS, 2)``); each is
    repeated ``C // len(stds)`` (= 49 PSROI bins) times consecutively, so output channel q gets
    ``stds[q // 49]``. Returns ``(weight * std, bias * std + mean)`` in float32 arithmetic, as
    MXNet computed them.
    """
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    stds = np.asarray(stds, dtype=np.float32).reshape(-1)
    means = np.asarray(means, dtype=np.float32).reshape(-1)
    channels = bias.shape[0]
    if weight.shape[0] != channels or len(stds) != len(means) or len(stds) == 0 or channels % len(stds):
        raise ValueError(f"bbox folding: weight {weight.shape}, bias {bias.shape}, {len(means)} means and "
                         f"{len(stds)} stds do not fit (channels must be a multiple of the number of stds)")
    repeat = channels // len(stds)
    std_per_channel = np.repeat(stds, repeat)
    weight_test = weight * std_per_channel.reshape((channels,) + (1,) * (weight.ndim - 1))
    bias_test = bias * std_per_channel + np.repeat(means, repeat)
    return weight_test, bias_test


def _to_numpy(key: str, t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        raise CheckpointError(f"{key}: bfloat16 has no MXNet type flag; convert the model to float32 first")
    return t.numpy()


def save_mxnet_checkpoint(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                          layout: str = "v2", bbox_stds: Sequence[float] | None = None,
                          bbox_means: Sequence[float] | None = None,
                          ignore: Sequence[str] = DEFAULT_IGNORE_MISSING) -> None:
    """Write ``model``'s state as an MXNet ``.params`` file, as ``mx.model.save_checkpoint`` would.

    Keys are ``arg:`` parameters in state_dict order, then ``aux:`` BN statistics. With ``bbox_stds``
    (per-class tiled, see :func:`bbox_test_params`; ``bbox_means`` default to zeros) the
    ``arg:rfcn_bbox_weight_test``/``_bias_test`` pair is added after the args, as the reference's
    ``do_checkpoint`` does. State keys matching ``ignore`` are skipped; any other key without an
    MXNet name is an error.
    """
    path = os.fspath(path)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    arg: dict[str, np.ndarray] = {}
    aux: dict[str, np.ndarray] = {}
    unnamed = []
    for key, tensor in state.items():
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
            continue
        name = torch_to_mxnet_name(key)
        if name is None:
            unnamed.append(key)
            continue
        (arg if name.startswith("arg:") else aux)[name] = _to_numpy(key, tensor)
    if unnamed:
        raise CheckpointError(f"{path}: cannot write an MXNet checkpoint: state keys without an MXNet name "
                              f"{_listing(unnamed)}")
    if bbox_stds is not None:
        if "arg:rfcn_bbox_weight" not in arg or "arg:rfcn_bbox_bias" not in arg:
            raise CheckpointError(f"{path}: bbox_stds given but the model has no rfcn_head.rfcn_bbox weight/bias")
        means = np.zeros(len(bbox_stds), np.float32) if bbox_means is None else bbox_means
        arg["arg:rfcn_bbox_weight_test"], arg["arg:rfcn_bbox_bias_test"] = bbox_test_params(
            arg["arg:rfcn_bbox_weight"], arg["arg:rfcn_bbox_bias"], means, bbox_stds)
    write_params(path, {**arg, **aux}, layout=layout)


# --------------------------------------------------------------------------------------------
# native checkpoints
# --------------------------------------------------------------------------------------------
_SAFE_SCALARS = (type(None), bool, int, float, str, bytes)
_SAFE_TORCH = (torch.dtype, torch.device, torch.Size)


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Reject what ``torch.load(weights_only=True)`` would refuse, at save time rather than at load time."""
    if isinstance(obj, torch.Tensor) or type(obj) in _SAFE_SCALARS or isinstance(obj, _SAFE_TORCH):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if type(k) not in _SAFE_SCALARS:
                raise ValueError(f"{where}: dict key {k!r} of type {type(k).__name__} is not weights_only-safe")
            _check_weights_only_safe(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            _check_weights_only_safe(v, f"{where}[{i}]")
        return
    raise ValueError(f"{where}: {type(obj).__module__}.{type(obj).__name__} is not weights_only-safe "
                     f"(use tensors, dicts, lists, tuples, numbers, strings)")


def save_checkpoint(path: str | os.PathLike, *, model_state: Mapping[str, torch.Tensor] | nn.Module,
                    extra: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None) -> None:
    """Write ``{"format": "dff-native", "version": 1, "model": state, "config": config, **extra}`` atomically.

    The state is stored on the CPU. ``config`` may be a :class:`dff.config.Config` (stored as a plain
    dict). ``extra`` (optimizer, scheduler, RNG state, epoch ...) must contain only what
    ``torch.load(weights_only=True)`` accepts; anything else is a ``ValueError`` naming its place.
    The file appears under ``path`` only once completely written and fsync'ed.
    """
    path = os.fspath(path)
    if isinstance(model_state, nn.Module):
        model_state = model_state.state_dict()
    state = collections.OrderedDict((k, v.detach().to("cpu")) for k, v in model_state.items())
    if config is not None and hasattr(config, "to_dict"):
        config = config.to_dict()
    extra = dict(extra or {})
    clash = [k for k in extra if k in RESERVED_KEYS]
    if clash:
        raise ValueError(f"{path}: extra keys {clash} clash with the reserved keys {RESERVED_KEYS}")
    content = {"format": NATIVE_FORMAT, "version": NATIVE_VERSION, "model": state, "config": config, **extra}
    _check_weights_only_safe(content, f"{path}: checkpoint")
    with atomic_open(path, "wb") as f:
        torch.save(content, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a native checkpoint with ``torch.load(..., weights_only=True)``; validate its format and version."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt != "native":
        raise CheckpointError(f"{path}: is an MXNet .params file, not a native checkpoint "
                              f"(use load_mxnet_checkpoint or load_model_weights)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types (RuntimeError, UnpicklingError, EOFError ...) on corruption
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: corrupt or unreadable native checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != NATIVE_FORMAT:
        raise CheckpointError(f"{path}: not a {NATIVE_FORMAT} checkpoint (no format tag)")
    if ckpt.get("version") != NATIVE_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
                              f"(this code reads version {NATIVE_VERSION})")
    model = ckpt.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"{path}: 'model' is not a state_dict of tensors")
    return ckpt


def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False,
                      config: Mapping[str, Any] | None = None) -> int:
    """Copy the native checkpoint ``src`` to ``dst`` for distribution: the model state (floating-point tensors
    as float16 with ``half``; the loader casts them back), its config (or ``config``, e.g. the same with other
    test settings) and its extra keys. Returns the number of stored numbers; :class:`CheckpointError` when
    ``src`` is not a native checkpoint."""
    ckpt = load_checkpoint(src)
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    keep = {k: v for k, v in ckpt.items() if k not in RESERVED_KEYS}
    save_checkpoint(dst, model_state=state, config=ckpt.get("config") if config is None else config, extra=keep)
    return sum(v.numel() for v in state.values())


def checkpoint_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The config a native checkpoint was saved with (None for an MXNet file or a checkpoint without one)."""
    if detect_format(path) != "native":
        return None
    config = load_checkpoint(path).get("config")
    return config if isinstance(config, dict) else None
