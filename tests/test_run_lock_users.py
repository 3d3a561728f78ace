"""The run-key lock folder is shared by every user of a machine.

Made with the umask's modes (0755, 0644), the first user's folder refused the second user's lock
files: every run of the second user on a shared machine ended in a PermissionError traceback,
whatever its key. These tests run as whoever runs the suite (root in CI, where modes refuse nothing),
so they check the modes themselves and the error a lock file that cannot be taken gives.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from tasks.params import TolokaTarget
from tasks.run_lock import LOCK_FILE_MODE, LOCK_FOLDER_MODE, RunLockUnusable, lock_path, run_lock

TARGET = TolokaTarget(environment="local", url="http://127.0.0.1:1")


@pytest.fixture()
def machine(monkeypatch, tmp_path: Path) -> Path:
    """This process's temp folder (where the lock folder lives), a new one for the test, no server."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_the_lock_folder_and_files_let_every_user_of_the_machine_take_a_key(machine: Path):
    previous = os.umask(0o022)  # a user's usual umask: it made the folder 0755 and the files 0644
    try:
        with run_lock(TARGET, "shared-key"):
            path = lock_path(TARGET, "shared-key")
            assert path.parent == machine / "crowdclust-locks"
            assert _mode(path.parent) == LOCK_FOLDER_MODE == 0o1777  # as /tmp: add, never remove others'
            assert _mode(path) == LOCK_FILE_MODE == 0o666
            assert path.read_text().startswith(f"pid {os.getpid()}")  # and a lease, beside a Prefect server
    finally:
        os.umask(previous)


def test_a_folder_and_file_of_ours_made_private_by_an_earlier_version_are_opened_up(machine: Path):
    path = lock_path(TARGET, "old-key")
    path.parent.mkdir(mode=0o755)
    path.write_text("pid 1")
    path.chmod(0o644)
    with run_lock(TARGET, "old-key"):
        assert (_mode(path.parent), _mode(path)) == (LOCK_FOLDER_MODE, LOCK_FILE_MODE)


def test_a_lock_that_cannot_be_taken_says_why_and_who_can_mend_it(machine: Path):
    path = lock_path(TARGET, "linked-key")
    path.parent.mkdir()
    path.symlink_to(machine / "elsewhere")  # never followed: the holder writes its pid into the file
    linked = f"{path} is a symbolic link, which the run-key locks never are"
    with pytest.raises(RunLockUnusable, match=linked), run_lock(TARGET, "linked-key"):
        pass
    assert not (machine / "elsewhere").exists()

    (machine / "crowdclust-locks").rename(machine / "moved")
    (machine / "crowdclust-locks").write_text("")  # a file where the folder should be
    not_a_folder = f"{machine / 'crowdclust-locks'} is not a folder; remove it"
    with pytest.raises(RunLockUnusable, match=not_a_folder), run_lock(TARGET, "any-key"):
        pass
    assert _mode(machine / "crowdclust-locks") != LOCK_FOLDER_MODE  # not opened up as if it were

    # Where the folder goes, another user's link to a private folder of ours: never opened up.
    (machine / "crowdclust-locks").unlink()
    private = machine / "private"
    private.mkdir(mode=0o700)
    (machine / "crowdclust-locks").symlink_to(private)
    with pytest.raises(RunLockUnusable, match="crowdclust-locks is a symbolic link"), run_lock(TARGET, "k"):
        pass
    assert _mode(private) == 0o700 and not list(private.iterdir())


def test_a_lock_folder_another_user_keeps_private_names_its_owner_and_the_way_out(machine: Path, monkeypatch):
    """As another user: this process's uid is not the folder's, and `os.open` refuses as the kernel
    refused the second user (root, as in CI, is refused nothing by modes)."""
    folder = machine / "crowdclust-locks"
    folder.mkdir(mode=0o755)
    owner = folder.stat().st_uid

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(RunLockUnusable) as refused, run_lock(TARGET, "any-key"):
        pass
    said = str(refused.value)
    assert _mode(folder) == 0o755  # another user's: left as it is
    expected = f"any-key: Permission denied ({folder} belongs to uid {owner}, mode 755): every user"
    assert expected in said, said
    assert f"`chmod 1777 {folder}` and `chmod 666 {folder}/*.lock`, or set TMPDIR" in said
    assert said.endswith("nothing was opened or paid")
