"""Model directories: the one currency between stages.

A duplexlm directory holds ``config.json`` (our config, with ``family``), ``model.safetensors`` and,
when there is one, ``tokenizer.json`` + ``tokenizer_config.json``. :func:`load` also reads Hugging Face
directories (``model_type`` bert, gpt2, llama, qwen2, t5) and converts them on the fly.

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place only
when complete, so a crash never leaves a half-written model behind.

A quantised model (:mod:`duplexlm.compress`, ``duplex quantize``) is the same kind of directory: its
``config.json`` has a ``quantization`` entry (method, bits, group size, the quantised modules) and its
``model.safetensors`` holds each quantised Linear as ``qweight`` (integers) and ``scales`` beside the
usual tensors. :func:`load` rebuilds it with ``QuantLinear``s, ready for inference; code that needs
full-precision weights (``init_from``, :func:`convert_to_hf`) refuses it with a clear error rather than
dequantising behind the caller's back (``duplexlm.compress.dequantize_model`` does that on purpose).

A pruned model (``duplexlm.compress.prune``) is an ordinary directory whose config.json also has a
``pruning`` entry (method, sparsity, modules; see :func:`duplexlm.config.check_pruning`): a field of
the model's config, so it travels wherever the config does; a malformed entry is refused on reading,
naming the file and the field.

>>> import tempfile, torch
>>> from duplexlm.config import DecoderConfig
>>> from duplexlm.models import build_model
>>> model = build_model(DecoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=2))
>>> d = tempfile.mkdtemp() + "/m"
>>> save_model(model, d)
>>> type(load(d)[0]).__name__
'Decoder'
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import AnyConfig, check_pruning, config_from_dict
from .convert import adapter_for_hf, from_hf, to_hf
from .errors import ConfigError, ModelDirectoryError, ModelError
from .fileutil import (
    atomic_directory,
    check_output_dir,
    independent,
    read_json_object,
    sha256_file,
    write_json,
)
from .models import build_model
from .models.quant_spec import apply_quantization_spec, quantization_spec
from .tokenizer import Tokenizer
from .version import __version__

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
EXPORT_MANIFEST = "duplex_export.json"  # what marks an engine's directory written by duplexlm.export
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ----------------------------------------------------------------------------------------------------
# Reading


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types from Rust
        raise ModelError(f"{file}: not a readable safetensors file: {e}") from e


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Weights from safetensors (single or sharded), else ``pytorch_model.bin`` loaded without
    unpickling arbitrary objects (``weights_only=True``)."""
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map", {})
        sd: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise ModelDirectoryError(f"{path}: shard {shard!r} named in {index.name} is missing")
            sd.update(_load_safetensors(path / shard))
        return sd
    if (path / "pytorch_model.bin").is_file():
        return _load_pickled_weights(path / "pytorch_model.bin")
    raise ModelDirectoryError(f"{path}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def _load_pickled_weights(file: Path) -> dict[str, Tensor]:
    """``pytorch_model.bin`` through ``torch.load(weights_only=True)``: tensors and plain containers
    only. A file that needs more (arbitrary Python objects) is refused, never unpickled."""
    import pickle

    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"{file}: refused to load: it is not a plain PyTorch state dict that weights_only=True can read "
            f"({first[:160]}). Only if you trust the file, convert it once to safetensors: python -c \"import "
            f"torch, safetensors.torch as st; st.save_file({{k: v.contiguous() for k, v in torch.load('{file}', "
            f"weights_only=False).items()}}, '{file.with_name('model.safetensors')}')\"") from e
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ModelError(f"{file}: expected a state dict (a mapping of names to tensors), found {type(sd).__name__}")
    return sd


def is_hf_config(config: dict[str, Any]) -> bool:
    return "family" not in config and "model_type" in config


def read_quantization(path: str | Path) -> Any:
    """The ``quantization`` entry of a duplexlm directory's ``config.json`` (what
    :func:`duplexlm.compress.quantization_spec` wrote), or None for a full-precision or Hugging Face
    directory, or one without a config.json."""
    cfg_file = Path(path) / "config.json"
    if not cfg_file.is_file():
        return None
    raw = read_json_object(cfg_file)
    return None if is_hf_config(raw) else raw.get("quantization")


