"""Text that came from a candidate (its exception, its output, its label), made safe for
each format: the one place every format's escaping lives.

A candidate decides what its exception message and its output say.  Left as they are, they
could draw a fake heading in a job summary (``## ✅ 12/12 passed``), inject HTML or a link,
break a table, make JUnit XML unreadable (a NUL, an ESC), restyle the console (rich markup
``[bold green]``) or rewrite the terminal (``\\x1b[2J``, ``\\r``).  Every renderer passes such
text through the helper of its format:

- :func:`plain` (under all the others): control characters, ANSI escape sequences, lone
  surrogates and bidirectional overrides become visible escapes (``\\x1b[2J`` prints as those
  seven characters); newlines and tabs stay.
- :func:`console`: a rich ``Text`` (never parsed as markup) of the plain text.
- :func:`markdown`: the candidate's text in one table cell: an inline code span (no
  heading, HTML, link, emphasis, emoji code or autolink can start inside it), pipes
  escaped, on one line.
- :func:`markdown_words`: softcheck's words and the user's (case and group names) in a
  cell: one line, pipes escaped, no HTML (``<`` and ``&`` as entities).
- :func:`xml`: plain text without the characters XML 1.0 cannot hold (ElementTree escapes
  ``<``, ``&`` and ``>``, so ``]]>`` cannot end anything).

JSON needs none: ``json.dumps`` escapes every control character, and a reader gets the text
the candidate wrote.
"""

from __future__ import annotations

import re

#: C0 controls but tab and newline, DEL, C1 controls, lone surrogates, the bidirectional
#: embeddings, overrides and isolates (they reorder what a terminal shows), U+FFFE/U+FFFF
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069"
                     "\ufffe\uffff]")


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def plain(text: object) -> str:
    """``text`` with every control character (ESC, CR, NUL, ...) as a visible escape."""
    return _UNSAFE.sub(_visible, str(text).replace("\r\n", "\n"))


def console(text: object, style: str | None = None):
    """A rich ``Text`` of the plain text: printed as written, never read as markup."""
    from rich.text import Text

    return Text(plain(text), style=style or "")


def markdown(text: object) -> str:
    """Text for a Markdown table cell: one line, in a code span fenced by more backticks than
    it holds (so nothing in it is Markdown or HTML), its pipes escaped (GFM tables split on
    ``|`` even inside a code span); '' for empty text."""
    s = " ".join(plain(text).split())
    if not s:
        return ""
    longest = max((len(run) for run in re.findall("`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    # GFM splits the row on every pipe not preceded by a backslash, code spans included, and
    # then drops the backslash of each ``\\|``: the cell shows the text as written
    s = s.replace("|", "\\|")
    return f"{fence}{pad}{s}{pad}{fence}"


def markdown_words(text: object) -> str:
    """Words softcheck or the user wrote, for a Markdown table cell: one line, pipes
    escaped, ``<`` and ``&`` as entities (no HTML can start)."""
    s = " ".join(plain(text).split())
    return s.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")


#: what XML 1.0 cannot hold at all (``plain`` has replaced the rest of the controls)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml(text: object) -> str:
    """Text for a JUnit attribute or element: plain, and only characters XML allows."""
    return _NOT_XML.sub("\ufffd", plain(text))
