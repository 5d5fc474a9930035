"""Text <-> token ids for GGUF and HF models, built on the HF `tokenizers` library.

GGUF files carry the vocabulary, not a tokenizer.json, so `from_gguf_metadata` rebuilds an
equivalent `tokenizers.Tokenizer`:
  * "gpt2" vocabularies: byte-level BPE from tokens + merges, with the pre-tokenizer regexes
    llama.cpp picks from `tokenizer.ggml.pre`;
  * "llama" (SentencePiece) vocabularies: BPE whose merge ranks come from the vocab scores,
    with byte fallback and "▁" for spaces.
Control/user-defined tokens become added tokens so they are matched atomically in the text
(chat templates render `<|im_start|>` as text).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ..errors import ModelLoadError, UnsupportedError
from .chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, render_chat_template

log = logging.getLogger(__name__)

# llama.cpp token types (llama_token_type / gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Tokens that end an assistant turn. They stop generation when the chat template emits them.
END_OF_TURN_TOKENS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|endoftext|>")
# End-of-document tokens: nothing sensible follows them, so they always stop generation.
END_OF_TEXT_TOKENS = ("<|endoftext|>", "<|end_of_text|>")

# --- pre-tokenizer regexes, as llama.cpp (src/llama-vocab.cpp) chooses them per `tokenizer.ggml.pre`.
# Each regex splits the pieces left by the previous one, keeping matches and gaps as pieces.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_LETTERS = (  # cased letters; escapes where NFC would rewrite the character
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝ"
    "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3"
    "\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc"
    "ℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿ"
    "ﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943"
)
_CJK = "[一-龥ࠀ-一가-퟿]+"
_PRE_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2,),
    "smollm": (r"\p{N}", _GPT2),  # StarCoder family: every digit is its own piece
    "llama3": (_LLAMA3,),
    "qwen2": (_QWEN2,),
    "deepseek-llm": ("[\r\n]", "\\s?[" + _DEEPSEEK_LETTERS + "]+", "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
                     r"\s+$", _CJK, r"\p{N}+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"),
    "bloom": (r" ?[^(\s|.,!?…。，、।۔،)]+",),
    "viking": (r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"),
}
_PRE_ALIASES: dict[str, str] = {
    # "default" BPE vocabularies are old conversions of GPT-2-style tokenizers.
    "default": "gpt2", "gpt-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2",
    "phi-2": "gpt2", "roberta-bpe": "gpt2", "exaone4": "gpt2", "trillion": "gpt2",
    "starcoder": "smollm", "refact": "smollm", "command-r": "smollm", "codeshell": "smollm",
    "exaone": "smollm", "minerva-7b": "smollm",
    "llama-bpe": "llama3", "llama-v3": "llama3", "falcon3": "llama3", "pixtral": "llama3",
    "dbrx": "llama3", "smaug-bpe": "llama3", "chatglm-bpe": "llama3", "glm4": "llama3",
    "lfm2": "llama3", "falcon-h1": "llama3", "midm-2.0": "llama3",
    "deepseek-r1-qwen": "qwen2", "stablelm2": "qwen2", "megrez": "qwen2", "hunyuan": "qwen2",
    "poro-chat": "bloom", "gpt3-finnish": "bloom",
}
# llama.cpp also makes a whole pre-token that is itself a vocab entry one token (skipping merges).
_IGNORE_MERGES_PRE = {"llama3", "llama-bpe", "llama-v3", "falcon3", "pixtral", "lfm2", "falcon-h1",
                      "midm-2.0", "tekken"}
# llama.cpp's default for add_bos when the GGUF has no tokenizer.ggml.add_bos_token
_ADD_BOS_PRE = {"llama3", "llama-bpe", "llama-v3", "falcon3", "pixtral", "lfm2", "falcon-h1",
                "midm-2.0", "tekken", "chameleon"}


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable char map: printable Latin-1 bytes map to themselves,
    the rest (controls, space, ...) to U+0100 upwards, in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR: dict[str, int] = {c: b for b, c in _byte_level_alphabet().items()}


@dataclass(frozen=True)
class _Vocab:
    """What the Tokenizer needs besides the backend: id -> piece and how pieces become bytes."""
    size: int
    overrides: dict[int, str]       # pieces the backend does not map back (duplicates in a GGUF vocab)
    kind: str                       # "byte_level" | "sentencepiece" | "other"
    special_ids: frozenset[int]     # control tokens: skipped by decode(skip_special=True)
    raw_ids: frozenset[int]         # tokens whose piece is literal text (added tokens)


# ----------------------------------------------------------------------------- GGUF builders

def _gguf_list(metadata: dict[str, Any], key: str) -> list[Any]:
    value = metadata.get(key)
    if value is None:
        raise ModelLoadError(f"GGUF tokenizer metadata lacks {key}")
    return list(value)


def _added_tokens(tokens: list[str], types: list[int]) -> tuple[list[AddedToken], list[AddedToken]]:
    """Control/unknown tokens become special added tokens, user-defined ones plain added tokens;
    both are matched in the raw text before any normalization, as llama.cpp does."""
    special, user = [], []
    for text, kind in zip(tokens, types):
        if not text:
            continue
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            special.append(AddedToken(text, special=True, normalized=False))
        elif kind == TOKEN_USER_DEFINED:
            user.append(AddedToken(text, special=False, normalized=False))
    return special, user


def _first_id_vocab(tokens: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        vocab.setdefault(text, i)  # duplicates: keep the first id
    return vocab


def _pre_tokenizer_regexes(pre: str) -> tuple[str, ...]:
    name = _PRE_ALIASES.get(pre, pre)
    if name not in _PRE_REGEXES:
        log.warning("unknown GGUF pre-tokenizer %r: using the GPT-2 split regex; "
                    "tokenization may differ from the original model", pre)
        name = "gpt2"
    return _PRE_REGEXES[name]


def _build_byte_level_bpe(metadata: dict[str, Any], tokens: list[str]) -> tokenizers.Tokenizer:
    pre = str(metadata.get("tokenizer.ggml.pre") or "default")
    merges = []
    for line in _gguf_list(metadata, "tokenizer.ggml.merges"):
        left, sep, right = line.partition(" ")
        if sep:
            merges.append((left, right))
    model = models.BPE(_first_id_vocab(tokens), merges, ignore_merges=pre in _IGNORE_MERGES_PRE)
    tok = tokenizers.Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in _pre_tokenizer_regexes(pre)]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Merges for a SentencePiece BPE vocab: every split of a piece into two pieces, ranked by
    the merged piece's score (highest first). llama.cpp's SPM tokenizer merges the adjacent
    pair whose concatenation scores highest, which is what BPE ranks reproduce."""
    mergeable = {TOKEN_NORMAL, TOKEN_USER_DEFINED}
    ids = {t: i for i, t in enumerate(tokens) if types[i] in mergeable}
    ranked: list[tuple[float, int, int, str, str]] = []
    for piece, pid in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[pid], pid, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _build_sentencepiece_bpe(metadata: dict[str, Any], tokens: list[str], types: list[int]) -> tokenizers.Tokenizer:
    scores = [float(s) for s in _gguf_list(metadata, "tokenizer.ggml.scores")]
    if len(scores) != len(tokens):
        raise ModelLoadError("GGUF tokenizer scores and tokens differ in length")
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unk_id)] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    model = models.BPE(_first_id_vocab(tokens), _spm_merges(tokens, scores, types),
                       unk_token=unk, fuse_unk=True, byte_fallback=True)
    tok = tokenizers.Tokenizer(model)
    space = normalizers.Replace(" ", SPM_SPACE)
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM_SPACE), space]) if add_prefix else space
    steps = [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(" ", 1, 0))  # undo the prefix space added on encode
    tok.decoder = decoders.Sequence(steps)
    return tok


