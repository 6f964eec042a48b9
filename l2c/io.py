"""File helpers shared by every stage: atomic writes, safe checkpoint loading, run metadata."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


class L2CError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (sorted keys, trailing newline)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True`` (argparse.Namespace allowed, as the official
    router files pickle one); a missing or corrupt file raises an ``L2CError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise L2CError(f"{what} {path}: file not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise L2CError(
            f"{what} {path}: cannot be read as a PyTorch file ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it is corrupt, truncated or not a checkpoint: delete it and regenerate or re-download it"
        ) from e


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


def environment_record(device: str | torch.device | None = None, dtype: str | None = None) -> dict:
    """Versions, device, dtype and revision: recorded in every result file."""
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
        rec["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    if dtype is not None:
        rec["dtype"] = dtype
    return rec


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Write an uncompressed ``.npz`` atomically and reproducibly: fixed zip timestamps, so the same
    arrays always give the same bytes (``np.savez`` stamps the current time into the archive)."""
    import zipfile

    import numpy as np
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


# may change between resumptions (random draws come from a CPU generator, so the device may change too)
OPERATIONAL_KEYS = frozenset({"threads", "ckpt_every", "log_every", "device"})


def check_resume(saved: dict, current: dict, path: Path, what: str) -> None:
    """Refuse to resume a run whose saved config differs from ``current`` in a key that matters."""
    diff = sorted(k for k in set(saved) | set(current) if k not in OPERATIONAL_KEYS and saved.get(k) != current.get(k))
    if diff:
        raise L2CError(f"{what} {path} was made with a different config (differs in {diff}); "
                       "delete it to start afresh or resume with the same config")


def truncate_jsonl_log(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines log written after ``step`` (the checkpoint a run resumes from)."""
    if path.exists():
        kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in kept))
