"""ADM-format ``.npz`` batches: ``arr_0`` = uint8 images [N, H, W, C] (C = 1 or 3), optional
``arr_1`` = integer labels [N]; reference batches may also hold ``mu``/``sigma`` (pool statistics)
and ``mu_s``/``sigma_s`` (spatial statistics, NHWC flatten order).

Files are validated from the ``.npy`` headers inside the zip without loading the images, and images
are streamed in batches (a 50,000 x 256 x 256 x 3 file is 9.8 GB). Every problem raises an
``L2CError`` naming the file."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..io import L2CError, atomic_path

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _read_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


class NpzBatch:
    """A validated ADM-format batch file. ``role`` ("samples" / "reference" / ...) only labels errors.

    Attributes: ``path``, ``shape`` (N, H, W, C), ``n``, ``resolution`` (H, W), ``channels``,
    ``keys`` (array names), ``has_labels``."""

    def __init__(self, path: str | os.PathLike, role: str = "samples"):
        self.path, self.role = Path(path), role
        if not self.path.exists():
            raise L2CError(f"{role} file {self.path}: not found")
        if not self.path.is_file():
            raise L2CError(f"{role} file {self.path}: not a regular file")
        if self.path.stat().st_size == 0:
            raise L2CError(f"{role} file {self.path}: empty file (0 bytes); regenerate it")
        try:
            with zipfile.ZipFile(self.path) as z:
                names = z.namelist()
                infos = {n: z.getinfo(n) for n in names}
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise L2CError(f"{role} file {self.path}: not a readable .npz archive ({e}); it is truncated or corrupt: "
                           "regenerate it") from e
        self.keys = sorted(n[:-4] for n in names if n.endswith(".npy"))
        if "arr_0" not in self.keys:
            raise L2CError(f"{role} file {self.path}: no 'arr_0' array (found {self.keys}); an ADM batch stores the "
                           "uint8 NHWC images as arr_0")
        self.headers = {}
        for k in self.keys:
            self.headers[k] = self._header(k, infos[f"{k}.npy"])
        shape, fortran, dtype = self.headers["arr_0"]
        if dtype != np.uint8:
            raise L2CError(f"{role} file {self.path}: arr_0 has dtype {dtype}, expected uint8 images in 0..255 "
                           "(convert with l2c.data.float_to_uint8)")
        if len(shape) != 4:
            raise L2CError(f"{role} file {self.path}: arr_0 has shape {tuple(shape)}, expected 4 dimensions "
                           "[N, H, W, C] (NHWC)")
        if shape[3] not in (1, 3):
            raise L2CError(f"{role} file {self.path}: arr_0 has shape {tuple(shape)}: last axis must be 1 or 3 "
                           "channels (NHWC layout; an NCHW array must be transposed)")
        if shape[1] < 1 or shape[2] < 1:
            raise L2CError(f"{role} file {self.path}: arr_0 has empty images, shape {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.n, self.resolution, self.channels = self.shape[0], self.shape[1:3], self.shape[3]
        self.has_labels = "arr_1" in self.keys
        if self.has_labels:
            lshape, _, ldtype = self.headers["arr_1"]
            if len(lshape) != 1 or lshape[0] != self.n or ldtype.kind not in "iu":
                raise L2CError(f"{role} file {self.path}: arr_1 (labels) has shape {tuple(lshape)} and dtype {ldtype}; "
                               f"expected {self.n} integers, one per image")

    def _header(self, key: str, info: zipfile.ZipInfo):
        try:
            with zipfile.ZipFile(self.path) as z, z.open(info) as f:
                shape, fortran, dtype = _read_header(f)
        except Exception as e:  # corrupt member: numpy raises ValueError, zip raises BadZipFile / zlib.error
            raise L2CError(f"{self.role} file {self.path}: array {key!r} cannot be read ({type(e).__name__}: {e}); "
                           "the file is corrupt: regenerate it") from e
        if dtype.hasobject:
            raise L2CError(f"{self.role} file {self.path}: array {key!r} holds Python objects; refusing to unpickle")
        expected = int(np.prod(shape)) * dtype.itemsize
        if info.compress_type == zipfile.ZIP_STORED and info.file_size < expected:
            raise L2CError(f"{self.role} file {self.path}: array {key!r} is truncated ({info.file_size} bytes stored, "
                           f"{expected} needed for shape {tuple(shape)})")
        return tuple(shape), fortran, dtype

    def _read_array(self, key: str) -> np.ndarray:
        try:
            with zipfile.ZipFile(self.path) as z, z.open(f"{key}.npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except Exception as e:
            raise L2CError(f"{self.role} file {self.path}: array {key!r} cannot be read ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt: regenerate it") from e

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Stream ``arr_0`` in [b, H, W, C] uint8 batches, in file order."""
        shape, fortran, dtype = self.headers["arr_0"]
        if fortran:  # not written by numpy's savez of a C array; read it whole
            arr = self.images()
            for i in range(0, self.n, batch_size):
                yield arr[i:i + batch_size]
            return
        per = int(np.prod(self.shape[1:]))
        try:
            with zipfile.ZipFile(self.path) as z, z.open("arr_0.npy") as f:
                _read_header(f)
                for i in range(0, self.n, batch_size):
                    b = min(batch_size, self.n - i)
                    want = b * per
                    buf = f.read(want)
                    if len(buf) != want:
                        raise ValueError(f"ran out of data at image {i} (got {len(buf)} of {want} bytes)")
                    yield np.frombuffer(buf, dtype=np.uint8).reshape(b, *self.shape[1:])
        except L2CError:
            raise
        except Exception as e:
            raise L2CError(f"{self.role} file {self.path}: arr_0 cannot be read ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt: regenerate it") from e

    def images(self) -> np.ndarray:
        """All of ``arr_0`` in memory (uint8 NHWC)."""
        return np.ascontiguousarray(self._read_array("arr_0"))

    def labels(self) -> np.ndarray | None:
        return self._read_array("arr_1").astype(np.int64) if self.has_labels else None

    def statistics(self) -> dict[str, np.ndarray]:
        """Whichever of ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` the file holds, as float64."""
        out = {k: self._read_array(k).astype(np.float64) for k in STAT_KEYS if k in self.keys}
        for m, s in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if (m in out) != (s in out):
                raise L2CError(f"{self.role} file {self.path}: holds {m if m in out else s} without "
                               f"{s if m in out else m}; reference statistics come in pairs")
            if m in out and (out[m].ndim != 1 or out[s].shape != (len(out[m]), len(out[m]))):
                raise L2CError(f"{self.role} file {self.path}: {m} shape {out[m].shape} and {s} shape "
                               f"{out[s].shape} do not match (expected [D] and [D, D])")
        return out


