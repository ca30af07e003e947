"""Protobuf messages built from their descriptors, for fuzzing.

Both fuzzers the project runs build their inputs here, so a field added to a
``.proto`` is fuzzed without anyone touching the fuzzers:

- `strategy(descriptor)`: a hypothesis strategy (``make test``'s bounded fuzzing),
- `build(descriptor, draw)`: the same construction driven by any source of
  choices, e.g. atheris' ``FuzzedDataProvider`` (``bench/fuzz.py``, coverage-guided).

Values lean to the edges that break decoders and validators: empty and very long
strings, control and non-ASCII characters, integer limits, NaN and infinities,
unknown enum numbers, deep nesting, long repeated fields. Sizes stay bounded
(`Limits`) so that a fuzzing run does not spend its budget allocating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message

INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
UINT32 = (0, (1 << 32) - 1)
UINT64 = (0, (1 << 64) - 1)
INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: INT32, d.FieldDescriptor.TYPE_SINT32: INT32,
    d.FieldDescriptor.TYPE_SFIXED32: INT32, d.FieldDescriptor.TYPE_INT64: INT64,
    d.FieldDescriptor.TYPE_SINT64: INT64, d.FieldDescriptor.TYPE_SFIXED64: INT64,
    d.FieldDescriptor.TYPE_UINT32: UINT32, d.FieldDescriptor.TYPE_FIXED32: UINT32,
    d.FieldDescriptor.TYPE_UINT64: UINT64, d.FieldDescriptor.TYPE_FIXED64: UINT64,
}
FLOATS = (d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_DOUBLE)
SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e300, -1e-300, 3.4e38)
SPECIAL_TEXT = ("", " ", "\x00", "\n", "a" * 257, "é✓😀", "../../etc/passwd", "%s%n", "\u202e", "t|u|x")


@dataclass(frozen=True)
class Limits:
    """Bounds of one generated message."""

    max_depth: int = 4  # nested messages below the top
    max_repeated: int = 6  # elements of a repeated field
    max_text: int = 64  # characters of an ordinary string (SPECIAL_TEXT also has longer ones)
    max_bytes: int = 64
    huge_text: int = 70_000  # the length of the occasional oversized string


class Draw(Protocol):
    """A source of choices (hypothesis' ``data.draw`` or an atheris adapter)."""

    def boolean(self) -> bool: ...

    def integer(self, lo: int, hi: int) -> int: ...

    def floating(self) -> float: ...

    def text(self, max_size: int) -> str: ...

    def raw(self, max_size: int) -> bytes: ...


def message_class(descriptor: d.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def build(descriptor: d.Descriptor, draw: Draw, limits: Limits = Limits(), depth: int = 0) -> Message:
    """One message of ``descriptor``'s type, every field chosen by ``draw``."""
    msg = message_class(descriptor)()
    chosen_oneofs: set[str] = set()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in chosen_oneofs or not draw.boolean():
                continue
            chosen_oneofs.add(oneof.name)
        elif not draw.boolean():
            continue
        _fill(msg, field, draw, limits, depth)
    return msg


def _fill(msg: Message, field: d.FieldDescriptor, draw: Draw, limits: Limits, depth: int) -> None:
    is_message = field.type == d.FieldDescriptor.TYPE_MESSAGE
    if is_message and depth >= limits.max_depth:
        return
    if field.is_repeated:
        n = draw.integer(0, limits.max_repeated)
        target = getattr(msg, field.name)
        if is_message and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for _ in range(n):
                key = _scalar(key_field, draw, limits)
                if value_field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    target[key].CopyFrom(build(value_field.message_type, draw, limits, depth + 1))
                else:
                    target[key] = _scalar(value_field, draw, limits)
            return
        for _ in range(n):
            if is_message:
                target.add().CopyFrom(build(field.message_type, draw, limits, depth + 1))
            else:
                target.append(_scalar(field, draw, limits))
        return
    if is_message:
        getattr(msg, field.name).CopyFrom(build(field.message_type, draw, limits, depth + 1))
    else:
        setattr(msg, field.name, _scalar(field, draw, limits))


def _scalar(field: d.FieldDescriptor, draw: Draw, limits: Limits) -> Any:
    t = field.type
    if t == d.FieldDescriptor.TYPE_BOOL:
        return draw.boolean()
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        edge = draw.integer(0, 3)
        return (lo, hi, 0)[edge] if edge < 3 else draw.integer(lo, hi)
    if t in FLOATS:
        if draw.boolean():
            return SPECIAL_FLOATS[draw.integer(0, len(SPECIAL_FLOATS) - 1)]
        value = draw.floating()
        return value if t == d.FieldDescriptor.TYPE_DOUBLE or abs(value) < 3.4e38 else 3.4e38
    if t == d.FieldDescriptor.TYPE_ENUM:
        # Open (proto3) enums take any int32: unknown numbers must be handled too.
        known = [v.number for v in field.enum_type.values]
        return known[draw.integer(0, len(known) - 1)] if draw.boolean() else draw.integer(*INT32)
    if t == d.FieldDescriptor.TYPE_STRING:
        pick = draw.integer(0, 15)
        if pick == 0:
            return "x" * limits.huge_text
        if pick <= 3:
            return SPECIAL_TEXT[draw.integer(0, len(SPECIAL_TEXT) - 1)]
        return draw.text(limits.max_text)
    if t == d.FieldDescriptor.TYPE_BYTES:
        return draw.raw(limits.max_bytes)
    raise TypeError(f"field {field.full_name}: type {t} is not generated")


def strategy(descriptor: d.Descriptor, limits: Limits = Limits()) -> Any:
    """A hypothesis strategy of ``descriptor``'s messages (hypothesis is a dev dependency)."""
    from hypothesis import strategies as st

    @st.composite
    def messages(data_draw: Callable[[Any], Any]) -> Message:
        return build(descriptor, _HypothesisDraw(data_draw), limits)

    return messages()


class _HypothesisDraw:
    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def boolean(self) -> bool:
        return self._draw(self._st.booleans())

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))

    def floating(self) -> float:
        return self._draw(self._st.floats(allow_nan=True, allow_infinity=True))

    def text(self, max_size: int) -> str:
        return self._draw(self._st.text(max_size=max_size))

    def raw(self, max_size: int) -> bytes:
        return self._draw(self._st.binary(max_size=max_size))


class ProviderDraw:
    """`Draw` over an atheris ``FuzzedDataProvider`` (coverage-guided fuzzing)."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp

    def boolean(self) -> bool:
        return self.fdp.ConsumeBool()

    def integer(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def floating(self) -> float:
        return self.fdp.ConsumeRegularFloat() if self.fdp.ConsumeBool() else self.fdp.ConsumeFloat()

    def text(self, max_size: int) -> str:
        return self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, max_size))

    def raw(self, max_size: int) -> bytes:
        return self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, max_size))


def mangle(data: bytes, how: int, cut: int) -> bytes:
    """Wire-level damage to a serialised message: 0 truncate, 1 flip a byte, 2 append
    garbage, 3 a varint that never ends, 4 a length prefix far past the end."""
    if not data:
        return b"\xff" * max(cut, 1)
    at = cut % len(data)
    if how == 0:
        return data[:at]
    if how == 1:
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    if how == 2:
        return data + bytes(range(cut % 256))
    if how == 3:
        return data[:at] + b"\x08" + b"\xff" * 11
    return data[:at] + b"\x0a\xff\xff\xff\xff\x0f" + data[at:]