def _optional_id(metadata: dict[str, Any], key: str, n_vocab: int) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    value = int(value)
    return value if 0 <= value < n_vocab else None


# ----------------------------------------------------------------------------- Tokenizer

class Tokenizer:
    """Encode/decode plus the model's special tokens and chat template."""

    def __init__(self, backend: tokenizers.Tokenizer, vocab: _Vocab, *, bos_id: int | None,
                 eos_id: int | None, eos_ids: Iterable[int], add_bos: bool,
                 chat_template: str | None) -> None:
        self._backend = backend
        self._vocab = vocab
        self.vocab_size: int = vocab.size
        self.bos_id = bos_id
        self.eos_id = eos_id  # the model's declared EOS (the template's `eos_token`)
        self.add_bos = add_bos and bos_id is not None
        self.chat_template = chat_template
        self.eos_ids: set[int] = set(eos_ids) | ({eos_id} if eos_id is not None else set())
        # End-of-turn tokens must stop generation even when the file names only one eos.
        template = self.effective_chat_template
        for name in END_OF_TURN_TOKENS:
            tid = self.token_to_id(name)
            if tid is not None and (name in template or name in END_OF_TEXT_TOKENS):
                self.eos_ids.add(tid)

    # ---- construction
    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        """Build from GGUF key/values (`GGUFFile.metadata`)."""
        model_kind = str(metadata.get("tokenizer.ggml.model", ""))
        if model_kind not in ("gpt2", "llama"):
            raise UnsupportedError(f"unsupported GGUF tokenizer model {model_kind!r} "
                                   "(hastelm supports 'gpt2' byte-level BPE and 'llama' SentencePiece)")
        tokens = [str(t) for t in _gguf_list(metadata, "tokenizer.ggml.tokens")]
        types = metadata.get("tokenizer.ggml.token_type")
        types = [int(t) for t in types] if types is not None else [TOKEN_NORMAL] * len(tokens)
        if len(types) != len(tokens):
            raise ModelLoadError("GGUF tokenizer token types and tokens differ in length")
        if model_kind == "gpt2":
            backend, kind = _build_byte_level_bpe(metadata, tokens), "byte_level"
            add_bos_default = str(metadata.get("tokenizer.ggml.pre", "")) in _ADD_BOS_PRE
        else:
            backend, kind = _build_sentencepiece_bpe(metadata, tokens, types), "sentencepiece"
            add_bos_default = True
        special, user = _added_tokens(tokens, types)
        backend.add_special_tokens(special)
        backend.add_tokens(user)
        n = len(tokens)
        vocab = _Vocab(
            size=n, overrides={i: t for i, t in enumerate(tokens) if backend.id_to_token(i) != t}, kind=kind,
            special_ids=frozenset(i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)),
            raw_ids=frozenset(i for i, t in enumerate(types)
                              if t in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED)),
        )
        eos_ids = {i for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
                   if (i := _optional_id(metadata, key, n)) is not None}
        template = metadata.get("tokenizer.chat_template")
        return cls(backend, vocab,
                   bos_id=_optional_id(metadata, "tokenizer.ggml.bos_token_id", n),
                   eos_id=_optional_id(metadata, "tokenizer.ggml.eos_token_id", n),
                   eos_ids=eos_ids,
                   add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default)),
                   chat_template=str(template) if template else None)

    @classmethod
    def from_hf_folder(cls, path: str | Path) -> "Tokenizer":
        """Build from an HF model folder: tokenizer.json (+ tokenizer_config.json,
        generation_config.json, chat_template.jinja when present)."""
        folder = Path(path)
        spec_path = folder / "tokenizer.json"
        if not spec_path.is_file():
            raise ModelLoadError(f"no tokenizer.json in {folder}")
        try:
            spec_text = spec_path.read_text(encoding="utf-8")
            spec = json.loads(spec_text)
            backend = tokenizers.Tokenizer.from_str(spec_text)
        except Exception as exc:  # tokenizers raises plain Exceptions on bad files
            raise ModelLoadError(f"cannot read {spec_path}: {' '.join(str(exc).split())}") from None
        config = _read_json(folder / "tokenizer_config.json")
        gen_config = _read_json(folder / "generation_config.json")

        added = backend.get_added_tokens_decoder()
        vocab = _Vocab(size=backend.get_vocab_size(with_added_tokens=True), overrides={}, kind=_hf_kind(spec),
                       special_ids=frozenset(i for i, t in added.items() if t.special),
                       raw_ids=frozenset(added))

        def token_id(value: Any) -> int | None:
            text = value.get("content") if isinstance(value, dict) else value
            return backend.token_to_id(text) if isinstance(text, str) else None

        bos_id = token_id(config.get("bos_token"))
        eos_id = token_id(config.get("eos_token"))
        gen_eos = gen_config.get("eos_token_id")
        eos_ids = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if isinstance(gen_eos, int) else [])
        if eos_id is None and eos_ids:
            eos_id = min(eos_ids)
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):
            # No explicit flag: BOS is added iff the tokenizer.json post-processor adds it.
            probe = backend.encode("a", add_special_tokens=True).ids
            add_bos = bos_id is not None and bool(probe) and probe[0] == bos_id
        return cls(backend, vocab, bos_id=bos_id, eos_id=eos_id, eos_ids=eos_ids, add_bos=add_bos,
                   chat_template=_hf_chat_template(folder, config))

    # ---- ids <-> text
    def encode(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids for `text`; special-token text such as `<|im_start|>` maps to its id.
        With add_special, BOS is prepended when the model wants it (not twice: a rendered chat
        template that already starts with the BOS text keeps a single BOS)."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if add_special and self.add_bos and not (ids and ids[0] == self.bos_id):
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
        return ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token contributes to the output (a byte-level or byte-fallback token
        can be part of a UTF-8 character)."""
        piece = self._piece(token_id)
        if token_id in self._vocab.raw_ids:
            return piece.encode("utf-8")
        if self._vocab.kind == "byte_level":
            try:
                return bytes(_BYTE_OF_CHAR[c] for c in piece)
            except KeyError:
                return piece.encode("utf-8")
        if self._vocab.kind == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return bytes([int(piece[3:5], 16)])
                except ValueError:
                    pass
            return piece.replace(SPM_SPACE, " ").encode("utf-8")
        return self._backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def _piece(self, token_id: int) -> str:
        # pieces come from the backend (no second 49k-string list in memory), bar the few it lacks
        if not 0 <= token_id < self._vocab.size:
            raise IndexError(f"token id {token_id} outside the vocabulary of {self._vocab.size}")
        return self._vocab.overrides.get(token_id) or self._backend.id_to_token(token_id) or ""

    def token_text(self, token_id: int) -> str:
        """Readable text of one token (special tokens as their literal text)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    def token_to_id(self, piece: str) -> int | None:
        """Id of a vocabulary entry given its piece (e.g. "<|im_end|>"), or None."""
        return self._backend.token_to_id(piece)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._vocab.special_ids

    def incremental_decoder(self, skip_special: bool = True) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special=skip_special)

    # ---- chat
    @property
    def effective_chat_template(self) -> str:
        """The model's template, or a default so chat still works without one."""
        if self.chat_template:
            return self.chat_template
        if self.token_to_id("<start_of_turn>") is not None:
            return GEMMA_TEMPLATE
        return CHATML_TEMPLATE

    def _special_text(self, token_id: int | None) -> str:
        return self._piece(token_id) if token_id is not None else ""

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """Render the conversation to prompt text (encode it with `encode`)."""
        return render_chat_template(self.effective_chat_template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    bos_token=self._special_text(self.bos_id),
                                    eos_token=self._special_text(self.eos_id), **extra)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    return data if isinstance(data, dict) else {}


