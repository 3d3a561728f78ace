"""Why a table file failed to read, said as a person can act on it: the line, the row, the fix.

pandas names a byte offset inside its read buffer ("can't decode byte 0xe9 in position 3") or
counts lines its own way ("Expected 11 fields in line 12": a quoted cell over two lines counts as
one, a blank line as one), neither of which a person can find in the file. These functions run
only after a read failed, so reading the file again costs nothing on the common path; pandas is
imported inside them for the same reason. (The pipeline's dataset file has its own reader, at the
bottom of the pipeline's imports, with the same advice.)
"""

from __future__ import annotations

import csv
import io
import lzma
import tarfile
import zipfile
import zlib
from pathlib import Path

__all__ = [
    "ARCHIVE_ERRORS",
    "NO_ZSTANDARD",
    "archive_problem",
    "cut_short",
    "export_not_utf8",
    "not_utf8",
    "ragged_row",
    "short_last_row",
    "utf16_text",
]

UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# What an archive or a compressed file that is not one raises where pandas opens it by its name.
ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError)
REPLACED = "\ufffd"  # what a byte that is not UTF-8 reads as with encoding_errors="replace"
LATIN = "byte 0x{:02x} cannot be UTF-8 (Latin-1 or Windows-1252, perhaps)"
# pandas reads `.zst` only with the `zstandard` package, which the lock does not hold (it raised an
# ImportError traceback); the other endings (.gz, .bz2, .xz, .zip) use the standard library.
COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst", ".tar")  # pandas' inferred codecs say so themselves
NO_ZSTANDARD = (
    "cannot be decompressed: a .zst file needs the zstandard package, which this environment lacks; "
    "decompress it first (zstd -d)"
)


