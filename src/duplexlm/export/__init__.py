"""Export a model of ours to the inference engines users already run.

``export_model(src, dst, format)`` takes a model directory (or a training checkpoint) and writes a
directory the engine loads, atomically, with our tokenizer files beside the engine's own and a
``duplex_export.json`` manifest that says what it holds (format, family, quantisation, the source)
so that ``duplex serve`` and :func:`read_manifest` can tell an export from a model directory:

- ``ct2``: CTranslate2, for the decoders (GPT-2, Llama, Qwen2 shapes) and T5, through CTranslate2's
  own converter run on the Hugging Face form of the model (``duplex convert --to-hf``'s).
- ``gguf``: GGUF for llama.cpp, for the decoders, written with the ``gguf`` package in the layout
  llama.cpp reads (see :mod:`duplexlm.export.gguf`); run by llama-cpp-python where it is installed
  (:mod:`duplexlm.export.llama_cpp`).
- ``onnx``: ONNX, by torch's exporter, run by onnxruntime: encoders with a classify or tag head, which
  ``duplexlm.load`` returns behind the model's interface (so ``duplex classify|tag|eval`` take them),
  and decoders with a KV cache, which :class:`duplexlm.export.onnx.ONNXDecoder` decodes and scores.

``duplex serve`` serves ct2 and gguf exports behind the same API (:mod:`duplexlm.export.threaded`).

Each format names the package it needs; a missing one is one line saying how to install it, with
nothing written.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelDirectoryError, UnsupportedModelError
from ..fileutil import atomic_directory, check_output_dir, read_json_object, write_json
from ..io import (
    EXPORT_MANIFEST,
    copy_tokenizer,
    load_config_and_weights,
    read_quantization,
    tokenizer_directory,
)
from ..version import __version__

MANIFEST = EXPORT_MANIFEST
FORMATS = ("ct2", "onnx", "gguf")
# what each format needs installed, and the pip spec that brings it
PACKAGES = {"ct2": (("ctranslate2", "ctranslate2>=4.5"), ("transformers", "transformers>=4.45")),
            "onnx": (("onnx", "onnx>=1.16"), ("onnxscript", "onnxscript>=0.3"), ("onnxruntime", "onnxruntime>=1.18")),
            "gguf": (("gguf", "gguf>=0.10"),)}
QUANTIZATIONS = {"ct2": ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16"),
                 "onnx": ("int8",), "gguf": ("q8_0", "int8", "f16")}


@dataclass
class ExportResult:
    """What :func:`export_model` wrote: the directory, its manifest and the files' total size."""

    path: Path
    manifest: dict[str, Any]
    size_bytes: int

    def summary(self) -> str:
        m = self.manifest
        quant = f", {m['quantization']}" if m.get("quantization") else ""
        article = "an" if m["family"][0] in "aeiou" else "a"
        return (f"wrote {self.path}: {m['format']} export of {article} {m['family']} ({m['architecture']}{quant}), "
                f"{self.size_bytes / 2**20:.1f} MiB")


def require(fmt: str) -> None:
    """Import the packages ``fmt`` needs, or raise one line saying how to install them."""
    missing = []
    for module, spec in PACKAGES[fmt]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(spec)
    if missing:
        specs = " ".join(f"'{s}'" for s in missing)
        raise ConfigError(f"--format {fmt}: needs {', '.join(m.split('>')[0] for m in missing)}, not installed; "
                          f"install with: pip install {specs} (or pip install 'duplexlm[deploy]')")


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of an export directory, or None for anything else."""
    file = Path(path) / MANIFEST
    return read_json_object(file) if file.is_file() else None


def export_model(src: str | Path, dst: str | Path, fmt: str, quantize: str | None = None,
                 overwrite: bool = False) -> ExportResult:
    """Write ``src`` (a model directory of ours or a training checkpoint) as a ``fmt`` export at
    ``dst`` (new or empty, or with ``overwrite`` an earlier export), atomically.

    ``quantize``: the weight type the engine stores (for ct2: int8, int8_float32, int16, float16, ...);
    None keeps float32. Unsupported families, heads, quantised sources and missing packages are
    refused before anything is written."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, found {fmt!r}")
    if quantize is not None and quantize not in QUANTIZATIONS[fmt]:
        raise ConfigError(f"--quantize: {fmt} offers {', '.join(QUANTIZATIONS[fmt])}; found {quantize!r}")
    src = Path(src)
    check_output_dir(dst, "export", overwrite=overwrite, flag="out", inputs=[src])
    if src.is_dir() and read_manifest(src) is not None:
        raise UnsupportedModelError(f"{src}: is already an export ({read_manifest(src)['format']}); export the model "
                                    "directory it was made from")
    if src.is_dir() and read_quantization(src) is not None:
        raise UnsupportedModelError(f"{src}: holds a quantised model; export the full-precision model it was made "
                                    f"from, with --quantize for the engine's own quantisation")
    config, state_dict = load_config_and_weights(src)
    tok_dir = tokenizer_directory(src)
    if tok_dir is None:
        raise ModelDirectoryError(f"{src}: no tokenizer.json; an export needs the model's tokenizer beside it")
    from . import ct2, gguf, onnx

    writer = {"ct2": ct2, "onnx": onnx, "gguf": gguf}[fmt]
    architecture = writer.check(config)  # one line naming what would work, before any import or write
    require(fmt)
    with atomic_directory(dst) as tmp:
        details = writer.write(config, state_dict, tok_dir, tmp, quantize)
        copy_tokenizer(tok_dir, tmp)
        manifest = {"format": fmt, "family": config.family, "architecture": architecture,
                    "head": getattr(config, "head", "none"), "quantization": quantize, "source": str(src),
                    "duplexlm_version": __version__, "config": config.to_dict(), **details}
        write_json(tmp / MANIFEST, manifest)
    size = sum(f.stat().st_size for f in Path(dst).rglob("*") if f.is_file())
    return ExportResult(Path(dst), manifest, size)


__all__ = ["FORMATS", "MANIFEST", "QUANTIZATIONS", "ExportResult", "export_model", "read_manifest", "require"]
