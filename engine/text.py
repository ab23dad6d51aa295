"""Text from outside embprof, made safe to show.

Model names, folder names, server messages and snapshot fields are data. A terminal treats some
characters in data as commands (ESC starts a sequence that can clear the screen, move the cursor
or retitle the window; a bare CR rewrites a line), so before such text reaches a terminal every
control character is shown as a visible escape instead: ``\\x1b``, ``\\r``, ``\\u009b``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# C0 controls except tab and newline, DEL, and the C1 controls (U+0080–U+009F: some terminals take
# U+009B as CSI, the same as ESC [). U+2028/U+2029 end a line for many readers (Python's splitlines
# too). Bidirectional overrides (U+202A–U+202E, U+2066–U+2069) reorder what is shown after them.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# The one-line form also escapes tab and newline: a name or a message must not make lines of its own.
_CONTROL_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` as a string with every control character escaped, tabs and newlines kept."""
    return _CONTROL.sub(_escape, str(text))


def one_line(text: object) -> str:
    """``text`` as a string on one line: every control character escaped, tabs and newlines too."""
    return _CONTROL_LINE.sub(_escape, str(text))


def clean(value: Any) -> Any:
    """``value`` with every string inside it passed through ``printable``: strings, lists, tuples,
    dicts (keys too), dataclasses (the events) and pydantic models, copied only where something changed (most events and
    snapshots hold no control character, and come back as the very same objects)."""
    if isinstance(value, str):
        return printable(value) if _CONTROL.search(value) else value
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    from pydantic import BaseModel  # here, not at the top: `embprof --help` imports this module and must stay quick

    if isinstance(value, BaseModel):
        changes: dict[str, Any] = {}
        for name in type(value).model_fields:
            old = getattr(value, name, None)
            new = clean(old)
            if new is not old:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # the engine's events
        changes = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name, None)
            new = clean(old)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, dict):
        items = [(clean(k), clean(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        seq = [clean(x) for x in value]
        if all(a is b for a, b in zip(seq, value)):
            return value
        return type(value)(seq) if type(value) in (list, tuple) else seq
    return value


# Machine-readable output read in a terminal as often as by a program (`embprof prompts --tsv`, `--print-plan`,
# `export --format json`): each keeps its own format's rules and still carries no raw control character.
def tsv_field(value: object) -> str:
    """``value`` as one field of a tab-separated record: a backslash doubled, then tab, newline and CR as
    ``\\t``, ``\\n``, ``\\r`` and every other control character escaped, so that each record is one line,
    each field is whole, and a reader that undoes the escapes gets the text back exactly."""
    return one_line(str(value).replace("\\", "\\\\"))


# JSON escapes C0 controls inside its strings, but leaves DEL, the C1 controls, U+2028/U+2029 and the
# bidirectional overrides raw; none of them may stand outside a string in valid JSON.
_JSON_RAW = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def json_text(text: str) -> str:
    """JSON text with the characters a terminal acts on that JSON encoders leave raw written as ``\\uXXXX``:
    the same JSON value, every byte of it kept, and nothing in it a terminal takes as a command."""
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


# A value refused in an error is echoed back, but a pasted file must not become the error line.
SHOWN_CHARS = 40


def shown(value: object) -> str:
    """A refused value as an error line shows it: on one line, control characters escaped, long values cut."""
    text = one_line(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def fmt_bound(x: float) -> str:
    """A bound as people write it: 86400, not 86400.0; 0.001, not 1e-03."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def first_line(exc: BaseException) -> str:
    """An exception's first line, or its class's name when it says nothing: a library's error, in one
    sentence (the rest of a loader's message is a traceback's worth of advice)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