# The first bytes of each compressed format pandas reads, its name and the ending that makes pandas
# decompress it. A gzip export saved as `.tsv` (a browser keeping the server's compressed bytes, a
# rename) was called UTF-16, with advice to convert it with iconv.
MAGIC = (
    (b"\x1f\x8b", "gzip", ".gz"),
    (b"\xfd7zXZ\x00", "xz", ".xz"),
    (b"PK\x03\x04", "zip", ".zip"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
)


def compressed(path: Path, data: bytes) -> str | None:
    """Why `data` (the file's bytes, decompressed by its name) is not text, when it is compressed:
    what to do instead; None when it is not compressed data."""
    found = [(codec, ending) for magic, codec, ending in MAGIC if data.startswith(magic)]
    if data[:3] == b"BZh" and data[4:10] == b"1AY&SY":  # bzip2: "BZh", block size, block magic
        found = [("bzip2", ".bz2")]
    if not found:
        return None
    codec, ending = found[0]
    if path.name.lower().endswith(ending):
        return f"it is {codec}-compressed twice over: decompress it once and read the result"
    if ending == ".zst":
        return f"it is {codec}-compressed: decompress it first (zstd -d)"
    return (
        f"it is {codec}-compressed, but its name does not end in {ending}: rename it "
        f"{path.name}{ending} (then it is read decompressed) or decompress it first"
    )


def archive_problem(path: Path) -> str | None:
    """Why an archive that pandas reads by its name's ending (`.zip`, `.tar`, `.tar.gz`, ...) is not
    one readable file, or None (not such a name, or an archive of one file, which pandas reads).

    pandas reads an archive of exactly one file. Any other stopped the command with a traceback
    (`ValueError: Multiple files found in ZIP file`, `zipfile.BadZipFile: File is not a zip file`):
    two rounds' exports zipped together, a folder zipped with its entry, macOS's Compress (which
    adds `__MACOSX/._NAME`), an archive cut short or a file renamed `.zip`. Checked before any
    read, on the archive's list of entries only.
    """
    from pandas.io.common import infer_compression

    kind = infer_compression(str(path), "infer")
    if kind not in ("zip", "tar"):
        return None
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        else:
            with tarfile.open(path) as archive:
                names = archive.getnames()
    except (*ARCHIVE_ERRORS, OSError, EOFError, zlib.error) as exc:
        why = (str(exc).splitlines() or [""])[0].rstrip(":")  # tarfile's lists each codec it tried
        name = path.name.lower()
        ending = next(end for end in (".tar.gz", ".tar.bz2", ".tar.xz", ".tar", ".zip") if name.endswith(end))
        return (
            f"cannot be read as the {kind} archive its name says it is ({type(exc).__name__}: {why}): "
            f"a download cut short, or a file of another kind named {ending}? Give the file as it was "
            "downloaded, or decompress it first"
        )
    if len(names) == 1:
        return None
    if not names:
        return f"is an empty {kind} archive: it holds no file"
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (
        f"is a {kind} archive of {len(names)} entries ({shown}), and an archive is read only when it "
        "holds one file: extract it and give the file, or each export as an argument of its own"
    )


def convert_to_utf8(source: str, layout: str) -> str:
    """How to make the file readable: a conversion that keeps its separators. Excel has no UTF-8
    tab-separated format of its own ('CSV UTF-8' separates by commas, and 'Text (Tab delimited)'
    writes the system code page)."""
    return f"keep it {layout} and convert it to UTF-8, e.g. with `iconv -f {source} -t UTF-8`"


def decompressed(path: Path) -> bytes:
    """The file's bytes, decompressed by its name's ending as pandas reads it."""
    from pandas.io.common import get_handle

    with get_handle(path, "rb", compression="infer", is_text=False) as handles:
        return handles.handle.read()


def _looks_utf16(data: bytes) -> bool:
    """A byte-order mark, or NUL bytes early on at one parity of position and hardly any at the other,
    as UTF-16 writes mostly Latin text (each letter one byte and a NUL)."""
    if data.startswith(UTF16_BOMS):
        return True
    start = data[:4096]
    even, odd = start[0::2].count(0), start[1::2].count(0)
    return max(even, odd) >= len(start) // 8 and min(even, odd) <= max(even, odd) // 20


def utf16_text(path: Path, layout: str = "tab-separated") -> str | None:
    """Why a file is not UTF-8 when its first bytes are UTF-16 text, or None. Read before the file
    is parsed, on its first 4 KB (decompressed by its name's ending).

    UTF-16 without a byte-order mark (`iconv -t UTF-16LE`, some scripts' writers) decodes as UTF-8:
    each letter is followed (or preceded) by a NUL byte, which UTF-8 allows. pandas then read an
    export of NUL-padded names and said it "lacks column(s): INPUT:images, ..." (big-endian), or,
    its last byte a NUL after the last line end, that it was "cut short" (little-endian), advice
    that sent the user after a download or a killed run.
    """
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handles:
            start = handles.handle.read(4096)
    except (*ARCHIVE_ERRORS, OSError, EOFError, zlib.error, ImportError):
        return None  # the read proper says what is wrong with it
    if not isinstance(start, bytes) or (b"\x00" not in start and not start.startswith(UTF16_BOMS)):
        return None
    if spreadsheet(start) is not None or compressed(path, start) is not None or not _looks_utf16(start):
        return None
    return utf16_message(layout)


def utf16_message(layout: str) -> str:
    """What `not_utf8` and `utf16_text` say of UTF-16 text."""
    return "not UTF-8 text: it looks like UTF-16 (a spreadsheet's 'Unicode Text'): " + convert_to_utf8(
        "UTF-16", layout
    )


def spreadsheet(data: bytes) -> str | None:
    """What spreadsheet workbook `data` is (an Excel or OpenDocument file: binary, not a table of
    text), or None. An export opened in a spreadsheet and saved in its own format was called UTF-16
    (an .xls) or a zip to rename (an .xlsx, whose file is a zip archive of XML)."""
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # the compound file of Office 97-2003
        return "an Excel 97-2003 workbook (.xls)"
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            kind = archive.read("mimetype") if "mimetype" in names else b""
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError):
        return None
    if "xl/workbook.xml" in names:
        return "an Excel workbook (.xlsx)"
    if kind.startswith(b"application/vnd.oasis.opendocument.spreadsheet"):
        return "an OpenDocument spreadsheet (.ods)"
    return None


def _first_non_utf8(data: bytes) -> int | None:
    """The offset of the first byte of `data` that is not UTF-8; None when it looks like UTF-16
    (`_looks_utf16`); -1 when it decodes after all; -2 when it is binary data (NUL bytes, not as
    UTF-16 has them: an image, a PDF), which a UTF-16 conversion cannot help."""
    if _looks_utf16(data):
        return None
    if b"\x00" in data[:4096]:
        return -2
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return -1


def not_utf8(path: Path, what: str, layout: str = "tab-separated") -> str:
    """Why a file that failed to decode is not UTF-8, by line, and how to convert it: the usual
    causes are a spreadsheet's "Unicode Text" (UTF-16) or a save as Latin-1 / Windows-1252."""
    data = decompressed(path)
    workbook = spreadsheet(data)
    if workbook is not None:
        return (
            f"not text: it is {workbook}, not {layout} text: save the sheet as {layout} text in UTF-8, "
            f"or give the {what} as it was written"
        )
    packed = compressed(path, data)
    if packed is not None:
        return f"not text: {packed}"
    start = _first_non_utf8(data)
    if start is None:
        return utf16_message(layout)
    if start == -2:
        return f"not text: it holds binary data (NUL bytes), not {layout} text: is it the {what}?"
    if start < 0:
        return f"not UTF-8 text: the {what} must be UTF-8 text: " + convert_to_utf8("WINDOWS-1252", layout)
    line = data.count(b"\n", 0, start) + 1
    return f"line {line}: {LATIN.format(data[start])}: the {what} must be UTF-8 text: " + convert_to_utf8(
        "WINDOWS-1252", layout
    )


