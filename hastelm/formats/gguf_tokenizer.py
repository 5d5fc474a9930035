"""GGUF vocabulary -> an HF `tokenizers.Tokenizer`, for `Tokenizer.from_gguf_metadata`.

GGUF files carry the vocabulary, not a tokenizer.json, so `gguf_tokenizer_parts` rebuilds an
equivalent `tokenizers.Tokenizer`:
  * "gpt2" vocabularies: byte-level BPE from tokens + merges, with the pre-tokenizer regexes
    llama.cpp picks from `tokenizer.ggml.pre`;
  * "llama" (SentencePiece) vocabularies: BPE whose merge ranks come from the vocab scores,
    with byte fallback and "▁" for spaces.
Control/user-defined tokens become added tokens so they are matched atomically in the text
(chat templates render `<|im_start|>` as text).
"""
from __future__ import annotations

import logging
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from ..errors import ModelLoadError, UnsupportedError
from .vocab import SPM_SPACE, TokenizerParts, Vocab

log = logging.getLogger(__name__)

# llama.cpp token types (llama_token_type / gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

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


# ----------------------------------------------------------------------------- builders

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


def gguf_tokenizer_parts(metadata: dict[str, Any]) -> TokenizerParts:
    """The tokenizer described by GGUF key/values (`GGUFFile.metadata`)."""
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
    vocab = Vocab(
        size=n, overrides={i: t for i, t in enumerate(tokens) if backend.id_to_token(i) != t}, kind=kind,
        special_ids=frozenset(i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)),
        raw_ids=frozenset(i for i, t in enumerate(types)
                          if t in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED)),
    )
    eos_ids = {i for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
               if (i := _optional_id(metadata, key, n)) is not None}
    template = metadata.get("tokenizer.chat_template")
    return TokenizerParts(backend, vocab,
                          bos_id=_optional_id(metadata, "tokenizer.ggml.bos_token_id", n),
                          eos_id=_optional_id(metadata, "tokenizer.ggml.eos_token_id", n),
                          eos_ids=eos_ids,
                          add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default)),
                          chat_template=str(template) if template else None)