def _describe_quantization(spec: Any) -> str:
    if isinstance(spec, dict):
        group = f", groups of {spec['group_size']}" if spec.get("group_size") else ""
        return f"{spec.get('method')}{group}"
    return repr(spec)


def load_config_and_weights(path: str | Path,
                            allow_quantized: bool = False) -> tuple[AnyConfig, dict[str, Tensor]]:
    """Our config and state dict (keys as our modules name them) from either kind of directory, or
    from a training checkpoint (``out_dir/checkpoints/step_N``, see :func:`checkpoint_config_file`;
    a LoRA run's adapters merged into the weights, as its exported model has them).

    A quantised directory is refused (:class:`ModelError`) unless ``allow_quantized``: its state dict
    holds integer weights and scales (``*.qweight``, ``*.scales``) that only a model rebuilt with
    :func:`duplexlm.compress.apply_quantization_spec` takes, as :func:`load` does."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirectoryError(f"{path}: not a directory")
    checkpoint = is_checkpoint(path)
    if checkpoint and not checkpoint_complete(path):
        raise ModelDirectoryError(f"{path}: an incomplete or corrupt training checkpoint (its {CHECKPOINT_MANIFEST} "
                                  "does not match its files)")
    cfg_file = checkpoint_config_file(path) if checkpoint else path / "config.json"
    if not cfg_file.is_file():
        raise ModelDirectoryError(_not_a_model_directory(path))
    raw = read_json_object(cfg_file)
    if is_hf_config(raw):
        adapter_for_hf(raw.get("model_type"), source=str(cfg_file))  # fail on the type before reading weights
        return from_hf(raw, read_state_dict(path), source=str(cfg_file))
    quantization = raw.pop("quantization", None)
    if quantization is not None and not allow_quantized:
        raise ModelError(
            f"{path}: holds a quantised model ({_describe_quantization(quantization)}), whose weights are "
            "integers; load it for inference with duplexlm.load, or start from the full-precision model it was "
            "made from (duplexlm.compress.dequantize_model gives full-precision weights from it on purpose)")
    try:  # checked here, to name the file: the config's own check names only the field
        check_pruning(raw.get("pruning"), f"{cfg_file}: pruning")
    except ConfigError as e:  # a file's values, not the caller's
        raise ModelError(str(e)) from e
    # a file of ours must name every field that sets a tensor's shape; defaults would only hide a
    # truncated or hand-edited file until the weights fail to fit
    config = config_from_dict(raw, source=str(cfg_file), require_shapes=True)
    sd = read_state_dict(path)
    return config, (_merge_checkpoint_lora(config, sd, path) if checkpoint else sd)


# ----------------------------------------------------------------------------------------------------
# Training checkpoints and run directories as models

CHECKPOINT_STATE = "trainer_state.json"  # what marks a checkpoint (duplexlm.train.checkpoint writes it)
CHECKPOINT_MANIFEST = "manifest.json"  # written last: every file's size and SHA-256


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a training checkpoint of ours (``out_dir/checkpoints/step_N``): weights, trainer
    state and manifest (a Hugging Face Trainer's ``checkpoint-N`` has no manifest: a Hugging Face directory)."""
    path = Path(path)
    return all((path / name).is_file() for name in (CHECKPOINT_STATE, CHECKPOINT_MANIFEST, "model.safetensors"))


def is_run_directory(path: str | Path) -> bool:
    """Whether ``path`` is a training run's ``out_dir``: its ``config.yaml`` beside ``model/`` or ``checkpoints/``."""
    path = Path(path)
    return (path / "config.yaml").is_file() and ((path / "model").is_dir() or (path / "checkpoints").is_dir())


def checkpoint_complete(path: str | Path, verify_hashes: bool = False) -> bool:
    """Whether a checkpoint's files match its manifest (sizes; with ``verify_hashes`` the SHA-256 too)."""
    import json

    path = Path(path)
    manifest = path / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return False
    for name, info in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            return False
        if verify_hashes and sha256_file(f) != info["sha256"]:
            return False
    return True


def _run_model_directory(checkpoint: Path) -> Path | None:
    """``RUN/model`` for the checkpoint ``RUN/checkpoints/step_N`` (where a finished run wrote its model);
    None for a checkpoint found elsewhere (moved out of its run: no run to ask)."""
    resolved = checkpoint.resolve()
    if resolved.parent.name != "checkpoints" or not (resolved.parent.parent / "config.yaml").is_file():
        return None
    return resolved.parent.parent / "model"


