"""A bidirectional Transformer encoder in the style of BERT.

Read top to bottom: block (post-norm attention + MLP) → heads (masked LM, classifier) → pooling
([CLS] through the pooler, or the mean over real tokens) → the model (word + position + token-type
embeddings, blocks, optional pooler, head).

>>> import torch
>>> from duplexlm.config import EncoderConfig
>>> cfg = EncoderConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layer=2, n_head=4, head="mlm")
>>> model = Encoder(cfg).eval()
>>> out = model(torch.randint(0, 64, (2, 8)))
>>> out.last_hidden_state.shape, out.logits.shape, out.pooled_output.shape
(torch.Size([2, 8, 32]), torch.Size([2, 8, 64]), torch.Size([2, 32]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..config import ConfigError, EncoderConfig
from .crf import crf_for
from .heads import MLMHead, RTDHead, build_task_heads
from .layers import MLP, Attention, Dropout, build_norm, make_mask, traced
from .outputs import ModelOutput


class Block(nn.Module):
    """A residual block. Post-norm, as in the original Transformer and BERT:
    x = norm_1(x + attn(x)), then x = norm_2(x + mlp(x)). Pre-norm (``norm_position='pre'``):
    x = x + attn(norm_1(x)), then x = x + mlp(norm_2(x)), the residual stream never normalised."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        c = config
        self.pre_norm = c.norm_position == "pre"
        self.attn = Attention(c.d_model, c.n_head, head_dim=c.head_dim, attn_dropout=c.attn_dropout)
        self.norm_1 = build_norm("layernorm", c.d_model, c.norm_eps)
        self.mlp = MLP(c.d_model, c.d_ff, c.activation)
        self.norm_2 = build_norm("layernorm", c.d_model, c.norm_eps)
        self.dropout = Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, impl: str) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            h, weights = self.attn(self.norm_1(x), mask=mask, impl=impl)
            x = x + self.dropout(h)
            return x + self.dropout(self.mlp(self.norm_2(x))), weights
        h, weights = self.attn(x, mask=mask, impl=impl)  # (B, T, C), (B, nh, T, T) or None
        x = self.norm_1(x + self.dropout(h))
        x = self.norm_2(x + self.dropout(self.mlp(x)))
        return x, weights


