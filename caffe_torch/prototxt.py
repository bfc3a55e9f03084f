"""Reading net and solver prototxt (protobuf text format) with errors that name the file, line and layer."""

import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import message as _message
from google.protobuf import text_format

from .errors import PrototxtError
from .proto import caffe_pb2


@dataclass
class Source:
    """Where a parsed message came from: the file, and the first line of each top-level `layer {` block."""

    path: str
    layer_lines: list[int] = field(default_factory=list)

    def where(self, layer_index: int | None = None) -> str:
        if layer_index is not None and layer_index < len(self.layer_lines) and self.layer_lines[layer_index]:
            return f"{self.path}:{self.layer_lines[layer_index]}"
        return self.path


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{}]|[A-Za-z_][A-Za-z0-9_]*|\n|.')


def _layer_blocks(text: str) -> list[tuple[int, int, str | None]]:
    """(first line, last line, name) of each top-level `layer {` / `layers {` block, in order (1-based lines).

    A small scan of the text format that skips strings and comments; used only to point error messages at
    the right place, never to read values.
    """
    blocks = []
    depth, line, pending_key, current = 0, 1, None, None
    expect_name = False
    for tok in _TOKEN.findall(text):
        if tok == "\n":
            line += 1
            continue
        if tok.startswith("#") or tok.isspace():
            continue
        if tok == "{":
            if depth == 0 and pending_key in ("layer", "layers"):
                current = [line, line, None]
            depth += 1
        elif tok == "}":
            depth -= 1
            if depth == 0 and current is not None:
                current[1] = line
                blocks.append(tuple(current))
                current = None
        elif expect_name and tok[0] in "\"'":
            if current is not None and current[2] is None:
                current[2] = tok[1:-1]
            expect_name = False
        elif tok == ":":
            expect_name = depth == 1 and current is not None and pending_key == "name"
            continue
        pending_key = tok if tok[0].isalpha() or tok[0] == "_" else None
    return blocks


def _parse(text: str, message: _message.Message, path: str) -> Source:
    blocks = _layer_blocks(text)
    try:
        # Parse, not Merge: like Caffe's C++ TextFormat::Parse, a non-repeated field given twice is an error
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        reason = str(exc)
        # protobuf prefixes "line:col : "; keep only the reason, we print our own location.
        reason = re.sub(r"^\d+:\d+\s*:\s*", "", reason)
        layer = ""
        if line is not None:
            for first, last, name in blocks:
                if first <= line <= last:
                    layer = f" (in layer '{name}')" if name \
                        else f" (in the layer block starting at line {first})"
                    break
        loc = f"{path}:{line}" if line is not None else path
        raise PrototxtError(f"{loc}: {reason}{layer}") from None
    return Source(path, [first for first, _, _ in blocks])


def _read_text(path) -> str:
    p = Path(path)
    try:
        return p.read_text()
    except FileNotFoundError:
        raise PrototxtError(f"{p}: no such prototxt file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrototxtError(f"{p}: cannot read prototxt: {exc}") from None


def read_net(path) -> tuple[caffe_pb2.NetParameter, Source]:
    """Parse a net prototxt file into a NetParameter."""
    msg = caffe_pb2.NetParameter()
    src = _parse(_read_text(path), msg, str(path))
    return msg, src


def parse_net_text(text: str, name: str = "<string>") -> tuple[caffe_pb2.NetParameter, Source]:
    msg = caffe_pb2.NetParameter()
    return msg, _parse(text, msg, name)


def read_solver(path) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt file into a SolverParameter."""
    msg = caffe_pb2.SolverParameter()
    _parse(_read_text(path), msg, str(path))
    return msg
