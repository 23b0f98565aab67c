"""The safe value codec: Python values to JSON plus raw buffers, and back, without pickle or eval.

Values that JSON carries as they are (None, bool, int of any size, float including nan and inf, str, lists, and
dicts with str keys) travel as JSON. Everything else becomes a tagged object ``{"$w": tag, "v": payload}``
produced by a `Marshaller`. Binary data (bytes, bytearray, numpy arrays) is never put in the JSON: the payload
names the index of a separate ZeroMQ frame, so large values cross without a copy into text.

Within one message (a result as a whole; the arguments of a call as a whole) a list, dict or set met twice
is sent once and referred to after (``{"$w": "ref", "v": n}``, ``n`` counting the message's lists, dicts and
sets in the order they are met), so it arrives as one object held twice, and a cyclic structure round-trips, as
the seed's structured clone does. A message with references is wrapped as ``{"$w": "graph", "v": ...}``; only
such a message is decoded with the table that numbering needs: values without repeats pay no more to decode.
A reference builds nothing: the decoder never holds more objects than the message spelled out.

Decoding builds only the types in the registry, from plain data; it never imports a module a message names, so
a hostile peer can at worst produce an error. One registry holds the built-in types and the ones users add with
`register_marshaller` (the example app's HTTP responses, say).
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable
from math import isfinite as _isfinite
from typing import Any, NamedTuple

from .errors import (
    CallTimeout,
    NoSuchFunction,
    RemoteError,
    RemoteTraceback,
    WorkerBrokerError,
    WorkerDied,
    WorkerStartError,
)

TAG = "$w"
_PLAIN = (str, int, float, bool, type(None))
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class Buffer:
    """A raw frame inside a marshalled payload: encoded as a frame index, decoded as a memoryview."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


class Marshaller(NamedTuple):
    """How one family of types crosses the boundary.

    ``encode(value)`` returns a value the codec carries (it may hold `Buffer`s); ``decode(payload)`` gets that
    value back, already decoded, and rebuilds the object. ``tag`` names the family on the wire.
    """

    tag: str
    types: tuple[type, ...]
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


class Unencodable(TypeError):
    """A value of a type the codec cannot carry; ``where`` is its place, such as ``args[0]['x']``."""

    def __init__(self, type_name: str, where: str) -> None:
        super().__init__(
            f"cannot send a value of type {type_name!r} at {where}: wb-magic carries plain data "
            "(see worker_kernel.codec) and types registered with register_marshaller()"
        )
        self.type_name = type_name
        self.where = where


class _Miss(Exception):
    """Raised inside `encode` and given its place on the way out."""

    def __init__(self, value: Any) -> None:
        self.type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        self.path: list[str] = []


_by_tag: dict[str, Marshaller] = {}
_by_type: dict[type, Marshaller] = {}
_families: list[Marshaller] = []  # searched with isinstance for subclasses and lazily imported types


