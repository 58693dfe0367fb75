"""Names and trigger words shown to others: no characters that hide or reorder text.

A right-to-left override makes "\\u202eecilA" display as "Alice"; zero-width characters make
two different names look the same. Names members give are refused with what to fix
(:func:`check_shown_name`); names that come back from Ta-da (made elsewhere) are shown
without them (:func:`visible`).
"""

from __future__ import annotations

import unicodedata

from bot.errors import UserFacingError

# Format characters (Unicode category Cf: bidi controls U+202A..U+202E and U+2066..U+2069,
# zero-width U+200B..U+200F, U+2060.., U+FEFF, soft hyphen...), controls (Cc), and the
# unassigned and private-use ranges, whose look nobody can predict.
HIDDEN_CATEGORIES = frozenset({"Cf", "Cc", "Co", "Cn", "Cs"})


def hidden_characters(text: str) -> list[str]:
    """The distinct hidden or direction-changing characters of ``text``, in order."""
    found: dict[str, None] = {}
    for char in text:
        if unicodedata.category(char) in HIDDEN_CATEGORIES:
            found[char] = None
    return list(found)


def describe(char: str) -> str:
    """``U+202E (RIGHT-TO-LEFT OVERRIDE)``."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def check_shown_name(text: str, what: str) -> str:
    """``text`` when it has no hidden characters, else a :class:`UserFacingError` naming
    them (``what``: "The name", "The trigger word")."""
    hidden = hidden_characters(text)
    if hidden:
        listed = ", ".join(describe(c) for c in hidden[:3])
        raise UserFacingError(
            f"{what} contains invisible or text-direction characters ({listed}), which can "
            "make it look like something else to others. Type it again without them."
        )
    return text


def visible(text: str) -> str:
    """``text`` without hidden or direction-changing characters, for display."""
    return "".join(c for c in text if unicodedata.category(c) not in HIDDEN_CATEGORIES)
