"""Per-block bit unpacking for the GGML quantized types (llama.cpp's ggml-quants.c block formats).

Each decoder takes uint8 blocks [n, type_size] of one type and returns float32 [n, block_size];
`BLOCK_DECODERS` maps the type to its decoder. The int4 splitters of the 4-bit types return the
same weights as `w = q * scale + offset` instead, for torch's packed int4 kernel. ggml_blocks.py
drives them over whole tensors (shape checks, row chunks, packing).
"""

from __future__ import annotations

import sys
from typing import Callable

import torch
from gguf import GGMLQuantizationType

T = GGMLQuantizationType
QK_K = 256

BIG_ENDIAN = sys.byteorder == "big"

# Shift amounts used to spread packed bit fields along a new dimension.
_SHIFT_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFT_1BIT = torch.arange(8, dtype=torch.uint8)


# ----------------------------------------------------------------------------- byte helpers


def _le_scalar(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Interpret each row of little-endian bytes `b` [n, k] as one `dtype` value -> float32 [n, 1]."""
    b = b.contiguous()  # tiny copy (k bytes per block) that also guarantees alignment for .view
    if BIG_ENDIAN:
        b = b.flip(-1).contiguous()
    return b.view(dtype).float()


def _f16(b: torch.Tensor, off: int) -> torch.Tensor:
    """The fp16 block scale stored at byte offset `off`, as float32 [n, 1]."""
    return _le_scalar(b[:, off : off + 2], torch.float16)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., m] bytes -> [..., 2, m]: all low nibbles, then all high nibbles (ggml's order)."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=-2)


def _bits(b: torch.Tensor) -> torch.Tensor:
    """[n, m] bytes -> [n, 8, m] with [:, i, j] = bit i of byte j."""
    return (b.unsqueeze(1) >> _SHIFT_1BIT.view(1, 8, 1)) & 1


def _bits_le32(b: torch.Tensor) -> torch.Tensor:
    """[n, 4] little-endian uint32 bit masks -> [n, 32] with [:, j] = bit j (no uint32 math needed)."""
    return ((b.unsqueeze(-1) >> _SHIFT_1BIT) & 1).reshape(b.shape[0], 32)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte 6-bit scales/mins of Q4_K/Q5_K (get_scale_min_k4) -> two float32 [n, 8]."""
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat((s0 & 0x3F, (s2 & 0x0F) | ((s0 >> 6) << 4)), dim=1)
    mn = torch.cat((s1 & 0x3F, (s2 >> 4) | ((s1 >> 6) << 4)), dim=1)
    return sc.float(), mn.float()


# ----------------------------------------------------------------------------- block decoders
# Each takes uint8 blocks [n, type_size] and returns float32 [n, block_size], computing the
# same float32 operations in the same order as ggml so results are bit-identical.


def _deq_q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:18]).reshape(-1, 32).to(torch.int8) - 8
    return q.float() * d


def _deq_q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:20]).reshape(-1, 32)
    return q.float() * d + m


def _deq_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 6:22]).reshape(-1, 32) | (_bits_le32(b[:, 2:6]) << 4)
    return (q.to(torch.int8) - 16).float() * d


def _deq_q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 8:24]).reshape(-1, 32) | (_bits_le32(b[:, 4:8]) << 4)
    return q.float() * d + m


def _deq_q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return b[:, 2:34].view(torch.int8).float() * d


def _deq_q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    # Two halves of 128 values; each half's 32 bytes hold four 2-bit planes of 32 values,
    # and every 16 consecutive values share one scale/min byte.
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3
    q = q.reshape(n, 16, 16).float()
    dl = (d * (sc & 0x0F).float()).unsqueeze(-1)
    ml = (dmin * (sc >> 4).float()).unsqueeze(-1)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, s = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    # 16 6-bit scales: low 4 bits are the nibbles of bytes 0..7 (low nibbles first), high 2 bits
    # of scale i are bits 2*(i//4) of byte 8 + i%4; stored with a +32 bias.
    low = torch.cat((s[:, 0:8] & 0x0F, s[:, 0:8] >> 4), dim=1)
    high = ((s[:, 8:12].unsqueeze(1) >> _SHIFT_2BIT.view(1, 4, 1)) & 3).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    ql = ((qs.reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3).to(torch.int8)
    hb = _bits(hmask).reshape(n, 2, 4, 32).to(torch.int8)
    q = ql - ((1 - hb) << 2)  # a *cleared* hmask bit subtracts 4
    dl = (d * scales).unsqueeze(-1)
    return (dl * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


def _deq_q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    # 4 chunks of 32 bytes; each gives 32 values from low nibbles, then 32 from high nibbles.
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).reshape(n, QK_K)


def _deq_q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    ql = _nibbles(b[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    q = (ql | (_bits(b[:, 16:48]) << 4)).float()  # sub-block s takes bit s of qh
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).reshape(n, QK_K)


def _deq_q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = _f16(b, 208)
    sc = b[:, 192:208].view(torch.int8).float()
    # Per half (128 values): ql is 64 bytes, value 32k+l takes nibble k//2 of byte 32*(k%2)+l
    # and 2-bit plane k of qh byte l.
    lo = b[:, 0:128].reshape(n, 2, 2, 32)  # [half, k % 2, l]
    ql = torch.stack((lo & 0x0F, lo >> 4), dim=2).reshape(n, 2, 4, 32)  # k = 2 * nibble + k % 2
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return ((d * sc).unsqueeze(-1) * q).reshape(n, QK_K)


def _deq_q8_k(b: torch.Tensor) -> torch.Tensor:
    d = _le_scalar(b[:, 0:4], torch.float32)  # Q8_K's scale is a float32; bsums are ignored
    return b[:, 4:260].view(torch.int8).float() * d


BLOCK_DECODERS: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    T.Q4_0: _deq_q4_0,
    T.Q4_1: _deq_q4_1,
    T.Q5_0: _deq_q5_0,
    T.Q5_1: _deq_q5_1,
    T.Q8_0: _deq_q8_0,
    T.Q2_K: _deq_q2_k,
    T.Q3_K: _deq_q3_k,
    T.Q4_K: _deq_q4_k,
    T.Q5_K: _deq_q5_k,
    T.Q6_K: _deq_q6_k,
    T.Q8_K: _deq_q8_k,
}


# ----------------------------------------------------------------------------- int4 path
# Each returns (q uint8 [n, bs] in 0..15, scale [n, bs//32], offset [n, bs//32]) such that
# w = q * scale + offset reproduces the block decoder exactly (all products are exact in fp32).


def _i4_q4_0(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = _f16(b, 0)
    return _nibbles(b[:, 2:18]).reshape(-1, 32), d, -8.0 * d


def _i4_q4_1(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _nibbles(b[:, 4:20]).reshape(-1, 32), _f16(b, 0), _f16(b, 2)


def _i4_q4_k(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, QK_K)
    return q, d * sc, -(dmin * mn)


INT4_SPLITTERS: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    T.Q4_0: _i4_q4_0,
    T.Q4_1: _i4_q4_1,
    T.Q4_K: _i4_q4_k,
}
