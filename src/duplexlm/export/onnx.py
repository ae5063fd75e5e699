"""ONNX exports by torch's exporter (``dynamo=True``), run with onnxruntime; every dimension dynamic.

- Encoders with a task head (classify, tag), run behind the model's interface by
  :class:`duplexlm.models.onnx_module.ONNXModule`: ``model.onnx`` takes ``input_ids`` and
  ``attention_mask`` (batch, length) and gives the head's ``logits``. A CRF head's transitions go into
  the manifest: Viterbi runs on the host, as for the original.
- Decoders with an LM head (GPT-2, Llama, Qwen2 shapes) with a KV cache, run by :class:`ONNXDecoder`:
  one graph for the prompt and for each new token. It takes ``input_ids`` and ``position_ids``
  (batch, T), ``attention_mask`` (batch, past + T) and the cache so far, ``past_keys`` and
  ``past_values`` (n_layer, batch, n_kv_head, past, head_dim; past = 0 for the prompt), and gives
  ``logits`` (batch, T, vocab) and the cache with this call's tokens appended, ``present_keys`` and
  ``present_values``.

``int8``: onnxruntime's dynamic quantisation (int8 weights, activations quantised per call)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import AnyConfig, DecoderConfig, EncoderConfig, config_from_dict
from ..errors import ConfigError, UnsupportedModelError
from ..infer.engine import end_token_ids
from ..io import EXPORT_MANIFEST, load_weights
from ..models import build_model
from ..models.onnx_module import ONNX_FILE
from ..tokenizer import Tokenizer


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask).logits


class _ConcatCache:
    """The cache as the exported graph holds it: the past keys and values come in as inputs, each
    layer appends its new ones (``update``, the interface of :class:`~duplexlm.models.layers.KVCache`)
    and the results go out as the present."""

    per_row = False
    mask = None

    def __init__(self, past_keys: Tensor, past_values: Tensor) -> None:
        self.past_keys, self.past_values = past_keys, past_values
        self.pos = past_keys.shape[3]
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.cat([self.past_keys[layer], k.to(self.past_keys.dtype)], dim=2)
        v = torch.cat([self.past_values[layer], v.to(self.past_values.dtype)], dim=2)
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def advance(self, n: int) -> None:
        pass


class _DecoderStep(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, past_keys: Tensor,
                past_values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cache = _ConcatCache(past_keys, past_values)
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, kv_cache=cache)
        return out.logits, torch.stack(cache.keys), torch.stack(cache.values)


DECODER_INPUTS = ["input_ids", "attention_mask", "position_ids", "past_keys", "past_values"]
DECODER_OUTPUTS = ["logits", "present_keys", "present_values"]


def check(config: AnyConfig) -> str:
    if isinstance(config, EncoderConfig) and config.head in ("classify", "tag") and not config.tasks:
        return f"bert-{config.head}" + ("-crf" if config.crf else "")
    if isinstance(config, DecoderConfig) and config.head == "lm":
        shape = "gpt2" if config.positions == "learned" else ("qwen2" if config.qkv_bias else "llama")
        return f"{shape}-kv-cache"
    what = f"a {config.family} with head {getattr(config, 'head', 'none')!r}"
    hint = {"decoder": "ONNX takes decoders with an LM head; export a classifying decoder with --format model",
            "seq2seq": "export T5 with --format ct2",
            "rnn": "recurrent baselines have no engine format; serve them with duplex serve"}.get(
        config.family, "ONNX takes encoders with one classify or tag head")
    if isinstance(config, EncoderConfig) and config.tasks:
        hint = "a multi-task encoder has several heads; ONNX takes encoders with one classify or tag head"
    raise UnsupportedModelError(f"--format onnx: {what} is not supported; {hint}")


def write(config: AnyConfig, state_dict: dict[str, Tensor], tokenizer_dir: Path, out: Path,
          quantize: str | None) -> dict[str, Any]:
    model = build_model(config)
    load_weights(model, state_dict)
    model.eval()
    if isinstance(config, DecoderConfig):
        if config.tie_word_embeddings and quantize:
            # the head apart from the embedding table, so that the quantiser takes it: it skips a weight
            # that a Gather shares, and the vocabulary head is the largest product of a small decoder
            model.lm_head.weight = nn.Parameter(model.embed.weight.detach().clone())
        details = _export_decoder(config, model, out)
    else:
        details = _export_encoder(config, model, out)
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()  # quantize_dynamic logs a pre-processing hint at WARNING on the root
        level = root.level
        root.setLevel(max(level, logging.ERROR))
        full = out / "model.fp32.onnx"
        (out / ONNX_FILE).rename(full)
        try:
            quantize_dynamic(str(full), str(out / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        full.unlink()
    return details


def _export(module: nn.Module, example: tuple[Tensor, ...], dynamic: tuple[dict[int, Any], ...], inputs: list[str],
            outputs: list[str], file: Path) -> None:
    chatty = logging.getLogger("torch.onnx")  # notes on torchvision's operators, which we do not use
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), example, str(file), dynamo=True, input_names=inputs,
                              output_names=outputs, dynamic_shapes=dynamic, external_data=False, verbose=False,
                              optimize=True)
    finally:
        chatty.setLevel(level)


def _export_encoder(config: EncoderConfig, model: nn.Module, out: Path) -> dict[str, Any]:
    length = min(16, config.max_seq_len)
    ids = torch.full((2, length), 5 % config.vocab_size, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("length", max=config.max_seq_len)
    _export(_Logits(model), (ids, mask), ({0: batch, 1: seq}, {0: batch, 1: seq}), ["input_ids", "attention_mask"],
            ["logits"], out / ONNX_FILE)
    details: dict[str, Any] = {"engine": "onnxruntime", "inputs": ["input_ids", "attention_mask"],
                               "outputs": ["logits"]}
    if config.crf:
        crf = model.crf
        details["crf"] = {name: getattr(crf, name).detach().tolist()
                          for name in ("transitions", "start_transitions", "end_transitions")}
    return details


def _export_decoder(config: DecoderConfig, model: nn.Module, out: Path) -> dict[str, Any]:
    # traced on 2 rows of 3 new tokens after 4 cached ones (none of them 0 or 1, which torch.export would
    # take as fixed); every dimension is left dynamic, a past of 0 (the prompt's call) included
    B, T, P = 2, 3, 4
    ids = torch.full((B, T), 5 % config.vocab_size, dtype=torch.long)
    mask = torch.ones((B, P + T), dtype=torch.long)
    positions = torch.arange(P, P + T)[None].expand(B, T).contiguous()
    past = torch.zeros((config.n_layer, B, config.n_kv_head, P, config.head_dim))
    D = torch.export.Dim.DYNAMIC
    dynamic = ({0: D, 1: D}, {0: D, 1: D}, {0: D, 1: D}, {1: D, 3: D}, {1: D, 3: D})
    _export(_DecoderStep(model), (ids, mask, positions, past, past.clone()), dynamic, DECODER_INPUTS,
            DECODER_OUTPUTS, out / ONNX_FILE)
    return {"engine": "onnxruntime", "inputs": DECODER_INPUTS, "outputs": DECODER_OUTPUTS,
            "kv_cache": {"n_layer": config.n_layer, "n_kv_head": config.n_kv_head, "head_dim": config.head_dim}}


class ONNXDecoder:
    """A decoder's ONNX export loaded for decoding and scoring with onnxruntime, in token ids of the
    export's tokenizer (ours, beside the graph): the interface of :class:`~duplexlm.export.ct2.CT2Model`.

    Prompts of different lengths share a call, padded on the left (each row's positions count its own
    tokens); the cache grows by one position per new token.

    >>> m = ONNXDecoder("runs/llama-onnx")  # doctest: +SKIP
    >>> m.generate([[5, 17, 9]], max_new_tokens=8)  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        from . import read_manifest

        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None or manifest.get("format") != "onnx" or "kv_cache" not in manifest:
            raise UnsupportedModelError(f"{self.path}: not an ONNX export of a decoder (no {EXPORT_MANIFEST} "
                                        "naming onnx with a kv_cache)")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(f"{path}: an ONNX export needs onnxruntime to run; install with: pip install "
                              "onnxruntime (or pip install 'duplexlm[deploy]')") from e
        self.manifest = manifest
        self.config = config_from_dict(manifest["config"], source=f"{self.path}/{EXPORT_MANIFEST}: config")
        cache = manifest["kv_cache"]
        self.cache_shape = (cache["n_layer"], cache["n_kv_head"], cache["head_dim"])
        self.end_ids = end_token_ids(self.config, Tokenizer.from_dir(self.path))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, keys: np.ndarray,
             values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feed = dict(zip(DECODER_INPUTS, (ids, mask, positions, keys, values)))
        logits, keys, values = self.session.run(DECODER_OUTPUTS, feed)
        return logits, keys, values

    def _empty_cache(self, batch: int) -> np.ndarray:
        n_layer, n_kv_head, head_dim = self.cache_shape
        return np.zeros((n_layer, batch, n_kv_head, 0, head_dim), dtype=np.float32)

    def _check_length(self, length: int, what: str) -> None:
        if self.config.positions == "learned" and length > self.config.max_seq_len:
            raise ValueError(f"{what}: {length} positions exceed max_seq_len={self.config.max_seq_len} of this "
                             "model's learned position table")

    def generate(self, prompts: list[list[int]], max_new_tokens: int, ignore_eos: bool = False,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None) -> list[list[int]]:
        """Each prompt's continuation, greedy at ``temperature=0`` (else sampled, with ``top_k`` and
        ``top_p`` when set, from ``seed``); the end token is left out of the result."""
        if not prompts or any(not p for p in prompts):
            raise ValueError("prompts: expected one or more non-empty lists of token ids")
        vocab = self.config.vocab_size
        if any(t < 0 or t >= vocab for p in prompts for t in p):
            raise ValueError(f"prompts: token ids must lie in [0, {vocab})")
        B, width = len(prompts), max(map(len, prompts))
        self._check_length(width + max_new_tokens - 1, "prompt + max_new_tokens")
        ids = np.zeros((B, width), dtype=np.int64)
        mask = np.zeros((B, width), dtype=np.int64)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = p
            mask[row, width - len(p):] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        keys = values = self._empty_cache(B)
        rng = np.random.default_rng(seed)
        out: list[list[int]] = [[] for _ in prompts]
        done = np.zeros(B, dtype=bool)
        for _ in range(max_new_tokens):
            logits, keys, values = self._run(ids, mask, positions, keys, values)
            chosen = _choose(logits[:, -1], temperature, top_k, top_p, rng)
            for row in np.flatnonzero(~done):
                token = int(chosen[row])
                if not ignore_eos and token in self.end_ids:
                    done[row] = True
                else:
                    out[row].append(token)
            if done.all():
                break
            ids = chosen[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((B, 1), dtype=np.int64)], axis=1)
            positions = positions[:, -1:] + 1
        return out

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """The log-probability of each token after the first, given those before it."""
        scores: list[list[float]] = []
        for start in range(0, len(sequences), 8):
            rows = sequences[start:start + 8]
            width = max(map(len, rows))
            self._check_length(width, "sequences")
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, s in enumerate(rows):  # padded on the right: causal attention never sees it
                ids[row, :len(s)] = s
                mask[row, :len(s)] = 1
            positions = np.broadcast_to(np.arange(width), ids.shape).copy()
            empty = self._empty_cache(len(rows))
            logits, _, _ = self._run(ids, mask, positions, empty, empty)
            logp = torch.from_numpy(logits[:, :-1]).float().log_softmax(-1)
            picked = logp.gather(-1, torch.from_numpy(ids[:, 1:, None])).squeeze(-1)
            scores.extend(picked[row, :len(s) - 1].tolist() for row, s in enumerate(rows))
        return scores


def _choose(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """One token per row of ``logits`` (B, V): the largest at ``temperature=0``, else sampled."""
    if temperature == 0:
        return logits.argmax(-1)
    z = logits.astype(np.float64) / temperature
    if top_k > 0:
        kth = np.sort(z, axis=-1)[:, -min(top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        keep = np.cumsum(sorted_p, -1) - sorted_p < top_p  # the smallest prefix whose mass reaches top_p
        p = np.zeros_like(p)
        np.put_along_axis(p, order, np.where(keep, sorted_p, 0.0), -1)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p])
