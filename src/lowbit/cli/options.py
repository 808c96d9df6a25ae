"""`lowbit quantize`'s method options, derived from the method configs.

Every field of every registered method config is one option: the union over the methods, one option
per field name (``--clip-search`` serves rtn and awq). The integer grid (the ``spec`` field of rtn,
gptq, awq, hqq) is built from ``--bits / --group-size / --asym / --scale-dtype`` instead. An option's
help is the field's ``metadata["help"]`` (its name when there is none), then the methods that take it
and their defaults. An option given to a method whose config lacks it is a one-line error that names
the method and the options it has.

The options are added the first time the command parses or prints its help
(:class:`MethodOptionsCommand`): deriving them imports every method, and so torch, which the other
commands (`lowbit plan` answers at once) must not pay for.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from typer.core import TyperCommand

from lowbit.errors import InputError

GRID_FLAGS = {"bits": "--bits", "group_size": "--group-size", "asym": "--asym/--sym", "scale_dtype": "--scale-dtype"}
PANEL = "Method options"
_KEY = "lowbit.method_options"  # where MethodOptionsCommand leaves the derived options' values (ctx.meta)
_REQUIRED = "required"


@dataclass(frozen=True)
class Grid:
    """The integer-grid flags as given on the command line (None: not given)."""

    bits: int | None = None
    group_size: int | None = None
    asym: bool | None = None
    scale_dtype: str | None = None

    def given(self) -> list[str]:
        return [GRID_FLAGS[f.name] for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def spec(self) -> Any:
        """The QuantSpec, with QuantSpec's own defaults (4 bits, group 64, symmetric) for what was not given."""
        from lowbit.spec import QuantSpec

        kw = {"bits": self.bits, "group_size": self.group_size, "scale_dtype": self.scale_dtype,
              "symmetric": None if self.asym is None else not self.asym}
        return QuantSpec(**{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class MethodOption:
    """One option: the config fields of one name, across the methods that have one."""

    name: str
    type: Any  # bool, int, float, str or a Literal of str (Optional removed: "not given" is None)
    helps: dict[str, str]  # method -> help text
    defaults: dict[str, Any]  # method -> default (_REQUIRED when the field has none)

    @property
    def flag(self) -> str:
        return flag(self.name)

    def help_text(self) -> str:
        texts = list(dict.fromkeys(h.rstrip(".") for h in self.helps.values()))
        text = texts[0] if len(texts) == 1 else "; ".join(f"{m}: {h.rstrip('.')}" for m, h in self.helps.items())
        by_default: dict[str, list[str]] = {}
        for method, default in self.defaults.items():
            by_default.setdefault(_show(default), []).append(method)
        where = "; ".join(f"{', '.join(ms)}: {d if d == _REQUIRED else 'default ' + d}" for d, ms in by_default.items())
        return escape(f"{text} ({where}).")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(default: Any) -> str:
    if default is _REQUIRED:
        return _REQUIRED
    if isinstance(default, bool):
        return "on" if default else "off"
    return "unset" if default is None else str(default)


def config_fields(config: type) -> list[tuple[dataclasses.Field, Any]]:
    """The option fields of a config class with their option types (the grid ``spec`` is not one)."""
    from lowbit.spec import QuantSpec

    hints = typing.get_type_hints(config)
    found = []
    for f in dataclasses.fields(config):
        t = hints[f.name]
        if t is QuantSpec:
            continue
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            t = args[0] if len(args) == 1 else t
        if t not in (bool, int, float, str) and typing.get_origin(t) is not Literal:
            raise TypeError(f"{config.__name__}.{f.name}: a {t} field has no command-line form; "
                            "use bool, int, float, str or a Literal")
        found.append((f, t))
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _REQUIRED


def method_options() -> dict[str, MethodOption]:
    """One option per config field name over every registered method, in registry order."""
    from lowbit.methods import METHODS, get_method

    options: dict[str, MethodOption] = {}
    for method in METHODS:
        for f, t in config_fields(get_method(method).config):
            opt = options.setdefault(f.name, MethodOption(f.name, t, {}, {}))
            assert opt.type == t, f"{f.name}: {method} makes it {t}, another method {opt.type}"
            opt.helps[method] = f.metadata.get("help", f.name)
            opt.defaults[method] = _default(f)
    return options


def _click_params(options: dict[str, MethodOption]) -> list[Any]:
    """The options as the parameters typer makes of a function with one keyword per option."""

    def probe(**_: Any) -> None: ...

    probe.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            o.type | None, typer.Option(f"{o.flag}/--no-{o.flag[2:]}" if o.type is bool else o.flag,
                                        help=o.help_text(), rich_help_panel=PANEL)])
        for o in options.values()
    ])
    one = typer.Typer(add_completion=False)
    one.command()(probe)
    return list(typer.main.get_command(one).params)


class MethodOptionsCommand(TyperCommand):
    """A command with the derived method options added to its own (see the module doc); their values
    reach the command through :func:`given_options`, not as arguments."""

    _derived: list[Any] | None = None

    def get_params(self, ctx: typer.Context) -> list[Any]:
        if self._derived is None:
            from lowbit.methods import METHODS, get_method

            self._derived = _click_params(method_options())
            reserved = {p.name for p in self.params}
            assert not reserved & {p.name for p in self._derived}, "a config field shadows a command option"
            panel = f"Integer grid ({', '.join(m for m in METHODS if get_method(m).takes_spec)})"
            for p in self.params:
                if p.name in GRID_FLAGS:
                    p.rich_help_panel = panel
            self.params = [*self.params, *self._derived]
        return super().get_params(ctx)

    def invoke(self, ctx: typer.Context) -> Any:
        ctx.meta[_KEY] = {p.name: ctx.params.pop(p.name, None) for p in self._derived or ()}
        return super().invoke(ctx)


def given_options(ctx: typer.Context) -> dict[str, Any]:
    """The derived options given on the command line, by field name."""
    return {k: v for k, v in ctx.meta.get(_KEY, {}).items() if v is not None}


def build_config(method: str, grid: Grid, given: dict[str, Any]) -> Any:
    """The config of ``method`` from the grid flags and the derived options given; one-line errors for
    an option the method lacks, a grid for a method without one, or a required option left out."""
    from lowbit.methods import get_method, make_config

    entry = get_method(method)  # "did you mean ..." on a typo
    own = {f.name: f for f, _ in config_fields(entry.config)}
    offered = [*(GRID_FLAGS.values() if entry.takes_spec else ()), *map(flag, own)]
    stray = [*([] if entry.takes_spec else grid.given()), *(flag(n) for n in given if n not in own)]
    if stray:
        raise InputError(f"method {method!r} has no option {', '.join(stray)}"
                         f"{'' if entry.takes_spec or not grid.given() else ' (it has its own storage format)'}; "
                         f"its options: {', '.join(offered) or 'none'}")
    missing = [flag(n) for n, f in own.items() if _default(f) is _REQUIRED and n not in given]
    if missing:
        raise InputError(f"method {method!r} needs {', '.join(missing)}")
    return make_config(method, grid.spec() if entry.takes_spec else None, **given)
