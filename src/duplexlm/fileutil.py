"""Files are written one way: hashing, reading a JSON object with a clear error, atomic writes, and
the rule that decides whether an output directory may be written at all.

Atomic writes go to a temporary sibling that is flushed to disk and renamed into place, so a crash
leaves the old file (or directory) or the new one, never half of one. Output directories are checked
before any work starts (:func:`check_output_dir`): a command writes into a new or empty directory,
or — with ``overwrite`` — replaces an earlier output of the same kind; it never replaces a directory
holding anything duplexlm did not write, the current directory, or one of its own inputs.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write(d / "a.txt", "hello")
>>> (d / "a.txt").read_text()
'hello'
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError, OutputError

if TYPE_CHECKING:  # safetensors' tensors; this module itself needs no torch
    from torch import Tensor


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; errors name the file, line and column."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); expected a JSON file") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------------
# Atomic writes


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (where the filesystem allows fsync on a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse to fsync a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write(file: str | Path, content: str | bytes | Callable[[Path], Any]) -> None:
    """Write ``file`` atomically: ``content`` is text (UTF-8), bytes, or a function that writes the
    temporary path it is given (``lambda tmp: backend.save(str(tmp))``)."""
    file = Path(file)
    fd, name = tempfile.mkstemp(prefix=f".{file.name}.tmp-", dir=file.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        _fsync_file(tmp)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(file: str | Path, data: Any) -> None:
    """Pretty JSON (UTF-8, keys in order), written atomically."""
    atomic_write(file, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class atomic_directory:
    """Context manager yielding a temporary directory that replaces ``path`` only on success; on an
    error or Ctrl-C the temporary directory is removed and ``path`` is left as it was.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "out"
    >>> with atomic_directory(d) as tmp:
    ...     _ = (tmp / "a.txt").write_text("x")
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for f in self.tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_file():
                _fsync_file(f)
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)  # make the rename itself durable
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(directory: Path, name: str) -> None:
    """Remove ``.NAME.tmp-*`` and ``.NAME.old-*`` left beside ``directory/NAME`` by a killed process."""
    if directory.is_dir():
        for stale in [*directory.glob(f".{name}.tmp-*"), *directory.glob(f".{name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# Output directories

OutputKind = Literal["model", "tokenizer", "shards", "run", "demo", "eval", "export"]

# What each kind of output holds. A directory with anything else in it holds a user's files: it is
# never replaced, whatever the flags say.
_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "model-*-of-*.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja", "vocab.txt", "adapter", "adapter_config.json",
                "adapter_model.safetensors", "compression_report.json", "compression_report.md")
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "model": _MODEL_FILES,
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
    "shards": ("meta.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "train_[0-9]*.bin", "train_[0-9]*.ws", "val_[0-9]*.bin", "val_[0-9]*.ws"),
    "run": ("config.yaml", "metrics.jsonl", "loss.png", "reward.png", "checkpoints", "model", "tensorboard", "best.safetensors",
            "test_metrics.json", "adapter", "test_generations.jsonl", "compression_report.json",
            "compression_report.md", "pruned"),
    # an engine's directory (duplexlm.export): its own files, our tokenizer and manifest beside them
    "export": ("duplex_export.json", "config.json", "model.bin", "vocabulary.json", "vocabulary.txt",
               "shared_vocabulary.json", "shared_vocabulary.txt", "source_vocabulary.json", "target_vocabulary.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "model.onnx", "model.onnx.data",
               "model.gguf", "generation_config.json"),
    "eval": ("metrics.json", "predictions.jsonl", "report.md", "confusion_matrix.png", "generations.jsonl"),
    "demo": ("corpus.txt", "tok", "data", "pretrain", "runs", "labels", "encoder-finetuned", "report.md", "decoder",
             "metrics.json", "*.png", "llama-tiny", "llama-tiny-hf", "llama-tiny-back",
             "tok-*", "data-*", "gpt2-tiny", "bert-tiny"),  # the last: an earlier demo's
}
_KIND_WORDS = {"model": "model directory", "tokenizer": "tokenizer directory", "shards": "token-shards directory",
               "run": "training run directory", "demo": "demo output directory",
               "eval": "evaluation report directory", "export": "model export directory"}


def _is_ours(entry: str, kind: str) -> bool:
    # temporaries of our own atomic writes, left by a killed process, count as ours
    if entry.startswith(".") and (".tmp-" in entry or ".old-" in entry):
        return True
    return any(fnmatch.fnmatchcase(entry, pattern) for pattern in OUTPUT_NAMES[kind])


def check_output_dir(path: str | Path, kind: OutputKind, *, overwrite: bool = False, flag: str = "--out",
                     inputs: Iterable[str | Path] = ()) -> Path:
    """Check, before any work starts, that ``path`` may receive an output of ``kind``; return it.

    Allowed: a path that does not exist yet, an empty directory, and — with ``overwrite`` — a
    directory that holds only what an output of this kind holds (an earlier run of the command).
    Refused with an :class:`OutputError` naming ``flag``: an empty path, the current directory or
    one above it, a file, one of the command's ``inputs`` or a directory containing one, a directory
    holding anything else (a user's files: never replaced, ``overwrite`` or not), and an earlier
    output without ``overwrite``.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "notes.txt").write_text("mine")
    >>> check_output_dir(d, "model", overwrite=True)
    Traceback (most recent call last):
    ...
    duplexlm.errors.OutputError: --out: ... holds files duplexlm did not write (notes.txt); ...
    """
    if path is None or str(path).strip() == "":
        raise OutputError(f"{flag}: expected a directory path, found an empty one")
    out = Path(path)
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"{flag}: {path!s} is the current directory or one above it; name a new directory "
                          f"for the {_KIND_WORDS[kind]} (e.g. {flag} runs/out)")
    for source in inputs:
        src = Path(source).resolve()
        if src == resolved or resolved in src.parents:
            raise OutputError(f"{flag}: {path!s} is (or contains) the input {source!s}; writing there would "
                              "replace the input; choose another directory")
    if not out.exists():
        if out.is_symlink():
            raise OutputError(f"{flag}: {path!s} is a dangling symbolic link; expected a new directory")
        return out
    if not out.is_dir():
        raise OutputError(f"{flag}: {path!s} exists and is not a directory; expected a new or empty directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return out
    foreign = [e for e in entries if not _is_ours(e, kind)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"{flag}: {path!s} holds files duplexlm did not write ({shown}); refusing to replace "
                          f"it; choose a new or empty directory")
    if not overwrite:
        raise OutputError(f"{flag}: {path!s} already holds a {_KIND_WORDS[kind]}; pass --overwrite to replace "
                          "it, or choose a new directory")
    return out


def independent(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous tensors that share no storage: what safetensors requires."""
    seen: set[int] = set()
    out = {}
    for k, v in state_dict.items():
        v = v.detach().contiguous()
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    return out


__all__ = ["OUTPUT_NAMES", "atomic_directory", "atomic_write", "check_output_dir", "fsync_dir", "independent", "read_json_object",
           "remove_stale_temporaries", "sha256_file", "write_json"]