def checkpoint_config_file(checkpoint: str | Path) -> Path:
    """The model config of a training checkpoint: its own ``config.json`` (a checkpoint holds the
    model's config and tokenizer), else the one of its run's exported model (``RUN/model``: a checkpoint
    written before checkpoints held them, of a finished run). A :class:`ModelDirectoryError` saying what
    is missing where neither is."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "config.json").is_file():
        return checkpoint / "config.json"
    model = _run_model_directory(checkpoint)
    if model is not None and (model / "config.json").is_file():
        return model / "config.json"
    where = (f"its run directory has no model to take it from ({model} is missing: the run did not finish)"
             if model is not None else "it is not in its run directory (RUN/checkpoints/step_N) to take it from")
    raise ModelDirectoryError(
        f"{checkpoint}: a training checkpoint with no config.json (written before checkpoints kept the model's "
        f"config), and {where}; a checkpoint written now keeps its config and tokenizer")


def tokenizer_directory(path: str | Path) -> Path | None:
    """The directory holding the tokenizer of a model directory or a training checkpoint (its own, else
    for an older checkpoint its run's exported model's), or None."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return path
    model = _run_model_directory(path) if is_checkpoint(path) else None
    return model if model is not None and (model / "tokenizer.json").is_file() else None


def _not_a_model_directory(path: Path) -> str:
    """Why ``path``, without a config.json, holds no model, and where the model is when we can tell."""
    if not is_run_directory(path):
        return f"{path}: no config.json"
    what = f"{path}: a training run directory, not a model directory"
    if (path / "model" / "config.json").is_file():
        return f"{what}; its model is in {path / 'model'}"
    newest = _newest_checkpoint(path)
    if newest is not None:
        return (f"{what}; its run has not written {path / 'model'} yet: its newest checkpoint is {newest} "
                f"(load it as it is, or `duplex export {newest} DIR`)")
    return f"{what}; its run has written neither {path / 'model'} nor a checkpoint yet"


def _newest_checkpoint(run: Path) -> Path | None:
    found = sorted(p for p in (run / "checkpoints").glob("step_*") if p.is_dir() and checkpoint_complete(p))
    return found[-1] if found else None


