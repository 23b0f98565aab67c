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


@pytest.mark.parametrize("fast", [False, True])
def test_both_wire_encoders_write_the_same_json_and_refuse_lone_surrogates(fast, monkeypatch):
    """A worker answers its first call with the standard library's json and switches to orjson when idle
    (`wire.use_orjson`): both must give the same JSON, and both must refuse what UTF-8 cannot carry."""
    from worker_kernel import wire

    monkeypatch.setattr(wire, "dumps", wire.dumps)
    monkeypatch.setattr(wire, "loads", wire.loads)
    if fast:
        assert wire.use_orjson()
    else:
        monkeypatch.setattr(wire, "dumps", wire._dumps_stdlib)
        monkeypatch.setattr(wire, "loads", wire._loads_stdlib)
    session = wire.Session(b"key")
    content = {"text": "héllo ✓", "n": [1, -(2**63), 2**64 - 1, 0.1, True, None], "nested": {"a": {}}}
    _, frames = session.message("wb_call_request", content)
    expected = '{"text":"héllo ✓","n":[1,-9223372036854775808,18446744073709551615,0.1,true,null],"nested":{"a":{}}}'
    assert frames[-1] == expected.encode()
    assert session.parse(frames).content == content
    with pytest.raises((TypeError, ValueError), match="surrogates not allowed"):
        session.message("wb_call_request", {"text": "a\ud800b"})


def test_nesting_has_one_limit_whichever_json_encoder_the_wire_uses():
    from worker_kernel import wire
    from worker_kernel.codec import MAX_DEPTH

    def nested(depth):
        value = "bottom"
        for _ in range(depth):
            value = [value]
        return value

    deep = nested(MAX_DEPTH)
    buffers = []
    encoded = encode_value(deep, buffers, "the result")
    content = {"status": "ok", "value": encoded}
    import orjson

    assert wire._dumps_stdlib(content) == orjson.dumps(content)  # within orjson's own limit, and the same JSON
    assert orjson.loads(orjson.dumps(content))["value"] == encoded
    assert decode_value(encoded, buffers) == deep
    with pytest.raises(TypeError, match="nested too deeply"):
        encode_value(nested(MAX_DEPTH + 1), [], "the result")


def test_rebuilt_exceptions_are_fresh_exceptions_or_remote_errors():
    """What a worker sends as a registered exception is rebuilt only as a new Exception instance; anything
    else (a shared object, a StopIteration, a malformed value) falls back to RemoteError or a DecodeError."""
    import dataclasses

    from worker_kernel.codec import exception_from_wire, exception_to_wire, register_marshaller
    from worker_kernel.errors import RemoteError

    @dataclasses.dataclass(frozen=True)
    class Frozen(Exception):
        code: int

    class Halt(StopIteration):
        pass

    shared = ValueError("shared")
    register_marshaller("test.frozen", Frozen, lambda e: e.code, lambda v: Frozen(v))
    register_marshaller("test.halt", Halt, lambda e: 0, lambda v: Halt())
    register_marshaller("test.shared", LookupError, lambda e: 0, lambda v: shared)

    def round_trip(exc):
        buffers = []
        return exception_from_wire({"status": "error", **exception_to_wire(exc, buffers)}, buffers)

    frozen = round_trip(Frozen(7))  # refuses the remote_traceback attribute: rebuilt all the same
    assert isinstance(frozen, Frozen) and frozen.code == 7
    assert isinstance(round_trip(Halt()), RemoteError)
    first, second = round_trip(LookupError("a")), round_trip(LookupError("b"))
    assert first is shared  # handed out twice: the second time refused, and LookupError, a built-in, is rebuilt
    assert second is not shared and type(second) is LookupError and second.args == ("b",)
    with pytest.raises(DecodeError):
        decode_value({"$w": "exception", "v": "not an object"}, [])


# -- identity within one message: repeats and cycles ---------------------------------------------------------


def round_trip(value):
    buffers: list = []
    encoded = encode_value(value, buffers, "the result")
    return decode_value(encoded, buffers), encoded


