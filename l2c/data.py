"""Data sets behind one interface: the embedded digits (scikit-learn's bundled 8x8 handwritten
digits), ImageNet-style class folders, pre-encoded latents, and seeded random tensors (benchmarks).

Spec strings: ``digits:train`` / ``digits:reference`` / ``digits:all``, ``folder:PATH`` (one
sub-folder per class, sorted names = label order), ``latents:PATH.npz`` (``latents`` float array
[N, C, H, W] and ``labels`` [N]), ``random:CxHxW:CLASSES[:N]`` (N seeded standard-normal tensors with
uniform labels: for benchmarks that need data of the right shape only). Images are float tensors in [-1, 1], NCHW."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import L2CError

DIGITS_REFERENCE_PER_CLASS = 50  # 500 reference images, the rest (1,297) for training
DIGITS_SPLIT_SEED = 20240601
DIGITS_LEVELS = 17  # grey levels 0..16


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 [N, 8, 8] in 0..16 and labels [N]."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def digits_split() -> dict[str, np.ndarray]:
    """Fixed, disjoint train / reference split: per class, a seeded permutation of that class's
    indices; its first 50 go to the reference split. Returns index arrays (sorted)."""
    _, y = digits_arrays()
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    ref = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        ref.extend(idx[rng.permutation(len(idx))[:DIGITS_REFERENCE_PER_CLASS]].tolist())
    ref = np.sort(np.array(ref))
    train = np.setdiff1d(np.arange(len(y)), ref)
    return {"train": train, "reference": ref}


def digits_to_float(img: np.ndarray) -> np.ndarray:
    """0..16 grey levels -> [-1, 1]."""
    return img.astype(np.float32) / (DIGITS_LEVELS - 1) * 2 - 1


def float_to_uint8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC (the ADM sample-file layout), as DiT's sampler rounds."""
    x = torch.as_tensor(x)
    return torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class TensorData(Dataset):
    """In-memory images/latents and labels."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, name: str):
        self.x, self.y, self.name = x, y, name

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1


class ImageFolderData(Dataset):
    """ImageNet-style class folders, centre-cropped (ADM's crop) and resized to ``image_size``."""

    EXTS = {".png", ".jpg", ".jpeg", ".JPEG", ".bmp", ".webp"}

    def __init__(self, root: str | os.PathLike, image_size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise L2CError(f"image folder {root}: not a directory (expected one sub-folder per class)")
        classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not classes:
            raise L2CError(f"image folder {root}: no class sub-folders found")
        self.items = [(p, c) for c, name in enumerate(classes) for p in sorted((self.root / name).iterdir()) if p.suffix in self.EXTS]
        if not self.items:
            raise L2CError(f"image folder {root}: no images with extensions {sorted(self.EXTS)}")
        self.image_size, self.name, self.classes = image_size, f"folder:{root}", classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                img = center_crop_arr(im.convert("RGB"), self.image_size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated, not an image, absurd size
            raise L2CError(f"image {path}: cannot be decoded ({type(e).__name__}: {str(e)[:160]}); "
                           "remove or replace it") from None
        return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1, label

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(self[int(i)] for i in idx))
        return torch.stack(xs), torch.tensor(ys)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM/DiT preprocessing: box-downsample while the short side is >= 2x, bicubic resize, centre crop."""
    from PIL import Image
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top: top + image_size, left: left + image_size]


def load_dataset(spec: str, image_size: int | None = None) -> TensorData | ImageFolderData:
    """Resolve a data spec (see module docstring)."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        imgs, y = digits_arrays()
        if arg in ("train", "reference"):
            idx = digits_split()[arg]
        elif arg in ("all", ""):
            idx = np.arange(len(y))
        else:
            raise L2CError(f"data spec {spec!r}: digits split must be train, reference or all")
        x = torch.from_numpy(digits_to_float(imgs[idx]))[:, None]  # (N, 1, 8, 8)
        return TensorData(x, torch.from_numpy(y[idx]), spec)
    if kind == "folder":
        if image_size is None:
            raise L2CError(f"data spec {spec!r}: an image folder needs --image-size")
        return ImageFolderData(arg, image_size)
    if kind == "latents":
        path = Path(arg)
        if not path.exists():
            raise L2CError(f"latents file {path}: not found (encode images once with `l2c encode-latents`)")
        try:
            with np.load(path, allow_pickle=False) as f:  # never unpickles: object arrays are refused
                if "latents" not in f or "labels" not in f:
                    raise L2CError(f"latents file {path}: needs arrays 'latents' and 'labels', found {list(f.keys())}")
                x, y = f["latents"], f["labels"]
        except L2CError:
            raise
        except Exception as e:  # truncated / corrupt zip, pickled object arrays, not an .npz
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise L2CError(f"latents file {path}: cannot be read ({type(e).__name__}: {first}); it is corrupt, "
                           "holds Python objects or is not an .npz: encode the images again with `l2c encode-latents`") from None
        if x.dtype.kind not in "fiu" or y.dtype.kind not in "iu" or x.ndim != 4 or y.shape != (len(x),):
            raise L2CError(f"latents file {path}: expected float latents [N, C, H, W] and N integer labels, got "
                           f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
        return TensorData(torch.from_numpy(x).float(), torch.from_numpy(y).long(), spec)
    if kind == "random":
        return _random_data(spec, arg)
    raise L2CError(f"data spec {spec!r}: expected digits:SPLIT, folder:PATH, latents:PATH.npz or random:CxHxW:CLASSES")


def _random_data(spec: str, arg: str) -> TensorData:
    parts = arg.split(":")
    try:
        shape = tuple(int(v) for v in parts[0].split("x"))
        classes = int(parts[1])
        n = int(parts[2]) if len(parts) > 2 else 256
        if len(shape) != 3 or min(shape) < 1 or classes < 1 or n < 1 or len(parts) > 3:
            raise ValueError
    except (ValueError, IndexError):
        raise L2CError(f"data spec {spec!r}: expected random:CxHxW:CLASSES[:N], e.g. random:4x32x32:1000") from None
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(n, *shape, generator=g), torch.randint(classes, (n,), generator=g), spec)


def digits_reference_npz(path: str | os.PathLike) -> None:
    """Write the digits reference split as an ADM-style reference batch (``arr_0`` uint8 NHWC, ``arr_1`` labels)."""
    from .io import atomic_path
    ds = load_dataset("digits:reference")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, arr_0=float_to_uint8(ds.x), arr_1=ds.y.numpy())
