"""The streaming detokenizer (`IncrementalDecoder`, on `tokenizers.decoders.DecodeStream`) against
`Tokenizer.decode` of all the ids at once, on both packaged models' real vocabularies: thousands of
random token ids, and multi-byte text (emoji, CJK) whose characters span several tokens."""
from __future__ import annotations

import random

import pytest

from hastelm.formats.gguf_file import open_gguf
from hastelm.formats.tokenizer import Tokenizer

pytestmark = pytest.mark.real_model      # `tok` reaches the model fixtures only at run time

MULTI_BYTE = ["🎉🔥👍🏽 and 👨\u200d👩\u200d👧", "日本語のテキスト 中文 한국어", "x🤖y🤖z", "Ünïcödé café — “quotes” …",
              "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𠀀𠀁 ㊗️", "ΑΒΓ абв עברית العربية हिन्दी", "🏳️\u200d🌈 flags 🇯🇵🇫🇷"]


@pytest.fixture(scope="module")
def smol(smollm_path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(open_gguf(smollm_path).metadata)


@pytest.fixture(scope="module")
def gemma(gemma_path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(open_gguf(gemma_path).metadata)


@pytest.fixture(params=["smol", "gemma"])
def tok(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(request.param)


def stream(tok: Tokenizer, ids: list[int], skip_special: bool = True) -> list[str]:
    decoder = tok.incremental_decoder(skip_special=skip_special)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@pytest.mark.parametrize("skip_special", [True, False])
def test_random_ids_stream_to_decode(tok: Tokenizer, skip_special: bool) -> None:
    rng = random.Random(1234)
    for _ in range(8):                                  # 8 streams of 500: 4000 random ids
        ids = [rng.randrange(tok.vocab_size) for _ in range(500)]
        assert "".join(stream(tok, ids, skip_special)) == tok.decode(ids, skip_special)


def test_multi_byte_text_streams_whole_characters(tok: Tokenizer) -> None:
    for text in MULTI_BYTE:
        ids = tok.encode(text)
        parts = stream(tok, ids)
        assert "".join(parts) == tok.decode(ids) == text
        assert not any("\ufffd" in p for p in parts), text       # no half character released
        assert parts[-1] == ""                                     # nothing was left for the flush


def test_multi_byte_text_between_random_ids(tok: Tokenizer) -> None:
    rng = random.Random(99)
    for _ in range(20):
        ids: list[int] = []
        for text in rng.sample(MULTI_BYTE, 3):
            ids += [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(0, 6))]
            ids += tok.encode(text, add_special=False)
        assert "".join(stream(tok, ids)) == tok.decode(ids)


def test_skip_special(tok: Tokenizer) -> None:
    turn = "<|im_start|>" if tok.token_to_id("<|im_start|>") is not None else "<start_of_turn>"
    ids = tok.encode(f"{turn}user\n日本🎉{turn}", add_special=False)
    assert turn not in "".join(stream(tok, ids, skip_special=True))
    assert "".join(stream(tok, ids, skip_special=False)) == f"{turn}user\n日本🎉{turn}"


def test_flush_releases_a_truncated_character(tok: Tokenizer) -> None:
    ids = tok.encode("𠀀", add_special=False)
    assert len(ids) > 1                                   # split into bytes by both vocabularies
    decoder = tok.incremental_decoder()
    assert [decoder.push(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    # held back until the end, then released as decode() shows it (U+FFFD: one, or one per byte token)
    assert decoder.flush() == tok.decode(ids[:-1]) and set(tok.decode(ids[:-1])) == {"\ufffd"}
    assert decoder.flush() == ""


def test_byte_fallback_rewriting_released_text_does_not_fail(gemma: Tokenizer) -> None:
    """A stray continuation byte after a complete character turns the whole byte run into U+FFFD
    marks in decode(); DecodeStream refuses that ("Invalid prefix"). The stream goes on through
    the window diff and then resumes."""
    byte = {b: gemma.token_to_id(f"<0x{b:02X}>") for b in (0xC3, 0xA9)}
    a = gemma.token_to_id("a")
    after = gemma.encode(" then 日本🎉", add_special=False)
    ids = [a, byte[0xC3], byte[0xA9], byte[0xA9], a, *after]
    parts = stream(gemma, ids)
    assert parts[:5] == ["a", "", "é", "", "\ufffd\ufffda"]       # "é" cannot be taken back
    assert "".join(parts[5:]) == " then 日本🎉"                    # and the stream resumes
