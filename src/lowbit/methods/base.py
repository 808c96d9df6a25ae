"""The method registry: one entry per method, one file per method.

A method is a frozen config dataclass plus the function that quantizes one layer. The entry says the
three things the pipeline (pipeline/) needs to run any method the same way:

- ``needs``: the calibration statistics of each layer's input (``hessian``, ``act_absmean``,
  ``act_absmax``), and ``calibration``: "sequential" (each block sees the blocks before it already
  quantized: GPTQ, AWQ) or "float" (the float model's activations: SmoothQuant's maxima);
- ``transform``: whether it changes the model around the layers before quantizing them, and at which
  scope: "block" (AWQ's scale folds) or "model" (SmoothQuant's folds and its alpha search);
- ``produces``: "tensor" (a :class:`QuantizedTensor` on an integer grid, installed as
  QuantizedLinear) or "layer" (a runnable module of the method's own kind: NF4, LLM.int8, W8A8, GGUF).

    @register_method("rtn", RTNConfig)
    def rtn(weight, cfg, stats=None) -> QuantizedTensor: ...

    @register_method("nf4", NF4Config, produces="layer")
    def nf4(linear, cfg, stats=None) -> nn.Module: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from lowbit.errors import InputError
from lowbit.registry import Registry
from lowbit.spec import QuantSpec

STATISTICS = ("hessian", "act_absmean", "act_absmax")
CALIBRATION = ("sequential", "float")
SCOPES = ("block", "model")


@dataclass(frozen=True)
class MethodConfig:
    """Base for method configs: options as data (``to_dict`` / ``from_dict``), versioned."""

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    def check_layer(self, shape: tuple[int, ...], name: str) -> None:
        """Raise InputError if a layer of weight ``shape`` cannot be stored this way (checked before any work)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(getattr(self, "spec", None), QuantSpec):
            d["spec"] = self.spec.to_dict()
        return {"method": self.method, "version": self.version, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MethodConfig:
        """The config a record holds; a record written by a newer lowbit (higher version) is refused."""
        version = d.get("version", 1)
        if not isinstance(version, int) or version > cls.version:
            raise InputError(f"{cls.method} config version {version!r} is newer than this lowbit reads "
                             f"(up to {cls.version}); upgrade lowbit")
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "spec"}
        if "spec" in names:
            kw["spec"] = QuantSpec.from_dict(d.get("spec", {}))
        return cls(**kw)


@dataclass(frozen=True)
class GridConfig(MethodConfig):
    """Configs of the methods that produce integer grids (QuantizedTensor): a spec plus options."""

    spec: QuantSpec = field(default_factory=QuantSpec)

    def check_layer(self, shape: tuple[int, ...], name: str) -> None:
        self.spec.block_len(shape, name)


@dataclass(frozen=True)
class Transform:
    """A change of the model around its layers, run between calibration and quantization.

    ``scope="block"``: ``fn(groups, stats, cfg)`` per block (AWQ); ``scope="model"``:
    ``fn(context, cfg)`` once, with a :class:`ModelContext`-like object from the pipeline (SmoothQuant).
    Either returns the statistics as seen by the layers afterwards."""

    scope: str
    fn: Callable[..., Any]

    def __post_init__(self) -> None:
        assert self.scope in SCOPES, self.scope


@dataclass(frozen=True)
class Method:
    name: str
    config: type[MethodConfig]
    fn: Callable[..., Any]
    needs: tuple[str, ...] = ()
    summary: str = ""
    produces: str = "tensor"  # "tensor" (QuantizedTensor) | "layer" (a module of the method's own kind)
    calibration: str = "sequential"
    transform: Transform | None = None
    #: rows are quantized independently given shared statistics, so Linears that read the same input
    #: (q/k/v, gate/up) can be stacked into one call (one Hessian inverse instead of three)
    row_independent: bool = True
    #: which modules it quantizes when not every nn.Linear (QAT's convert: the fake-quantized layers)
    selects: Callable[[Any], bool] | None = None
    #: its math runs in torch wherever the weight is (a GPU); otherwise the weight and its statistics go to
    #: the CPU for it (numpy, CPU kernels) and the new module comes back (pipeline/layers.py)
    on_device: bool = False

    def __post_init__(self) -> None:
        assert set(self.needs) <= set(STATISTICS), self.needs
        assert self.produces in ("tensor", "layer") and self.calibration in CALIBRATION

    @property
    def takes_spec(self) -> bool:
        return issubclass(self.config, GridConfig)


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, config: type[MethodConfig], needs: tuple[str, ...] = (), summary: str = "", *,
    produces: str = "tensor", calibration: str = "sequential", transform: Transform | None = None,
    row_independent: bool = True, selects: Callable[[Any], bool] | None = None, on_device: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as method ``name``: ``fn(weight, cfg, stats) -> QuantizedTensor`` when it produces
    tensors, ``fn(linear, cfg, stats) -> nn.Module`` when it produces layers; ``stats`` is the layer's
    :class:`~lowbit.calib.stats.LayerStats` for calibrated methods, else None."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        config.method = name
        METHODS.add(name, Method(name, config, fn, needs, summary, produces, calibration, transform, row_independent,
                                      selects, on_device))
        return fn

    return deco


def get_method(name: str) -> Method:
    return METHODS.get(name)


def make_config(method: str = "rtn", spec: QuantSpec | None = None, **options: Any) -> MethodConfig:
    """The config of ``method`` with ``options`` (its dataclass fields); ``spec`` for integer-grid methods.

    >>> make_config("gptq", QuantSpec(4, True, 64), act_order=False)  # doctest: +SKIP
    >>> make_config("gguf", type="Q4_K")                                # doctest: +SKIP
    """
    entry = get_method(method)
    if entry.takes_spec:
        options["spec"] = spec or QuantSpec()
    elif spec is not None:
        raise InputError(f"method {method!r} has its own storage format and takes no bits / group size spec")
    known = {f.name for f in fields(entry.config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"method {method!r} has no option {', '.join(unknown)} (its options: "
                         f"{', '.join(sorted(known - {'spec'})) or 'none'})")
    return entry.config(**options)
