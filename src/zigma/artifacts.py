"""What zigma writes to disk and reads back: file names, durable atomic writes, the run-folder
lock, checkpoint discovery through ``LATEST``, and bounded readers for files a user hands us.

Training and sampling both go through this module, so a run folder is found, checked and
written one way. Everything here treats its input as hostile: sizes are bounded before reading,
a pointer may not leave its folder, and every failure is an ``ArtifactError`` naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zigma.config import short_repr

# A model folder (``save_pretrained``) and the run folder around it.
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRANSPORT_NAME = "transport.json"
# A latent model's autoencoder spec, beside transport.json in an exported model folder.
AUTOENCODER_NAME = "autoencoder.json"
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
LOCK_NAME = ".lock"
# A training checkpoint keeps its model's config.json under this name beside the run config.
CKPT_MODEL_CONFIG = "model.json"
CKPT_EMA_WEIGHTS = "ema.safetensors"

STEP_NAME = re.compile(r"^step_(\d{7,})$")
# Temp names of our own writers; anything matching is an orphan once the run lock is ours.
_TEMP_NAME = re.compile(r"^\.(tmp|old)-step_\d{7,}(\.\d+)?$|^\..+\.[0-9a-z_]+\.tmp$")
_POINTER_MAX_BYTES = 64
JSON_MAX_BYTES = 16 << 20  # configs and state files are kilobytes; RNG states a few hundred KB


class ArtifactError(ValueError):
    """A file or folder zigma reads is missing, malformed, too large or not zigma's."""


# ---------------------------------------------------------------- durable writes


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file or a folder's entries to disk (folders: where the OS allows it)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) * os.path.isdir(path)
    try:
        fd = os.open(path, flags)
    except OSError:
        if os.path.isdir(path):  # some systems cannot open folders; nothing more to do there
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):  # fs without fsync
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write ``path`` through ``write(temp_path)`` so that a crash or power loss leaves either
    the old file or the complete new one.

    The temp file sits in the same folder under a name unique to this process; it is flushed
    to disk, given the mode the umask allows (not mkstemp's 0600), renamed over ``path``, and
    the folder is flushed so the rename itself survives a power loss.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of our writers' temp files or folders."""
    return bool(_TEMP_NAME.match(name))


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files and folders our writers leave when killed mid-write.

    Only call this while holding the folder's ``RunLock``: then no other process is writing.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not _TEMP_NAME.match(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: what failed, on which path, and free space when full."""
    what = e.strerror or str(e)
    where = f" {e.filename}" if e.filename else ""
    if e.filename2:
        where += f" -> {e.filename2}"
    text = f"{what}:{where}" if where else what
    if e.errno == errno.ENOSPC and e.filename:
        text += f" ({free_space_text(e.filename)})"
    return " ".join(text.split())


def free_space_text(path: str | os.PathLike) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free on that disk"


# ---------------------------------------------------------------- output checks


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Raise ``ArtifactError`` unless a file can be written at ``path``: it is absent or a
    regular file (never a folder or a device), and its folder exists or can be created.

    Commands call this before their work, so a bad output path costs nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{what} {path} is a folder, not a file")
    if (path.exists() or path.is_symlink()) and not path.is_file():
        raise ArtifactError(f"{what} {path} exists and is not a regular file")
    _check_creatable(path.parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Raise ``ArtifactError`` unless ``path`` is a writable folder or can be created as one."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        raise ArtifactError(f"{what} {path} is a file, not a folder")
    _check_creatable(path, what, path)
    return path


def _check_creatable(folder: Path, what: str, target: Path) -> None:
    """``folder`` exists as a writable folder, or its nearest existing ancestor is one."""
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ArtifactError(f"{what} {target}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ArtifactError(f"{what} {target}: folder {probe} is not writable")


# ---------------------------------------------------------------- the run lock


class RunLockedError(ArtifactError):
    """Another process holds the run folder's lock."""


class RunLock:
    """An exclusive lock on a run folder for the life of a run (``flock`` on ``DIR/.lock``).

    The kernel drops the lock when the process dies however it dies, so a killed run never
    leaves a stale lock; the file's text (pid, host) only helps the message. On systems
    without ``fcntl`` the lock is a no-op.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise RunLockedError(
                    f"run folder {self.folder} is in use by {holder}; wait for that run to end "
                    "or choose another --out"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- bounded readers


def read_text(path: str | os.PathLike, what: str, max_bytes: int = JSON_MAX_BYTES) -> str:
    """The UTF-8 text of ``path``, refusing files larger than ``max_bytes`` before reading."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ArtifactError(
                f"{what} {path} is {size} bytes, more than the {max_bytes} a {what} may have"
            )
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise ArtifactError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise ArtifactError(f"{what} {path} is a folder, not a file") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def read_json(path: str | os.PathLike, what: str, max_bytes: int = JSON_MAX_BYTES) -> Any:
    """Parse the JSON file ``path`` (bounded in size and nesting); errors name the file."""
    text = read_text(path, what, max_bytes)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{what} {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ArtifactError(f"{what} {path} is nested too deeply to be a zigma file") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {path} must hold a JSON object, not a {type(data).__name__}")
    return data


# ---------------------------------------------------------------- checkpoint discovery


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def is_checkpoint_dir(path: Path) -> bool:
    """A real (not symlinked) folder named like ours: what listing and pruning may touch."""
    return bool(STEP_NAME.match(path.name)) and path.is_dir() and not path.is_symlink()


def list_checkpoints(ckpt_root: str | os.PathLike) -> list[Path]:
    """Checkpoint folders under ``ckpt_root``, oldest first (temp and symlinked ones skipped)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_checkpoint_dir(p)]
    return sorted(found, key=lambda p: int(STEP_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``run_dir/checkpoints/LATEST`` names, or None without a LATEST.

    LATEST must hold one ``step_XXXXXXX`` name of a real folder beside it: anything else (a
    path, ``..``, a symlink out, undecodable bytes) is refused, so neither training nor
    sampling ever follows it out of the run folder.

    Raises:
        ArtifactError: LATEST exists but is unreadable or names no checkpoint of this run.
    """
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if pointer.is_symlink() or not pointer.is_file():
        raise ArtifactError(f"{pointer} is not a regular file")
    with pointer.open("rb") as f:
        raw = f.read(_POINTER_MAX_BYTES + 1)
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ArtifactError(f"{pointer} holds undecodable bytes, not a checkpoint name") from None
    if len(raw) > _POINTER_MAX_BYTES or not STEP_NAME.match(name):
        raise ArtifactError(
            f"{pointer} must name a checkpoint folder like step_0001000, got {short_repr(name)}"
        )
    ckpt = root / name
    if not is_checkpoint_dir(ckpt):
        raise ArtifactError(f"{pointer} names {name}, which is not a checkpoint folder in {root}")
    return ckpt


def write_latest(ckpt_root: str | os.PathLike, name: str) -> None:
    if not STEP_NAME.match(name):
        raise ValueError(f"not a checkpoint name: {name!r}")
    write_text_atomic(Path(ckpt_root) / LATEST, name + "\n")
