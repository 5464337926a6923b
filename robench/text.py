"""Text from strangers made safe to show: a name, a path or metadata from a checkpoint, a model card, a store
or an archive is shown, never obeyed. Control characters and invisible format characters (bidi overrides
such as U+202E, zero-width marks) become visible escapes; Markdown escapes what Markdown or HTML would read
as markup; links are published only when they are http(s); names that become file names are bounded."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import urlsplit

MAX_NAME = 80  # characters of a file name derived from a stranger's name, before its hash suffix


def visible(value, keep_newlines: bool = False) -> str:
    """``value`` as text with every control (Cc) and format (Cf: bidi controls, zero-width marks) character
    written as an escape such as ``\\u202e``, so none of them moves the cursor or reorders what is shown."""
    out = []
    for c in str(value):
        if c == "\n" and keep_newlines:
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf"):
            out.append(c.encode("unicode_escape").decode("ascii"))
        else:
            out.append(c)
    return "".join(out)


_MD = {"\\": "\\\\", "`": "\\`", "[": "\\[", "]": "\\]", "|": "\\|", "<": "&lt;", ">": "&gt;", "&": "&amp;"}
_MD_RE = re.compile("|".join(re.escape(k) for k in _MD))


def md(value) -> str:
    """Stranger's text inside a Markdown document (a table cell, a heading, a sentence): shown as written,
    never read as HTML, an entity, a link, code or a table's column break. A name of letters, digits and
    ``-_.+/:`` comes back unchanged."""
    return _MD_RE.sub(lambda m: _MD[m.group(0)], visible(value))


def http_link(value) -> str:
    """``value`` when it is an absolute http(s) URL with a host, else "": a page links nothing else
    (javascript:, data:, file: or a relative path that would climb out of the site)."""
    text = str(value or "").strip()
    if not text or any(unicodedata.category(c) in ("Cc", "Cf") or c.isspace() for c in text):
        return ""
    try:
        parts = urlsplit(text)
    except ValueError:
        return ""
    return text if parts.scheme in ("http", "https") and parts.netloc else ""


def bounded_name(name: str, limit: int = MAX_NAME) -> str:
    """A name already made of file-name-safe characters, cut to ``limit`` characters with a short hash of
    the whole name added when it is longer, so that two long names stay two files."""
    if len(name) <= limit:
        return name
    return f"{name[:limit].rstrip('-.')}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def slug(value, fallback: str = "x") -> str:
    """A stranger's text (a dataset's or norm's name) as one safe path component: letters, digits, ``_``,
    ``.`` and ``-``, never ``.`` or ``..`` or empty, bounded (``bounded_name``)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(value)).strip("-.")
    return bounded_name(s) if s else fallback
