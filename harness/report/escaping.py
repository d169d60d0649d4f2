"""Text the project did not write itself (suite files, records, flags), made literal for the
medium it goes to. Every renderer passes such text through one of these, and nothing else.

- Terminal (rich): a `Text` is never read as markup (`[/]`, `[onnx]`) or emoji codes, so user
  text goes into `Text` (`literal`, `line`, `LiteralTable`); the project's own styling is a
  (text, style) pair. Control characters other than newline and tab are shown as `\\x1b`,
  so a record cannot move the cursor or clear the screen.
- HTML: `html_text` for text and attribute values; `relative_href` for links, which are
  relative, percent-encoded paths inside the report folder or a run folder, or are dropped.
- Markdown (GitHub-flavoured): `md_text` for sentences, headings and list items, `md_cell`
  for table cells, `md_code` for code spans; line breaks become `<br>` (spaces in code).
- CSV: `csv_cell` neutralises text a spreadsheet would run as a formula.
- matplotlib: `literal_figure` turns math text (`$x$`) and TeX off for every label.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:  # matplotlib is imported by the figure modules only
    from matplotlib.artist import Artist
    from matplotlib.figure import Figure

# ----------------------------------------------------------------------------- terminal

_NEWLINES = re.compile(r"\r\n?")
# C0 and C1 controls and DEL, but not newline and tab: a terminal would act on them.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: object) -> str:
    """The text with carriage returns as newlines and other control characters spelt out."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", _NEWLINES.sub("\n", str(text)))


def literal(text: object, style: str = "") -> Text:
    """Text shown exactly as written, in the project's style (if any)."""
    return Text(visible(text), style=style)


def line(*parts: object) -> Text:
    """One message: each part literal; a (text, style) pair is the project's styling of its text.

    line(("warning", "bold yellow"), f": {reason}") shows `reason` as written, whatever it holds.
    """
    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            text, style = part
            out.append(visible(text), style=style)
        else:
            out.append(visible(part))
    return out


def _text(x: Any) -> Any:
    return literal(x) if isinstance(x, str) else x


class LiteralTable(Table):
    """A rich table whose title, headers and cells, given as str, are shown as written.

    Cells that carry the project's styling are passed as `literal(text, style)`.
    """

    def __init__(self, *headers: Any, title: Any = None, **kwargs: Any) -> None:
        if isinstance(title, str):  # rich styles a str title itself, a Text as it stands
            title = literal(title, kwargs.get("title_style") or "table.title")
        super().__init__(*map(_text, headers), title=title, **kwargs)

    def add_column(self, header: Any = "", footer: Any = "", **kwargs: Any) -> None:
        super().add_column(_text(header), _text(footer), **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*map(_text, renderables), **kwargs)


# ----------------------------------------------------------------------------- HTML


def html_text(text: object) -> str:
    """Text for an HTML element or a quoted attribute value."""
    return html.escape(str(text), quote=True)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def relative_href(target: str | Path, base: Path | None, roots: Iterable[Path] = ()) -> str | None:
    """A link from a file in `base` (the report folder) to `target`, or None to drop it.

    Kept only where `target` (symlinks followed) lies inside `base` or one of `roots` (the
    runs the report reads): a record cannot point a link anywhere else. The path is
    relative, so the report and its runs can move together, and percent-encoded, so no part
    of it can read as a scheme (`javascript:`), a query or a fragment.
    """
    if base is None:
        return None
    base = base.resolve()
    path = Path(target).resolve()
    if not any(_inside(path, r.resolve()) for r in (base, *roots)):
        return None
    rel = os.path.relpath(path, base).replace(os.sep, "/")
    return quote(rel, safe="/")


# ----------------------------------------------------------------------------- Markdown

# Characters with a meaning inline (emphasis, code, links, raw HTML, entities, table
# cells, strikethrough, headings' closing #, GitHub's math): each is backslash-escaped;
# but not _ between letters or digits (sparse.sliding_window), which never is emphasis.
_MD_INLINE = re.compile(r"([\\`*\[\]<>&|~#$]|(?<![^\W_])_|_(?![^\W_]))")
# What starts a block at the start of a list item or a quote's line: a list marker (- + 1. 1)),
# a thematic break (---) or a setext underline (=== under the line before).
_MD_LEADING = re.compile(r"^(?:[-+=](?=[\s=-]|$)|\d{1,9}(?=[.)](?:\s|$)))")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def md_text(text: object) -> str:
    """Text for a Markdown sentence, heading, list item, quote or table cell: shown as written
    (runs of white space aside, which Markdown folds), line breaks as <br>."""
    out = _MD_INLINE.sub(r"\\\1", str(text).strip())
    out = _MD_LEADING.sub(lambda m: m.group() + "\\" if m.group().isdigit() else "\\" + m.group(), out, count=1)
    return _LINE_BREAKS.sub("<br>", out)


def md_cell(text: object) -> str:
    """md_text for a table cell (never empty: an empty cell would shift the row)."""
    return md_text(text) or " "


def md_code(text: object, in_table: bool = False) -> str:
    """A code span holding the text as written (line breaks as spaces, which is what a code
    span shows anyway); in a table cell its | is escaped, which GFM reads back as |."""
    body = _LINE_BREAKS.sub(" ", str(text))
    if not body:
        return md_text(body)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    if body[0] in "` " or body[-1] in "` ":
        body = f" {body} "  # the spaces are stripped again by the reader, one on each side
    if in_table:
        body = body.replace("|", "\\|")
    return f"{fence}{body}{fence}"


def md_url(url: str) -> str:
    """A link destination: spaces, parentheses and angle brackets percent-encoded."""
    return quote(url, safe=":/?#[]@!$&'*+,;=%~")


# ----------------------------------------------------------------------------- CSV

# A cell starting with one of these is a formula to a spreadsheet (OWASP's list); quotes
# before one are counted so that reading back (csv_read_back) is exact.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: object) -> object:
    """A value for csv.writer: None as empty; text that a spreadsheet would run as a formula
    behind a single quote; numbers, and text that is a plain number (-1.5), unchanged."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # nan, inf, -inf: words to a spreadsheet, and -inf a formula
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_read_back(cell: str) -> str:
    """What csv_cell was given, from the cell it wrote (the tests read data.csv with it)."""
    return cell[1:] if cell.startswith("'") and _FORMULA.match(cell[1:]) and not _NUMBER.fullmatch(cell[1:]) else cell


# ----------------------------------------------------------------------------- matplotlib


def _texts(artist: Artist) -> Iterable[Any]:
    from matplotlib.axis import Axis
    from matplotlib.text import Text as MplText

    if isinstance(artist, Axis):
        # Its label is words; its tick labels and offset are numbers the formatters write
        # as math text on purpose (10^3), so they keep it.
        yield artist.label
        return
    if isinstance(artist, MplText):
        yield artist
    for child in artist.get_children():
        yield from _texts(child)


def literal_figure(fig: Figure) -> None:
    """Every title, label, legend entry and annotation of the figure drawn as written: `$`
    does not start math text, TeX is off even if the user's matplotlibrc turns it on, and
    control characters are spelt out (an SVG holding them is not valid XML)."""
    for t in _texts(fig):
        t.set_usetex(False)
        t.set_parse_math(False)
        t.set_text(visible(t.get_text()))
