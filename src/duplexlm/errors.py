"""The errors a user can cause, in one place.

Every mistake in a user's input — a config key, a data file, a model directory, a checkpoint, an
output path — raises a :class:`DuplexError` whose message names the file, line, key or flag, what was
expected and what was found. The command line prints those as one line and exits with status 2;
anything else is a bug and keeps its traceback. Each class also derives from the built-in exception
that fits (``ValueError``, ``FileNotFoundError``, ...), so code that caught those keeps working.

>>> try:
...     raise ConfigError("optim.lr: expected a positive number, found -1")
... except ValueError as e:
...     print(type(e).__name__, isinstance(e, DuplexError))
ConfigError True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DuplexError(Exception):
    """A user's input is wrong; the message says where and what was expected."""


class ConfigError(DuplexError, ValueError):
    """A configuration value or command-line argument is missing, unknown or out of range."""


class DataError(DuplexError, ValueError):
    """Bad corpus or dataset input; the message names the file (and line or field)."""


class ModelError(DuplexError, ValueError):
    """A model directory or checkpoint whose config, tensors or format do not fit together."""


class ModelDirectoryError(DuplexError, FileNotFoundError):
    """A model directory lacks a file it needs; the message names the directory and the files."""


class UnsupportedModelError(ModelError):
    """A checkpoint whose model_type or settings duplexlm cannot represent."""


class CheckpointError(ModelError):
    """A training checkpoint that is incomplete, corrupt or from another run."""


class OutputError(DuplexError, FileExistsError):
    """An output path that cannot be written without losing something: a user's files, the current
    directory, or an input of the same command."""


def did_you_mean(name: str, options: Iterable[str], *, prefix: str = "", cutoff: float = 0.5,
                 clause: bool = False) -> str:
    """The hint an unknown-name error ends with: ``" (did you mean 'a', 'b'?)"`` naming up to three of
    ``options`` closest to ``name`` (each written with ``prefix`` before it), or ``""`` when none is
    close (``difflib`` similarity below ``cutoff``). ``clause=True`` gives ``"; did you mean 'a'?"``
    for messages that read better with a clause than a parenthesis.

    >>> did_you_mean("n_layers", ["n_layer", "n_head", "d_model"])
    " (did you mean 'n_layer'?)"
    >>> did_you_mean("bach_size", ["batch_size", "seed"], prefix="optim.", clause=True)
    "; did you mean 'optim.batch_size'?"
    >>> did_you_mean("zzz", ["n_layer"])
    ''
    """
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=cutoff)
    if not close:
        return ""
    names = ", ".join(repr(prefix + c) for c in close)
    return f"; did you mean {names}?" if clause else f" (did you mean {names}?)"


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DuplexError",
    "ModelDirectoryError",
    "ModelError",
    "OutputError",
    "UnsupportedModelError",
    "did_you_mean",
]
