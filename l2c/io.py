"""File helpers shared by every stage: atomic writes, safe checkpoint loading, content hashes, locks,
run metadata.

Conventions every stage follows:
  * outputs are written to a temporary file beside the target and renamed over it
    (:func:`atomic_path`), with the permissions a plain ``open()`` would give under the user's umask
    (``0o666 & ~umask``: group-readable under the usual 022 / 002), never 0600;
  * torch files are read with ``weights_only=True`` only (:func:`load_torch`): a file that pickles
    anything but tensors and plain containers is refused, so no weights file can run code;
  * resumable work records the sha256 of every piece it wrote and trusts a piece again only when its
    bytes still have that hash (:func:`sha256_file`);
  * two runs into one output coordinate through ``flock`` locks beside it (:func:`locked`)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import tempfile
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch loads on first use: the workflow's planning imports this module without it
    import torch

log = logging.getLogger("l2c.io")


class L2CError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.
    The result gets mode ``0o666 & ~umask`` (``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys, trailing newline)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise L2CError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise L2CError(f"{path}: not valid JSON ({e}); delete it and regenerate it") from e


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically."""
    import torch  # noqa: PLC0415
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True`` (argparse.Namespace allowed, as the official
    router files pickle one); a missing or corrupt file raises an ``L2CError`` naming it, and so does a
    file that pickles other Python objects (loading it could run code from it: it is refused)."""
    import torch  # noqa: PLC0415
    path = Path(path)
    if not path.exists():
        raise L2CError(f"{what} {path}: file not found")
    if not path.is_file():
        raise L2CError(f"{what} {path}: not a regular file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        import pickle
        if isinstance(e, pickle.UnpicklingError) and "GLOBAL" in str(e):  # a pickled class or function
            raise L2CError(
                f"{what} {path}: refused: it pickles Python objects other than tensors and plain containers "
                f"({_first_line(e)}); loading it could run code from the file. Use a file that holds only "
                "tensors (a state dict), or a .safetensors file") from None
        raise L2CError(
            f"{what} {path}: cannot be read as a PyTorch file ({type(e).__name__}: {_first_line(e)}); "
            "it is corrupt, truncated or not a checkpoint: delete it and regenerate or re-download it"
        ) from e


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # torch's weights_only refusal puts the offending global on a later line
    hit = next((ln for ln in lines if "GLOBAL" in ln or ln.startswith("Unsupported")), None)
    return (hit or (lines[0] if lines else type(e).__name__))[:200]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def git_revision() -> str:
    """The git revision of the checkout (with '-dirty' when there are uncommitted changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    """This CPU as results name it: its model (``/proc/cpuinfo`` where there is one, else the
    architecture) and the vector instruction set torch's kernels use on it (``AVX512``, ``AVX2``,
    ...), which sets its matrix-multiply rate: two machines of one architecture can differ twofold."""
    import torch  # noqa: PLC0415
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def environment_record(device: str | torch.device | None = None, dtype: str | None = None) -> dict:
    """Versions, device, dtype and revision: recorded in every result file."""
    import torch  # noqa: PLC0415
    rec = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_revision": git_revision(),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "num_threads": torch.get_num_threads(),
    }
    if device is not None:
        device = torch.device(device)
        rec["device"] = str(device)
        rec["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    if dtype is not None:
        rec["dtype"] = dtype
    return rec


def write_npz(path: str | os.PathLike, **arrays: Any) -> str:
    """Write an uncompressed ``.npz`` atomically and reproducibly: fixed zip timestamps, so the same
    arrays always give the same bytes (``np.savez`` stamps the current time into the archive).
    Returns the sha256 of the bytes written (for the record that lets a resumed run verify them)."""
    import zipfile

    import numpy as np
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
        digest = sha256_file(tmp)
    return digest


def read_npz_verified(path: str | os.PathLike, sha256: str, what: str = "file") -> dict | None:
    """The arrays of an ``.npz`` whose bytes have the recorded ``sha256`` (read once, hashed, then
    parsed without unpickling), or ``None`` when the bytes differ (the caller recomputes the file)."""
    import io

    import numpy as np
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # the recorded hash matched, so the file was written broken
        raise L2CError(f"{what} {path}: matches its recorded sha256 but cannot be read ({type(e).__name__}: "
                       f"{_first_line(e)}); delete it and rerun") from e


# ----------------------------------------------------------------------------------------------
# locks: two runs into one output coordinate instead of racing


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: ``OUT.lock`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _lock_holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "unknown process"
    except OSError:
        return "unknown process"


def _try_acquire(path: Path, blocking: bool) -> int | None:
    """An fd holding ``flock(LOCK_EX)`` on ``path`` (created if needed), or None if busy and not
    ``blocking``. Retries when the file was removed by its previous holder between open and lock."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)  # an output in a folder not made yet
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning("%s: this file system does not support file locks (%s); concurrent runs into this "
                            "output are not coordinated", path, e.strerror)
                return fd
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:
            st, fst = os.stat(path), os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # we locked a file its holder had already unlinked: lock the current one


@contextlib.contextmanager
def locked(path: str | os.PathLike, blocking: bool = True, what: str = "output") -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` for the block; yields True when held. With
    ``blocking=False`` a lock held by another run yields False at once; with ``blocking=True`` the
    call logs who holds it and waits. The lock dies with its process (a killed run never leaves a
    stale lock); the file is removed on release. Needs a file system with working ``flock``
    (local disks; NFS v4 on Linux emulates it with byte-range locks)."""
    path = Path(path)
    fd = _try_acquire(path, blocking=False)
    if fd is None and blocking:
        log.warning("%s %s is locked by another run (%s); waiting for it to finish", what, path, _lock_holder(path))
        fd = _try_acquire(path, blocking=True)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


# may change between resumptions (random draws come from a CPU generator, so the device may change too)
OPERATIONAL_KEYS = frozenset({"threads", "ckpt_every", "log_every", "device", "stack_students"})  # results do not depend on them


def check_resume(saved: dict, current: dict, path: Path, what: str) -> None:
    """Refuse to resume a run whose saved config differs from ``current`` in a key that matters."""
    diff = sorted(k for k in set(saved) | set(current) if k not in OPERATIONAL_KEYS and saved.get(k) != current.get(k))
    if diff:
        raise L2CError(f"{what} {path} was made with a different config (differs in {diff}); "
                       "delete it to start afresh or resume with the same config")


@contextlib.contextmanager
def exclusive_run(out: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold ``OUT.lock`` (beside ``out``) for the block, or refuse at once with an ``L2CError`` naming
    the run that holds it: for outputs two runs cannot share (a training folder)."""
    lock = lock_path(out)
    with locked(lock, blocking=False) as held:
        if not held:
            raise L2CError(f"{what} {out} is being written by another run ({_lock_holder(lock)}, lock {lock}); "
                           "wait for it to finish (then rerun to resume) or choose another output")
        yield


def truncate_jsonl_log(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of a JSON-lines training log up to ``step``, the checkpoint a run resumes
    from (0: no checkpoint, the log restarts empty), so the resumed run appends no duplicate lines.
    A line that is not a JSON record with an integer ``step`` (the torn last line of a killed run) is
    dropped with a warning naming it. Rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return
    text = path.read_text(errors="replace")
    kept, dropped = [], []
    for i, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            s = rec["step"]
            if not isinstance(s, int) or isinstance(s, bool):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped.append(i)
            continue
        if s <= step:
            kept.append(ln)
    if dropped:
        log.warning("%s: dropping %d unreadable line(s) (line %s; a run killed while writing leaves a torn line)",
                    path, len(dropped), ", ".join(map(str, dropped[:5])))
    new = "".join(ln + "\n" for ln in kept)
    if new != text:
        with atomic_path(path) as tmp:
            tmp.write_text(new)
