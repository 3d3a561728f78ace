"""How the dataset TSV file is read: its text, its lines, its columns; one reading for every reader.

Two readers need the same view of the file: the dataset check (`tasks.dataset`) and the run key
(`PipelineParams.default_run_key`), which follows the images only. When they read it differently
(the byte-order mark Excel writes before a UTF-8 header, the seed's `INPUT:image` header) the key
fell back to a hash of the file's bytes, so a corrected truth label made a new key and the whole
job was paid again. Both read the file here. It sits at the bottom with the parameters, which
import it: it imports nothing of the project.

Line numbers are the file's own, as `grep -n` counts them (header = line 1), whatever blank lines,
CRLF endings or byte-order mark the file has, so a person can go to the line a message names.
"""

from __future__ import annotations

import csv
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_COLUMNS = ("image", "INPUT:image")  # the first one the header has is the image column
TRUTH_COLUMN = "class"
UTF8_BOM = b"\xef\xbb\xbf"
SEPARATORS = ((",", "comma"), (";", "semicolon"))  # what a spreadsheet's CSV separates by


class DatasetError(ValueError):
    """The dataset file cannot be used; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class Row:
    """One record of the file: the line it starts on (1-based, as `grep -n` counts) and its fields."""

    line: int
    fields: list[str]


@dataclass(frozen=True)
class Table:
    """The file's header and records (blank lines left out), and which columns are read.

    `image` and `truth` index the header; `truth` is None when the file has no truth column.
    """

    path: Path
    header: list[str]
    header_line: int
    rows: list[Row]
    image: int
    truth: int | None
    misshapen: tuple[tuple[int, str], ...] = ()  # (line, what is wrong): rows left out of `rows`

    def images(self) -> list[str]:
        """The image of every row, stripped, in file order: what the crowd sees of the file."""
        return [row.fields[self.image].strip() for row in self.rows]


UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def iconv_command(source: str, path: Path) -> str:
    """The shell command that writes `path`, read as `source`, as UTF-8 beside it (`<path>.utf8`)."""
    return f"`iconv -f {source} -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(path) + '.utf8')}`"


def save_as_utf8(source: str, path: Path) -> str:
    """How to make the file readable: a conversion that keeps the tabs. Excel has no UTF-8
    tab-separated format of its own ('CSV UTF-8' separates by commas, which the check refuses next,
    and 'Text (Tab delimited)' writes the system code page)."""
    return f"keep it tab-separated and convert it to UTF-8, e.g. {iconv_command(source, path)}"


# The first bytes of files a dataset is sometimes mistaken for: a workbook (.xlsx and .ods are zip
# archives, .xls an OLE2 file) or a compressed TSV. Each read as "not UTF-8, Latin-1 perhaps", with
# advice to convert it with iconv, which cannot help. (`crowdclust aggregate`'s reader of exports
# has its own list, `aggregation.unreadable.MAGIC`: this module imports nothing of the project.)
SAVE_AS_TEXT = (
    "save the sheet as tab-separated UTF-8 text (Excel: 'Text (Tab delimited)', then convert it to "
    "UTF-8; LibreOffice: 'Text CSV' with a tab separator and UTF-8)"
)
NOT_TEXT = (
    (b"PK\x03\x04", "a zip archive (an .xlsx or .ods workbook is one)", SAVE_AS_TEXT),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel workbook (.xls)", SAVE_AS_TEXT),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
)


def read_text(path: Path) -> str:
    """The file's text, without the byte-order mark a UTF-8 file may start with.

    Refuses text that is not UTF-8 with a `DatasetError` naming the first line that is not: pandas
    raised a bare `UnicodeDecodeError` on Excel's "Unicode text" export (UTF-16) or a Latin-1 file.
    """
    data = path.read_bytes()
    for magic, what, fix in NOT_TEXT:
        if data.startswith(magic):
            raise DatasetError(f"{path}: not text: it is {what}, and a dataset is tab-separated text: {fix}")
    if data.startswith(UTF16_BOMS):
        raise DatasetError(
            f"{path}: not UTF-8 text: it starts with a UTF-16 byte-order mark, so it looks like UTF-16 "
            f"(Excel's 'Unicode Text'): {save_as_utf8('UTF-16', path)}"
        )
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be UTF-8; "
            f"Latin-1 or Windows-1252, perhaps): {save_as_utf8('WINDOWS-1252', path)}"
        ) from None
    if "\x00" in text:  # UTF-16 without its byte-order mark: every other byte of ASCII text is NUL
        line = text[: text.index("\x00")].count("\n") + 1
        raise DatasetError(
            f"{path}, line {line}: not UTF-8 text: it holds NUL bytes, so it looks like UTF-16 "
            f"(Excel's 'Unicode Text'): {save_as_utf8('UTF-16LE', path)}"
        )
    return text


def _records(path: Path, text: str) -> Iterator[Row]:
    """Every non-blank record of `text` with the line it starts on.

    Lines end at `\\n` only, as `grep -n` counts them; a `\\r` before it (CRLF) is part of the ending.
    A record whose fields are all blank is a blank line to a reader of the file, and is skipped.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's last line ends with a newline
    reader = csv.reader((line + "\n" for line in lines), delimiter="\t")
    done = 0  # lines the reader has consumed
    try:
        for fields in reader:
            start, done = done + 1, reader.line_num
            if done > start and any("\t" in field and "\n" in field for field in fields):
                raise DatasetError(_stray_quote(path, start, done))
            if any(field.strip() for field in fields):
                yield Row(start, fields)
    except csv.Error as exc:
        if "new-line character" in str(exc):  # a CR alone: csv's advice (universal-newline mode) fits no user
            raise DatasetError(_lone_cr(path, reader.line_num, lines)) from None
        raise DatasetError(f"{path}, line {reader.line_num}: cannot read as TSV: {exc}") from None


