"""Files replaced whole: a kill at any moment leaves the old file or the new one, never half of one.

A plain `path.write_text(...)` or `frame.to_csv(path)` truncates the file first and writes it
after: a run killed in between (kill -9, the OOM killer, a power cut, a laptop lid) left a file
cut short, which the next run or command read as it was (a `run_key.txt` left empty sent the next
run's exports to a second folder; a `clusters.csv` cut at a line end was evaluated, and paid for,
with the images it still had).

Here the new content goes to a temporary file in the same folder (`.<name>.<random>.tmp`), is
flushed and fsynced, given its mode, and renamed over the file (`os.replace`, atomic on POSIX);
the folder is fsynced too, so the rename outlives a power cut. A kill leaves at most the temporary
file beside the old one. The temporary file is created with the file's mode (`mode`, e.g. 0600 for
a secret; else the old file's, else what `open` would give it), so a private file is never readable
by others, not even for a moment.

- `write_atomic(path, data)`: text or bytes;
- `replaced(path)`: for a writer that wants a path (pandas' `to_csv`, matplotlib's `savefig`);
- `create_exclusive(path, data)`: the same, only when `path` does not exist yet (else
  `FileExistsError`), for a file two processes may race to create.

Standard library only: the bottom of the project (any layer may use it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

NEW_FILE_MODE = 0o666  # what `open(path, "w")` asks for; the process umask takes its share


def _temporary(path: Path, mode: int | None) -> Path:
    """A new, empty temporary file beside `path`, with the mode `path` should have."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = None
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # 0600 until the content is there: the mode comes last, by fchmod (the umask is not in
            # the way then, and a secret never has a mode wider than its own).
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is not None else NEW_FILE_MODE
            )
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return temporary


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (not every file system lets a folder be fsynced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _link(temporary: Path, target: Path) -> None:
    """Give the written file its name unless the name is taken (`FileExistsError`).

    A hard link does both in one step. Where the file system has none (some network and FUSE
    ones), the name is taken first with `O_EXCL` and then replaced: a kill in between leaves an
    empty file there, as before.
    """
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(temporary, target)


@contextlib.contextmanager
def replaced(
    path: str | os.PathLike[str], mode: int | None = None, exclusive: bool = False
) -> Iterator[Path]:
    """A temporary path to write the new content of `path` to; on a clean exit it replaces `path`.

    `mode`: the file's permission bits (default: those of the file it replaces, else a new file's).
    `exclusive`: only create `path`, never replace it (`FileExistsError` when it exists).
    On an error nothing changes: the temporary file is removed and `path` is as it was.
    """
    target = Path(path)
    try:
        temporary = _temporary(target, mode)
    except OSError as error:
        raise _named(error, target) from None
    try:
        yield temporary
        with open(temporary, "rb+") as written:  # the writer may have closed (or reopened) it
            os.fsync(written.fileno())
        if exclusive:
            _link(temporary, target)
            temporary.unlink(missing_ok=True)  # the file lives on under its name
        else:
            os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename in (None, str(temporary), temporary):
            raise _named(error, target) from None
        raise
    _sync_folder(target.parent)


def _named(error: OSError, target: Path) -> OSError:
    """`error` naming the file being written, not its temporary file nor nothing (a full disk's
    `[Errno 28] No space left on device` names no file): a read-only run folder ended a run with
    `Permission denied: 'runs/x/.attempts.json.71d367f8.tmp'`, a name the user never sees."""
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror, str(target))  # the errno's subclass (PermissionError, ...)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one step; see `replaced`."""
    target = Path(path)
    with replaced(target, mode) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return target


def create_exclusive(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> Path:
    """Create `path` holding `data`, whole, unless it exists (`FileExistsError`); see `replaced`."""
    target = Path(path)
    with replaced(target, mode, exclusive=True) as temporary:
        temporary.write_bytes(data.encode() if isinstance(data, str) else data)
    return target
