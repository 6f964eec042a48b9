"""Feature extractors for the metrics.

``digits`` back-end: :class:`DigitsFeatureNet`, a small CNN for the embedded 8x8 digits, trained in
the project (:func:`train_digit_features`; the committed weights are
``l2c/assets/embedded/features-digits.pt``). Its outputs mirror the Inception taps of the ADM
evaluator at digits scale:

- ``pool``: 128-d, global average of the last ReLU'd conv map (FID, KID, precision/recall);
- ``spatial``: the first 16 channels of the mid-network 4x4 map, flattened in H, W, C order
  (256-d; sFID, as ADM takes the first 7 channels of ``mixed_6/conv``);
- ``logits_unbiased`` = ``pool @ W.T`` (IS, as ADM drops the bias) and ``logits`` (with bias).

Registered with torch-fidelity as ``digits-cnn-<first 8 hex of the weights' sha256>`` so its
statistics caches never mix weights (:func:`register_digits_extractor`).

``inception-adm`` back-end: :class:`AdmInceptionExtractor`, torch-fidelity's
``FeatureExtractorInceptionV3`` (the 2015 TF graph ported) plus the sFID tap ADM uses: the output
of ``Mixed_6d.branch1x1`` (TF ``mixed_6/conv``), channels [:7], NHWC-flattened (17x17x7 = 2023-d).
Its weights file (``pt_inception-2015-12-05``, a plain state dict) is read here with
``weights_only=True`` (:func:`l2c.io.load_torch`) and loaded strictly into the module;
torch-fidelity's own loader, which unpickles whatever it is given, only ever sees an in-memory
empty dict, so no weights file, given or found under ``$TORCH_HOME``, can run code.

Run ``python -m l2c.metrics.features --out PATH`` to (re)train the digits network."""
from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from ..io import L2CError, atomic_path, environment_record, load_torch, sha256_file, write_json

EMBEDDED_DIGITS_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "embedded" / "features-digits.pt"
DIGITS_WEIGHTS_FORMAT = "l2c-digits-features-v1"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
INCEPTION_ADM_NAME = "inception-v3-adm"
MIN_DIGITS_ACCURACY = 0.97


# ----------------------------------------------------------------------------------------------
# digits network


def uint8_nhwc_to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, C] (C = 1, or 3 averaged to grey) -> float [N, 1, H, W] in [-1, 1]
    (the inverse of ``l2c.data.float_to_uint8`` up to its rounding)."""
    if x.dim() != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 NHWC images with 1 or 3 channels, got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    return x / 127.5 - 1


class DigitsFeatureNet(nn.Module):
    """Small CNN for 8x8 grey digits. Input: float NCHW in [-1, 1] or uint8 NHWC (ADM layout).
    ``forward`` returns a dict with ``pool`` [N, 128], ``spatial`` [N, 256], ``logits_unbiased`` and
    ``logits`` [N, 10]."""

    IMAGE_SIZE = 8
    POOL_DIM = 128
    SPATIAL_CHANNELS = 16
    SPATIAL_DIM = SPATIAL_CHANNELS * 4 * 4
    NUM_CLASSES = 10

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, self.POOL_DIM, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.POOL_DIM, self.NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dtype == torch.uint8:
            x = uint8_nhwc_to_float(x)
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != (self.IMAGE_SIZE, self.IMAGE_SIZE):
            raise ValueError(f"DigitsFeatureNet expects [N, 1, 8, 8] images, got shape {tuple(x.shape)}")
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # [N, 64, 4, 4]
        spatial = h[:, :self.SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(h), -1)
        pool = F.relu(self.conv3(h)).mean(dim=(2, 3))  # [N, 128]
        logits_unbiased = self.dropout(pool) @ self.fc.weight.T
        return {"pool": pool, "spatial": spatial, "logits_unbiased": logits_unbiased,
                "logits": logits_unbiased + self.fc.bias}


def load_digits_net(path: str | Path | None = None) -> tuple[DigitsFeatureNet, str]:
    """Load digits weights (default: the embedded file); returns ``(net in eval mode, sha256)``."""
    path = Path(path) if path is not None else EMBEDDED_DIGITS_WEIGHTS
    if not path.exists():
        hint = (" (the embedded weights are missing from this checkout: run "
                "`python -m l2c.metrics.features --out l2c/assets/embedded/features-digits.pt`)"
                if path == EMBEDDED_DIGITS_WEIGHTS else "")
        raise L2CError(f"digits feature weights {path}: file not found{hint}")
    blob = load_torch(path, "digits feature weights")
    if not isinstance(blob, dict) or blob.get("format") != DIGITS_WEIGHTS_FORMAT:
        raise L2CError(f"digits feature weights {path}: not an {DIGITS_WEIGHTS_FORMAT} file "
                       "(train one with `python -m l2c.metrics.features --out PATH`)")
    net = DigitsFeatureNet()
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise L2CError(f"digits feature weights {path}: do not fit DigitsFeatureNet ({str(e).splitlines()[0]})") from e
    net.requires_grad_(False).eval()
    return net, sha256_file(path)


def record_path(weights_path: str | Path) -> Path:
    """The training record beside a weights file: ``x.pt`` -> ``x.json`` (else ``<name>.json``)."""
    weights_path = Path(weights_path)
    return weights_path.with_suffix(".json") if weights_path.suffix == ".pt" else Path(f"{weights_path}.json")


def digits_extractor_name(sha256: str) -> str:
    return f"digits-cnn-{sha256[:8]}"


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats through the uint8 sample-file round trip, so training sees evaluation inputs."""
    return (torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8).float()) / 127.5 - 1


