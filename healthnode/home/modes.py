"""File modes of a node home: a home is its user's alone, and the node refuses one that is not.

The node key is kept in clear in the home (keys.py) so that a node restarts unattended; the
emergency share beside it is a secret too, and the chain store holds what every patient did. On
a shared machine the home's modes are then all that keeps them from the other users, so every
directory of a home is 0700 and every file 0600, and `healthnode run` walks the home before it
reads anything else and refuses one where that does not hold (`check_home`), naming the first
path at fault, its mode and the command that fixes it. A home is also refused when something in
it belongs to another user than the node's: that user could change its mode back at any time.

How a home gets these modes:
- every `healthnode` command runs under umask 077 (cli.main), so whatever it creates is private
  from its first byte, LevelDB's tables and logs included (LevelDB takes no mode of its own);
- the functions that make a home or write into one (layout, backup, migrate) run under
  `private_umask()` and make the home directory 0700 even when it existed, so a home made
  through the library by a process of another umask (a test, a tool) is the same;
- the launcher (tools/launcher.py) starts nodes under umask 077 and makes their log 0600.

A symbolic link inside a home is refused: the node would read and write through it wherever it
points, and whoever controls a directory on the way there controls the node's files. The home
path itself may be a link (it is judged by the directory it names); a store on another disk is
mounted at `HOME/data`, not linked. The walk reads one `lstat` per entry, so a home of many
LevelDB tables is checked in milliseconds.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from healthnode.errors import HealthnodeError, HomeError

PRIVATE_UMASK: Final = 0o077
HOME_DIR_MODE: Final = 0o700
HOME_FILE_MODE: Final = 0o600
_OTHERS_BITS: Final = 0o077
_WHO: Final = (("group", 3), ("others", 0))
_VERBS: Final = ((4, "read"), (2, "write"), (1, "execute"))


def access_by_others(mode: int) -> str | None:
    """What `mode` lets the file's group and others do ("group may read; others may read and
    execute"); None when only its owner may use it."""
    granted = []
    for who, shift in _WHO:
        bits = (mode >> shift) & 0o7
        verbs = [verb for bit, verb in _VERBS if bits & bit]
        if verbs:
            granted.append(f"{who} may {' and '.join(verbs)}")
    return "; ".join(granted) or None


def home_entry_problem(path: str, mode: int, owner: int, user: int, home: str) -> str | None:
    """Why the node refuses a home because of one of its entries (`mode` and `owner` as `lstat`
    gives them, `user` the uid that runs the node), or None when the entry is fine."""
    if stat.S_ISLNK(mode):
        return (f"{path} is a symbolic link, and a node home holds none: put what it points to "
                f"in its place (mount another disk at the home's data directory instead)")
    if owner != user:
        return (f"{path} belongs to uid {owner}, not to uid {user} that runs the node: run the "
                f"node as the home's owner, or: chown -R {user} {shlex.quote(home)}")
    others = access_by_others(mode)
    if others is not None:
        return (f"{path} has mode {stat.S_IMODE(mode):04o} ({others}), but a node home must be "
                f"its user's alone: chmod -R go-rwx {shlex.quote(home)}")
    return None


def secret_file_problem(path: str, mode: int) -> str | None:
    """Why a file outside the home that holds a secret of the node (a clear key, a passphrase)
    is refused, or None. Its owner is not judged: a supervisor may hand the node a file it owns
    (systemd's credentials)."""
    others = access_by_others(mode)
    if others is None:
        return None
    return (f"{path} has mode {stat.S_IMODE(mode):04o} ({others}), but a file holding the node "
            f"key or its passphrase must be readable by the node's user alone: "
            f"chmod go-rwx {shlex.quote(path)}")


def check_home(home: Path, user: int | None = None) -> None:
    """HomeError naming the first entry of `home` (the directory first) that others may use,
    that belongs to another user than `user` (default: this process's), or that is a link."""
    user = os.geteuid() if user is None else user
    try:
        top = home.stat()
    except FileNotFoundError:
        raise HomeError(f"{home}: no such node home (make one with `healthnode init`)") from None
    except OSError as error:
        raise HomeError(f"{home}: cannot read the node home ({error.strerror})") from None
    if not stat.S_ISDIR(top.st_mode):
        raise HomeError(f"{home}: not a directory, so not a node home")
    problem = home_entry_problem(str(home), top.st_mode, top.st_uid, user, str(home))
    pending = [home]
    while problem is None and pending:
        problem = _first_problem_in(pending.pop(), pending, user, str(home))
    if problem is not None:
        raise HomeError(problem)


def _first_problem_in(directory: Path, pending: list[Path], user: int, home: str) -> str | None:
    """The first problem among `directory`'s entries; its subdirectories go onto `pending`."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone while we looked (a running node's compaction)
                problem = home_entry_problem(entry.path, info.st_mode, info.st_uid, user, home)
                if problem is not None:
                    return problem
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
    except OSError as error:
        raise HomeError(f"{directory}: cannot read ({error.strerror}); a node home must be "
                        f"readable by the node's user") from None
    return None


def check_secret_file(path: Path, error: type[HealthnodeError] = HomeError) -> None:
    """`error` when others may use the file at `path` (secret_file_problem)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it reports what is wrong, with the reader's own words
    problem = secret_file_problem(str(path), mode)
    if problem is not None:
        raise error(problem)


@contextmanager
def private_umask() -> Iterator[None]:
    """Run the block under umask 077, then restore the umask. The umask is the process's, so
    this is for the functions that make homes: in a node (already 077) it changes nothing, and
    elsewhere it must not overlap another thread's file creation that wants a wider mode."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_dir(path: Path) -> None:
    """Make `path` (and missing parents, under the umask) a directory of mode 0700, tightening
    it when it existed: `init` may be given a directory made with the usual 0755."""
    path.mkdir(mode=HOME_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, HOME_DIR_MODE)


def make_tree_private(root: Path) -> None:
    """Directories 0700 and files 0600 under `root`, links left alone: for a tree copied into a
    home, since a copy keeps the modes of its source (a backup of an older release)."""
    for directory, _subdirectories, files in os.walk(root):  # links not followed
        os.chmod(directory, HOME_DIR_MODE)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, HOME_FILE_MODE)
