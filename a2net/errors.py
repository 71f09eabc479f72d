"""The exceptions a2net raises for a caller's mistake, and what the command line makes of them.

Every one subclasses the built-in exception a caller would catch anyway (``ValueError``,
``FileNotFoundError``, ``ImportError``), so ``except ValueError`` keeps working; the messages
name the argument or the file, then what was expected and what was found.

* :class:`UsageError` (exit code 2, as argparse's own errors): a command-line option out of range,
  an output path that cannot be written;
* :class:`InputError` (exit code 1): bad data — an undecodable or corrupted file, a non-finite
  tensor, an image out of range, a dataset row that does not parse;
* :class:`InputNotFoundError` (exit code 1): a file or folder that does not exist;
* :class:`MissingExtraError` (exit code 1): an optional dependency that is not installed.

The command line (:mod:`a2net.cli`) prints any of them as one line ``a2net: error: ...`` on
stderr, without a traceback unless ``--debug`` or ``A2NET_DEBUG=1`` asks for it.
"""

from __future__ import annotations

__all__ = ["InputError", "InputNotFoundError", "MissingExtraError", "UsageError", "check_finite", "require_extra"]


class InputError(ValueError):
    """An input (file, tensor, dataset row, argument value) that a2net cannot use."""


class UsageError(InputError):
    """A command-line option that is wrong before any data is read (the CLI exits with 2)."""


class InputNotFoundError(InputError, FileNotFoundError):
    """A file or folder that does not exist."""


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message says which extra installs it."""


def require_extra(module: str, purpose: str, extra: str = "data"):
    """Import ``module``, or raise :class:`MissingExtraError` saying ``pip install 'a2net[<extra>]'``.

    Args:
        module: the module to import (e.g. ``"skimage.data"``).
        purpose: what needs it, for the message (e.g. ``"the bundled photos"``).
        extra: the optional-dependency group of ``pyproject.toml`` that installs it.
    Returns:
        the imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs {_DISTRIBUTIONS.get(top, top)}, which is not installed: pip install 'a2net[{extra}]'"
        ) from err


_DISTRIBUTIONS = {"skimage": "scikit-image", "matplotlib": "matplotlib", "scipy": "scipy"}


def check_finite(name: str, x) -> None:
    """Raise :class:`InputError` if the tensor ``x`` holds a NaN or an infinity (``name`` is
    the argument named in the message)."""
    finite = x.isfinite()
    if not bool(finite.all()):
        bad = int(x.numel() - finite.sum())
        raise InputError(f"{name}: expected finite values, got {bad} NaN/inf of {x.numel()} (shape {tuple(x.shape)})")
