"""Structural queries over a raw page: its title, and the elements around a position.

Beautiful Soup builds the page's element tree with lxml's HTML parser, the design card's choice:
lxml 6 (libxml2 2.14) tokenizes as HTML5 does (`--!>` ends a comment, `<title>` holds only
text), it closes elements as the browser does where stdlib html.parser does not (an end tag in a
table cell for an element outside the table is ignored; tests/test_compare.py has such pages),
and it is Beautiful Soup's fastest parser. The raw-HTML scanner (layoutja.text.htmlpage) stays
the one reader of page text and positions: it says where the page text is, the tree only what
encloses it.
"""

from __future__ import annotations

import re

from bs4 import BeautifulSoup, SoupStrainer, Tag

from layoutja.shinra.rawpage import RawPage
from layoutja.text.htmlpage import char_ranges, parse_html

_PARSER = "lxml"
_MARK = "layoutja-mark"
_SPACE = re.compile(r"[\t\n\f\r ]+")  # ASCII whitespace: a title keeps U+3000
_SITE = " - "  # "ベアトリクス女王国際空港 - Wikipedia Dump 20171103"


def page_title(source: str) -> str:
    """The page's title as the browser shows it (character references decoded, whitespace
    collapsed), less the site's name after the last ` - `; "" for a page without one."""
    title = BeautifulSoup(source, _PARSER, parse_only=SoupStrainer("title")).title
    text = _SPACE.sub(" ", title.get_text()).strip() if title else ""
    return text.rpartition(_SITE)[0] or text


def enclosing(raw: RawPage, indexes: list[int | None]) -> list[list[Tag]]:
    """For each character index of the page, the elements open there, innermost first; [] for
    None and for a position inside markup or content that is not page text (a tag, a comment,
    a script).

    A tree records where an element starts (html.parser's `sourceline`), never where it ends,
    so it cannot say which elements hold a position; the parser can. An empty marker element is
    put at each position and the elements around it are read off the tree. A marker is markup
    of its own at page text (as the scanner reads it) and before a `<` (a value may start with
    its link, `<a href=...>北海道</a>`); in a comment or a script it is their text and holds
    nothing. Anywhere else it would split a tag (so would a `<` inside a quoted attribute value,
    where no value starts), so none is put there.
    """
    text = set(char_ranges(parse_html(raw.source).blocks)[0].tolist())
    source = raw.source
    marked = sorted(
        {i for i in indexes if i is not None and (i in text or source.startswith("<", i))}
    )
    pieces, done = [], 0
    for k, position in enumerate(marked):
        pieces += [source[done:position], f"<{_MARK} data-k={k}></{_MARK}>"]
        done = position
    soup = BeautifulSoup("".join([*pieces, source[done:]]), _PARSER)
    held = {
        marked[int(mark["data-k"])]: [e for e in mark.parents if not isinstance(e, BeautifulSoup)]
        for mark in soup.find_all(_MARK)
    }
    return [held.get(index, []) for index in indexes]
