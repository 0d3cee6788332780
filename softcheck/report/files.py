"""Report files: written whole or not at all, with the user's umask, parent folders created.

Every write goes to a temporary file in the report's own folder, renamed over the report
(``os.replace``) once complete: a reader sees the old file or the new one, never half of
one, and an error or a signal mid-write leaves no temporary file behind.  Several reports
of one run are written together (:func:`write_all`): every one is complete on disk before
the first is renamed into place.
"""

from __future__ import annotations

import os
import tempfile


def umask_mode(base: int = 0o666) -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: ``base`` less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def write_atomic(path: str, text: str) -> None:
    """Write via a temporary file in the same folder, then rename: never a half-written file.
    Missing parent folders are created; the file gets the mode the user's umask gives (the
    temporary file's own mode, 0600, would hide the report from a CI step run as another
    user), or keeps the mode of the file it replaces."""
    write_all({path: text})


def write_all(texts: dict[str, str]) -> None:
    """Write each ``path: text`` as :func:`write_atomic` does, all or none: every temporary
    file is written before the first rename; on any error (a full disk, a file size limit)
    none is renamed and every temporary file is removed."""
    staged: list[tuple[str, str]] = []
    try:
        for path, text in texts.items():
            staged.append((_stage(path, text), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise


def _stage(path: str, text: str) -> str:
    """``text`` written to a new temporary file beside ``path``, with ``path``'s mode."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = umask_mode()
    fd, tmp = tempfile.mkstemp(prefix=".softcheck-", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:             # renamed already, or never made
        pass


def writable(path: str) -> str | None:
    """Why ``path`` cannot be written (its folder may be created), or None."""
    if os.path.isdir(path):
        return "it is a folder"
    d = os.path.dirname(os.path.abspath(path)) or "."
    while not os.path.exists(d):          # the nearest existing ancestor must take a folder
        d = os.path.dirname(d)
    if not os.path.isdir(d):
        return f"{d} is not a folder"
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "permission denied"
    try:                                  # access() says yes for root and for /proc: try it
        fd, probe = tempfile.mkstemp(prefix=".softcheck-probe-", dir=d)
    except OSError as e:
        return f"{d} does not take new files ({e.strerror or e})"
    os.close(fd)
    os.unlink(probe)
    return None