def _hf_kind(spec: dict[str, Any]) -> str:
    """How token pieces map to bytes, judged from the tokenizer.json decoder."""
    text = json.dumps(spec.get("decoder"))
    if '"ByteLevel"' in text:
        return "byte_level"
    if '"ByteFallback"' in text or '"Metaspace"' in text or SPM_SPACE in text:
        return "sentencepiece"
    return "other"


def _hf_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if isinstance(template, str) and template:
        return template
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    return None


# ----------------------------------------------------------------------------- streaming

class IncrementalDecoder:
    """Turns a stream of token ids into text deltas whose concatenation equals `decode()`.

    Built on `tokenizers.decoders.DecodeStream`, which decodes a short window (the tokens of the
    last released delta, for context such as the leading-space strip, plus the new ones) through
    the same decoder pipeline as `Tokenizer.decode`, and releases text only once it no longer
    ends in U+FFFD: byte-level and byte-fallback tokens can end mid-character. GGUF vocab
    overrides (`_Vocab.overrides`) need nothing here: they change `token_bytes`, not the
    backend's decoding, which both `decode()` and the stream use.

    What DecodeStream lacks is kept here: `flush()` (it has no way to release held-back tokens at
    the end), and the case it refuses. When a later token rewrites text already released, the
    window's text no longer starts with it and `step` raises ("Invalid prefix"): a SentencePiece
    byte-fallback run `<0xC3><0xA9>` releases "é", and a following stray `<0xA9>` turns the whole
    run into U+FFFD marks. Released text cannot be taken back, so the stream can no longer equal
    `decode()` there; rather than fail the request, such tokens go through the window diff this
    class used before DecodeStream (new text = decode(window)[len(decode(context)):]), and the
    stream restarts after the next released delta.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self._tok = tokenizer
        self._skip = skip_special
        self._context: list[int] = []   # tokens of the last released delta (the stream's context)
        self._held: list[int] = []      # tokens pushed since, whose text is not released yet
        self._stream: decoders.DecodeStream | None = decoders.DecodeStream(skip_special_tokens=skip_special)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be "")."""
        token_id = int(token_id)
        self._held.append(token_id)
        delta: str | None = None
        if self._stream is not None:
            try:
                delta = self._stream.step(self._tok._backend, token_id)
            except Exception:   # tokenizers raises a plain Exception for the invalid prefix
                self._stream = None      # its window no longer matches what was released
        if self._stream is None:
            delta = self._window_delta()
            if not delta or delta.endswith("\ufffd"):
                return ""
        if delta is None:
            return ""
        self._context, self._held = self._held, []
        if self._stream is None:         # restart the stream after the released text
            self._stream = decoders.DecodeStream(self._context, skip_special_tokens=self._skip)
        return delta

    def flush(self) -> str:
        """Release whatever is held back (an incomplete character decodes as U+FFFD). This ends
        the stream: tokens pushed afterwards decode as a new one."""
        if not self._held:
            return ""
        delta = self._window_delta()
        self._context, self._held = [], []
        self._stream = decoders.DecodeStream(skip_special_tokens=self._skip)
        return delta

    def _window_delta(self) -> str:
        seen = self._tok.decode(self._context, self._skip)
        full = self._tok.decode(self._context + self._held, self._skip)
        return full[len(seen):]
