"""Fill-mask with a masked-LM encoder: the top-k tokens for every ``[MASK]`` in a text.

>>> fill_mask(model, tokenizer, "中国的首都是[MASK]京。")  # doctest: +SKIP
[[('北', 0.91), ('南', 0.03), ...]]
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..tokenizer import Tokenizer


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each mask token in ``text``, the ``top_k`` (token, probability) pairs, best first.

    A model that is not a masked-LM encoder, or a tokenizer without a mask token, is a
    :class:`~duplexlm.errors.ConfigError`; a text without a mask token a :class:`~duplexlm.errors.DataError`.
    """
    config = getattr(model, "config", None)
    if getattr(config, "family", None) != "encoder" or getattr(config, "head", None) != "mlm":
        raise ConfigError(f"model: fill-mask needs an encoder with a masked-LM head, found a "
                          f"{getattr(config, 'family', type(model).__name__)} with head={getattr(config, 'head', None)!r}")
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ConfigError("tokenizer: fill-mask needs a mask token, and this tokenizer has none")
    ids = torch.tensor([tokenizer.encode(text)], device=next(model.parameters()).device)
    positions = (ids[0] == mask_id).nonzero().flatten().tolist()
    if not positions:
        raise DataError(f"text: no {tokenizer.special_tokens.get('mask_token')} in {text!r}; expected a mask token to fill")
    model.eval()
    logits = model(ids).logits[0]  # (T, V)
    special = torch.tensor(sorted(tokenizer.special_ids), device=logits.device)
    out = []
    for p in positions:
        probs = logits[p].float().softmax(-1)
        probs[special] = 0.0  # a special token is never a useful answer
        top = probs.topk(top_k)
        out.append([(tokenizer.id_to_token(int(i)) or "?", float(v)) for v, i in zip(top.values, top.indices)])
    return out
