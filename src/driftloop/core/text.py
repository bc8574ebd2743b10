"""Names that come from outside (raw file names, object keys) made safe to show.

A raw file's name is chosen by whoever lands the file. Printed as it is, a newline in it
starts a line of output driftloop never wrote (``x\\nPROMOTED: ...``), and an escape
sequence (``ESC [ ...``) drives the reader's terminal. :func:`shown` writes such characters
as ``repr`` does, so every human-readable output shows a name and nothing else.
"""

from __future__ import annotations

import unicodedata

# Control (C0/C1, so ESC and newline), format (bidirectional overrides), lone surrogates (a
# name that is not valid UTF-8, as Python decodes it) and line/paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def shown(name: object) -> str:
    """``name`` as text with its control characters escaped (``\\n``, ``\\x1b``,
    ``\\u202e``), as ``repr`` shows them; an ordinary name comes back unchanged."""
    text = str(name)
    if text.isprintable():  # the common case costs one scan
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _ESCAPED else c for c in text)