def _lone_cr(path: Path, line: int, lines: list[str]) -> str:
    """Why a carriage return that ends no CRLF is refused: the file's lines end in CR alone (the
    'Tab Delimited Text' of Excel for Mac up to 2011 and other classic Mac tools), or a cell holds
    one. csv's own words ("do you need to open the file in universal-newline mode?") said neither."""
    quoted, out = shlex.quote(str(path)), shlex.quote(str(path) + ".lf")
    if len(lines) <= 1:
        return (
            f"{path}: its lines end in a carriage return alone (CR, as old Mac spreadsheets save "
            f"text), not a line feed (LF or CRLF): save it with Windows or Unix line ends, e.g. "
            f"`tr '\\r' '\\n' < {quoted} > {out}`"
        )
    return (
        f"{path}, line {line}: a carriage return (CR) inside the line, where only a line end (LF or "
        f"CRLF) may have one: remove it, e.g. `tr -d '\\r' < {quoted} > {out}`"
    )


def _stray_quote(path: Path, start: int, end: int) -> str:
    """Why a record that runs over several lines, with tabs inside one cell, is refused.

    A cell that starts with `"` is read up to the next `"`, line ends and tabs included: a stray
    quote (a class typed `"boots`) closed by another on a later row made those rows one record of
    the header's length, and the images between the two quotes left the job without a word.
    """
    return (
        f'{path}, line {start}: a cell starts with a quote (") that nothing closes on its line, so '
        f"lines {start}-{end} read as one row (the cell runs on to the next quote or the end of the "
        'file): remove the stray quote, or write each " inside a quoted cell twice ("")'
    )


