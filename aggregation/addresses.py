"""What a web server sees of an image URL: two spellings of one picture told apart from two pictures.

Pure Python (urllib only), so that the pipeline's dataset check and `crowdclust aggregate` share it
without importing pandas or numba for it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

__all__ = ["image_address", "respellings"]


def image_address(url: str) -> str:
    """What a web server sees of an image URL: two rows whose URLs differ only in the scheme
    (http/https), the host's case, a default port, percent-encoding or a `#fragment` (never sent)
    name one picture, which the crowd would be paid to see and group as two."""
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = "" if parts.port in (None, default) else f":{parts.port}"
    query = f"?{unquote(parts.query)}" if parts.query else ""
    return f"{(parts.hostname or '').lower()}{port}{unquote(parts.path)}{query}"


def respellings(items: Iterable[str]) -> list[tuple[str, ...]]:
    """The images among `items` that appear under several spellings of their URL: one sorted tuple
    of spellings each, in order of their first.

    An export holds the URLs as the task's input file had them; two rounds' files saved differently
    (`http://` for `https://`, `%20` for a space) made every image two items, each clustered on its
    own share of the answers. A name `urlsplit` cannot parse (not a URL) is its own address.

    Names are compared in Unicode's composed form too (NFC): an accented letter is one character
    in one file and a letter and a combining accent in another (file names read on a Mac), and
    every image with an accent in its name was two items without a word. Not a server's view (a
    server may serve one and not the other), so it is here and not in `image_address`.

    >>> respellings(["https://h/a%20b.png", "http://h/a b.png", "https://h/c.png"])
    [('http://h/a b.png', 'https://h/a%20b.png')]
    >>> respellings(["https://h/Caf\u00e9.png", "https://h/Cafe\u0301.png"])
    [('https://h/Cafe\u0301.png', 'https://h/Caf\u00e9.png')]
    """
    by_address: dict[str, list[str]] = {}
    for item in sorted(set(items)):
        try:
            address = image_address(unicodedata.normalize("NFC", item))
        except ValueError:
            address = unicodedata.normalize("NFC", item)
        by_address.setdefault(address, []).append(item)
    return sorted(tuple(group) for group in by_address.values() if len(group) > 1)
