"""The method registry.

A method is a frozen config dataclass plus a pure function ``(weight, config, stats) ->
QuantizedTensor``. ``needs`` names the calibration statistics it wants (e.g. ``"hessian"``), so the
pipeline gathers only those; RTN needs none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch

from lowbit.registry import Registry
from lowbit.spec import QuantSpec
from lowbit.tensor import QuantizedTensor


@dataclass(frozen=True)
class MethodConfig:
    """Base for method configs: a spec plus method options; serializable as data."""

    spec: QuantSpec = field(default_factory=QuantSpec)
    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return {"method": self.method, "version": self.version, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "spec"}
        return cls(spec=QuantSpec.from_dict(d.get("spec", {})), **kw)


QuantizeFn = Callable[[torch.Tensor, Any, dict[str, torch.Tensor] | None], QuantizedTensor]


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    fn: QuantizeFn
    needs: tuple[str, ...] = ()
    summary: str = ""
    #: rows are quantized independently given shared statistics, so Linears that read the same input
    #: (q/k/v, gate/up) can be stacked into one call (one Hessian inverse instead of three)
    row_independent: bool = True
    #: optional per-block step run after the block's statistics are gathered and before its Linears
    #: are quantized (AWQ: search and fold input scales); it returns the statistics as seen afterwards
    block_transform: Callable[..., Any] | None = None


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, config: type[MethodConfig], needs: tuple[str, ...] = (), summary: str = "",
    row_independent: bool = True,
    block_transform: Callable[..., Any] | None = None,
) -> Callable[[QuantizeFn], QuantizeFn]:
    def deco(fn: QuantizeFn) -> QuantizeFn:
        config.method = name
        METHODS.add(name, Method(name, config, fn, needs, summary, row_independent, block_transform))
        return fn

    return deco


def get_method(name: str) -> Method:
    return METHODS.get(name)