def export_not_utf8(path: Path) -> str:
    """`not_utf8` for an export, naming the row and column of the byte as the reader numbers them
    (blank lines left out, the header not counted)."""
    import numpy as np
    import pandas as pd

    data = decompressed(path)
    start = _first_non_utf8(data)
    if start is None or start < 0 or compressed(path, data) is not None or spreadsheet(data) is not None:
        return "export file is " + not_utf8(path, "export")
    line = data.count(b"\n", 0, start) + 1
    where = f"line {line}"
    try:  # the first cell holding a replaced byte
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, encoding_errors="replace")
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        frame = None
    if frame is not None and any(REPLACED in str(column) for column in frame.columns):
        where = f"the header ({where})"
    elif frame is not None:
        hits = np.column_stack(
            [frame[column].str.contains(REPLACED, regex=False).to_numpy() for column in frame.columns]
        ).nonzero()
        if len(hits[0]):
            where = f"row {hits[0][0] + 1} ({where}), {frame.columns[hits[1][0]]}"
    return (
        f"{where}: {LATIN.format(data[start])}: the export must be UTF-8 text, as Toloka writes it: "
        + convert_to_utf8("WINDOWS-1252", "tab-separated")
    )


def ragged_row(path: Path) -> str | None:
    """The first row with more fields than the header, by row and line, or None if there is none."""
    from pandas.io.common import get_handle

    try:
        with get_handle(path, "rb", compression="infer", is_text=False) as handles:
            text = io.TextIOWrapper(handles.handle, encoding="utf-8-sig", newline="")
            reader = csv.reader(text, delimiter="\t")
            header, row, line = next(reader, []), 0, reader.line_num
            for fields in reader:
                start, line = line + 1, reader.line_num
                if not fields:
                    continue  # a blank line, which pandas skips too
                row += 1
                if len(fields) > len(header) and _names_columns(fields):
                    return (
                        f"row {row} (line {start}) is a second header line, of {len(fields)} fields where "
                        f"the first has {len(header)}: two exports joined into one file (cat day1.tsv "
                        "day2.tsv)? Give each export as an argument of its own: they are clustered "
                        "together, an assignment in both counted once"
                    )
                if len(fields) > len(header):
                    return (
                        f"row {row} (line {start}) has {len(fields)} fields where the header has "
                        f"{len(header)}: a tab inside a cell that is not quoted, or two rows pasted "
                        "into one?"
                    )
    except (csv.Error, OSError, EOFError, UnicodeDecodeError, zlib.error):
        return None
    return None


def _names_columns(fields: list[str]) -> bool:
    """Whether every non-empty field of a row is a Toloka export's column name (`INPUT:images`, ...)."""
    names = [field.strip().removeprefix("\ufeff") for field in fields if field.strip()]
    prefixes = ("INPUT:", "OUTPUT:", "GOLDEN:", "HINT:", "ACCEPT:", "ASSIGNMENT:")
    return bool(names) and all(name.startswith(prefixes) for name in names)


def short_last_row(path: Path, delimiter: str = "\t") -> tuple[int, int, int] | None:
    """(line, fields, the header's fields) of a last row that stops without a line end and short of
    the header's fields, as a file whose writing was stopped leaves it (a run killed while it wrote
    the file); None otherwise. pandas fills the missing cells with nothing, so such a row passed
    with its last cell cut to its first characters (a worker id read as another worker's, an item
    without its cluster).

    Costs one byte's read for a file that ends with a line end, as every written file does; only a
    file that does not is parsed again. (A file cut exactly at a line end cannot be told from a
    shorter one.)
    """
    try:
        with path.open("rb") as raw:
            if raw.seek(0, io.SEEK_END) == 0:
                return None
            raw.seek(-1, io.SEEK_END)
            if raw.read(1) in (b"\n", b"\r"):
                return None
        with path.open(encoding="utf-8-sig", newline="", errors="replace") as text:
            reader = csv.reader(text, delimiter=delimiter)
            header, last, start, line = next(reader, []), [], 0, reader.line_num
            for fields in reader:
                if fields:
                    last, start = fields, line + 1
                line = reader.line_num
    except (csv.Error, OSError):
        return None
    if not last or len(last) >= len(header):
        return None
    return start, len(last), len(header)


def cut_short(path: Path) -> str | None:
    """Why an export reads as cut short (`short_last_row`), or None. A compressed file cut short
    fails in its codec instead."""
    if path.name.lower().endswith(COMPRESSED):
        return None
    short = short_last_row(path)
    if short is None:
        return None
    line, fields, header = short
    return (
        f"export file is cut short: its last line (line {line}) has {fields} of the header's "
        f"{header} fields and no line end, as a file whose writing was stopped leaves it (a run "
        "killed while it wrote it?); its answers would be read wrong. Write it again: a run folder's "
        "export is rewritten, with nothing paid twice, by the same `crowdclust run` command"
    )
