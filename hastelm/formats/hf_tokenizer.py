"""An HF model folder's tokenizer.json (+ tokenizer_config.json, generation_config.json,
chat_template.jinja when present) -> `TokenizerParts`, for `Tokenizer.from_hf_folder`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tokenizers

from ..errors import ModelLoadError
from .vocab import SPM_SPACE, TokenizerParts, Vocab


def hf_tokenizer_parts(path: str | Path) -> TokenizerParts:
    """The tokenizer of the HF model folder `path`."""
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
    vocab = Vocab(size=backend.get_vocab_size(with_added_tokens=True), overrides={}, kind=_hf_kind(spec),
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
    return TokenizerParts(backend, vocab, bos_id=bos_id, eos_id=eos_id, eos_ids=eos_ids, add_bos=add_bos,
                          chat_template=_hf_chat_template(folder, config))


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
