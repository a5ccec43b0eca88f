"""Files written atomically (of graphformer, only ``errors`` is imported here).

Every file graphformer writes goes to a temporary name in the same folder
(``.<name>.<random>.tmp``), is flushed to disk, and is then renamed over the
target, so a crash or a kill leaves the old file or the new one, never half of
one. The temporary file gets the mode ``open(path, "w")`` would give: an
existing file's own, else ``0o666`` minus the umask, so every new file of a
run has the same mode; a symbolic link is written through, as ``open``
writes (the file it names is replaced, the link kept). A file-system error
(a folder that is not there or not writable, a failed sync) is a
:class:`~graphformer.errors.DataError` naming the file, not its temporary.
A kill between creating and renaming leaves a stale temporary;
:func:`remove_stale_temporaries` clears them on the next run. A full disk
(``ENOSPC``, ``EDQUOT``; also inside the ``RuntimeError`` that ``torch.save``
wraps it in) is a :class:`~graphformer.errors.DataError` naming the file,
with nothing partial left behind.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, List, Optional, TypeVar, Union

from .errors import DataError

PathLike = Union[str, Path]
T = TypeVar("T")
#: the errno values of a full disk or an exhausted quota
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(err: BaseException) -> Optional[OSError]:
    """The ``OSError`` of a full disk behind ``err`` (itself, or what it was
    raised from or during: ``torch.save`` wraps the writer's ``OSError`` in a
    ``RuntimeError``), else ``None``."""
    seen = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            return current
        current = current.__cause__ or current.__context__
    return None


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing (``mode`` ``"w"`` or
    ``"wb"``); on a clean exit it is flushed, synced and renamed over
    ``path``; on an exception it is removed and ``path`` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes with mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    tmp = temporary_name(target)
    try:
        fd = _or_cannot_write(path, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                              0o666)                                      # umask applies
        try:
            with contextlib.suppress(FileNotFoundError):     # an existing file keeps its mode
                os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
            with os.fdopen(fd, mode, newline=newline) if mode == "w" else \
                    os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                _or_cannot_write(path, os.fsync, fh.fileno())
            _or_cannot_write(path, os.replace, tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except Exception as err:  # noqa: BLE001 - a full disk becomes one clear message
        full = _no_space(err)
        if full is None:
            raise
        raise DataError(f"no space left on device while writing {path} ({full.strerror or full}); "
                        f"nothing partial was written and any earlier {path.name} is kept: free "
                        f"some space and run again (a training run that has written its "
                        f"last.pt continues with --resume)") from err


def _or_cannot_write(path: Path, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, a file-system call writing ``path``; its error is a
    DataError naming ``path`` (the call names the temporary, or nothing),
    but a full disk's, which :func:`atomic_write` words itself."""
    try:
        return call(*args)
    except OSError as err:
        if _no_space(err) is not None:
            raise
        raise DataError(f"cannot write {path}: {err.strerror or err}") from err


def write_text(path: PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> List[Path]:
    """Remove the temporaries :func:`atomic_write` left for the files ``names``
    in ``folder`` (``.<name>.<random>.tmp``, after a kill); other files are
    left alone. Returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        for stale in folder.glob(glob.escape(f".{name}.") + "*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                removed.append(stale)
    return removed