def mean_pool(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The mean of ``x`` (B, T, C) over the positions where ``attention_mask`` (B, T) is non-zero → (B, C).

    Padding adds nothing, so a padded row pools exactly as the same row alone would; a row with no real
    token pools to zeros rather than NaN.

    >>> x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    >>> mean_pool(x, torch.tensor([[1, 1, 0]]))
    tensor([[2., 3.]])
    """
    if attention_mask is None:
        return x.mean(dim=1)
    keep = attention_mask.bool()[..., None]  # (B, T, 1)
    # masked_fill, not a product: a padded position's value never reaches the sum, whatever it holds
    total = x.masked_fill(~keep, 0.0).sum(dim=1)  # (B, C)
    count = keep.sum(dim=1).clamp(min=1).to(x.dtype)  # (B, 1)
    return total / count


class Encoder(nn.Module):
    """Word + learned position + token-type embeddings → LayerNorm → N post-norm blocks →
    pooling → optional head.

    ``head='mlm'`` gives vocabulary logits (B, T, V); ``'classify'`` gives (B, num_labels) from the
    pooled vector; ``'tag'`` gives per-token logits (B, T, num_labels); ``'none'`` gives hidden
    states only. ``pooling='cls'`` pools with the pooler (dense + tanh on the first token, as BERT),
    ``pooling='mean'`` with the mean of the last hidden states over the non-padding tokens;
    ``pooled_output`` holds that vector (None for ``'cls'`` without a pooler).

    >>> import torch
    >>> from duplexlm.config import EncoderConfig
    >>> cfg = EncoderConfig(vocab_size=64, max_seq_len=16, d_model=32, n_layer=1, n_head=4,
    ...                     head="classify", pooling="mean", pooler=False, num_labels=3)
    >>> out = Encoder(cfg).eval()(torch.randint(1, 64, (2, 8)), attention_mask=torch.ones(2, 8))
    >>> out.logits.shape, out.pooled_output.shape
    (torch.Size([2, 3]), torch.Size([2, 32]))
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = c = config
        if c.head == "classify" and c.pooling == "cls" and not c.pooler:  # a config changed after its checks
            raise ConfigError("EncoderConfig.pooler: head='classify' with pooling='cls' reads the pooled first "
                              "token; set pooler=True, or pooling='mean'")
        if not 0 <= c.pad_token_id < c.vocab_size:
            raise ConfigError(f"EncoderConfig.pad_token_id: expected an id in [0, {c.vocab_size}), "
                              f"found {c.pad_token_id}")
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.pos_embed = nn.Embedding(c.max_seq_len, c.d_model)
        self.type_embed = nn.Embedding(c.type_vocab_size, c.d_model)
        self.embed_norm = build_norm("layernorm", c.d_model, c.norm_eps)
        self.dropout = Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        # pre-norm leaves the residual stream unnormalised: one last norm before pooling and heads
        self.final_norm = build_norm("layernorm", c.d_model, c.norm_eps) if c.norm_position == "pre" else None
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.mlm_head = MLMHead(c.d_model, c.vocab_size, c.activation, c.norm_eps) if c.head == "mlm" else None
        self.classifier: nn.Linear | None = None
        p = c.classifier_dropout if c.classifier_dropout is not None else c.dropout  # every task head's
        if c.head in ("classify", "tag"):
            self.classifier_dropout = Dropout(p)
            self.classifier = nn.Linear(c.d_model, c.num_labels)
        # tags scored as a sequence: transitions between tags, decoded with Viterbi (BIO-constrained
        # when the tag names are known)
        self.crf = crf_for(c) if c.crf else None
        # multi-task: several named heads over the one encoder (``forward(..., task=name)`` picks one)
        self.task_heads = build_task_heads(c.tasks, c.d_model, p) if c.tasks else None
        # ELECTRA: the discriminator's head, and a small masked-LM generator over the same embeddings
        self.rtd_head = RTDHead(c.d_model, c.activation) if c.head == "rtd" else None
        self.generator: nn.ModuleDict | None = None
        if c.head == "rtd":
            self.generator = nn.ModuleDict({
                "blocks": nn.ModuleList(Block(c) for _ in range(c.generator_layers)),
                "head": MLMHead(c.d_model, c.vocab_size, c.activation, c.norm_eps),
            })
            if c.norm_position == "pre":
                self.generator["final_norm"] = build_norm("layernorm", c.d_model, c.norm_eps)
        self.apply(self._init_weights)
        self.tie_weights()
        # A state dict may leave out the tied decoder weight (from_hf does, safetensors files often
        # do); fill it from the embedding so strict loading still works.
        self._register_load_state_dict_pre_hook(self._fill_tied_weight)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's init: normal(0, init_std) weights, zero biases, unit LayerNorms, a zero padding row."""
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Share the word embedding with the masked-LM decoder (and the RTD generator's)."""
        if self.mlm_head is not None:
            self.mlm_head.decoder.weight = self.embed.weight
        if self.generator is not None:
            self.generator["head"].decoder.weight = self.embed.weight

    def _fill_tied_weight(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        source = prefix + "embed.weight"
        for head, tied in ((self.mlm_head, "mlm_head.decoder.weight"),
                           (self.generator, "generator.head.decoder.weight")):
            if head is not None and prefix + tied not in state_dict and source in state_dict:
                state_dict[prefix + tied] = state_dict[source]

    def _check_input(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
                     position_ids: Tensor | None) -> None:
        c = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq_len), found {tuple(input_ids.shape)}")
        shape = tuple(input_ids.shape)
        if shape[1] > c.max_seq_len:
            raise ValueError(f"input_ids: {shape[1]} positions exceed max_seq_len={c.max_seq_len} "
                             "of this model's learned position table")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("position_ids", position_ids)):
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape} (as input_ids), found {tuple(t.shape)}")
        if traced():  # torch.compile / torch.export (ONNX): the values are not known yet
            return
        for name, t, high in (("input_ids", input_ids, c.vocab_size),
                              ("token_type_ids", token_type_ids, c.type_vocab_size),
                              ("position_ids", position_ids, c.max_seq_len)):
            if t is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= high):
                raise ValueError(f"{name}: values must lie in [0, {high}), "
                                 f"found min {int(t.min())}, max {int(t.max())} (shape {tuple(t.shape)})")

    def _pool(self, x: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        """x (B, T, C) → the pooled vector (B, C) the classifier reads, as ``config.pooling`` says."""
        if self.config.pooling == "mean":
            return mean_pool(x, attention_mask)
        return torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # [CLS], as BERT

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, position_ids: Tensor | None = None,
                output_hidden_states: bool = False, output_attentions: bool = False,
                logits_at: Tensor | None = None, task: str | None = None,
                replace_at: Tensor | None = None, replace_u: Tensor | None = None) -> ModelOutput:
        """input_ids (B, T); attention_mask (B, T) of 1 = real token, 0 = padding; token_type_ids
        (B, T) segment ids (default 0); position_ids (B, T) (default 0..T-1).

        ``logits_at`` (B, T) bool, masked LM only: compute the vocabulary logits at those positions
        alone, as (N, V) in row-major order of the True entries. Masked-LM training scores only the
        masked ~15-30% of tokens, and the projection onto the vocabulary is the largest matrix
        multiply of a small encoder, so this saves most of it.

        ``task``: a multi-task model's head to run (``config.tasks`` names them); without it a
        multi-task model returns hidden states only.

        ``replace_at`` (B, T) bool and ``replace_u`` (B, T) in [0, 1), head ``rtd`` (ELECTRA
        pretraining): the generator reads ``input_ids`` (masked there), proposes a token at each
        ``replace_at`` position — drawn from its softmax by inverse CDF with ``replace_u`` as the
        uniform draw, so the sample is a pure function of the batch — and the discriminator reads
        the corrupted input. ``logits`` are then the discriminator's (B, T) and ``aux`` holds the
        generator's ``generator_logits`` (N, V) and its ``sampled`` ids (N,), in row-major order of
        the ``replace_at`` positions."""
        self._check_input(input_ids, attention_mask, token_type_ids, position_ids)
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = make_mask(attention_mask, T, T, causal=False)  # (B, 1, 1, T) or None: every token sees all
        impl = "eager" if output_attentions else "sdpa"
        aux = None
        if replace_at is not None:
            if self.generator is None or replace_u is None:
                raise ValueError("replace_at: replaced-token detection needs head='rtd' and replace_u")
            input_ids, aux = self._corrupt(input_ids, replace_at, replace_u, token_type_ids, position_ids, mask)
        x = self._embed(input_ids, token_type_ids, position_ids)  # (B, T, C)

        hidden_states: list[Tensor] = [x] if output_hidden_states else []
        attentions: list[Tensor] = []
        for block in self.blocks:
            x, weights = block(x, mask, impl)
            if output_hidden_states:
                hidden_states.append(x)
            if weights is not None:
                attentions.append(weights)

        if self.final_norm is not None:
            x = self.final_norm(x)
            if output_hidden_states:
                hidden_states[-1] = x  # the last hidden state as the heads read it (as Hugging Face reports it)
        pooled = self._pool(x, attention_mask)  # (B, C) or None
        logits = None
        if self.mlm_head is not None:
            if logits_at is not None:
                if tuple(logits_at.shape) != (B, T):
                    raise ValueError(f"logits_at: expected shape {(B, T)} (as input_ids), found {tuple(logits_at.shape)}")
                logits = self.mlm_head(x[logits_at.bool()])  # (N, V)
            else:
                logits = self.mlm_head(x)  # (B, T, V)
        elif task is not None:
            if self.task_heads is None or task not in self.task_heads:
                have = ", ".join(self.task_heads) if self.task_heads is not None else "none (a single-task model)"
                raise ValueError(f"task: no head {task!r}; this model's task heads: {have}")
            logits = self.task_heads[task](x, pooled)  # (B, K) or (B, T, K)
        elif self.classifier is not None:
            features = pooled if self.config.head == "classify" else x  # (B, C) or (B, T, C)
            logits = self.classifier(self.classifier_dropout(features))  # (B, [T,] num_labels)
        elif self.rtd_head is not None:
            logits = self.rtd_head(x)  # (B, T): was this token replaced?
        return ModelOutput(
            last_hidden_state=x, logits=logits, pooled_output=pooled,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None, aux=aux,
        )

    def num_flops_per_token(self, seq_len: int | None = None, head_fraction: float = 1.0) -> float:
        """Forward+backward FLOPs per token: 6 × the blocks' matmul weights + attention (PaLM
        appendix B), plus the heads; a masked-LM head (and the RTD generator's) runs at
        ``head_fraction`` of the positions, the masked ones."""
        c = self.config
        T = seq_len or c.max_seq_len

        def matmul(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters() if p.dim() == 2)

        per_layer = matmul(self.blocks[0]) + 2 * c.d_model * T  # weights + scores and weighted values
        flops = 6.0 * c.n_layer * per_layer
        vocab_head = c.d_model * c.d_model + c.vocab_size * c.d_model  # dense + decoder onto the vocabulary
        if self.mlm_head is not None:
            flops += 6.0 * vocab_head * head_fraction
        if self.generator is not None:
            flops += 6.0 * (c.generator_layers * per_layer + vocab_head * head_fraction) + 6.0 * matmul(self.rtd_head)
        flops += 6.0 * (matmul(self.classifier) + matmul(self.pooler))
        return flops

    def _embed(self, input_ids: Tensor, token_type_ids: Tensor, position_ids: Tensor) -> Tensor:
        x = self.embed(input_ids) + self.type_embed(token_type_ids) + self.pos_embed(position_ids)  # (B, T, C)
        return self.dropout(self.embed_norm(x))

    def _corrupt(self, input_ids: Tensor, replace_at: Tensor, replace_u: Tensor, token_type_ids: Tensor,
                 position_ids: Tensor, mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's pass (see ``forward``): → (the corrupted ids, ``aux``)."""
        assert self.generator is not None
        B, T = input_ids.shape
        for name, t in (("replace_at", replace_at), ("replace_u", replace_u)):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name}: expected shape {(B, T)} (as input_ids), found {tuple(t.shape)}")
        at = replace_at.bool()
        h = self._embed(input_ids, token_type_ids, position_ids)
        for block in self.generator["blocks"]:
            h, _ = block(h, mask, "sdpa")
        if "final_norm" in self.generator:
            h = self.generator["final_norm"](h)
        gen_logits = self.generator["head"](h[at])  # (N, V)
        with torch.no_grad():  # the sample is not differentiated (ELECTRA trains the two losses apart)
            cdf = gen_logits.float().softmax(-1).cumsum(-1)
            u = replace_u[at].to(cdf.dtype)[:, None] * cdf[:, -1:]  # scaled: the last cdf entry may round below 1
            # the first id whose cumulative probability exceeds u: never one the generator gives no mass
            sampled = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
        return input_ids.masked_scatter(at, sampled), {"generator_logits": gen_logits, "sampled": sampled}


__all__ = ["Block", "Encoder", "MLMHead", "mean_pool"]
