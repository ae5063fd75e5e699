"""Tokenizers: train and load them with Hugging Face ``tokenizers``; know their special tokens.

A model directory holds ``tokenizer.json`` (the ``tokenizers`` pipeline) and ``tokenizer_config.json``
(the special tokens and the chat template, in the layout ``transformers.PreTrainedTokenizerFast``
reads unchanged).

Two kinds are trained here, both with the same special tokens at the same low ids
(:data:`BASE_SPECIAL_TOKENS`, then ``num_sentinels`` T5 sentinels ``<extra_id_0>``, ``<extra_id_1>``, …),
so every model family (BERT, GPT, T5, chat) finds what it needs in any tokenizer:

- ``bpe``: byte-level BPE as GPT-2. Lossless (``decode(encode(text)) == text``), never unknown, and it
  adds no special tokens when encoding: when packing a corpus into one stream, separate documents
  with ``<|endoftext|>`` (:attr:`Tokenizer.eos_token_id`) yourself.
- ``wordpiece``: BERT-style. NFKC (and optionally lowercase), Chinese characters one per word, ``##``
  continuations; encoding adds ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` with token type ids.

>>> tok = train_tokenizer(["hello world", "hello there"] * 10, "bpe", vocab_size=400, num_sentinels=2)
>>> tok.pad_token_id, tok.eos_token_id, tok.sentinel_ids
(0, 5, [8, 9])
>>> tok.decode(tok.encode("hello 世界"))
'hello 世界'
>>> tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
'<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from .errors import ConfigError, DataError, ModelDirectoryError, ModelError
from .fileutil import atomic_directory, atomic_write, check_output_dir, read_json_object

SPECIAL_KEYS = ("pad_token", "unk_token", "bos_token", "eos_token", "cls_token", "sep_token", "mask_token")

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
ENDOFTEXT = "<|endoftext|>"  # begins and ends a text; separates documents when packing
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML turn markers
BASE_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK, ENDOFTEXT, IM_START, IM_END)
"""The special tokens of every trained tokenizer, at ids 0..7 in this order; sentinels follow."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML as a Jinja template (what ``transformers`` renders); :meth:`Tokenizer.apply_chat_template`
renders the same text in plain Python."""

# BERT's "Chinese character" ranges (CJK Unified Ideographs and their extensions, compatibility
# ideographs), the ones its BasicTokenizer puts spaces around. BertPreTokenizer itself splits only on
# whitespace and punctuation, so a run of Chinese would otherwise be one word.
_CJK_CHAR = Regex(
    "[\\x{4E00}-\\x{9FFF}\\x{3400}-\\x{4DBF}\\x{20000}-\\x{2A6DF}\\x{2A700}-\\x{2B73F}"
    "\\x{2B740}-\\x{2B81F}\\x{2B820}-\\x{2CEAF}\\x{F900}-\\x{FAFF}\\x{2F800}-\\x{2FA1F}]"
)
_BYTE_ALPHABET_SIZE = 256


def sentinel_token(n: int) -> str:
    """The T5 span-corruption sentinel number ``n``.

    >>> sentinel_token(3)
    '<extra_id_3>'
    """
    return f"<extra_id_{n}>"


def special_tokens_for(num_sentinels: int) -> list[str]:
    """All special tokens of a trained tokenizer, in id order.

    >>> special_tokens_for(1)[-3:]
    ['<|im_start|>', '<|im_end|>', '<extra_id_0>']
    """
    return [*BASE_SPECIAL_TOKENS, *(sentinel_token(n) for n in range(num_sentinels))]


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # transformers' serialised AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Text ↔ token ids, with batch padding to tensors.

    ``backend`` is a ``tokenizers.Tokenizer``; ``config`` is the content of ``tokenizer_config.json``
    (special tokens such as ``pad_token``, ``chat_template``, ``model_max_length``).

    >>> from tokenizers import Tokenizer as _T, models
    >>> tok = Tokenizer(_T(models.WordLevel({"[PAD]": 0, "a": 1}, unk_token="[PAD]")), {"pad_token": "[PAD]"})
    >>> tok.pad_token_id, tok.kind
    (0, 'wordlevel')
    """

    def __init__(self, backend: HFTokenizer, config: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.config = dict(config or {})
        self.special_tokens: dict[str, str] = {}
        for key in SPECIAL_KEYS:
            text = _token_text(self.config.get(key))
            if text is not None and backend.token_to_id(text) is not None:
                self.special_tokens[key] = text

    # -- special tokens -------------------------------------------------------------------------
    def _id(self, key: str) -> int | None:
        text = self.special_tokens.get(key)
        return None if text is None else self.backend.token_to_id(text)

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def mask_token_id(self) -> int | None:
        return self._id("mask_token")

    @property
    def unk_token_id(self) -> int | None:
        return self._id("unk_token")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def kind(self) -> str:
        """The backend model: ``'bpe'``, ``'wordpiece'``, or another lower-cased name (``'unigram'``)."""
        return type(self.backend.model).__name__.lower()

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, … in that order (consecutive from 0); ``[]`` if none."""
        ids: list[int] = []
        while (i := self.backend.token_to_id(sentinel_token(len(ids)))) is not None:
            ids.append(i)
        return ids

    @property
    def special_ids(self) -> set[int]:
        """Ids of every special token: the named ones (pad, eos, …) and all added special tokens."""
        ids = {i for i, tok in self.backend.get_added_tokens_decoder().items() if tok.special}
        ids |= {i for key in self.special_tokens if (i := self._id(key)) is not None}
        return ids

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token``, or ``None`` if it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        """The token of ``id``, or ``None`` if the id is out of range."""
        return self.backend.id_to_token(id)

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | list[str], max_length: int | None = None,
                 add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Encode a batch, right-padded: ``input_ids``, ``attention_mask`` (and ``token_type_ids``)."""
        if isinstance(texts, str):
            texts = [texts]
        encs = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        # A tokenizer.json may carry its own padding (all-MiniLM pads to 128): keep the real tokens only
        # (sum of its attention mask, right-padded) and pad the batch to its longest row ourselves.
        rows = [e.ids[: sum(e.attention_mask)] for e in encs]
        rows = [r[:max_length] if max_length else r for r in rows]
        types = [e.type_ids[: len(r)] for e, r in zip(encs, rows)]
        width = max((len(r) for r in rows), default=0)
        pad = self.pad_token_id if self.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, t) in enumerate(zip(rows, types)):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
            tt[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}

    def chars_per_token(self, texts: Iterable[str]) -> float:
        """Characters per token over ``texts`` (no special tokens counted): higher is more compact.

        >>> tok = train_tokenizer(["aaaa bbbb"] * 20, "bpe", vocab_size=300, num_sentinels=0)
        >>> tok.chars_per_token(["aaaa"])
        4.0
        """
        texts = list(texts)
        n_tokens = sum(len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False))
        if n_tokens == 0:
            raise ValueError("chars_per_token: texts encode to no tokens; expected at least one non-empty text")
        return sum(len(t) for t in texts) / n_tokens

    # -- chat -----------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """Render a conversation as text, as ``transformers``' ``apply_chat_template(..., tokenize=False)``.

        ChatML (our template, and the default when the vocabulary has ``<|im_start|>``/``<|im_end|>``)
        is rendered in plain Python; another template found in ``tokenizer_config.json`` (a Hugging Face
        directory) is handed to ``transformers``' sandboxed Jinja renderer.

        >>> tok = Tokenizer(HFTokenizer(models.BPE()), {"chat_template": CHATML_TEMPLATE})
        >>> tok.apply_chat_template([{"role": "system", "content": "Be brief."}])
        '<|im_start|>system\\nBe brief.<|im_end|>\\n'
        """
        template = self.config.get("chat_template")
        if template is None and not (self.token_to_id(IM_START) is not None and self.token_to_id(IM_END) is not None):
            raise ValueError("tokenizer_config.json: no chat_template, and no <|im_start|>/<|im_end|> tokens to "
                             "fall back on ChatML; expected a chat template")
        if template is not None and template != CHATML_TEMPLATE:
            return self._render_foreign_template(template, messages, add_generation_prompt)
        parts = []
        for i, message in enumerate(messages):
            role, content = _message_fields(message, i)
            parts.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def _render_foreign_template(self, template: Any, messages: list[dict[str, str]],
                                 add_generation_prompt: bool) -> str:
        if isinstance(template, list):  # transformers' named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if not isinstance(template, str):
            raise ValueError("tokenizer_config.json: chat_template: expected a Jinja string (or a list with a "
                             f"'default' entry), found {type(template).__name__}")
        try:
            from transformers.utils.chat_template_utils import render_jinja_template
        except ImportError as e:
            raise ValueError("tokenizer_config.json: chat_template is not ChatML; rendering it needs the "
                             "`transformers` package (its sandboxed Jinja renderer)") from e
        for i, message in enumerate(messages):
            _message_fields(message, i)
        rendered, _ = render_jinja_template(conversations=[list(messages)], chat_template=template,
                                            add_generation_prompt=add_generation_prompt, **self.special_tokens)
        return rendered[0]

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Read ``tokenizer.json`` and, when present, ``tokenizer_config.json``, ``special_tokens_map.json``
        and ``chat_template.jinja`` from a directory (ours or Hugging Face's)."""
        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ModelDirectoryError(f"{path}: no tokenizer.json")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # the Rust library raises bare Exceptions
            raise ModelError(f"{file}: not a valid tokenizers file: {e}") from e
        config: dict[str, Any] = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            config = read_json_object(cfg_file)
        stm = path / "special_tokens_map.json"
        if stm.is_file():
            for k, v in json.loads(stm.read_text(encoding="utf-8")).items():
                config.setdefault(k, v)
        jinja = path / "chat_template.jinja"  # where transformers v5 saves a single chat template
        if jinja.is_file():
            config.setdefault("chat_template", jinja.read_text(encoding="utf-8"))
        return cls(backend, config)

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into an existing directory.

        Each file is written to a temporary name and renamed into place, so a crash leaves the old
        file or the new one, never half of one; other files in the directory are left alone.
        """
        path = Path(path)
        atomic_write(path / "tokenizer.json", lambda tmp: self.backend.save(str(tmp)))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.config}
        for key, text in self.special_tokens.items():
            config[key] = text
        config.pop("added_tokens_decoder", None)  # refers to ids of the old file; tokenizer.json has them
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        atomic_write(path / "tokenizer_config.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def ensure_chat_tokens(tokenizer: Tokenizer) -> list[str]:
    """Make a tokenizer ready for chat fine-tuning: when it has no chat template, add ChatML's turn
    tokens (``<|im_start|>``, ``<|im_end|>``, as special tokens, at the end of the vocabulary) and the
    ChatML template. Returns the tokens added (a model's embedding must grow by as many rows).

    >>> from tokenizers import Tokenizer as _T, models
    >>> tok = Tokenizer(_T(models.BPE()), {})
    >>> ensure_chat_tokens(tok), tok.config["chat_template"] == CHATML_TEMPLATE, ensure_chat_tokens(tok)
    (['<|im_start|>', '<|im_end|>'], True, [])
    """
    if tokenizer.config.get("chat_template") is not None:
        return []
    missing = [t for t in (IM_START, IM_END) if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.backend.add_special_tokens(missing)
        extra = list(tokenizer.config.get("additional_special_tokens") or [])
        tokenizer.config["additional_special_tokens"] = extra + [t for t in missing if t not in extra]
    tokenizer.config["chat_template"] = CHATML_TEMPLATE
    return missing


def add_unknown_chars(tokenizer: Tokenizer, texts: Iterable[str | Sequence[str]], min_count: int = 1
                      ) -> tuple[list[str], int, int]:
    """Add to ``tokenizer`` every character of ``texts`` that it maps to its unknown token, seen at
    least ``min_count`` times (most frequent first, ties in code-point order, so the same texts give
    the same ids): an English checkpoint's WordPiece meeting Chinese. A text may be a string or a list
    of words (a tagging sentence). Returns the characters added (a model's embedding must grow by as
    many rows) and the counts of unknown characters and of all non-space characters in ``texts``.

    >>> from tokenizers import Tokenizer as _T, models, pre_tokenizers
    >>> back = _T(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    >>> back.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    >>> tok = Tokenizer(back, {"unk_token": "[UNK]"})
    >>> add_unknown_chars(tok, ["a好a", ["好", "的"]], min_count=2), tok.encode("好a的")
    ((['好'], 3, 5), [2, 1, 0])
    """
    unk = tokenizer.unk_token_id
    if unk is None:
        raise ConfigError("data.add_unknown_chars: the tokenizer has no unknown token (unk_token), so no character "
                          "maps to one; leave data.add_unknown_chars at 0")
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text if isinstance(text, str) else "".join(text))
    chars = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))
    encoded = tokenizer.backend.encode_batch(chars, add_special_tokens=False)
    unknown = [c for c, e in zip(chars, encoded) if unk in e.ids]
    added = [c for c in unknown if counts[c] >= min_count]
    if added:
        tokenizer.backend.add_tokens(added)
    return added, sum(counts[c] for c in unknown), sum(counts[c] for c in chars)


def _message_fields(message: Any, index: int) -> tuple[str, str]:
    if not isinstance(message, Mapping):
        raise ValueError(f"messages[{index}]: expected a dict with 'role' and 'content', "
                         f"found {type(message).__name__}")
    for field in ("role", "content"):
        if not isinstance(message.get(field), str):
            raise ValueError(f"messages[{index}].{field}: expected a string, found {message.get(field)!r}")
    return message["role"], message["content"]


# ----------------------------------------------------------------------------------------------------
# Training


def option_name(name: str, flags: bool) -> str:
    """How an error names an option of :func:`train_tokenizer`: the keyword (``vocab_size``), or with
    ``flags`` the command line's flag (``--vocab-size``).

    >>> option_name("limit_alphabet", False), option_name("limit_alphabet", True)
    ('limit_alphabet', '--limit-alphabet')
    """
    return "--" + name.replace("_", "-") if flags else name


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return value


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    """``texts`` as an iterator, after making sure one of them is not blank (raises before training)."""
    if isinstance(texts, str):
        raise TypeError("texts: expected an iterable of strings, found a single str (wrap it in a list)")
    it = iter(texts)
    seen: list[str] = []
    for i, text in enumerate(it):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}]: expected a str, found {type(text).__name__}")
        seen.append(text)
        if text.strip():
            break
    else:
        raise DataError(f"texts: no non-empty text to train on ({len(seen)} texts, all blank)")

    def rest() -> Iterator[str]:
        for i, text in enumerate(it, start=len(seen)):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected a str, found {type(text).__name__}")
            yield text

    return itertools.chain(seen, rest())


NATIVE_WORK_ABANDONED = threading.Event()


def _interruptible(work: Any) -> Any:
    """Run ``work()`` in a helper thread while the main thread waits in short joins.

    The Rust trainer releases the GIL but never checks for signals, so Ctrl-C or SIGTERM would wait
    for the whole training (half a minute on People's Daily). Waiting here lets the main thread
    raise at once; the abandoned daemon thread ends with the process.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # handed to the caller below, as if raised here
            outcome["error"] = e

    thread = threading.Thread(target=target, name="duplexlm-tokenizer-train", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except BaseException:
        # the trainer's own native threads may still run: the interpreter must not be torn down
        # around them (it aborts); the command line leaves with os._exit instead
        NATIVE_WORK_ABANDONED.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def _bpe_pipeline(lowercase: bool, cjk_chars: bool = False) -> HFTokenizer:
    backend = HFTokenizer(models.BPE())  # no unk_token: every byte is in the alphabet
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    # GPT-2's regex keeps a run of Chinese characters together (they are letters), so merges can learn
    # multi-character words; the bytes of one character are merged before anything crosses it.
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # cjk_chars: each Chinese character is a word of its own, so merges stop at its bytes: the frequent
    # characters become one token each, the rare ones stay bytes (still lossless, never unknown).
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(_CJK_CHAR, behavior="isolated"), byte_level])
                             if cjk_chars else byte_level)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # offsets only; adds no tokens
    return backend


def _wordpiece_pipeline(lowercase: bool) -> HFTokenizer:
    backend = HFTokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix="##"))
    backend.normalizer = (normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]) if lowercase
                          else normalizers.NFKC())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(_CJK_CHAR, behavior="isolated"),  # one Chinese character per word, as BERT
        pre_tokenizers.BertPreTokenizer(),  # whitespace and punctuation
    ])
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return backend


