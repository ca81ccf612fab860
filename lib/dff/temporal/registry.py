"""The temporal schemes by name: ``network.TEMPORAL`` picks one for a model with a flow network.

A scheme registers itself with :func:`register`; :func:`scheme_name` reads the config (the reference's
YAMLs and older checkpoints have no ``TEMPORAL`` key: ``network.THP`` and ``network.GRU_AGGREGATION`` then
name the scheme, so they load to the same model) and :func:`build_scheme` makes it.
"""
from __future__ import annotations

from typing import Callable

from dff.config import Config
from dff.temporal.base import TemporalScheme

SCHEMES: dict[str, type[TemporalScheme]] = {}
PER_FRAME = "per_frame"  # the scheme of a model without a flow network (R-FCN)


def register(name: str) -> Callable[[type[TemporalScheme]], type[TemporalScheme]]:
    """Class decorator: make a scheme available as ``network.TEMPORAL: name``."""
    def add(cls: type[TemporalScheme]) -> type[TemporalScheme]:
        if name in SCHEMES:
            raise ValueError(f"temporal scheme {name!r} is registered twice ({SCHEMES[name].__name__}, {cls.__name__})")
        cls.name = name
        SCHEMES[name] = cls
        return cls
    return add


def scheme_name(cfg: Config) -> str:
    """The scheme of a model with a flow network: ``network.TEMPORAL``, or the one the older keys name."""
    net = cfg.network
    if net.THP and net.GRU_AGGREGATION:
        raise ValueError("network.THP and network.GRU_AGGREGATION are two key-frame aggregations: choose one")
    legacy = "thp" if net.THP else "gru" if net.GRU_AGGREGATION else "dff"
    name = str(net.TEMPORAL or legacy)
    if legacy != "dff" and name != legacy:
        raise ValueError(f"network.TEMPORAL is {name!r} but network.{'THP' if net.THP else 'GRU_AGGREGATION'} "
                         f"asks for {legacy!r}: set one of them")
    if name not in SCHEMES or name == PER_FRAME:
        known = ", ".join(n for n in SCHEMES if n != PER_FRAME)
        raise ValueError(f"network.TEMPORAL must be one of {known}, got {name!r}")
    return name


def build_scheme(cfg: Config, uses_flow: bool = True) -> TemporalScheme:
    """The scheme of ``cfg`` for a model with a flow network, or the per-frame scheme without one."""
    return SCHEMES[scheme_name(cfg) if uses_flow else PER_FRAME](cfg)
