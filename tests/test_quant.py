import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from talkcodec.errors import PacketError
from talkcodec.quant import SYMBOL_LIMIT, LaplaceCoder, Quantizer, read_varint, unzigzag, write_varint, zigzag


@given(st.integers(min_value=0, max_value=(1 << 35) - 1))
def test_varint_roundtrip(value):
    data = write_varint(value)
    assert read_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize("value, size", [(0, 1), (127, 1), (128, 2), (16383, 2), (16384, 3)])
def test_varint_sizes(value, size):
    assert len(write_varint(value)) == size


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff\xff\xff\xff\xff"])
def test_varint_rejects_truncated_and_overlong(data):
    with pytest.raises(PacketError):
        read_varint(data, 0)


@given(st.integers(min_value=-(1 << 40), max_value=1 << 40))
def test_zigzag_roundtrip(value):
    assert zigzag(value) >= 0 and unzigzag(zigzag(value)) == value


def test_quantizer_error_is_half_a_step():
    q = Quantizer(np.array([0.5, 2.0]), np.array([1.0, -3.0]))
    values = np.random.default_rng(0).normal(size=(1000, 2)) * 10
    back = np.stack([q.dequantize(q.quantize(v)) for v in values])
    assert np.all(np.abs(back - values) <= q.step / 2 + 1e-9)


@given(st.lists(st.integers(min_value=-300, max_value=300), min_size=1, max_size=40), st.floats(0.3, 50))
def test_laplace_coder_roundtrip(symbols, scale):
    coder = LaplaceCoder(np.full(len(symbols), scale))
    data = coder.encode(np.array(symbols))
    assert coder.decode(data).tolist() == symbols


def test_laplace_coder_pays_for_bits_not_words():
    coder = LaplaceCoder(np.full(22, 1.0))
    zeros = coder.encode(np.zeros(22, dtype=np.int32))
    assert len(zeros) <= 6  # 22 symbols at ~1.35 bits = 30 bits, plus the coder's flush
    spread = coder.encode(np.random.default_rng(1).integers(-40, 40, 22))
    assert len(spread) > len(zeros)


def test_laplace_coder_clips_out_of_range_symbols():
    coder = LaplaceCoder(np.full(2, 5.0))
    out = coder.decode(coder.encode(np.array([10 * SYMBOL_LIMIT, -10 * SYMBOL_LIMIT])))
    assert out.tolist() == [SYMBOL_LIMIT - 1, -SYMBOL_LIMIT + 1]


@given(st.binary(max_size=200))
def test_laplace_coder_never_crashes_on_garbage(data):
    coder = LaplaceCoder(np.full(22, 2.0))
    try:
        out = coder.decode(data)
    except PacketError:
        return
    assert out.shape == (22,)