def _random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in each direction (background -1 fills in)."""
    n, _, hgt, wid = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(hgt)[None])[:, :, None]  # [n, H, 1]
    cols = (dx[:, None] + torch.arange(wid)[None])[:, None, :]  # [n, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def digits_accuracy(net: DigitsFeatureNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy on float images (passed through the uint8 round trip first)."""
    was_training = net.training
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((net(_quantise(x[i:i + batch_size]))["logits"].argmax(1) == y[i:i + batch_size]).sum())
    net.train(was_training)
    return correct / len(x)


def train_digit_features(out_path: str | Path, seed: int = 0, epochs: int = 40, batch_size: int = 64,
                         lr: float = 3e-3, weight_decay: float = 1e-4, max_shift: int = 1,
                         command: str | None = None, min_accuracy: float = MIN_DIGITS_ACCURACY) -> dict:
    """Train :class:`DigitsFeatureNet` on ``digits:train`` (random +-1 pixel shifts, AdamW, one-cycle
    schedule: warm-up then cosine decay), check top-1 accuracy on ``digits:reference`` >= ``min_accuracy``, and write the weights
    atomically to ``out_path`` plus the training record ``<out_path>.json`` (returned).

    Deterministic for a seed: runs single-threaded on CPU with its own generator and forked RNG state."""
    from ..data import load_dataset
    out_path = Path(out_path)
    t0 = time.time()
    train, ref = load_dataset("digits:train"), load_dataset("digits:reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitsFeatureNet()
            gen = torch.Generator().manual_seed(seed)
            opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
            steps_per_epoch = (len(train) + batch_size - 1) // batch_size
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                        pct_start=0.15)
            net.train()
            losses = []
            for _ in range(epochs):
                perm = torch.randperm(len(train), generator=gen)
                total = 0.0
                for i in range(0, len(perm), batch_size):
                    idx = perm[i:i + batch_size]
                    x = _quantise(_random_shift(train.x[idx], gen, max_shift)) if max_shift else _quantise(train.x[idx])
                    loss = F.cross_entropy(net(x)["logits"], train.y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                losses.append(total / len(train))
            net.eval()
            acc = digits_accuracy(net, ref.x, ref.y)
            train_acc = digits_accuracy(net, train.x, train.y)
    finally:
        torch.set_num_threads(threads)
    if acc < min_accuracy:
        raise L2CError(f"digits feature network reached only {acc:.2%} accuracy on digits:reference "
                       f"(needs >= {min_accuracy:.0%}); not writing {out_path}. Try more epochs or another seed.")
    # serialised in memory: torch.save names the archive after the file, and the atomic temporary
    # name is random; from a buffer the bytes (hence the sha256 and extractor name) depend only on the weights
    buf = io.BytesIO()
    torch.save({"format": DIGITS_WEIGHTS_FORMAT, "state_dict": net.state_dict(),
                "config": {"pool_dim": net.POOL_DIM, "spatial_dim": net.SPATIAL_DIM, "num_classes": net.NUM_CLASSES,
                           "image_size": net.IMAGE_SIZE}}, buf)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(buf.getvalue())
    sha = sha256_file(out_path)
    record = {
        "what": "digits feature network for the `digits` metrics back-end",
        "weights": out_path.name,
        "sha256": sha,
        "extractor_name": digits_extractor_name(sha),
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "augmentation": f"random shifts of up to {max_shift} pixel(s), uint8 round trip",
        "optimizer": "AdamW", "schedule": "OneCycleLR(pct_start=0.15)", "train_threads": 1,
        "train_split": "digits:train", "n_train": len(train),
        "eval_split": "digits:reference", "n_eval": len(ref),
        "accuracy": acc, "train_accuracy": train_acc, "final_train_loss": losses[-1],
        "parameters": sum(p.numel() for p in net.parameters()),
        "wall_time_s": round(time.time() - t0, 3),
        "command": command if command is not None else " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "environment": environment_record("cpu", "float32"),
    }
    write_json(record_path(out_path), record)
    return record


# ----------------------------------------------------------------------------------------------
# torch-fidelity extractors


class DigitsFidelityExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper of :class:`DigitsFeatureNet`. Input: uint8 NCHW (torch-fidelity's
    convention), 1 or 3 channels, 8x8. The registered name must carry the weights' hash prefix; a
    weights file with another hash is refused (torch-fidelity caches statistics by name)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        self.net, self.sha256 = load_digits_net(feature_extractor_weights_path)
        if not name.endswith(self.sha256[:8]):
            raise L2CError(f"feature extractor {name!r} was given weights with sha256 {self.sha256[:8]}...; "
                           f"register these weights under {digits_extractor_name(self.sha256)!r} "
                           "(l2c.metrics.features.register_digits_extractor)")

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] in (1, 3)):
            raise ValueError(f"expected uint8 [N, 1|3, 8, 8] images, got {getattr(x, 'dtype', type(x))} "
                             f"{tuple(getattr(x, 'shape', ()))}")
        out = self.net(x.permute(0, 2, 3, 1))
        return tuple(out[k].float() for k in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "pool", "spatial", "logits_unbiased", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "pool", "kid": "pool", "prc": "pool"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


def register_digits_extractor(weights_path: str | Path | None = None) -> str:
    """Register the digits extractor with torch-fidelity for these weights (default: embedded);
    returns its name ``digits-cnn-<sha8>``. Idempotent. Use it as
    ``calculate_metrics(..., feature_extractor=name, feature_extractor_weights_path=weights_path)``."""
    path = Path(weights_path) if weights_path is not None else EMBEDDED_DIGITS_WEIGHTS
    if not path.exists():
        load_digits_net(path)  # raises the explanatory L2CError
    name = digits_extractor_name(sha256_file(path))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, DigitsFidelityExtractor)
    return name