def _column(path: Path, line: int, header: list[str], names: tuple[str, ...]) -> int | None:
    """Index of the first of `names` the header has, else of the one column that matches one of them
    regardless of case (`Class` for `class`); None when none does."""
    for name in names:
        if name in header:
            return header.index(name)
    wanted = {name.lower() for name in names}
    found = [at for at, name in enumerate(header) if name.lower() in wanted]
    if len(found) > 1:
        listed = ", ".join(f"`{header[at]}`" for at in found)
        raise DatasetError(
            f"{path}, line {line}: columns {listed} could each be `{names[0]}`: rename the one to read "
            f"`{names[0]}` and the others to anything else"
        )
    return found[0] if found else None


def read_table(path: Path | str, misshapen_ok: bool = False) -> Table:
    """The file's header and records, with the image column and the truth column found.

    Column names are matched as written, else regardless of case when only one column matches (a
    spreadsheet's `Class` header is the truth a user meant to give, not "no truth"). A row with
    another number of fields than the header raises, or with `misshapen_ok` is left out of `rows`
    and listed in `misshapen`, for a caller that names it beside the other rows' problems.
    """
    path = Path(path)
    try:
        text = read_text(path)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from None
    records = _records(path, text)
    first = next(records, None)
    if first is None:
        raise DatasetError(f"{path}: empty file: line 1 must be a header with an `image` column")
    header = [name.strip() for name in first.fields]
    image = _column(path, first.line, header, IMAGE_COLUMNS)
    if image is None:
        found = ", ".join(header)
        # One column named `image,class,...`, or `image;class;...` (a spreadsheet's CSV where the
        # decimal mark is a comma, as in most of Europe: its list separator is a semicolon)
        separator = next((name for char, name in SEPARATORS if char in found), None)
        if len(header) == 1 and separator:
            raise DatasetError(
                f"{path}: line {first.line} has no tab: the dataset must be tab-separated (TSV), and "
                f"this header reads as {separator}-separated: {found[:80]}"
            )
        raise DatasetError(f"{path}: needs an `image` column (found: {found or 'none'})")
    truth = _column(path, first.line, header, (TRUTH_COLUMN,))
    rows, misshapen = [], []
    named = _named_width(header)
    for row in records:
        if len(row.fields) == len(header):
            rows.append(row)
            continue
        if _only_empty_beyond(row.fields, named):
            rows.append(Row(row.line, _fitted(row.fields, len(header))))
            continue
        what = (
            f"{_fields(len(row.fields))} where the header (line {first.line}) has {len(header)} "
            f"({', '.join(header)}): "
            + (
                "a tab too many, or a tab inside a cell?"
                if len(row.fields) > len(header)
                else "a tab missing, or spaces where a tab should be?"
            )
        )
        if not misshapen_ok:
            raise DatasetError(f"{path}, line {row.line}: {what}")
        misshapen.append((row.line, what))
    return Table(path, header, first.line, rows, image, truth, tuple(misshapen))


def _named_width(header: list[str]) -> int:
    """The header's columns up to its last named one (a header may end in tabs, as rows may)."""
    width = len(header)
    while width > 1 and not header[width - 1]:
        width -= 1
    return width


def _only_empty_beyond(fields: list[str], named: int) -> bool:
    """True when a row's fields beyond the header's named columns are all empty, and it has them all.

    A spreadsheet saved as text writes a tab and an empty cell for every column of its used range
    that the header does not name (a column once filled, then cleared), so every row of such a file
    has one field more than the header. That cell holds nothing to read or to lose: a run that
    refused every row of the file for it ("2 fields where the header has 1 ... and 81 more")
    asked for an edit that changes nothing. A non-empty cell there is still refused.
    """
    return len(fields) >= named and not any(field.strip() for field in fields[named:])


def _fitted(fields: list[str], width: int) -> list[str]:
    """`fields` cut or padded with empty cells to the header's width."""
    return fields[:width] + [""] * (width - len(fields))


def _fields(count: int) -> str:
    return f"{count} field" if count == 1 else f"{count} fields"


def image_column(path: Path | str) -> list[str] | None:
    """The images of the dataset as the dataset check reads them (None: the file cannot be read)."""
    try:
        return read_table(path).images()
    except DatasetError:
        return None
