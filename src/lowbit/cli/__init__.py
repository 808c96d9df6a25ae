"""The `lowbit` command line: one thin command per API verb.

Each command parses its options into configs and settings and calls one function of ``lowbit.api``
(or of the pure ``lowbit.plan`` / ``lowbit.compare`` / ``lowbit.report``); printing stays here. User
errors (LowbitError) print one line and exit with code 2, and nothing half-written is left behind.

One module per command or pair: quantize (+ options, the method options derived from the configs),
export (+ imatrix), evaluate (eval + inspect), qat, plan, compare (+ demo), hardware. No module here
imports torch or numpy at import time: `lowbit plan` answers at once, and ``main`` configures OpenBLAS
before numpy is first imported.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from lowbit.errors import LowbitError

app = typer.Typer(
    name="lowbit",
    help="Quantize a neural network and know what you gave up: quantize, evaluate, inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Run a command; a LowbitError becomes one ``error:`` line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except LowbitError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def command(name: str | None = None, **kw: Any) -> Callable[[F], F]:
    """Register a function as a command of ``app`` (``kw`` as for ``app.command``), its LowbitErrors
    handled by :func:`user_errors`. Each paragraph of its docstring is joined into one line: typer's rich
    help keeps the line breaks of every paragraph but the first."""

    def register(fn: F) -> F:
        wrapped = user_errors(fn)
        paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
        wrapped.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
        app.command(name, **kw)(wrapped)
        return wrapped

    return register


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what lowbit is doing.")] = False,
          allow_nonfinite: Annotated[bool, typer.Option(
              "--allow-nonfinite", help="Accept NaN / inf weights and importance values (refused by default).")] = False,
          ) -> None:
    from rich.logging import RichHandler

    if allow_nonfinite:
        os.environ["LOWBIT_ALLOW_NONFINITE"] = "1"

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False, show_time=False)])


def main() -> None:
    # numpy's OpenBLAS (the calibration Gram matrices) keeps its threads spinning after each call, and they
    # fight torch's threads for the cores: let them sleep at once. Set before numpy is first imported (no
    # module of this package imports it at import time); a user's own setting wins. The CLI's choice, not
    # the library's: `import lowbit` sets nothing.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    app()


# The commands register themselves on `app`, in the order `lowbit --help` lists them.
from lowbit.cli import quantize, export, evaluate, qat, plan, compare, hardware  # noqa: F401, I001
