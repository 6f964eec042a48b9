"""The two rules of the command line, checked before any work starts.

**Bad input**: every value is checked against one table of ranges (:data:`RULES`, shared by flags and
config-file keys), devices must exist, files must be there; a violation is an ``L2CError`` whose one
line names the flag, key or file, the value and what is expected.

**Outputs**: a command declares the paths it reads and the paths it writes (an output with its
derived files: the ``.json`` record beside ``OUT.npz``, the ``OUT.npz.shards/`` folder, the files of
an output folder); :func:`check_paths` refuses any output that is an input (same real path after
symlinks and ``./``, or the same file through a hard link), lies inside a folder the command
deletes or owns, collides with another output, or cannot be written (a folder where a file goes,
a file where a folder goes)."""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from .io import L2CError


def json_object(flag: str, text: str | None) -> dict:
    """A flag's JSON object of names to values (``--model-kwargs``, ``--method-params``); empty for none."""
    import json
    if not text:
        return {}
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise L2CError(f"{flag} {text!r}: not valid JSON ({e}); e.g. '{{\"interval\": 3}}'") from None
    if not isinstance(d, dict):
        raise L2CError(f"{flag} {text!r}: expected a JSON object of names to values")
    return d

# -- value ranges ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An integer or real value in a range (``lo``/``hi`` inclusive unless marked open)."""

    kind: type  # int or float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def expected(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        lo, hi = (None if v is None else (str(int(v)) if self.kind is int else f"{v:g}") for v in (self.lo, self.hi))
        if lo is not None and hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        if lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {lo}"
        if hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {hi}"
        return what

    def coerce(self, name: str, value: Any) -> int | float:
        """The value as an int / float, or an ``L2CError`` naming ``name``, the value and the range."""
        bad = L2CError(f"{name} {value!r}: expected {self.expected()}")
        if isinstance(value, bool):
            raise bad
        if self.kind is int:
            if not isinstance(value, int):
                raise bad
            v: int | float = value
        else:
            if isinstance(value, str):  # YAML reads 1e-3 as a string
                try:
                    value = float(value)
                except ValueError:
                    raise bad from None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad
            v = float(value)
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            raise bad
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            raise bad
        return v


POSITIVE = Rule(int, 1)
COUNT = Rule(int, 0)
SEED = Rule(int, 0, 2 ** 63 - 1)
UNIT = Rule(float, 0, 1)

# one table for every command and config file: argument dest / config key -> range
RULES: dict[str, Rule] = {
    "nfe": Rule(int, 1, 1000),  # the 1000 training timesteps of the DiT / U-ViT diffusions
    **{k: POSITIVE for k in ("steps", "batch_size", "batch", "num_samples", "shard_size", "threads", "repeats",
                             "iters", "image_size", "in_channels", "num_classes", "depth", "interval", "limit",
                             "n_main", "n_cache", "ckpt_every", "log_every", "cfg_channels", "encoder_blocks")},
    **{k: COUNT for k in ("warmup", "budget", "shallow", "deep_from", "warmup_steps", "stack_students")},
    "seed": SEED, "seeds": SEED,
    "theta": UNIT, "thetas": UNIT, "reuse_fraction": UNIT, "ste_threshold": UNIT, "lr_decay_to": UNIT,
    "label_dropout": Rule(float, 0, 1, hi_open=True), "ema_decay": Rule(float, 0, 1, hi_open=True),
    "lr": Rule(float, 0, lo_open=True), "clamp": Rule(float, 0, lo_open=True),
    "lam": Rule(float, 0), "weight_decay": Rule(float, 0), "grad_clip": Rule(float, 0), "cfg_scale": Rule(float, 0),
}


def check_value(name: str, key: str, value: Any) -> Any:
    """``value`` checked against ``RULES[key]`` (lists element by element); None and unruled keys pass."""
    rule = RULES.get(key)
    if rule is None or value is None:
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise L2CError(f"{name}: empty list; expected one or more of {rule.expected()}")
        return [rule.coerce(name, v) for v in value]
    return rule.coerce(name, value)


def check_values(values: Mapping[str, Any], name_of: Callable[[str], str]) -> dict[str, Any]:
    """Every ruled key of ``values`` checked (and coerced: '1e-3' -> 0.001); ``name_of(key)`` names it."""
    return {k: check_value(name_of(k), k, v) for k, v in values.items()}


def check_nfe(name: str, nfe: int, sampler: str) -> None:
    """NFE >= 1; DPM-Solver-2 makes two evaluations per step, so its NFE is even."""
    check_value(name, "nfe", nfe)
    if sampler == "dpm2" and nfe % 2:
        raise L2CError(f"{name} {nfe}: DPM-Solver-2 makes 2 model evaluations per step, so NFE must be even "
                       f"(use {max(nfe - 1, 2)} or {nfe + 1})")