def register_marshaller(
    tag: str, types: type | tuple[type, ...], encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> Marshaller:
    """Teach the codec a type. Both sides of a call must register the same tag (import it in both)."""
    if not isinstance(types, tuple):
        types = (types,)
    marshaller = Marshaller(tag, types, encode, decode)
    old = _by_tag.get(tag)
    if old is not None:
        _families.remove(old)
        for t in old.types:
            _by_type.pop(t, None)
    _by_tag[tag] = marshaller
    for t in types:
        _by_type[t] = marshaller
    _families.append(marshaller)
    return marshaller


def _lookup(value: Any) -> Marshaller | None:
    cls = type(value)
    found = _by_type.get(cls)
    if found is not None:
        return found
    for attempt in range(2):
        for marshaller in _families:
            if isinstance(value, marshaller.types):
                _by_type[cls] = marshaller
                return marshaller
        if attempt == 0 and not _load_families(cls):
            return None
    return None


def _load_families(cls: type) -> bool:
    """Register the families whose modules are imported (the value's own, at least). Families of the
    standard library's rarer types and of numpy are registered only when a value needs them, so that a worker
    does not import datetime, decimal, uuid, pathlib or numpy to start. Returns whether any was added."""
    wanted = {cls.__module__.partition(".")[0]} | {name for name in _LAZY if name in sys.modules}
    added = False
    for name in wanted:
        register = _LAZY.pop(name, None)
        if register is not None:
            register()
            added = True
    return added


# -- encoding -----------------------------------------------------------------------------------------------


MAX_DEPTH = 80  # containers within containers: at most three JSON levels each, under orjson's limit of 254


class _Memo:
    """The lists, dicts and sets of one message met so far (kept alive, so that no id is reused), by id:
    their number, in the order they were met, which the decoder counts the same way."""

    __slots__ = ("kept", "refs", "seen")

    def __init__(self) -> None:
        self.seen: dict[int, int] = {}
        self.kept: list[Any] = []
        self.refs = 0

    def ref(self, value: Any) -> dict[str, Any] | None:
        """A reference to ``value`` if the message already holds it; else None, and ``value`` is numbered."""
        number = self.seen.get(id(value))
        if number is not None:
            self.refs += 1
            return {TAG: "ref", "v": number}
        self.seen[id(value)] = len(self.seen)
        self.kept.append(value)
        return None


def encode(value: Any, buffers: list[Any], depth: int = 0, memo: _Memo | None = None) -> Any:
    """The JSON-able form of ``value``; binary parts are appended to ``buffers``. With ``memo`` (`encode_value`
    makes one), a list, dict or set met again is sent as a reference to the first."""
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:  # JSON libraries differ beyond 64 bits: larger ints travel as text
        return value if _INT_MIN <= value <= _INT_MAX else {TAG: "int", "v": str(value)}
    if cls is float:  # and JSON has no nan or infinity
        return value if _isfinite(value) else {TAG: "float", "v": repr(value)}
    depth += 1
    if depth > MAX_DEPTH:  # the same limit whichever JSON encoder the wire uses
        raise RecursionError
    if cls is list:
        if memo is not None:
            seen = memo.seen
            number = seen.get(id(value))
            if number is not None:
                memo.refs += 1
                return {TAG: "ref", "v": number}
            seen[id(value)] = len(seen)
            memo.kept.append(value)
        out = []
        for i, item in enumerate(value):
            try:
                out.append(encode(item, buffers, depth, memo))
            except _Miss as miss:
                miss.path.append(f"[{i}]")
                raise
        return out
    if cls is dict:
        if memo is not None:
            seen = memo.seen
            number = seen.get(id(value))
            if number is not None:
                memo.refs += 1
                return {TAG: "ref", "v": number}
            seen[id(value)] = len(seen)
            memo.kept.append(value)
        if all(type(k) is str for k in value) and TAG not in value:
            plain = {}
            for k, item in value.items():
                try:
                    plain[k] = encode(item, buffers, depth, memo)
                except _Miss as miss:
                    miss.path.append(f"[{k!r}]")
                    raise
            return plain
        pairs = []
        for k, item in value.items():
            try:
                pairs.append([encode(k, buffers, depth, memo), encode(item, buffers, depth, memo)])
            except _Miss as miss:
                miss.path.append(f"[{k!r}]")
                raise
        return {TAG: "dict", "v": pairs}
    if cls is bytes or cls is bytearray or cls is Buffer:
        buffers.append(value.data if cls is Buffer else value)
        return {TAG: cls.__name__.lower(), "b": len(buffers) - 1}
    for base in _PLAIN[:3]:
        if isinstance(value, base):  # subclasses (IntEnum, numpy.float64, str enums) travel as their base
            return encode(base(value), buffers, depth - 1, memo)
    marshaller = _lookup(value)
    if marshaller is None:
        raise _Miss(value)
    if memo is not None and marshaller.tag == "set" and (ref := memo.ref(value)) is not None:
        return ref
    payload = marshaller.encode(value)
    try:
        return {TAG: marshaller.tag, "v": encode(payload, buffers, depth, memo)}
    except _Miss as miss:
        if not miss.path:
            miss.path.append(f"<inside {type(value).__qualname__}>")
        raise


def encode_value(value: Any, buffers: list[Any], where: str) -> Any:
    """`encode` of one message's value, raising `Unencodable` (a TypeError) that names the bad value's type and
    place. Repeated lists, dicts and sets become references (the message is then a ``graph``)."""
    memo = _Memo()
    encoded = _encode_checked(value, buffers, where, memo)
    return {TAG: "graph", "v": encoded} if memo.refs else encoded


def encode_args(args: list[Any], kwargs: dict[str, Any], buffers: list[Any]) -> tuple[Any, Any]:
    """The arguments of a call, as one message: an object in both ``args`` and ``kwargs`` arrives as one. The
    args list and the kwargs dict themselves are the call's own (never the caller's objects), so only what they
    hold is numbered."""
    memo = _Memo()
    where = "args"
    try:
        encoded_args = [_encode_member(item, buffers, memo, i) for i, item in enumerate(args)]
        where = "kwargs"
        encoded_kwargs = {k: _encode_member(item, buffers, memo, k) for k, item in kwargs.items()} if kwargs else {}
    except _Miss as miss:
        raise Unencodable(miss.type_name, where + "".join(reversed(miss.path))) from None
    except RecursionError:
        raise TypeError(f"{where} is nested too deeply (over {MAX_DEPTH} levels) to be sent") from None
    if memo.refs:
        return {TAG: "graph", "v": encoded_args}, {TAG: "graph", "v": encoded_kwargs}
    return encoded_args, encoded_kwargs


def _encode_member(item: Any, buffers: list[Any], memo: _Memo, key: int | str) -> Any:
    try:
        return encode(item, buffers, 1, memo)
    except _Miss as miss:
        miss.path.append(f"[{key!r}]")
        raise


def _encode_checked(value: Any, buffers: list[Any], where: str, memo: _Memo) -> Any:
    try:
        return encode(value, buffers, 0, memo)
    except _Miss as miss:
        raise Unencodable(miss.type_name, where + "".join(reversed(miss.path))) from None
    except RecursionError:
        raise TypeError(
            f"{where} is nested too deeply (over {MAX_DEPTH} levels, or refers to itself) to be sent"
        ) from None


# -- decoding -----------------------------------------------------------------------------------------------


class DecodeError(ValueError):
    """A payload that does not follow the codec's rules."""


_TAKEN = object()  # a frame already decoded (decoding takes each frame out of ``buffers``)


def decode(data: Any, buffers: list[Any]) -> Any:
    """Rebuild a value from its JSON form and the frames that came with it (each frame used once)."""
    cls = type(data)
    if cls is list:
        return [decode(item, buffers) for item in data]
    if cls is not dict:
        return data
    tag = data.get(TAG)
    if tag is None:
        return {k: decode(v, buffers) for k, v in data.items()}
    if tag in ("bytes", "bytearray", "buffer"):
        index = data.get("b")
        if type(index) is not int or not 0 <= index < len(buffers):
            raise DecodeError(f"frame index {index!r} out of range")
        frame = buffers[index]
        if frame is _TAKEN:  # each frame stands for one value: 1000 references to one big frame are 1000 copies
            raise DecodeError(f"frame {index} is used twice")
        buffers[index] = _TAKEN
        return frame if tag == "buffer" else bytes(frame) if tag == "bytes" else bytearray(frame)
    if tag == "dict":
        pairs = data.get("v")
        if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
            raise DecodeError("a dict payload must be a list of [key, value] pairs")
        try:
            return {decode(k, buffers): decode(v, buffers) for k, v in pairs}
        except TypeError as exc:  # an unhashable key
            raise DecodeError(f"bad dict key: {exc}") from None
    marshaller = _by_tag.get(tag) if type(tag) is str else None
    if marshaller is None and tag in _TAG_FAMILIES:
        register = _LAZY.pop(_TAG_FAMILIES[tag], None)
        if register is not None:
            register()
        marshaller = _by_tag.get(tag)
    if marshaller is None:
        raise DecodeError(f"unknown value tag {tag!r}")
    try:
        return marshaller.decode(decode(data.get("v"), buffers))
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise DecodeError(f"bad {tag} payload: {exc}") from None


def decode_value(data: Any, buffers: list[Any]) -> Any:
    """One message's value (`encode_value`), references and all."""
    try:
        if type(data) is dict and data.get(TAG) == "graph":
            return _decode_graph(data.get("v"), buffers, [])
        return decode(data, buffers)
    except RecursionError:
        raise DecodeError("value nested too deeply") from None


def decode_args(args: Any, kwargs: Any, buffers: list[Any]) -> tuple[Any, Any]:
    """The arguments of a call (`encode_args`): references may cross from ``args`` to ``kwargs``. Anything but
    a list of args and a dict of kwargs is a `DecodeError`."""
    try:
        if type(args) is list:  # no references (with them, both are graphs)
            plain_args, plain_kwargs = decode(args, buffers), decode(kwargs, buffers) if kwargs else {}
        else:
            if type(args) is not dict or args.get(TAG) != "graph" or type(kwargs) is not dict:
                raise DecodeError("a call's args must be a list")
            if kwargs.get(TAG) != "graph" or type(args.get("v")) is not list or type(kwargs.get("v")) is not dict:
                raise DecodeError("a call's args and kwargs must both be graphs of a list and a dict, or neither")
            table: list[Any] = []
            plain_args = [_decode_graph(item, buffers, table) for item in args["v"]]
            plain_kwargs = {k: _decode_graph(item, buffers, table) for k, item in kwargs["v"].items()}
    except RecursionError:
        raise DecodeError("value nested too deeply") from None
    if type(plain_args) is not list or type(plain_kwargs) is not dict:
        raise DecodeError("a call's args must be a list and its kwargs a dict")
    return plain_args, plain_kwargs


_BUILDING = object()  # a set's place in the table while its members are decoded


def _decode_graph(data: Any, buffers: list[Any], table: list[Any]) -> Any:
    """`decode` for a message with references: every list, dict and set is numbered as it is met (before its
    contents, as the encoder numbered them), and ``{"$w": "ref", "v": n}`` is the ``n``-th, already built."""
    cls = type(data)
    if cls is list:
        out: list[Any] = []
        table.append(out)
        for item in data:
            out.append(_decode_graph(item, buffers, table))
        return out
    if cls is not dict:
        return data
    tag = data.get(TAG)
    if tag is None:
        plain: dict[str, Any] = {}
        table.append(plain)
        for k, item in data.items():
            plain[k] = _decode_graph(item, buffers, table)
        return plain
    if tag == "ref":
        number = data.get("v")
        if type(number) is not int or not 0 <= number < len(table) or table[number] is _BUILDING:
            raise DecodeError(f"reference {number!r} to nothing decoded")
        return table[number]
    if tag == "dict":
        pairs = data.get("v")
        if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
            raise DecodeError("a dict payload must be a list of [key, value] pairs")
        mapping: dict[Any, Any] = {}
        table.append(mapping)
        try:
            for k, item in pairs:
                mapping[_decode_graph(k, buffers, table)] = _decode_graph(item, buffers, table)
        except TypeError as exc:  # an unhashable key
            raise DecodeError(f"bad dict key: {exc}") from None
        return mapping
    if tag == "set":
        place = len(table)
        table.append(_BUILDING)
        members = _decode_graph(data.get("v"), buffers, table)
        try:
            table[place] = value = set(members)
        except TypeError as exc:
            raise DecodeError(f"bad set payload: {exc}") from None
        return value
    marshaller = _by_tag.get(tag) if type(tag) is str else None
    if marshaller is None and tag in _TAG_FAMILIES:
        register = _LAZY.pop(_TAG_FAMILIES[tag], None)
        if register is not None:
            register()
        marshaller = _by_tag.get(tag)
    if marshaller is None:
        return decode(data, buffers)  # a frame (which holds no containers), or an unknown tag: decode's answer
    try:
        return marshaller.decode(_decode_graph(data.get("v"), buffers, table))
    except DecodeError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise DecodeError(f"bad {tag} payload: {exc}") from None


# -- exceptions ---------------------------------------------------------------------------------------------

# BaseException types a worker must not be able to raise in its caller (SystemExit would end the host)
_NOT_REBUILT = {"SystemExit", "KeyboardInterrupt", "GeneratorExit", "StopIteration", "StopAsyncIteration"}


_OWN_ERRORS: dict[str, Callable[[str], BaseException]] = {
    "CallTimeout": CallTimeout,
    "WorkerDied": WorkerDied,
    "WorkerStartError": WorkerStartError,
    "WorkerBrokerError": WorkerBrokerError,
    "NoSuchFunction": NoSuchFunction,
}


def exception_to_wire(exc: BaseException, buffers: list[Any]) -> dict[str, Any]:
    """The Jupyter error fields (ename, evalue, traceback) plus what is needed to rebuild the type."""
    cls = type(exc)
    if cls.__module__.startswith("worker_kernel.") and cls.__module__ != "worker_kernel.errors":
        # our own internal types (Unencodable, DecodeError) travel as the built-in type they specialise
        cls = next(c for c in cls.__mro__ if c.__module__ == "builtins")
    import traceback

    tb_lines = traceback.format_exception(exc)
    kept = len(buffers)
    try:
        args = encode_value(list(exc.args), buffers, "args")
    except TypeError:
        del buffers[kept:]  # frames of the args encoded before the one that failed
        args = None
    fields = {
        "ename": cls.__qualname__,
        "emodule": cls.__module__,
        "evalue": str(exc),
        "eargs": args,
        "traceback": tb_lines,
    }
    marshaller = _exception_marshaller(exc)
    if marshaller is not None:  # a type registered with register_marshaller: it can be rebuilt as itself
        kept = len(buffers)
        try:
            fields["wb_exception"] = {
                TAG: marshaller.tag,
                "v": encode_value(marshaller.encode(exc), buffers, "the exception"),
            }
        except Exception:
            del buffers[kept:]  # then it arrives as RemoteError, like any other type
    return fields


def _exception_marshaller(exc: BaseException) -> Marshaller | None:
    """The marshaller registered for ``exc``'s type or a base of it, other than the codec's generic one."""
    for marshaller in reversed(_families):
        if marshaller.tag != "exception" and isinstance(exc, marshaller.types):
            return marshaller
    return None


REMOTE_TRACEBACK_NOTE = "Remote traceback (from the worker):"  # the first line of the note a rebuilt exception gets


def exception_from_wire(content: dict[str, Any], buffers: list[Any]) -> BaseException:
    """Rebuild an exception: a built-in type as itself, any other as `RemoteError`."""
    name = str(content.get("ename", "Exception"))
    module = str(content.get("emodule", ""))
    message = str(content.get("evalue", ""))
    tb = content.get("traceback")
    remote_tb = "".join(str(line) for line in tb) if isinstance(tb, list) else ""
    exc: BaseException | None = None
    if "wb_exception" in content:  # a registered type: its marshaller rebuilds it (nothing else is built)
        try:
            rebuilt = decode_value(content["wb_exception"], buffers)
        except Exception:
            rebuilt = None
        if (
            isinstance(rebuilt, Exception)  # never SystemExit, KeyboardInterrupt and their kind
            and not isinstance(rebuilt, (StopIteration, StopAsyncIteration))
            and rebuilt.__traceback__ is None  # a fresh object, not one a decoder hands out twice
            and rebuilt.__cause__ is None
            and not getattr(rebuilt, "__notes__", None)
            and not hasattr(rebuilt, "remote_traceback")
        ):
            exc = rebuilt
    cls = getattr(builtins, name, None) if exc is None and module == "builtins" and name not in _NOT_REBUILT else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        args = content.get("eargs")
        try:
            args = decode_value(args, buffers) if args is not None else [message]
            exc = cls(*args) if isinstance(args, list) else cls(message)
        except Exception:
            exc = cls(message)
    if exc is None and module == "worker_kernel.errors" and name in _OWN_ERRORS:
        exc = _OWN_ERRORS[name](message)  # e.g. a CallTimeout from a worker-to-worker call inside the worker
    if exc is None:
        qual = f"{module}.{name}" if module and module != "builtins" else name
        try:
            args = decode_value(content.get("eargs"), buffers)
        except (DecodeError, TypeError):
            args = None
        exc = RemoteError(qual, message, remote_tb, tuple(args) if isinstance(args, list) else ())
    try:  # a registered type may refuse new attributes (a frozen dataclass, __slots__)
        exc.remote_traceback = remote_tb  # type: ignore[attr-defined]
    except Exception:
        pass
    if remote_tb:
        _attach_remote_traceback(exc, remote_tb)
    return exc


def _attach_remote_traceback(exc: BaseException, text: str) -> None:
    """Show the worker's traceback wherever ``exc`` is printed: as a note, or on Python 3.10 (no notes) as the
    chained cause, as `concurrent.futures` shows a process's traceback."""
    if sys.version_info >= (3, 11):
        try:
            exc.add_note(f"{REMOTE_TRACEBACK_NOTE}\n{text.rstrip()}")
        except Exception:  # a registered type's own __setattr__ may refuse it
            pass
    else:
        BaseException.__setattr__(exc, "__cause__", RemoteTraceback(text))  # past a frozen type's __setattr__


# -- the built-in marshallers -------------------------------------------------------------------------------


def _exception_encode(exc: BaseException) -> dict[str, Any]:
    # exceptions as values (returned, not raised) carry the same fields as error replies; buffers inside
    # their args are not supported, so args that need frames fall back to their text
    info = exception_to_wire(exc, [])
    if info["eargs"] is not None and _holds_frames(info["eargs"]):
        info["eargs"] = None
    return info


def _holds_frames(data: Any) -> bool:
    if isinstance(data, list):
        return any(_holds_frames(x) for x in data)
    if isinstance(data, dict):
        return (
            "b" in data
            and data.get(TAG) in ("bytes", "bytearray", "buffer")
            or any(_holds_frames(v) for v in data.values())
        )
    return False


def _exception_decode(payload: dict[str, Any]) -> BaseException:
    if type(payload) is not dict:
        raise DecodeError("an exception value must be an object")
    return exception_from_wire(payload, [])


_BUILT_INS: list[tuple[str, Any, Callable[[Any], Any], Callable[[Any], Any]]] = [
    ("int", int, str, int),  # encoded by `encode` itself; here for decoding
    ("float", float, repr, float),
    ("tuple", tuple, list, tuple),
    ("set", set, list, set),
    ("frozenset", frozenset, list, frozenset),
    ("complex", complex, lambda c: [c.real, c.imag], lambda p: complex(*p)),
    ("exception", BaseException, _exception_encode, _exception_decode),
]
for _tag, _types, _enc, _dec in _BUILT_INS:
    register_marshaller(_tag, _types, _enc, _dec)


def _register_datetime() -> None:
    import datetime as dt

    register_marshaller("datetime", dt.datetime, dt.datetime.isoformat, dt.datetime.fromisoformat)
    register_marshaller("date", dt.date, dt.date.isoformat, dt.date.fromisoformat)
    register_marshaller("time", dt.time, dt.time.isoformat, dt.time.fromisoformat)
    register_marshaller(
        "timedelta", dt.timedelta, lambda d: [d.days, d.seconds, d.microseconds], lambda p: dt.timedelta(*p)
    )


def _register_decimal() -> None:
    from decimal import Decimal

    register_marshaller("decimal", Decimal, str, Decimal)


def _register_uuid() -> None:
    from uuid import UUID

    register_marshaller("uuid", UUID, str, UUID)


def _register_paths() -> None:
    from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

    def decode(payload: list[str]) -> PurePath:
        kind, text = payload
        cls = {"PurePosixPath": PurePosixPath, "PureWindowsPath": PureWindowsPath}.get(kind, Path)
        return cls(text)

    register_marshaller("path", PurePath, lambda p: [type(p).__name__, str(p)], decode)


def _register_numpy() -> None:
    """Arrays of non-object dtype as one raw frame each; numpy is imported only once a peer uses it."""
    import numpy as np

    def encode_array(array: Any) -> dict[str, Any]:
        if array.dtype.hasobject:
            raise _Miss(array)
        if not array.flags.c_contiguous:
            array = array.copy(order="C")
        return {"dtype": array.dtype.str, "shape": list(array.shape), "data": Buffer(memoryview(array).cast("B"))}

    def decode_array(payload: dict[str, Any]) -> Any:
        dtype = np.dtype(str(payload["dtype"]))
        if dtype.hasobject:
            raise DecodeError("arrays of object dtype are not accepted")
        shape = tuple(int(n) for n in payload["shape"])
        return np.frombuffer(payload["data"], dtype=dtype).reshape(shape)

    def encode_scalar(scalar: Any) -> Any:
        if scalar.dtype.hasobject:
            raise _Miss(scalar)
        return encode_array(np.asarray(scalar))

    def decode_scalar(payload: dict[str, Any]) -> Any:
        return decode_array(payload)[()]

    register_marshaller("ndarray", np.ndarray, encode_array, decode_array)
    register_marshaller("npscalar", np.generic, encode_scalar, decode_scalar)


# families registered on first use: the module a value's type comes from -> how to register the family
_LAZY: dict[str, Callable[[], None]] = {
    "datetime": _register_datetime,
    "decimal": _register_decimal,
    "uuid": _register_uuid,
    "pathlib": _register_paths,
    "numpy": _register_numpy,
}
_TAG_FAMILIES = {
    "datetime": "datetime", "date": "datetime", "time": "datetime", "timedelta": "datetime",
    "decimal": "decimal", "uuid": "uuid", "path": "pathlib", "ndarray": "numpy", "npscalar": "numpy",
}  # fmt: skip