def test_a_list_dict_or_set_held_twice_arrives_as_one_object_held_twice():
    shared_list, shared_dict, shared_set = [1], {"k": 2}, {3}
    value = {"a": [shared_list, shared_list], "d": (shared_dict, shared_dict), "s": [shared_set, shared_set]}
    out, _ = round_trip(value)
    assert out == value
    assert out["a"][0] is out["a"][1] and out["d"][0] is out["d"][1] and out["s"][0] is out["s"][1]
    shared_list.append(0)  # two equal lists are two lists
    out, encoded = round_trip([[1], [1]])
    assert out[0] is not out[1] and encoded == [[1], [1]]  # and a value without repeats is sent as before


def test_cyclic_structures_round_trip():
    loop: list = []
    loop.append(loop)
    out, _ = round_trip(loop)
    assert out[0] is out
    tree: dict = {"children": []}
    tree["children"].append({"parent": tree, 1: tree})  # a non-str key: the pair form
    out, _ = round_trip(tree)
    assert out["children"][0]["parent"] is out and out["children"][0][1] is out
    through_tuple: list = []
    through_tuple.append((through_tuple,))
    out, _ = round_trip(through_tuple)
    assert out[0][0] is out


def test_the_arguments_of_a_call_are_one_message():
    from worker_kernel.codec import decode_args, encode_args

    shared = [1, 2]
    buffers: list = []
    args, kwargs = encode_args([shared, shared], {"c": shared}, buffers)
    decoded_args, decoded_kwargs = decode_args(args, kwargs, buffers)
    assert decoded_args[0] is decoded_args[1] is decoded_kwargs["c"]
    assert encode_args(["World"], {}, []) == (["World"], {})  # the hot call's args, as before


@pytest.mark.parametrize(
    "forged",
    [
        {"$w": "graph", "v": [{"$w": "ref", "v": 1}]},  # a reference forward
        {"$w": "graph", "v": [{"$w": "ref", "v": True}]},
        {"$w": "graph", "v": [{"$w": "ref", "v": "0"}]},
        {"$w": "graph", "v": {"$w": "set", "v": [{"$w": "ref", "v": 0}]}},  # a set inside itself
        [{"$w": "ref", "v": 0}],  # a reference outside a graph
    ],
)
def test_forged_references_are_decode_errors(forged):
    with pytest.raises(DecodeError):
        decode_value(forged, [])


def test_references_build_nothing_the_message_did_not_spell_out():
    """A hostile peer sends a 1000-element list once and refers to it 100000 times: what arrives is one list
    held 100000 times (100000 small references in, 100000 pointers out), not 10**8 elements."""
    import json

    message = {"$w": "graph", "v": [list(range(1000))] + [{"$w": "ref", "v": 1}] * 100_000}
    out = decode_value(json.loads(json.dumps(message)), [])
    assert len(out) == 100_001 and len({id(item) for item in out}) == 1


def test_identity_through_real_workers(broker, workers_dir):
    identity = broker.worker_proxy(workers_dir / "identity.py")
    shared = {"x": [1]}
    assert identity.same(shared, shared, c=shared) == [True, True, True]
    assert identity.same({"x": [1]}, {"x": [1]}) == [False, False, False]  # equal is not the same
    node = identity.cyclic()
    assert node["children"][0]["parent"] is node
    loop: list = [1]
    loop.append(loop)
    back = identity.echo([loop, loop])
    assert back[0] is back[1] and back[0][1] is back[0]


def test_an_unencodable_argument_is_named_by_its_place():
    from worker_kernel.codec import Unencodable, encode_args

    with pytest.raises(Unencodable, match=r"'builtins.object' at args\[1\]\['x'\]\[0\]"):
        encode_args([1, {"x": [object()]}], {}, [])
    with pytest.raises(Unencodable, match=r"at kwargs\['k'\]\[1\]"):
        encode_args([], {"k": [1, object()]}, [])