def open_npz(path: str | os.PathLike, role: str = "samples", require_nonempty: bool = True) -> NpzBatch:
    """Open and validate an ADM batch; ``require_nonempty`` refuses a file with 0 images."""
    b = NpzBatch(path, role)
    if require_nonempty and b.n == 0:
        raise L2CError(f"{role} file {b.path}: arr_0 holds 0 images")
    return b


def check_compatible(samples: NpzBatch, reference: NpzBatch) -> None:
    """Samples and reference must share resolution and channel count."""
    if samples.resolution != reference.resolution:
        raise L2CError(f"samples file {samples.path} has {samples.resolution[0]}x{samples.resolution[1]} images but "
                       f"reference file {reference.path} has {reference.resolution[0]}x{reference.resolution[1]}: "
                       "evaluate against the reference batch of the same resolution")
    if samples.channels != reference.channels:
        raise L2CError(f"samples file {samples.path} has {samples.channels} channel(s) but reference file "
                       f"{reference.path} has {reference.channels}")


def write_samples_npz(path: str | os.PathLike, images_uint8_nhwc: np.ndarray, labels: np.ndarray | None = None,
                      **extra: np.ndarray) -> None:
    """Write an ADM batch atomically (uncompressed, ``arr_0`` images, ``arr_1`` labels when given;
    ``extra`` arrays such as ``mu``/``sigma`` for reference batches)."""
    imgs = np.asarray(images_uint8_nhwc)
    if imgs.dtype != np.uint8:
        raise L2CError(f"write_samples_npz {path}: images have dtype {imgs.dtype}, expected uint8")
    if imgs.ndim != 4 or imgs.shape[3] not in (1, 3):
        raise L2CError(f"write_samples_npz {path}: images have shape {imgs.shape}, expected [N, H, W, C] with C in (1, 3)")
    arrays = {"arr_0": np.ascontiguousarray(imgs)}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(imgs),) or labels.dtype.kind not in "iu":
            raise L2CError(f"write_samples_npz {path}: labels have shape {labels.shape} / dtype {labels.dtype}, "
                           f"expected {len(imgs)} integers")
        arrays["arr_1"] = labels.astype(np.int64)
    for k, v in extra.items():
        arrays[k] = np.asarray(v)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