def check_device(name: str, device: str) -> None:
    """A device that exists here: cpu, cuda[:N] with a visible GPU N, or mps where available."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise L2CError(f"{name} {device!r}: not a device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise L2CError(f"{name} {device!r}: no CUDA GPU is visible on this machine; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise L2CError(f"{name} {device!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise L2CError(f"{name} {device!r}: MPS is not available on this machine; use --device cpu")
        return
    raise L2CError(f"{name} {device!r}: unsupported device type; expected cpu, cuda or cuda:N")


# -- inputs and outputs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """One path a command reads or writes. ``kind``: ``file``; ``folder`` (written into: only its
    named files are outputs); ``tree`` (owned or deleted as a whole: nothing inside may be an input);
    ``any`` (an input that may be a file, a folder or a name, e.g. a VAE id)."""

    label: str
    path: Path
    kind: str = "file"


def inp(label: str, path: str | os.PathLike | None, kind: str = "file") -> list[Place]:
    return [] if path is None or str(path) == "" else [Place(label, Path(path), kind)]


def data_input(label: str, spec: str | None) -> list[Place]:
    """The path inside a data spec: ``folder:PATH`` (a folder), ``latents:PATH`` (a file); others none."""
    if not spec:
        return []
    kind, _, arg = str(spec).partition(":")
    if kind == "folder" and arg:
        return [Place(label, Path(arg), "folder")]
    if kind == "latents" and arg:
        return [Place(label, Path(arg), "file")]
    return []


def file_output(label: str, path: str | os.PathLike | None) -> list[Place]:
    return inp(label, path, "file")


def npz_outputs(label: str, path: str | os.PathLike | None) -> list[Place]:
    """A sharded ``.npz`` output: the file, its ``.json`` record and its ``.shards/`` folder (deleted after the merge)."""
    if path is None:
        return []
    p = Path(path)
    return [Place(label, p), Place(f"the record of {label}", p.with_suffix(".json")),
            Place(f"the shard folder of {label}", p.with_name(p.name + ".shards"), "tree")]


def folder_outputs(label: str, path: str | os.PathLike | None, names: Sequence[str]) -> list[Place]:
    """An output folder holding the named files (other files in it are left alone)."""
    if path is None:
        return []
    p = Path(path)
    return [Place(label, p, "folder"), *(Place(f"{label}/{n}", p / n) for n in names)]


def tree_output(label: str, path: str | os.PathLike | None) -> list[Place]:
    """An output folder the command fills with files of its own choosing: no input may lie inside."""
    return [] if path is None else [Place(label, Path(path), "tree")]


def _real(p: Path) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(p)))


def _same(a: Path, b: Path) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(p: Path, folder: Path) -> bool:
    rp, rf = _real(p), _real(folder)
    return rp == rf or rp.startswith(rf.rstrip(os.sep) + os.sep)


def _writable_location(o: Place) -> None:
    p = o.path
    if o.kind == "file" and p.is_dir():
        raise L2CError(f"{o.label} {p}: is a folder; give a file path")
    if o.kind in ("folder", "tree") and p.exists() and not p.is_dir():
        raise L2CError(f"{o.label} {p}: is a file; give a folder path (it holds several outputs)")
    for parent in Path(os.path.abspath(p)).parents:
        if parent.exists():
            if not parent.is_dir():
                raise L2CError(f"{o.label} {p}: {parent} is a file, not a folder")
            break


def check_inputs_exist(inputs: Iterable[Place]) -> None:
    """Every ``file`` / ``folder`` input exists and has that kind."""
    for i in inputs:
        if i.kind == "any":
            continue
        if not i.path.exists():
            raise L2CError(f"{i.label} {i.path}: {'folder' if i.kind == 'folder' else 'file'} not found")
        if i.kind == "file" and i.path.is_dir():
            raise L2CError(f"{i.label} {i.path}: is a folder; expected a file")
        if i.kind == "folder" and not i.path.is_dir():
            raise L2CError(f"{i.label} {i.path}: is a file; expected a folder")


def check_paths(inputs: Iterable[Place], outputs: Iterable[Place]) -> None:
    """The output rule: no output is an input or holds one, no two outputs coincide, every output can be written."""
    inputs, outputs = list(inputs), list(outputs)
    for o in outputs:
        _writable_location(o)
    for i in inputs:
        for o in outputs:
            if o.kind == "folder":
                hit = _same(i.path, o.path)
            elif o.kind == "tree":
                hit = _inside(i.path, o.path)
            else:
                hit = _same(i.path, o.path)
            if hit:
                where = "is" if o.kind != "tree" or _same(i.path, o.path) else "lies inside"
                raise L2CError(f"{i.label} {i.path} {where} {o.label} {o.path}: the command would write over a file "
                               "it reads; choose another output path")
    files = [o for o in outputs if o.kind != "folder"]
    for n, a in enumerate(files):
        for b in files[n + 1:]:
            if _same(a.path, b.path) or (a.kind == "tree" and _inside(b.path, a.path)) or (b.kind == "tree" and _inside(a.path, b.path)):
                raise L2CError(f"{a.label} {a.path} and {b.label} {b.path} are the same path: one would replace the "
                               f"other; choose another output name{' (samples: .npz)' if b.path.suffix == '.json' else ''}")


# -- argparse helpers ------------------------------------------------------------------------------

def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the flag users type (``--batch-size``), or the positional's name."""
    out = {}
    for act in parser._actions:
        longs = [s for s in act.option_strings if s.startswith("--")]
        out[act.dest] = longs[0] if longs else (act.option_strings[0] if act.option_strings else act.dest)
    return out


def model_outline(checkpoint: str | os.PathLike, name: str | None = None, **options: Any):
    """The model of a checkpoint built on the meta device (no weights, no memory): its architecture
    for checks made before any work (channels, depth). The file is read with ``weights_only=True``,
    memory-mapped where possible."""
    import torch

    from .io import load_torch
    from .models import architecture, create_model
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (legacy format) or unreadable: the plain loader explains
        obj = load_torch(checkpoint, "model checkpoint")
    name, options = architecture(obj, checkpoint, name, options)
    with torch.device("meta"):
        return create_model(name, **options)