def _merge_checkpoint_lora(config: AnyConfig, sd: dict[str, Tensor], checkpoint: Path) -> dict[str, Tensor]:
    """A LoRA run's checkpoint holds each adapted Linear's frozen weight beside its ``lora_A``/``lora_B``
    pairs: the pairs merged into the weights (scaled by the run's ``method_args.lora_alpha``), as in the
    model the run exports."""
    pairs = sorted({tuple(k.split(".lora_A.", 1)) for k in sd if ".lora_A." in k})
    if not pairs:
        return sd
    from .models.lora import WHOLE, LoRAConfig, apply_lora, merge_lora

    state = read_json_object(checkpoint / CHECKPOINT_STATE)
    alpha = ((state.get("config") or {}).get("method_args") or {}).get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise ModelError(f"{checkpoint / CHECKPOINT_STATE}: the checkpoint holds LoRA adapters, but its config names "
                         "no method_args.lora_alpha to merge them with")
    module, part = pairs[0]
    model = build_model(config)
    targets = [m if p == WHOLE else f"{m}:{p}" for m, p in pairs]
    try:
        apply_lora(model, LoRAConfig(r=int(sd[f"{module}.lora_A.{part}"].shape[0]), alpha=alpha, targets=targets))
    except ConfigError as e:  # the file's values, not the caller's
        raise ModelError(f"{checkpoint}: its LoRA adapters do not fit the model: {e}") from e
    load_weights(model, sd, source=str(checkpoint))
    return own_state_dict(merge_lora(model))


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load a state dict, checking every name and shape; tied weights may be absent. A model that
    renamed tensors since older directories were written maps the old names (``upgrade_state_dict``)."""
    if hasattr(model, "upgrade_state_dict"):
        state_dict = model.upgrade_state_dict(state_dict)
    expected = model.state_dict()
    tied = _tied_names(model)
    missing = [k for k in expected if k not in state_dict and k not in tied]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise ModelError(f"{source}: weights do not match the config: {'; '.join(parts)}")
    for k, t in state_dict.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise ModelError(
                f"{source}: tensor {k!r} has shape {tuple(t.shape)}, but the config expects {tuple(expected[k].shape)}"
            )
    model.load_state_dict(state_dict, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier-named one (written once)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        else:
            seen[id(p)] = name
    return tied


def load(path: str | Path, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None) -> tuple[nn.Module, Tokenizer | None]:
    """Load a model directory (ours or Hugging Face) → ``(model, tokenizer)`` in eval mode.

    The tokenizer is ``None`` when the directory has no ``tokenizer.json`` (a freshly built model).
    ``path`` may also be a training checkpoint (``out_dir/checkpoints/step_N``).

    >>> model, tokenizer = load("path/to/model")  # doctest: +SKIP
    >>> out = model(input_ids, attention_mask=mask)  # doctest: +SKIP
    """
    path = Path(path)
    exported = read_json_object(path / EXPORT_MANIFEST) if (path / EXPORT_MANIFEST).is_file() else None
    if exported is not None:
        return _load_export(path, exported), Tokenizer.from_dir(path)
    config, sd = load_config_and_weights(path, allow_quantized=True)
    model = build_model(config)
    spec = read_quantization(path)
    if spec is not None:  # empty QuantLinears where the file has integer weights
        apply_quantization_spec(model, spec, source=str(path / "config.json"))
    load_weights(model, sd, source=str(path))
    model.to(device=device, dtype=dtype or torch.float32)
    model.eval()
    tok_dir = tokenizer_directory(path)
    tokenizer = Tokenizer.from_dir(tok_dir) if tok_dir is not None else None
    return model, tokenizer


def _load_export(path: Path, manifest: dict[str, Any]) -> nn.Module:
    """An engine export (duplexlm.export) that runs behind our model's interface: ONNX encoders."""
    if manifest.get("format") == "onnx" and manifest.get("family") == "encoder":
        from .models.onnx_module import ONNXModule

        return ONNXModule(path, manifest)
    loader = {"ct2": "duplexlm.export.ct2.CT2Model", "onnx": "duplexlm.export.onnx.ONNXDecoder",
               "gguf": "llama-cpp-python's llama_cpp.Llama"}.get(
        str(manifest.get("format")), "its engine")
    raise ModelDirectoryError(f"{path}: a {manifest.get('format')} export of a {manifest.get('family')}, which runs "
                              f"in its engine, not as a torch module; load it with {loader}, or "
                              "use the model directory it was exported from")


# ----------------------------------------------------------------------------------------------------
# Writing


