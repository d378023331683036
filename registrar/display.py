"""Client-given text made safe to show on an operator's terminal.

A hostname, a node id or a label comes from whoever called the API. Printed raw,
an escape sequence in it could rewrite the operator's screen (move the cursor,
hide rows, set the window title) and a bidi override could reorder what is read.
``printable`` escapes every such character visibly, Python-literal style (``\\x1b``,
``\\u202e``), and the backslash itself, so the output is unambiguous and one line.
JSON output needs none of this: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import unicodedata

# Control, format (bidi overrides, zero-width), line/paragraph separators,
# surrogates, private use and unassigned code points.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE


def printable(text: str) -> str:
    if text.isprintable() and "\\" not in text and not any(unsafe(c) for c in text):
        return text
    out: list[str] = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif not unsafe(char) and char.isprintable():
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def has_unsafe(text: str) -> bool:
    """True when ``text`` holds a character ``printable`` would escape (not ``\\``)."""
    return not text.isprintable() or any(unsafe(c) for c in text)