def train_tokenizer(
    texts: Iterable[str],
    kind: Literal["bpe", "wordpiece"],
    vocab_size: int,
    min_frequency: int = 2,
    lowercase: bool = False,
    num_sentinels: int = 32,
    show_progress: bool = False,
    *,
    limit_alphabet: int | None = None,
    cjk_chars: bool = False,
    model_max_length: int = 1024,
    flags: bool = False,
) -> Tokenizer:
    """Train a tokenizer on ``texts`` (an iterable of documents or lines, read once).

    ``kind='bpe'``: byte-level BPE as GPT-2; ``vocab_size`` counts the special tokens and the 256 bytes.
    It adds no special tokens when encoding: separate packed documents with ``<|endoftext|>``. With
    ``cjk_chars`` no merge crosses a Chinese character: one token per frequent character (bytes for
    the rare ones), what a task mapping character to character wants (Simplified → Traditional).
    ``kind='wordpiece'``: BERT-style WordPiece; every character seen in training (or only the
    ``limit_alphabet`` most frequent ones, the rest becoming ``[UNK]``) and its ``##`` form must fit
    in ``vocab_size``. ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` are added when encoding.

    Both start with ``[PAD]``=0, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``, ``<|endoftext|>`` (bos and
    eos), ``<|im_start|>``, ``<|im_end|>``, then ``<extra_id_0>`` … ``<extra_id_{num_sentinels-1}>``.
    Pairs of symbols seen fewer than ``min_frequency`` times are not merged. ``flags``: errors name
    the options as ``duplex tokenizer train``'s flags (``--vocab-size``), not as keywords.

    >>> tok = train_tokenizer(["我爱北京", "北京欢迎你"] * 5, "wordpiece", vocab_size=100, num_sentinels=0)
    >>> tok.backend.encode("北京").tokens
    ['[CLS]', '北', '京', '[SEP]']
    """
    vocab, alphabet = option_name("vocab_size", flags), option_name("limit_alphabet", flags)
    _check_int(vocab, vocab_size, 1)
    _check_int(option_name("min_frequency", flags), min_frequency, 1)
    _check_int(option_name("num_sentinels", flags), num_sentinels, 0)
    _check_int(option_name("model_max_length", flags), model_max_length, 1)
    if limit_alphabet is not None:
        _check_int(alphabet, limit_alphabet, 1)
    specials = special_tokens_for(num_sentinels)
    if kind == "bpe":
        if limit_alphabet is not None:
            wordpiece = "--kind wordpiece" if flags else "kind='wordpiece'"
            raise ConfigError(f"{alphabet}: applies to {wordpiece} only; byte-level BPE always has the "
                             f"{_BYTE_ALPHABET_SIZE} bytes as its alphabet")
        needed = len(specials) + _BYTE_ALPHABET_SIZE
        if vocab_size < needed:
            raise ConfigError(f"{vocab}={vocab_size} is too small for byte-level BPE: the {len(specials)} "
                             f"special tokens and the {_BYTE_ALPHABET_SIZE} bytes need {needed}; "
                             f"expected {vocab} >= {needed}")
        backend = _bpe_pipeline(lowercase, cjk_chars)
        trainer: trainers.Trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    elif kind == "wordpiece":
        # WordPiece always splits Chinese characters apart (as BERT), so cjk_chars changes nothing there
        if vocab_size <= len(specials):
            raise ConfigError(f"{vocab}={vocab_size} is too small for WordPiece: the {len(specials)} special "
                             f"tokens alone need {len(specials)}; expected {vocab} > {len(specials)} plus "
                             "the characters of the training texts")
        backend = _wordpiece_pipeline(lowercase)
        options: dict[str, Any] = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
        if limit_alphabet is not None:
            # the trainer breaks ties among equally frequent characters at the cut in hash-map order (two
            # runs on the same texts kept different characters): count them here and give it the
            # alphabet, the most frequent first and ties by code point. This reads the texts into memory.
            texts = list(_checked_texts(texts))
            options["initial_alphabet"] = _top_characters(texts, backend, limit_alphabet)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
            continuing_subword_prefix="##", show_progress=show_progress, **options)
    else:
        raise ConfigError(f"kind: expected 'bpe' or 'wordpiece', found {kind!r}")

    _interruptible(lambda: backend.train_from_iterator(_checked_texts(texts), trainer=trainer))

    got = backend.get_vocab_size(with_added_tokens=True)
    if got > vocab_size:  # the trainer never drops alphabet symbols, it just stops merging
        # N characters and at most N ## forms beside the special tokens: this N always fits
        fits = (vocab_size - len(specials)) // 2
        keep = (f", or {alphabet}={fits} (or less) to keep only the most frequent characters, the rest "
                "becoming [UNK]") if fits >= 1 else ""
        raise ConfigError(f"{vocab}={vocab_size} is too small for WordPiece on these texts: the "
                         f"{len(specials)} special tokens and the characters seen (with their ## forms) "
                         f"already need {got}; expected {vocab} >= {got}{keep}")
    for i, token in enumerate(specials):  # the trainer puts them first, in order; other code relies on it
        if backend.token_to_id(token) != i:
            raise RuntimeError(f"special token {token!r} got id {backend.token_to_id(token)}, expected {i}")
    if kind == "wordpiece":
        backend = _canonical_ids(backend, len(specials))
        backend.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, specials.index(CLS)), (SEP, specials.index(SEP))])
    return Tokenizer(backend, _trained_config(kind, num_sentinels, model_max_length))


