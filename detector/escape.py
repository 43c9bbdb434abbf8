"""Untrusted text made inert for each output channel: the one place that escapes log strings.

Every string that comes from the log (``OperationName``, ``SdkVersion``, ``ResultSignature``,
``CallId``, ...) is hostile. Renderers pass it through the escaper of the channel it goes to:

==========  ===================  ==================================================================
channel     function             what it neutralises
==========  ===================  ==================================================================
text        :func:`for_text`     control, bidi and zero-width characters; length
html        :func:`for_html`     the above, then ``& < > " '`` as entities (email, HTML report)
teams       :func:`for_teams`    the above (no entities), ``<at>`` mentions, ``[links](..)``,
                                 ``![images](..)``, emphasis, code spans (Adaptive Card markdown)
slack       :func:`for_slack`    the same markdown rules (apprise turns them into mrkdwn), plus
                                 ``<url|text>`` links, ``<!channel>``/``@channel`` mentions
json        :func:`for_json`     markdown rules, and no raw ``<`` / ``>`` for consumers that
                                 paste the message into HTML (``<script>``)
==========  ===================  ==================================================================

Markdown escaping uses CommonMark backslash escapes where every target honours them and
look-alike characters where one does not: Slack has no escape for a backtick or ``<``, and
Teams turns ``<at>...</at>`` into a mention, so ``<`` ``>`` and a backtick are shown as
``‹`` ``›`` and ``ˋ``. KQL string literals are escaped by :func:`kql_string`. Pure functions.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "ESCAPERS",
    "clean",
    "escaper",
    "for_html",
    "for_html_block",
    "for_json",
    "for_markdown",
    "for_slack",
    "for_teams",
    "for_terminal",
    "for_text",
    "kql_string",
]

#: Default cap on one rendered value (an operation name, a version, a code).
LIMIT: Final = 200

_SPACES = re.compile(r"\s+")
# The CommonMark punctuation that can open markup inside a line: emphasis, strikethrough and
# link/image brackets ("(" and "!" are inert once "[" and "]" are). "_" is left alone:
# intraword underscores (1.30.1.1_stable) are literal, and Slack and Teams would show "\_".
_MD_SPECIAL = re.compile(r"([\\*\[\]~])")
_LOOKALIKE = str.maketrans({"<": "\u2039", ">": "\u203a", "`": "\u02cb"})
# Mentions Slack (with link_names) and Teams bots may expand from plain text.
_MENTION = re.compile(r"@(?=(channel|here|everyone)\b)", re.IGNORECASE)
_KQL_PLAIN = re.compile(r"[A-Za-z0-9 ._\-:/+,()=]")


def _char(ch: str) -> str:
    """One character as plain text: controls become a space, invisible formatting goes."""
    cat = unicodedata.category(ch)
    if cat in ("Cc", "Zl", "Zp"):
        return " "
    # Cf: bidi overrides/isolates, zero-width joiners, BOM; Cs: lone surrogates;
    # Co/Cn: private use and unassigned code points (nothing to show, room to hide).
    if cat in ("Cf", "Cs", "Co", "Cn"):
        return ""
    return ch


def clean(value: Any, limit: int = LIMIT, *, keep_newlines: bool = False) -> str:
    """``value`` as one line of visible text, at most ``limit`` characters.

    Control characters (newlines included, unless ``keep_newlines``) become spaces; bidi
    overrides, zero-width and other invisible format characters are removed; runs of
    whitespace collapse to one space (with ``keep_newlines``, lines keep their indentation).
    A longer text is cut and ends with ``…``.
    """
    text = "" if value is None else str(value)
    if keep_newlines:
        lines = ["".join(map(_char, line)).rstrip() for line in text.splitlines()]
        text = "\n".join(lines).strip("\n")
    else:
        text = _SPACES.sub(" ", "".join(map(_char, text))).strip()
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return text


def for_text(value: Any, limit: int = LIMIT) -> str:
    """Plain text (email text part, logs, console): :func:`clean`."""
    return clean(value, limit)


def for_terminal(text: str) -> str:
    """Several lines for a terminal (status, run summary): no escape sequence, no bidi trick.

    Line breaks and indentation stay; ESC, other controls and invisible characters do not,
    so a name from the log cannot recolour, move the cursor or reorder what is shown.
    """
    return clean(text, 1_000_000, keep_newlines=True)


def for_html(value: Any, limit: int = LIMIT) -> str:
    """HTML text or attribute value: cleaned, then every markup character as an entity."""
    return html.escape(clean(value, limit), quote=True)


def for_html_block(value: Any, limit: int = 100_000) -> str:
    """Like :func:`for_html` but keeps line breaks (``<pre>`` blocks)."""
    return html.escape(clean(value, limit, keep_newlines=True), quote=True)


def for_markdown(value: Any, limit: int = LIMIT) -> str:
    """CommonMark inline text that renders as itself: no link, image, emphasis, code or tag."""
    text = _MD_SPECIAL.sub(r"\\\1", clean(value, limit).translate(_LOOKALIKE))
    # At the start of a line these open a heading, a list or a setext underline.
    return "\\" + text if text[:1] in ("#", "-", "+", "=") else text


def for_teams(value: Any, limit: int = LIMIT) -> str:
    """Adaptive Card TextBlock markdown: :func:`for_markdown` (``<at>`` cannot form)."""
    return for_markdown(value, limit)


def for_slack(value: Any, limit: int = LIMIT) -> str:
    """Markdown that apprise converts to Slack mrkdwn with no link, mention or code span.

    ``<`` never reaches Slack, so ``<url|text>``, ``<!channel>`` and ``<@U123>`` cannot form;
    a word joiner after ``@`` keeps ``@channel``/``@here`` from notifying where a workspace
    expands plain-text mentions.
    """
    return _MENTION.sub("@\u2060", for_markdown(value, limit))


def for_json(value: Any, limit: int = LIMIT) -> str:
    """The json:// message (markdown text): :func:`for_markdown`, which has no raw ``<``/``>``."""
    return for_markdown(value, limit)


ESCAPERS: Final[dict[str, Callable[[Any, int], str]]] = {
    "text": for_text,
    "html": for_html,
    "email": for_html,
    "teams": for_teams,
    "slack": for_slack,
    "json": for_json,
    "other": for_markdown,
    "markdown": for_markdown,
}


def escaper(channel: str) -> Callable[[Any, int], str]:
    """The escaping function of ``channel`` (see :data:`ESCAPERS`); plain text if unknown."""
    return ESCAPERS.get(channel, for_text)


def kql_string(value: str) -> str:
    """A KQL string literal whose text is plain ASCII: everything else as ``\\uXXXX``.

    Quotes, backslashes, pipes, backticks, ``<``, control and bidi characters are all escaped,
    so the literal cannot end early, cannot close a Markdown code fence around the query and
    shows nothing invisible, while Kusto reads back the original value.
    """
    out = []
    for ch in value:
        if _KQL_PLAIN.fullmatch(ch):
            out.append(ch)
        elif ord(ch) > 0xFFFF:
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return '"' + "".join(out) + '"'