def inception_weights_default_path() -> Path:
    """``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's place)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def resolve_inception_weights(path: str | Path | None = None, allow_download: bool = False) -> Path:
    """The Inception weights file: ``path`` if given (must exist), else the torch hub location;
    downloaded there only when ``allow_download``; otherwise an ``L2CError`` saying where to put it."""
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise L2CError(f"Inception weights {path}: file not found (download {INCEPTION_WEIGHTS_URL})")
        return path
    default = inception_weights_default_path()
    if default.exists():
        return default
    if allow_download:
        default.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(default), progress=False)
        return default
    raise L2CError(f"Inception weights not found at {default} and downloading is not allowed: download "
                   f"{INCEPTION_WEIGHTS_URL} and place it at {default} (or set TORCH_HOME, or pass the file's path "
                   "explicitly), or allow the download")


class _StopForward(Exception):
    pass


def load_inception_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The Inception weights of ``path`` as a state dict, read with ``weights_only=True``."""
    sd = load_torch(path, "Inception weights")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items()):
        raise L2CError(f"Inception weights {path}: expected a state dict of tensors (torch-fidelity's "
                       f"{INCEPTION_WEIGHTS_FILE} layout), got {type(sd).__name__}")
    return sd


class AdmInceptionExtractor(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` plus ADM's sFID feature ``spatial``: output of
    ``Mixed_6d.branch1x1`` (= TF ``mixed_6/conv``), channels [:7], permuted to NHWC and flattened
    (2023-d). Input: uint8 NCHW with 3 channels (1 channel is repeated). ``random_weights=True``
    keeps the random initialisation (tests; never for numbers). The weights are kept channels-last
    (NHWC), so the convolutions and poolings run in that layout.

    The weights are read by :func:`load_inception_state_dict` (``weights_only=True``) and loaded
    strictly after torch-fidelity's constructor, which is handed an in-memory empty dict in place of
    a path (it would unpickle a file at that path without restriction, or download)."""

    SPATIAL_CHANNELS = 7
    SPATIAL_DIM = 17 * 17 * 7

    def __init__(self, name, features_list, feature_extractor_weights_path=None, allow_download=False,
                 random_weights=False, **kwargs):
        if random_weights:
            state_dict, path = None, None
        else:
            path = resolve_inception_weights(feature_extractor_weights_path, allow_download)
            state_dict = load_inception_state_dict(path)
        empty = io.BytesIO()
        torch.save({}, empty)  # what torch-fidelity's loader reads: an empty dict we serialised ourselves
        empty.seek(0)
        self.__dict__["_l2c_skip_load"] = True  # read by load_state_dict during super().__init__
        try:  # with weights to load, built on the meta device: no random initialisation to overwrite
            with torch.device("meta") if state_dict is not None else contextlib.nullcontext():
                super().__init__(name, list(features_list), feature_extractor_weights_path=empty, **kwargs)
        finally:
            self.__dict__.pop("_l2c_skip_load", None)
        if state_dict is not None:
            state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
            try:
                self.load_state_dict(state_dict, strict=True, assign=True)
            except RuntimeError as e:
                raise L2CError(f"Inception weights {path}: do not fit torch-fidelity's InceptionV3 "
                               f"({str(e).splitlines()[0][:200]}...); expected the {INCEPTION_WEIGHTS_FILE} "
                               f"layout ({INCEPTION_WEIGHTS_URL})") from None
        self.weights_path = None if path is None else str(path)
        # NHWC convolutions and poolings: 1.4-1.8x faster on CPU (benchmarks/inception_layout.py), the same
        # features up to fp32 reassociation
        self.to(memory_format=torch.channels_last)

    def load_state_dict(self, state_dict, *args, **kwargs):
        if self.__dict__.get("_l2c_skip_load"):
            return None
        return super().load_state_dict(state_dict, *args, **kwargs)

    def forward(self, x):
        if torch.is_tensor(x) and x.dim() == 4 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        requested = list(self.features_list)
        others = [f for f in requested if f != "spatial"]
        captured = {}

        def tap(module, inputs, output):
            captured["spatial"] = output[:, :self.SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(output), -1).float()
            if not others:
                raise _StopForward

        handle = self.Mixed_6d.branch1x1.register_forward_hook(tap) if "spatial" in requested else None
        self.features_list = others
        try:
            outs = super().forward(x)
        except _StopForward:
            outs = ()
        finally:
            self.features_list = requested
            if handle is not None:
                handle.remove()
        feats = dict(zip(others, outs))
        feats.update(captured)
        return tuple(feats[f] for f in requested)

    @staticmethod
    def get_provided_features_list():
        return "64", "192", "768", "2048", "logits_unbiased", "logits", "spatial"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    @staticmethod
    def can_be_compiled():
        return False


def register_inception_adm_extractor() -> str:
    """Register :class:`AdmInceptionExtractor` with torch-fidelity as ``inception-v3-adm``."""
    if INCEPTION_ADM_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(INCEPTION_ADM_NAME, AdmInceptionExtractor)
    return INCEPTION_ADM_NAME


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m l2c.metrics.features",
                                description="Train the digits feature network of the `digits` metrics back-end.")
    p.add_argument("--out", default=str(EMBEDDED_DIGITS_WEIGHTS), help="weights file (record written beside as .json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    try:
        command = " ".join(shlex.quote(a) for a in ["python", "-m", "l2c.metrics.features", *(argv if argv is not None else sys.argv[1:])])
        rec = train_digit_features(args.out, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   command=command)
    except L2CError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({rec['extractor_name']}): reference accuracy {rec['accuracy']:.2%}, "
          f"{rec['wall_time_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