def _top_characters(texts: list[str], backend: HFTokenizer, n: int) -> list[str]:
    """The ``n`` most frequent characters of ``texts`` as the trainer sees them (normalised, whitespace
    dropped), ties broken by code point."""
    from collections import Counter

    counts: Counter[str] = Counter()
    normalize = backend.normalizer.normalize_str
    for text in texts:
        counts.update(normalize(text))
    ranked = sorted((c for c in counts if not c.isspace()), key=lambda c: (-counts[c], c))
    return ranked[:n]


def _canonical_ids(backend: HFTokenizer, n_specials: int) -> HFTokenizer:
    """The same WordPiece vocabulary with ids that do not depend on the trainer's hash-map order: the
    special tokens first (as trained), then the single characters by code point, then their ``##``
    forms, then the longer pieces in string order. Tokenization is by string and is unchanged; the
    ids of the characters no longer move when a rare piece differs between two runs."""
    data = json.loads(backend.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    specials = sorted((i, t) for t, i in vocab.items() if i < n_specials)
    rest = [t for t, i in vocab.items() if i >= n_specials]
    order = sorted(rest, key=lambda t: (0 if len(t) == 1 else 1 if t.startswith("##") and len(t) == 3 else 2, t))
    data["model"]["vocab"] = {t: i for i, t in enumerate([t for _, t in specials] + order)}
    return HFTokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _trained_config(kind: str, num_sentinels: int, model_max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
        "additional_special_tokens": [IM_START, IM_END, *(sentinel_token(n) for n in range(num_sentinels))],
        "chat_template": CHATML_TEMPLATE,
        # Our decoders already clean up (WordPiece) or must not (byte-level): transformers should not redo it.
        "clean_up_tokenization_spaces": False,
        "model_input_names": (["input_ids", "token_type_ids", "attention_mask"] if kind == "wordpiece"
                              else ["input_ids", "attention_mask"]),
    }


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` as the directory ``out_dir``, atomically;
    returns the directory. ``out_dir`` must be new or empty, or with ``overwrite`` an earlier
    tokenizer directory (:func:`duplexlm.fileutil.check_output_dir`). ``transformers.PreTrainedTokenizerFast.from_pretrained``
    and :meth:`Tokenizer.from_dir` read it.

    >>> import tempfile
    >>> tok = train_tokenizer(["hello world"] * 4, "bpe", vocab_size=300, num_sentinels=0)
    >>> out = save_tokenizer(tok, tempfile.mkdtemp() + "/tok")
    >>> sorted(p.name for p in out.iterdir())
    ['tokenizer.json', 'tokenizer_config.json']
    """
    out = check_output_dir(out_dir, "tokenizer", overwrite=overwrite, flag="out_dir")
    with atomic_directory(out) as tmp:
        tokenizer.save(tmp)
    return out
