"""The safe value codec on its own: round trips, and what it refuses from a peer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_kernel.codec import DecodeError, decode_value, encode_value

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip(value):
    buffers: list = []
    assert decode_value(encode_value(value, buffers, "value"), buffers) == value


def test_special_floats_and_big_ints():
    buffers: list = []
    back = decode_value(encode_value([math.inf, -math.inf, 2**200, -(2**70)], buffers, "v"), buffers)
    assert back == [math.inf, -math.inf, 2**200, -(2**70)]
    assert math.isnan(decode_value(encode_value(math.nan, [], "v"), []))


def test_a_frame_cannot_be_used_twice():
    # one large frame and many references to it would be as many copies: refused
    data = [{"$w": "bytes", "b": 0}] * 3
    with pytest.raises(DecodeError, match="used twice"):
        decode_value(data, [b"x" * 1000])


@pytest.mark.parametrize(
    "data",
    [
        {"$w": "no-such-tag", "v": 1},
        {"$w": "bytes", "b": 5},
        {"$w": "dict", "v": [[["unhashable"], 1]]},
        {"$w": "ndarray", "v": {"dtype": "O", "shape": [1], "data": {"$w": "buffer", "b": 0}}},
    ],
)
def test_malformed_payloads_are_refused(data):
    with pytest.raises(DecodeError):
        decode_value(data, [b"\0" * 8])