def own_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with each tied tensor once (under its first name), as it is written."""
    tied = _tied_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def save_model(model: nn.Module, path: str | Path, tokenizer: Tokenizer | None = None,
               state_dict: dict[str, Tensor] | None = None, overwrite: bool = False) -> None:
    """Write a duplexlm model directory atomically. ``state_dict`` overrides the model's own
    (a sharded model passes its gathered full state). ``path`` must be new or empty, or — with
    ``overwrite`` — an earlier model directory (see :func:`duplexlm.fileutil.check_output_dir`).
    A quantised model (``QuantLinear``s) is written with its ``quantization`` entry in config.json."""
    check_output_dir(path, "model", overwrite=overwrite, flag="path")
    quantization = quantization_spec(model)
    with atomic_directory(path) as tmp:
        _write_model(tmp, model.config, own_state_dict(model) if state_dict is None else state_dict, quantization)
        if tokenizer is not None:
            tokenizer.save(tmp)


def _write_model(directory: Path, config: AnyConfig, state_dict: dict[str, Tensor],
                 quantization: dict[str, Any] | None = None) -> None:
    """Our config.json (with the ``quantization`` entry of a quantised model) and model.safetensors
    into ``directory``."""
    extra = {} if quantization is None else {"quantization": quantization}
    write_json(directory / "config.json", {"duplexlm_version": __version__, **config.to_dict(), **extra})
    save_file(independent(state_dict), str(directory / "model.safetensors"),
              metadata={"format": "pt", "producer": "duplexlm"})


def copy_tokenizer(src: Path, dst: Path) -> None:
    """The tokenizer files of ``src`` that exist, copied into ``dst``."""
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def convert_to_hf(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """A duplexlm directory → a Hugging Face directory that ``transformers.AutoModel*`` loads.
    ``dst`` must be new or empty, or with ``overwrite`` an earlier model directory. A quantised
    directory is refused: its integer weights have no place in the Hugging Face layouts written here,
    and dequantising silently would hand out weights that look original and are not."""
    src = Path(src)
    check_output_dir(dst, "model", overwrite=overwrite, flag="dst", inputs=[src])
    quantization = read_quantization(src) if src.is_dir() else None
    if quantization is not None:
        raise ModelError(
            f"src: {src} holds a quantised model ({_describe_quantization(quantization)}); convert the "
            "full-precision model it was made from, or dequantise it on purpose first: model, tok = "
            "duplexlm.load(SRC); duplexlm.compress.dequantize_model(model); duplexlm.save_model(model, DIR, tok)")
    config, sd = load_config_and_weights(src)
    load_weights(build_model(config), sd, source=str(src))  # validates names and shapes
    hf_config, hf_sd = to_hf(config, sd)
    with atomic_directory(dst) as tmp:
        write_json(tmp / "config.json", hf_config)
        save_file(independent(hf_sd), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        copy_tokenizer(src, tmp)
    return hf_config


def convert_adapter_to_peft(base: str | Path, adapter: str | Path, dst: str | Path,
                            overwrite: bool = False) -> dict[str, Any]:
    """A LoRA adapter that ``duplex finetune method=lora`` saved (``out_dir/adapter``) → a PEFT adapter
    directory for the Hugging Face form of ``base`` (what :func:`convert_to_hf` writes from it), which
    ``peft.PeftModel.from_pretrained`` loads. Returns the Hugging Face config of the base."""
    from .convert.peft import export_peft
    from .models.lora import load_adapter

    check_output_dir(dst, "model", overwrite=overwrite, flag="dst", inputs=[base, adapter])
    model, _ = load(base)
    load_adapter(model, adapter)
    hf_config, _ = to_hf(model.config, own_state_dict(model))
    export_peft(model, dst, hf_config, overwrite=True)
    return hf_config


def convert_from_hf(src: str | Path, dst: str | Path, overwrite: bool = False) -> AnyConfig:
    """A Hugging Face directory → a duplexlm directory (``dst`` as in :func:`convert_to_hf`)."""
    src = Path(src)
    check_output_dir(dst, "model", overwrite=overwrite, flag="dst", inputs=[src])
    model, _ = load(src)
    with atomic_directory(dst) as tmp:
        _write_model(tmp, model.config, own_state_dict(model))
        copy_tokenizer(src, tmp)
    return model.config


def export_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> AnyConfig:
    """A training checkpoint (``out_dir/checkpoints/step_N``) → a model directory as the run's
    ``out_dir/model`` is (config.json, model.safetensors, the tokenizer), written atomically; a LoRA
    run's adapters merged. The checkpoint is verified against its manifest (SHA-256) first. ``dst``
    must be new or empty, or with ``overwrite`` an earlier model directory. Returns the model's config."""
    src = Path(src)
    if not is_checkpoint(src):
        hint = ""
        if is_run_directory(src):
            newest = _newest_checkpoint(src)
            hint = (f"; it is a training run directory: export one of its checkpoints (the newest is {newest})"
                    if newest is not None else "; it is a training run directory without a checkpoint")
        raise ModelDirectoryError(f"{src}: not a training checkpoint (expected model.safetensors and "
                                  f"{CHECKPOINT_STATE}, as in OUT_DIR/checkpoints/step_N){hint}")
    check_output_dir(dst, "model", overwrite=overwrite, flag="out", inputs=[src])
    if not checkpoint_complete(src, verify_hashes=True):
        raise ModelDirectoryError(f"{src}: an incomplete or corrupt training checkpoint (its files do not match "
                                  f"the sizes and SHA-256 in its {CHECKPOINT_MANIFEST}); export another one")
    config, sd = load_config_and_weights(src)
    model = build_model(config)
    load_weights(model, sd, source=str(src))  # validates names and shapes
    tied = _tied_names(model)
    tok_dir = tokenizer_directory(src)
    with atomic_directory(dst) as tmp:
        _write_model(tmp, config, {k: v for k, v in sd.items() if k not in tied})
        if tok_dir is not None:
            copy_tokenizer(tok_dir, tmp)
    return config
