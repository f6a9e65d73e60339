"""Protobuf message classes from a `.proto` file, built at run time: no protoc, no _pb2 module.

Reads the proto2 subset our schemas use (grammar/caffe.proto): `syntax`, `package`, nested
`message` and `enum` definitions, and `optional` / `repeated` / `required` fields of scalar,
enum or message type with `[default = ...]` and `[packed = ...]` options. The result is a
`FileDescriptorProto`, added to a private descriptor pool so that it never clashes with
another `caffe` package a user may have loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from mtsc.ir.errors import InternalError

_Field = descriptor_pb2.FieldDescriptorProto

_SCALARS = {
    "double": _Field.TYPE_DOUBLE,
    "float": _Field.TYPE_FLOAT,
    "int64": _Field.TYPE_INT64,
    "uint64": _Field.TYPE_UINT64,
    "int32": _Field.TYPE_INT32,
    "uint32": _Field.TYPE_UINT32,
    "sint32": _Field.TYPE_SINT32,
    "sint64": _Field.TYPE_SINT64,
    "fixed32": _Field.TYPE_FIXED32,
    "fixed64": _Field.TYPE_FIXED64,
    "sfixed32": _Field.TYPE_SFIXED32,
    "sfixed64": _Field.TYPE_SFIXED64,
    "bool": _Field.TYPE_BOOL,
    "string": _Field.TYPE_STRING,
    "bytes": _Field.TYPE_BYTES,
}
_LABELS = {
    "optional": _Field.LABEL_OPTIONAL,
    "repeated": _Field.LABEL_REPEATED,
    "required": _Field.LABEL_REQUIRED,
}
_FLOATING = {_Field.TYPE_DOUBLE, _Field.TYPE_FLOAT}

_TOKEN = re.compile(
    r"""(?P<skip>\s+|//[^\n]*|/\*.*?\*/)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<word>[A-Za-z_][\w.]*)
      | (?P<symbol>[{}\[\]=;,])""",
    re.VERBOSE | re.DOTALL,
)


class _Tokens:
    def __init__(self, text: str, file: str) -> None:
        self.file = file
        self.items: list[tuple[str, int]] = list(self._scan(text))
        self.pos = 0

    def _scan(self, text: str) -> Iterator[tuple[str, int]]:
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise InternalError(f"{self.file}:{line}: unexpected {text[pos]!r}")
            if m.lastgroup != "skip":
                yield m.group(), line
            line += m.group().count("\n")
            pos = m.end()

    def peek(self) -> str | None:
        return self.items[self.pos][0] if self.pos < len(self.items) else None

    def take(self, expected: str | None = None) -> str:
        if self.pos >= len(self.items):
            raise InternalError(f"{self.file}: unexpected end of file")
        token, line = self.items[self.pos]
        if expected is not None and token != expected:
            raise InternalError(f"{self.file}:{line}: expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    def fail(self, message: str) -> InternalError:
        line = self.items[min(self.pos, len(self.items) - 1)][1] if self.items else 1
        return InternalError(f"{self.file}:{line}: {message}")


def parse_proto(text: str, file: str) -> descriptor_pb2.FileDescriptorProto:
    """The `FileDescriptorProto` of a proto2 file, with every type name fully qualified."""
    tokens = _Tokens(text, file)
    fdp = descriptor_pb2.FileDescriptorProto(name=file, syntax="proto2")
    while tokens.peek() is not None:
        keyword = tokens.take()
        if keyword == "syntax":
            tokens.take("=")
            if tokens.take().strip("\"'") != "proto2":
                raise tokens.fail("only proto2 schemas are supported")
            tokens.take(";")
        elif keyword == "package":
            fdp.package = tokens.take()
            tokens.take(";")
        elif keyword == "message":
            _message(tokens, fdp.message_type.add())
        elif keyword == "enum":
            _enum(tokens, fdp.enum_type.add())
        else:
            raise tokens.fail(f"unexpected {keyword!r} at the top level")
    _resolve_types(fdp)
    return fdp


def _message(tokens: _Tokens, msg: descriptor_pb2.DescriptorProto) -> None:
    msg.name = tokens.take()
    tokens.take("{")
    while tokens.peek() != "}":
        keyword = tokens.take()
        if keyword == "message":
            _message(tokens, msg.nested_type.add())
        elif keyword == "enum":
            _enum(tokens, msg.enum_type.add())
        elif keyword in _LABELS:
            _field(tokens, msg.field.add(), keyword)
        else:
            raise tokens.fail(f"unexpected {keyword!r} in message {msg.name}")
    tokens.take("}")


def _enum(tokens: _Tokens, enum: descriptor_pb2.EnumDescriptorProto) -> None:
    enum.name = tokens.take()
    tokens.take("{")
    while tokens.peek() != "}":
        value = enum.value.add(name=tokens.take())
        tokens.take("=")
        value.number = int(tokens.take())
        tokens.take(";")
    tokens.take("}")


def _field(tokens: _Tokens, field: _Field, label: str) -> None:
    field.label = _LABELS[label]
    type_name = tokens.take()
    field.name = tokens.take()
    tokens.take("=")
    field.number = int(tokens.take())
    if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
    else:
        field.type_name = type_name  # resolved once every message and enum is known
    if tokens.peek() == "[":
        tokens.take("[")
        while True:
            key = tokens.take()
            tokens.take("=")
            value = tokens.take()
            if key == "default":
                scalar = field.type if field.HasField("type") else None
                field.default_value = _default_text(value, scalar)
            elif key == "packed":
                field.options.packed = value == "true"
            else:
                raise tokens.fail(f"unsupported field option {key!r}")
            if tokens.peek() != ",":
                break
            tokens.take(",")
        tokens.take("]")
    tokens.take(";")


def _default_text(value: str, type_: int | None) -> str:
    """A default as a descriptor spells it: strings unquoted, floats in Python's spelling."""
    if value[:1] in "\"'":
        return value[1:-1]
    if type_ in _FLOATING:
        return repr(float(value))
    return value


def _resolve_types(fdp: descriptor_pb2.FileDescriptorProto) -> None:
    """Qualify field type names the way protoc does: innermost enclosing scope first."""
    package = f".{fdp.package}" if fdp.package else ""
    kinds: dict[str, int] = {}

    def collect(scope: str, messages, enums) -> None:
        for enum in enums:
            kinds[f"{scope}.{enum.name}"] = _Field.TYPE_ENUM
        for msg in messages:
            kinds[f"{scope}.{msg.name}"] = _Field.TYPE_MESSAGE
            collect(f"{scope}.{msg.name}", msg.nested_type, msg.enum_type)

    def resolve(scope: str, messages) -> None:
        for msg in messages:
            inner = f"{scope}.{msg.name}"
            for field in msg.field:
                if field.type_name:
                    field.type_name = _lookup(field.type_name, inner, kinds)
                    field.type = kinds[field.type_name]
            resolve(inner, msg.nested_type)

    collect(package, fdp.message_type, fdp.enum_type)
    resolve(package, fdp.message_type)


def _lookup(name: str, scope: str, kinds: dict[str, int]) -> str:
    while True:
        candidate = f"{scope}.{name}"
        if candidate in kinds:
            return candidate
        if not scope:
            raise InternalError(f"unknown type {name!r} in the schema")
        scope = scope.rpartition(".")[0]


@cache
def _pool(path: Path) -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(parse_proto(path.read_text(), path.name))
    return pool


def message_class(path: Path, full_name: str) -> type[Message]:
    """The message class `full_name` (e.g. `caffe.NetParameter`) of the schema at `path`."""
    desc = _pool(path).FindMessageTypeByName(full_name)
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is None:  # protobuf before 4.22
        return message_factory.MessageFactory(desc.file.pool).GetPrototype(desc)
    return get_class(desc)
