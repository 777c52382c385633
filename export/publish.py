"""Where an export lands. `model_lock` makes the model's folder and holds an exclusive lock on
it, so that exports of one model run one at a time (each picks a free version number and
publishes it before the next looks); `stage` checks the destination and makes a staging folder
beside the version's folder before any work; `carry` puts a file of the version it replaces
(the checkpoint being exported) into it; `publish` flushes the finished folder to the disk
and moves it into place in one rename (over a version it replaces, one atomic exchange), with
Ctrl-C held off meanwhile; `discard` removes the staging folder and any folders made for it.
The repository never holds half a version, even after a power cut, and a failed export leaves
nothing behind."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import fcntl
import logging
import os
import pathlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator

from ganserve.export.errors import ExportError
from ganserve.train.checkpoint import sync_folder

LOGGER = logging.getLogger(__name__)

# Times to make and lock a model folder that other exports keep removing (each made it, failed
# and removed it again, empty) before giving up.
RETRIES = 20

# Signals that stop an export: Ctrl-C, and what `kill`, `timeout` and CI cancellation send.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclasses.dataclass(frozen=True)
class Staging:
    """A staging folder for one version, and the folders made to hold it."""

    folder: pathlib.Path  # <repository>/<name>/.export-XXXX, renamed to `final` by `publish`
    final: pathlib.Path  # <repository>/<name>/<version>
    created: tuple[pathlib.Path, ...]  # folders made by `stage`, outermost first
    force: bool  # replace a version folder that exists


def _kind(path: pathlib.Path) -> str:
    return "symbolic link" if path.is_symlink() else "file"


def _make_folders(folder: pathlib.Path, target: pathlib.Path) -> list[pathlib.Path]:
    """Make ``folder`` and its missing parents; the ones made, outermost first. ExportError
    names the file in the way, or the OS's reason. A folder another export makes meanwhile is
    used; one it removes meanwhile (its export failed) is made again."""
    created: list[pathlib.Path] = []
    for _ in range(RETRIES):
        try:
            for p in [*reversed(folder.parents), folder]:
                if p.is_dir():
                    continue
                if os.path.lexists(p):
                    raise ExportError(f"cannot write {target}: {p} is a {_kind(p)}, not a folder")
                try:
                    p.mkdir()
                except FileExistsError:  # another export made it since is_dir() looked
                    if not p.is_dir():
                        raise ExportError(
                            f"cannot write {target}: {p} is a {_kind(p)}, not a folder"
                        ) from None
                    continue
                created.append(p)
            return created
        except FileNotFoundError as exc:
            if not p.parent.is_dir():  # a parent another export had made was removed again
                continue
            _remove_empty(created)  # a file system that makes no folders there (/proc)
            raise ExportError(
                f"cannot write {target}: cannot create folder {p} ({exc.strerror or exc})"
            ) from None
        except OSError as exc:
            _remove_empty(created)
            raise ExportError(
                f"cannot write {target}: cannot create folder {p} ({exc.strerror or exc})"
            ) from None
        except ExportError:
            _remove_empty(created)
            raise
    _remove_empty(created)
    raise ExportError(f"cannot write {target}: {folder.parent} keeps disappearing")


def _remove_empty(folders: list[pathlib.Path] | tuple[pathlib.Path, ...]) -> None:
    for p in reversed(folders):
        with contextlib.suppress(OSError):  # not empty (someone else's files): leave it
            p.rmdir()


@contextlib.contextmanager
def model_lock(
    repository: pathlib.Path, name: str, target: pathlib.Path | None = None
) -> Iterator[tuple[pathlib.Path, ...]]:
    """Make ``<repository>/<name>`` (and its missing parents) and hold an exclusive lock on it
    for the block: another export of the same model waits here (saying so), rather than pick
    the same version number or swap a version out under this one. Yields the folders made,
    outermost first. A file system without locks (some network ones) is used unlocked, with a
    warning. ``target``: what the messages say cannot be written (the version, when known)."""
    folder = repository / name
    target = target or folder
    created: list[pathlib.Path] = []  # by every attempt, outermost first
    for attempt in range(RETRIES):
        # Another export of the model that made the folder and failed removes it again: make
        # it again, and lock the one there now. The parents an earlier attempt made are still
        # this export's to remove.
        try:
            made = _make_folders(folder, target)
        except ExportError:
            _remove_empty(created)
            raise
        created += [p for p in made if p not in created]
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if attempt < RETRIES - 1:
                continue
            _remove_empty(created)
            raise ExportError(f"cannot write {target}: {folder} keeps disappearing") from None
        except OSError as exc:
            _remove_empty(created)
            raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
        try:
            _lock(fd, folder)
            # A folder removed (by an export that made it and failed) while this one waited
            # is not the repository's any more: lock the one there now.
            if os.path.samestat(os.fstat(fd), os.stat(folder)):
                break
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    else:
        _remove_empty(created)
        raise ExportError(f"cannot write {target}: {folder} keeps disappearing")
    try:
        yield tuple(created)
    finally:
        _remove_empty(created)  # a failed first export leaves no empty model folder
        os.close(fd)  # releases the lock


def _lock(fd: int, folder: pathlib.Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        LOGGER.warning("another export of %s is running; waiting for it to finish", folder)
    except OSError as exc:
        LOGGER.warning(
            "cannot lock %s (%s): exports of this model running at once could collide",
            folder,
            exc.strerror or exc,
        )
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def stage(repository: pathlib.Path, name: str, version: int, *, force: bool) -> Staging:
    """Check that version ``version`` of ``name`` can be written, and make its staging folder.
    ExportError says what is in the way."""
    final = repository / name / str(version)
    if os.path.lexists(final):
        if final.is_symlink() or not final.is_dir():
            raise ExportError(
                f"cannot write {final}: it is a {_kind(final)}, not a version folder; "
                "move it away or pass another --version"
            )
        if not force:
            raise ExportError(f"{final} already exists; pass --version N for a new one, or --force")
    created = _make_folders(final.parent, final)
    try:
        # Beside the version: on its file system (a model folder may be a mount or a link of
        # its own), so publishing is a rename. Servers skip folders that are not numbers.
        folder = pathlib.Path(tempfile.mkdtemp(dir=final.parent, prefix=".export-"))
    except OSError as exc:
        _remove_empty(created)
        raise ExportError(f"cannot write {final}: {final.parent}: {exc.strerror or exc}") from None
    return Staging(folder=folder, final=final, created=tuple(created), force=force)


def inside_version(staging: Staging, path: pathlib.Path) -> pathlib.PurePath | None:
    """Where ``path`` lies in the version folder that ``staging`` replaces (--force), relative
    to it; None when it lies elsewhere or nothing is replaced. Its folders are resolved, its
    own name not: a link in the version folder lies there, wherever it points."""
    if not staging.force or not staging.final.is_dir():
        return None
    try:
        return (path.parent.resolve() / path.name).relative_to(staging.final.resolve())
    except ValueError:
        return None


def carry(staging: Staging, relative: pathlib.PurePath) -> None:
    """Put the replaced version's file ``relative`` into the staging folder under the same
    path, so that publishing keeps it: a hard link (no copy of the bytes; the old version's
    removal leaves it) where the file system makes one, else a copy. It and its folders reach
    the disk before `publish` renames the staging folder."""
    source, target = staging.final / relative, staging.folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target, follow_symlinks=False)
    if not target.is_symlink():
        with target.open("rb") as f:
            os.fsync(f.fileno())
    for folder in relative.parents[:-1]:  # `publish` flushes the staging folder itself
        sync_folder(staging.folder / folder)


def discard(staging: Staging) -> None:
    """Remove the staging folder and the folders `stage` made (when still empty)."""
    shutil.rmtree(staging.folder, ignore_errors=True)
    _remove_empty(staging.created)


def catch_stop_signals(handler: Callable[[int, object], object]) -> dict[int, object]:
    """Install ``handler`` for each of `STOP_SIGNALS` that is not ignored (SIGHUP under nohup
    stays ignored: a detached export must outlive its terminal). Returns what to give
    `restore_stop_signals`."""
    return _swap({s: handler for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN})


def restore_stop_signals(previous: dict[int, object]) -> None:
    def default(s: int) -> object:  # None: set outside Python; put back the interpreter's own
        return signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL

    _swap({s: default(s) if h is None else h for s, h in previous.items()})


def _swap(handlers: dict[int, object]) -> dict[int, object]:
    """Set several signal handlers with those signals blocked meanwhile, so that none that
    arrives finds some handlers swapped and others not (one that does arrives after, to the
    new handler). All or none: an exception half-way puts back what was swapped."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, handlers)
    previous: dict[int, object] = {}
    try:
        for s, handler in handlers.items():
            previous[s] = signal.signal(s, handler)  # type: ignore[arg-type]
    except BaseException:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    return previous


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C and the other `STOP_SIGNALS` off for the block: publishing is a few
    renames, and a signal in their middle would leave the version half replaced. The first
    that arrives is delivered again once the block has ended, to the handler that was there
    before. Only the main thread receives signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = catch_stop_signals(lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        restore_stop_signals(previous)
        if received:
            LOGGER.warning(
                "%s arrived while publishing; the version was published whole",
                signal.Signals(received[0]).name,
            )
            signal.raise_signal(received[0])


def publish(staging: Staging) -> tuple[str, ...]:
    """Move the staging folder to its final name, once its files are on the disk; with
    --force, exchange it with the old version in one step (a server reloading meanwhile sees
    one or the other, never neither) and remove the old one after. Returns the files of the
    old version that the new one does not have (paths relative to the version folder, sorted),
    which its removal took. Call inside `interrupts_held`."""
    final = staging.final
    staging.folder.chmod(0o755)  # mkdtemp makes 0700; servers may run as another user
    try:
        # Files, then their folder: after a power cut the rename could otherwise survive
        # with the files' contents lost, and a server would refuse the newest version.
        sync_folder(staging.folder, files=True)
        replaced = os.path.lexists(final)
        if replaced:
            # With --force, `stage` saw a version folder here; otherwise (or if it is no longer
            # a folder) something else wrote it after `stage` looked.
            if not staging.force or final.is_symlink() or not final.is_dir():
                raise FileExistsError(errno.EEXIST, "another export wrote it meanwhile")
            _replace(staging.folder, final)
        else:
            os.rename(staging.folder, final)
    except OSError as exc:
        discard(staging)
        raise ExportError(f"cannot write {final}: {exc.strerror or exc}") from None
    # Published: what fails from here on is not a failed export.
    try:
        sync_folder(final.parent)
    except OSError as exc:
        LOGGER.warning(
            "published %s, but could not flush its folder to the disk (%s): a power cut now "
            "could undo the rename",
            final,
            exc.strerror or exc,
        )
    if not replaced:
        return ()
    # After the exchange the staging name holds the old version.
    dropped = tuple(sorted(_files(staging.folder) - _files(final)))
    shutil.rmtree(staging.folder, ignore_errors=True)
    if os.path.lexists(staging.folder):
        LOGGER.warning("replaced version left at %s: remove it by hand", staging.folder)
    return dropped


def _files(folder: pathlib.Path) -> set[str]:
    """The files (and links) under ``folder``, as paths relative to it."""
    found = set()
    for root, folders, files in os.walk(folder):
        for name in files + [d for d in folders if os.path.islink(os.path.join(root, d))]:
            found.add(pathlib.Path(root, name).relative_to(folder).as_posix())
    return found


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _replace(new: pathlib.Path, final: pathlib.Path) -> None:
    """Put ``new`` in the place of the folder ``final``, leaving the old one at ``new``'s name:
    one atomic exchange (Linux's renameat2) where the platform has it, else two renames, the
    old version put back if the second fails."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        done = renameat2(
            _AT_FDCWD, os.fsencode(new), _AT_FDCWD, os.fsencode(final), _RENAME_EXCHANGE
        )
        if done == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # a real failure
            raise OSError(code, os.strerror(code))
    aside = new.with_name(new.name + ".replaced")
    os.rename(final, aside)
    try:
        os.rename(new, final)
    except OSError:
        os.rename(aside, final)  # put the old version back
        raise
    os.rename(aside, new)
