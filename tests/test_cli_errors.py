"""The two rules of the command line, as a table of bad inputs per sub-command.

Every case runs ``l2c.cli.main`` in-process on copies of tiny random-weight inputs and must be
refused with exit 2, one line on stderr naming the flag / key / file at fault, no traceback, and no
file written or changed (so nothing is left behind that blocks the corrected command)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import make_tiny
from l2c.cli import COMMANDS, main

NP = "--no-progress"
# placeholders: {W} workspace; a/ holds copies of the tiny inputs made once per module
T, R, RO, S, N, REF, P = ("{W}/a/tiny.pt", "{W}/a/router/router.pt", "{W}/a/router/router_official.pt", "{W}/a/sched.json",
                          "{W}/a/s.npz", "{W}/a/ref.npz", "{W}/a/profile.csv")
SMALL = ["--checkpoint", T, "--num-samples", "2", "--batch-size", "2"]

CASES: dict[str, list[tuple[list[str], str]]] = {
    "pretrain": [
        (["--out", "{W}/pt", "--steps", "0"], "--steps 0"),
        (["--out", "{W}/pt", "--steps", "1", "--batch-size", "0"], "--batch-size 0"),
        (["--out", "{W}/pt", "--steps", "1", "--threads", "0"], "--threads 0"),
        (["--out", "{W}/pt", "--steps", "1", "--seed", "-1"], "--seed -1"),
        (["--out", "{W}/pt", "--steps", "abc"], "--steps"),
        (["--out", "{W}/pt", "--config", "{W}/missing.yaml"], "missing.yaml: file not found"),
        (["--out", "{W}/pt", "--config", "{W}/dir"], "dir: is a folder"),
        (["--out", "{W}/pt", "--config", "{W}/syntax.yaml"], "syntax.yaml: not valid YAML at line 3"),
        (["--out", "{W}/pt", "--config", "{W}/list.yaml"], "list.yaml: expected a mapping"),
        (["--out", "{W}/pt", "--config", "{W}/binary.yaml"], "binary.yaml"),
        (["--out", "{W}/pt", "--config", "{W}/pt_lr.yaml"], "pt_lr.yaml: lr -1"),
        (["--out", "{W}/pt", "--config", "{W}/pt_ema.yaml"], "pt_ema.yaml: ema_decay 1.5"),
        (["--out", "{W}/pt", "--config", "{W}/pt_unknown.yaml"], "unknown key(s) ['stepz']"),
        (["--out", "{W}/pt", "--config", "{W}/pt_model.yaml"], "unknown model name 'DiT-Nope'"),
        (["--out", "{W}/pt", "--config", "{W}/pt_data.yaml"], "data spec 'bogus'"),
        (["--out", "{W}/pt", "--config", "{W}/pt_kw.yaml"], "model_kwargs {'input_size': 7}"),
        (["--out", "{W}/pt", "--config", "{W}/pt_kwtype.yaml"], "model_kwargs 3"),
        (["--out", "{W}/afile", "--steps", "1"], "afile: is a file"),
        (["--out", "{W}/dir", "--config", "{W}/dir/record.json"], "record.json"),
    ],
    "macs": [
        (["--model", "DiT-XL/3", "--nfe", "20"], "unknown model name 'DiT-XL/3'"),
        (["--model", "DiT-S/2", "--nfe", "0"], "--nfe 0"),
        (["--model", "DiT-S/2", "--nfe", "-3"], "--nfe -3"),
        (["--model", "DiT-S/2", "--nfe", "19", "--sampler", "dpm2"], "--nfe 19"),
        (["--model", "DiT-S/2", "--nfe", "20", "--sampler", "euler"], "--sampler"),
        (["--model", "DiT-S/2", "--nfe", "20", "--image-size", "0"], "--image-size 0"),
        (["--model", "DiT-S/2", "--nfe", "20", "--image-size", "250"], "--image-size 250"),
        (["--model", "DiT-S/2", "--nfe", "20", "--in-channels", "0"], "--in-channels 0"),
        (["--model", "DiT-S/2", "--nfe", "20", "--num-classes", "0"], "--num-classes 0"),
        (["--model", "DiT-S/2", "--nfe", "20", "--router", R], "needs --theta"),
        (["--model", "DiT-S/2", "--nfe", "20", "--theta", "0.5"], "--theta 0.5 is used only with --router"),
        (["--model", "DiT-S/2", "--nfe", "20", "--router", R, "--theta", "1.5"], "--theta 1.5"),
        (["--model", "DiT-S/2", "--nfe", "20", "--router", R, "--theta", "nan"], "--theta nan"),
        (["--model", "DiT-S/2", "--nfe", "20", "--router", "{W}/nope.pt", "--theta", "0.1"], "nope.pt: file not found"),
        (["--model", "DiT-S/2", "--nfe", "20", "--router", "{W}/garbage.pt", "--theta", "0.1"], "garbage.pt"),
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", "{W}/nope.json"], "nope.json: file not found"),
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", "{W}/bad.json"], "bad.json: not valid JSON"),
        (["--model", "DiT-S/2", "--nfe", "6", "--schedule", "{W}/row.json"], "row.json: compute row 1"),
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", S], "has 6 steps but sampling uses NFE 20"),
        (["--model", "DiT-S/2", "--nfe", "6", "--schedule", S], "schedule"),  # 4 blocks vs 28
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", S, "--router", R, "--theta", "0.5"], "both given"),
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", ""], "--schedule '': expected a path"),
        (["--model", "DiT-S/2", "--nfe", "20", "--schedule", "{W}/dir"], "dir: is a folder"),
    ],
    "sample": [
        ([*SMALL, "--nfe", "4", "--out", "{W}/s.json", NP], "s.json and the record of --out"),
        (["--checkpoint", "{W}/m.pt", "--nfe", "4", "--num-samples", "2", "--out", "{W}/m.pt", NP], "--checkpoint"),
        ([*SMALL, "--nfe", "6", "--schedule", "{W}/x.json", "--out", "{W}/x.npz", NP], "x.json is the record of --out"),
        ([*SMALL, "--nfe", "6", "--schedule", "{W}/o.npz.shards/s.json", "--out", "{W}/o.npz", NP], "s.json"),
        ([*SMALL, "--nfe", "6", "--router", R, "--theta", "nan", "--out", "{W}/o.npz", NP], "--theta nan"),
        ([*SMALL, "--nfe", "6", "--router", R, "--theta", "1.5", "--out", "{W}/o.npz", NP], "--theta 1.5"),
        ([*SMALL, "--nfe", "6", "--router", R, "--out", "{W}/o.npz", NP], "needs --theta"),
        ([*SMALL, "--nfe", "6", "--theta", "0.5", "--out", "{W}/o.npz", NP], "--theta 0.5 is used only with --router"),
        ([*SMALL, "--nfe", "6", "--schedule", S, "--router", R, "--theta", "0.5", "--out", "{W}/o.npz", NP], "both given"),
        ([*SMALL, "--nfe", "8", "--schedule", S, "--out", "{W}/o.npz", NP], "NFE 8"),
        ([*SMALL, "--nfe", "6", "--schedule", S, "--sampler", "dpm2", "--out", "{W}/o.npz", NP], "sampler 'ddim'"),
        ([*SMALL, "--nfe", "6", "--schedule", "{W}/row.json", "--out", "{W}/o.npz", NP], "row.json: compute row 1"),
        ([*SMALL, "--nfe", "6", "--schedule", "{W}/deep.json", "--out", "{W}/o.npz", NP], "blocks"),
        (["--checkpoint", T, "--num-samples", "0", "--nfe", "4", "--out", "{W}/o.npz", NP], "--num-samples 0"),
        ([*SMALL, "--nfe", "0", "--out", "{W}/o.npz", NP], "--nfe 0"),
        ([*SMALL, "--nfe", "1001", "--out", "{W}/o.npz", NP], "--nfe 1001"),
        ([*SMALL, "--nfe", "5", "--sampler", "dpm2", "--out", "{W}/o.npz", NP], "--nfe 5"),
        (["--checkpoint", T, "--num-samples", "2", "--batch-size", "0", "--nfe", "4", "--out", "{W}/o.npz", NP], "--batch-size 0"),
        ([*SMALL, "--nfe", "4", "--shard-size", "0", "--out", "{W}/o.npz", NP], "--shard-size 0"),
        ([*SMALL, "--nfe", "4", "--cfg-channels", "7", "--out", "{W}/o.npz", NP], "--cfg-channels 7"),
        ([*SMALL, "--nfe", "4", "--cfg-channels", "0", "--out", "{W}/o.npz", NP], "--cfg-channels 0"),
        ([*SMALL, "--nfe", "4", "--cfg-scale", "nan", "--out", "{W}/o.npz", NP], "--cfg-scale nan"),
        ([*SMALL, "--nfe", "4", "--cfg-scale", "-1", "--out", "{W}/o.npz", NP], "--cfg-scale -1"),
        ([*SMALL, "--nfe", "4", "--seed", "-1", "--out", "{W}/o.npz", NP], "--seed -1"),
        ([*SMALL, "--nfe", "4", "--device", "cuda:99", "--out", "{W}/o.npz", NP], "--device 'cuda:99'"),
        ([*SMALL, "--nfe", "4", "--device", "bogus", "--out", "{W}/o.npz", NP], "--device 'bogus'"),
        ([*SMALL, "--nfe", "4", "--dtype", "fp64", "--out", "{W}/o.npz", NP], "--dtype"),
        ([*SMALL, "--nfe", "4", "--out", "{W}/dir", NP], "dir: is a folder"),
        ([*SMALL, "--nfe", "4", "--out", "", NP], "--out '': expected a path"),
        (["--checkpoint", "", "--nfe", "4", "--out", "{W}/o.npz", NP], "--checkpoint '': expected a path"),
        ([*SMALL, "--nfe", "4", "--out", "{W}/sfile.npz", NP], "the shard folder of --out"),
        ([*SMALL, "--nfe", "4", "--model-kwargs", '{"bogus": 1}', "--out", "{W}/o.npz", NP], "bad option"),
        (["--checkpoint", R, "--nfe", "4", "--out", "{W}/o.npz", NP], "does not record its architecture"),
        ([*SMALL, "--nfe", "4", "--out", "{W}/afile/o.npz", NP], "afile is a file"),
        ([*SMALL, "--nfe", "4", "--model-kwargs", "{bad", "--out", "{W}/o.npz", NP], "--model-kwargs '{bad'"),
        ([*SMALL, "--nfe", "4", "--model-kwargs", "[1]", "--out", "{W}/o.npz", NP], "--model-kwargs '[1]'"),
        ([*SMALL, "--nfe", "4", "--model-kwargs", '{"input_size": 7}', "--out", "{W}/o.npz", NP], "input_size 7"),
        ([*SMALL, "--nfe", "4", "--shards", "a:b", "--out", "{W}/o.npz", NP], "--shards 'a:b'"),
        ([*SMALL, "--nfe", "4", "--shards", "3:1", "--out", "{W}/o.npz", NP], "--shards '3:1'"),
        (["--checkpoint", "{W}/garbage.pt", "--nfe", "4", "--out", "{W}/o.npz", NP], "garbage.pt"),
        (["--checkpoint", "{W}/nope.pt", "--nfe", "4", "--out", "{W}/o.npz", NP], "nope.pt: file not found"),
        (["--checkpoint", "{W}/dir", "--nfe", "4", "--out", "{W}/o.npz", NP], "dir: is a folder"),
        ([*SMALL, "--model", "DiT-XL/9", "--nfe", "4", "--out", "{W}/o.npz", NP], "unknown model name 'DiT-XL/9'"),
        (["--config", "{W}/sample_unknown.yaml", "--out", "{W}/o.npz", NP], "unknown key(s) ['bogus_key']"),
        (["--config", "{W}/sample_theta.yaml", "--checkpoint", T, "--out", "{W}/o.npz", NP], "sample_theta.yaml: theta 2"),
        (["--config", "{W}/sample_nfe.yaml", "--checkpoint", T, "--out", "{W}/o.npz", NP], "sample_nfe.yaml: nfe 'six'"),
        (["--config", "{W}/sample_kw.yaml", "--checkpoint", T, "--out", "{W}/o.npz", NP], "sample_kw.yaml: model_kwargs 3"),
        (["--config", "{W}/sample_ckpt.yaml", "--out", "{W}/o.npz", NP], "sample_ckpt.yaml: checkpoint"),
        (["--config", "{W}/sample_dtype.yaml", "--checkpoint", T, "--out", "{W}/o.npz", NP], "sample_dtype.yaml: dtype"),
    ],
    "train-router": [
        (["--checkpoint", T, "--nfe", "6", "--steps", "0", "--out", "{W}/r", NP], "--steps 0"),
        (["--checkpoint", T, "--nfe", "6", "--batch-size", "0", "--out", "{W}/r", NP], "--batch-size 0"),
        (["--checkpoint", T, "--nfe", "6", "--lr", "-1", "--out", "{W}/r", NP], "--lr -1"),
        (["--checkpoint", T, "--nfe", "6", "--lr", "nan", "--out", "{W}/r", NP], "--lr nan"),
        (["--checkpoint", T, "--nfe", "6", "--lr", "0", "--out", "{W}/r", NP], "--lr 0"),
        (["--checkpoint", T, "--nfe", "6", "--lam", "-1", "--out", "{W}/r", NP], "--lam -1"),
        (["--checkpoint", T, "--nfe", "0", "--out", "{W}/r", NP], "--nfe 0"),
        (["--checkpoint", T, "--nfe", "1", "--out", "{W}/r", NP], "--nfe 1: no cache steps"),
        (["--checkpoint", T, "--nfe", "5", "--sampler", "dpm2", "--out", "{W}/r", NP], "--nfe 5"),
        (["--checkpoint", T, "--nfe", "6", "--sampler", "dpm2", "--objective", "trajectory", "--out", "{W}/r", NP], "--objective"),
        (["--checkpoint", T, "--nfe", "6", "--device", "cuda:99", "--out", "{W}/r", NP], "--device 'cuda:99'"),
        (["--checkpoint", T, "--nfe", "6", "--ste-threshold", "2", "--out", "{W}/r", NP], "--ste-threshold 2"),
        (["--checkpoint", T, "--nfe", "6", "--threads", "0", "--out", "{W}/r", NP], "--threads 0"),
        (["--checkpoint", T, "--nfe", "6", "--data", "folder:{W}/nowhere", "--out", "{W}/r", NP], "nowhere: folder not found"),
        (["--checkpoint", T, "--nfe", "6", "--data", "latents:{W}/nope.npz", "--out", "{W}/r", NP], "nope.npz: file not found"),
        (["--checkpoint", T, "--nfe", "6", "--data", "bogus", "--out", "{W}/r", NP], "data spec 'bogus'"),
        (["--checkpoint", "{W}/rr/router.pt", "--nfe", "6", "--out", "{W}/rr", NP], "--out/router.pt"),
        (["--checkpoint", "{W}/rr/checkpoint.pt", "--nfe", "6", "--out", "{W}/rr", NP], "--out/checkpoint.pt"),
        (["--checkpoint", T, "--nfe", "6", "--out", "{W}/afile", NP], "afile: is a file"),
        (["--checkpoint", "{W}/nope.pt", "--nfe", "6", "--out", "{W}/r", NP], "nope.pt: file not found"),
        (["--config", "{W}/tr_steps.yaml", "--checkpoint", T, "--out", "{W}/r", NP], "tr_steps.yaml: steps -5"),
        (["--config", "{W}/tr_lr.yaml", "--checkpoint", T, "--out", "{W}/r", NP], "tr_lr.yaml: lr '1e-3x'"),
        (["--config", "{W}/tr_obj.yaml", "--checkpoint", T, "--out", "{W}/r", NP], "tr_obj.yaml: objective 'dropp'"),
    ],
    "schedule": [
        (["--router", R, "--theta", "1.5", "--nfe", "6", "--out", "{W}/o.json"], "--theta 1.5"),
        (["--router", R, "--theta", "nan", "--nfe", "6", "--out", "{W}/o.json"], "--theta nan"),
        (["--router", R, "--nfe", "6", "--out", "{W}/o.json"], "needs --theta"),
        (["--router", R, "--theta", "0.5", "--nfe", "8", "--out", "{W}/o.json"], "NFE 8"),
        (["--router", R, "--theta", "0.5", "--nfe", "6", "--out", R], "--router"),
        (["--router", R, "--theta", "0.5", "--nfe", "6", "--out", "{W}/link.pt"], "link.pt"),
        (["--router", R, "--theta", "0.5", "--nfe", "6", "--out", "{W}/hard.pt"], "hard.pt"),
        (["--router", R, "--theta", "0.5", "--nfe", "6", "--out", "{W}/./a/../a/router/router.pt"], "--router"),
        (["--router", "{W}/garbage.pt", "--theta", "0.5", "--nfe", "6", "--out", "{W}/o.json"], "garbage.pt"),
        (["--router", N, "--theta", "0.5", "--nfe", "6", "--out", "{W}/o.json"], "s.npz"),
        (["--router", R, "--theta", "0.5", "--kind", "full", "--nfe", "6", "--out", "{W}/o.json"], "--router and --kind"),
        (["--kind", "full", "--theta", "0.5", "--nfe", "6", "--out", "{W}/o.json"], "--theta 0.5"),
        (["--kind", "full", "--schedule", S, "--nfe", "6", "--out", "{W}/o.json"], "--schedule"),
        (["--kind", "bottom", "--budget", "-1", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "--budget -1"),
        (["--kind", "bottom", "--budget", "1000", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "budget 1000"),
        (["--kind", "bottom", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "needs --budget"),
        (["--kind", "bottom", "--budget", "2", "--match", S, "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "--match"),
        (["--kind", "bottom", "--match", "{W}/nope.json", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "nope.json"),
        (["--kind", "bottom", "--match", "{W}/m.json", "--nfe", "6", "--depth", "4", "--out", "{W}/m.json"], "--match"),
        (["--kind", "bottom", "--budget", "2", "--nfe", "0", "--depth", "4", "--out", "{W}/o.json"], "--nfe 0"),
        (["--kind", "bottom", "--budget", "2", "--nfe", "6", "--depth", "0", "--out", "{W}/o.json"], "--depth 0"),
        (["--kind", "full", "--nfe", "5", "--sampler", "dpm2", "--out", "{W}/o.json"], "--nfe 5"),
        (["--kind", "interval", "--interval", "0", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "--interval 0"),
        (["--kind", "interval", "--deep-from", "9", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "--deep-from 9"),
        (["--kind", "deepcache", "--shallow", "9", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "shallow=9"),
        (["--kind", "faster-diffusion", "--key-steps", "a,b", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "--key-steps 'a,b'"),
        (["--kind", "faster-diffusion", "--key-steps", "0,99", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "key steps"),
        (["--kind", "faster-diffusion", "--encoder-blocks", "9", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "encoder_blocks=9"),
        (["--kind", "metrics", "--budget", "2", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "profile"),
        (["--kind", "metrics", "--budget", "2", "--profile", "{W}/nope.csv", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "nope.csv"),
        (["--kind", "metrics", "--budget", "2", "--profile", "{W}/garbage.csv", "--nfe", "6", "--depth", "4", "--out", "{W}/o.json"], "garbage.csv"),
        (["--kind", "metrics", "--budget", "2", "--profile", P, "--nfe", "8", "--depth", "4", "--out", "{W}/o.json"], "(8, 8)"),
        (["--kind", "metrics", "--budget", "2", "--profile", P, "--nfe", "6", "--depth", "4", "--out", P], "--profile"),
        (["--kind", "full", "--nfe", "6", "--depth", "4", "--out", "{W}/dir"], "dir: is a folder"),
        (["--nfe", "6", "--out", "{W}/o.json"], "give --router FILE --theta T, or --kind"),
        (["--kind", "nope", "--nfe", "6", "--out", "{W}/o.json"], "--kind"),
    ],
    "profile": [
        (["--checkpoint", T, "--nfe", "6", "--num-samples", "0", "--out", "{W}/o.csv"], "--num-samples 0"),
        (["--checkpoint", T, "--nfe", "0", "--num-samples", "2", "--out", "{W}/o.csv"], "--nfe 0"),
        (["--checkpoint", T, "--nfe", "5", "--sampler", "dpm2", "--num-samples", "2", "--out", "{W}/o.csv"], "--nfe 5"),
        (["--checkpoint", T, "--nfe", "6", "--num-samples", "2", "--cfg-channels", "7", "--out", "{W}/o.csv"], "--cfg-channels 7"),
        (["--checkpoint", T, "--nfe", "6", "--num-samples", "2", "--cfg-scale", "inf", "--out", "{W}/o.csv"], "--cfg-scale inf"),
        (["--checkpoint", T, "--nfe", "6", "--num-samples", "2", "--seed", "-5", "--out", "{W}/o.csv"], "--seed -5"),
        (["--checkpoint", T, "--nfe", "6", "--num-samples", "2", "--out", "{W}/dir"], "dir: is a folder"),
        (["--checkpoint", "{W}/m.pt", "--nfe", "6", "--num-samples", "2", "--out", "{W}/m.pt"], "--checkpoint"),
        (["--checkpoint", "{W}/nope.pt", "--nfe", "6", "--num-samples", "2", "--out", "{W}/o.csv"], "nope.pt: file not found"),
        (["--checkpoint", T, "--model", "DiT-Micro/4", "--nfe", "6", "--num-samples", "2", "--out", "{W}/o.csv"], "does not fit"),
    ],
    "evaluate": [
        (["{W}/s2.npz", "--ref", REF, "--out", "{W}/s2.npz"], "samples"),
        ([N, "--ref", REF, "--out", REF], "--ref"),
        ([N, "--ref", REF, "--out", "{W}/a/s.json"], "the record of samples"),
        ([N, "--ref", REF, "--paired-with", "{W}/s2.npz", "--out", "{W}/s2.npz"], "--paired-with"),
        ([N, "--ref", REF, "--out", "{W}/dir"], "dir: is a folder"),
        (["{W}/nope.npz", "--ref", REF], "nope.npz: file not found"),
        ([N, "--ref", "{W}/nope.npz"], "nope.npz: file not found"),
        (["{W}/garbage.npz", "--ref", REF], "garbage.npz"),
        ([N, "--ref", REF, "--batch-size", "0"], "--batch-size 0"),
        ([N, "--ref", REF, "--device", "cuda:99"], "--device 'cuda:99'"),
        ([N, "--ref", REF, "--paired-with", "{W}/nope.npz"], "nope.npz: file not found"),
        ([N, "--ref", REF, "--weights", "{W}/nope.pt"], "nope.pt: file not found"),
        ([N, "--ref", REF, "--backend", "clip"], "--backend"),
    ],
    "reference": [
        (["--out", "{W}/dir"], "dir: is a folder"),
        (["--out", "{W}/afile/x.npz"], "afile is a file"),
    ],
    "train-features": [
        (["--out", "{W}/dir"], "dir: is a folder"),
        (["--out", "{W}/f.pt", "--seed", "-1"], "--seed -1"),
        (["--out", "{W}/afile/f.pt"], "afile is a file"),
    ],
    "embedded-report": [
        (["--out", "{W}/er", "--checkpoint", T, "--n-main", "0", NP], "--n-main 0"),
        (["--out", "{W}/er", "--checkpoint", T, "--n-cache", "-1", NP], "--n-cache -1"),
        (["--out", "{W}/er", "--checkpoint", T, "--cfg-scale", "nan", NP], "--cfg-scale nan"),
        (["--out", "{W}/er", "--checkpoint", T, "--seeds", "-1", NP], "--seeds -1"),
        (["--out", "{W}/afile", "--checkpoint", T, NP], "afile: is a file"),
        (["--out", "{W}/er", "--checkpoint", "{W}/nope.pt", NP], "nope.pt: file not found"),
        (["--out", "{W}/a", "--checkpoint", T, NP], "lies inside --out"),
    ],
    "bench": [
        (["--nfe", "0"], "--nfe 0"),
        (["--nfe", "5", "--sampler", "dpm2"], "--nfe 5"),
        (["--nfe", "4", "--batch", "0"], "--batch 0"),
        (["--nfe", "4", "--repeats", "0"], "--repeats 0"),
        (["--nfe", "4", "--warmup", "-1"], "--warmup -1"),
        (["--nfe", "4", "--reuse-fraction", "1.5"], "--reuse-fraction 1.5"),
        (["--nfe", "4", "--cfg-scale", "nan"], "--cfg-scale nan"),
        (["--nfe", "4", "--device", "cuda:99"], "--device 'cuda:99'"),
        (["--nfe", "4", "--threads", "0"], "--threads 0"),
        (["--nfe", "4", "--dtype", "fp64"], "--dtype"),
        (["--nfe", "4", "--pixel", "--latent"], "--latent"),
        (["--nfe", "4", "--latent", "--image-size", "12"], "--image-size 12"),
        (["--nfe", "4", "--pixel", "--image-size", "7"], "input_size 7"),
        (["--nfe", "4", "--model", "Nope"], "unknown model name 'Nope'"),
        (["--checkpoint", T, "--nfe", "6", "--router", R], "needs --theta"),
        (["--checkpoint", T, "--nfe", "6", "--theta", "0.5"], "--theta 0.5"),
        (["--checkpoint", T, "--nfe", "6", "--router", R, "--theta", "1.5"], "--theta 1.5"),
        (["--checkpoint", T, "--nfe", "6", "--router", R, "--theta", "0.5", "--schedule", S], "both given"),
        (["--checkpoint", T, "--nfe", "8", "--schedule", S], "NFE 8"),
        (["--checkpoint", T, "--nfe", "6", "--schedule", "{W}/row.json"], "row.json: compute row 1"),
        (["--checkpoint", T, "--nfe", "6", "--schedule", "{W}/deep.json"], "blocks"),
        (["--checkpoint", T, "--nfe", "6", "--schedule", S, "--json", S], "--schedule"),
        (["--checkpoint", T, "--nfe", "6", "--json", T], "--checkpoint"),
        (["--checkpoint", T, "--nfe", "6", "--json", "{W}/dir"], "dir: is a folder"),
        (["--checkpoint", "{W}/nope.pt", "--nfe", "6"], "nope.pt: file not found"),
        (["--checkpoint", T, "--nfe", "6", "--image-size", "16"], "--image-size: the checkpoint"),
        (["--checkpoint", T, "--nfe", "6", "--pixel", "--num-classes", "3"], "--num-classes, --pixel: the checkpoint"),
        (["--checkpoint", T, "--nfe", "6", "--schedule", S, "--reuse-fraction", "0.5"], "--reuse-fraction 0.5"),
    ],
    "encode-latents": [
        (["--data", "folder:{W}/nowhere", "--vae", "{W}/vae", "--out", "{W}/l.npz", NP], "nowhere: folder not found"),
        (["--data", "bogus", "--vae", "{W}/vae", "--out", "{W}/l.npz", NP], "--data 'bogus'"),
        (["--data", "folder:{W}/afile", "--vae", "{W}/vae", "--out", "{W}/l.npz", NP], "afile: is a file"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.npz", "--batch-size", "0", NP], "--batch-size 0"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.npz", "--image-size", "7", NP], "--image-size 7"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.npz", "--limit", "0", NP], "--limit 0"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.npz", "--shard-size", "0", NP], "--shard-size 0"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.npz", "--device", "cuda:99", NP], "--device"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/l.json", NP], "the record of --out"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/vae", "--out", "{W}/dir", NP], "dir: is a folder"),
        (["--data", "folder:{W}/imgs", "--vae", "{W}/a/tiny.pt", "--out", T, NP], "--vae"),
    ],
    "bench-router": [
        (["--nfe", "4", "--batch", "0"], "--batch 0"),
        (["--nfe", "4", "--iters", "0"], "--iters 0"),
        (["--nfe", "4", "--warmup", "-1"], "--warmup -1"),
        (["--nfe", "1"], "--nfe 1: no cache steps"),
        (["--nfe", "5", "--sampler", "dpm2"], "--nfe 5"),
        (["--nfe", "4", "--lam", "nan"], "--lam nan"),
        (["--nfe", "4", "--device", "cuda:99"], "--device 'cuda:99'"),
        (["--nfe", "4", "--checkpoint", "{W}/nope.pt"], "nope.pt: file not found"),
        (["--nfe", "4", "--json", "{W}/dir"], "dir: is a folder"),
        (["--nfe", "4", "--checkpoint", T, "--json", T], "--checkpoint"),
        (["--nfe", "4", "--checkpoint", T, "--latent"], "--latent: the checkpoint"),
    ],
    "calibrate": [
        (["--method", "teacache", "--checkpoint", T, "--nfe", "0"], "--nfe 0"),
        (["--method", "teacache", "--checkpoint", T, "--nfe", "5", "--sampler", "dpm2"], "--nfe 5"),
        (["--method", "teacache", "--checkpoint", T, "--nfe", "6", "--out", T], "--checkpoint"),
        (["--method", "teacache", "--checkpoint", T, "--nfe", "6", "--num-samples", "0", "--out", "{W}/c.json"], "--num-samples 0"),
        (["--method", "teacache", "--checkpoint", T, "--nfe", "6", "--device", "cuda:99", "--out", "{W}/c.json"], "--device"),
        (["--method", "teacache", "--checkpoint", "{W}/nope.pt", "--nfe", "6"], "nope.pt: file not found"),
        (["--method", "nope", "--checkpoint", T, "--nfe", "6"], "--method"),
    ],
    "check-config": [
        (["{W}/missing.yaml"], "missing.yaml: file not found"),
        (["{W}/syntax.yaml"], "syntax.yaml: not valid YAML at line 3"),
        (["{W}/list.yaml"], "list.yaml: expected a mapping"),
        (["{W}/dir"], "dir: is a folder"),
        (["{W}/pt_lr.yaml"], "(top level): Additional properties are not allowed"),
        (["{W}/wf_theta.yaml"], "models.m.nfe.20.theta: 1.5 is out of range"),
    ],
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny inputs made once: a model, a router of ours (and its official export), a schedule, samples,
    the digits reference batch and a redundancy profile."""
    d = tmp_path_factory.mktemp("assets")
    ckpt = make_tiny(d / "tiny.pt")
    run = [["train-router", "--checkpoint", str(ckpt), "--nfe", "6", "--steps", "2", "--batch-size", "4", "--data", "random:1x8x8:10:8",
            "--out", str(d / "router"), NP],
           ["schedule", "--kind", "bottom", "--budget", "5", "--nfe", "6", "--depth", "4", "--out", str(d / "sched.json")],
           ["sample", "--checkpoint", str(ckpt), "--nfe", "4", "--num-samples", "4", "--out", str(d / "s.npz"), NP],
           ["reference", "--out", str(d / "ref.npz")],
           ["profile", "--checkpoint", str(ckpt), "--nfe", "6", "--num-samples", "2", "--out", str(d / "profile.csv")]]
    for argv in run:
        assert main(argv) == 0, argv
    return d


def _bad_files(w: Path) -> None:
    """The bad inputs of the table, beside a copy of the tiny inputs in w/a."""
    (w / "dir").mkdir()
    (w / "afile").write_text("x")
    (w / "sfile.npz.shards").write_text("x")
    (w / "imgs" / "c0").mkdir(parents=True)
    texts = {
        "syntax.yaml": "steps: 1\nlr: [1, 2\nseed: 0\n", "list.yaml": "- 1\n- 2\n", "pt_lr.yaml": "lr: -1\nsteps: 1\n",
        "pt_ema.yaml": "ema_decay: 1.5\n", "pt_unknown.yaml": "stepz: 1\n", "pt_model.yaml": "model: DiT-Nope\nsteps: 1\n",
        "pt_data.yaml": "data: bogus\nsteps: 1\n", "pt_kw.yaml": "model_kwargs: {input_size: 7}\nsteps: 1\n",
        "pt_kwtype.yaml": "model_kwargs: 3\n", "dir/record.json": "steps: 1\n",
        "sample_unknown.yaml": "nfe: 4\nbogus_key: 1\n", "sample_theta.yaml": f"nfe: 6\nrouter: {w}/a/router/router.pt\ntheta: 2\n",
        "sample_nfe.yaml": "nfe: six\n", "sample_kw.yaml": "model_kwargs: 3\n", "sample_ckpt.yaml": f"checkpoint: {w}/nope.pt\n",
        "sample_dtype.yaml": "dtype: fp64\n", "tr_steps.yaml": "nfe: 6\nsteps: -5\n", "tr_lr.yaml": "lr: 1e-3x\n",
        "tr_obj.yaml": "objective: dropp\n",
        "wf_theta.yaml": "models:\n  m:\n    checkpoint: x.pt\n    nfe:\n      20: {theta: 1.5}\n", "bad.json": "{nope", "garbage.csv": "a,b\n1,2\n",
    }
    for name, text in texts.items():
        (w / name).write_text(text)
    (w / "binary.yaml").write_bytes(b"\xff\xfe\x00garbage")
    for name in ("garbage.pt", "garbage.npz"):
        (w / name).write_bytes(b"garbage")
    shutil.copy(w / "a" / "tiny.pt", w / "m.pt")
    shutil.copy(w / "a" / "s.npz", w / "s2.npz")
    shutil.copy(w / "a" / "sched.json", w / "m.json")
    shutil.copy(w / "a" / "sched.json", w / "x.json")
    sched = json.loads((w / "a" / "sched.json").read_text())
    (w / "row.json").write_text(json.dumps({**sched, "compute": [r if k != 1 else r[:-1] for k, r in enumerate(sched["compute"])]}))
    (w / "deep.json").write_text(json.dumps({**sched, "depth": 5, "compute": [r + "11" for r in sched["compute"]]}))
    (w / "rr").mkdir()
    for name in ("router.pt", "checkpoint.pt"):
        shutil.copy(w / "a" / "tiny.pt", w / "rr" / name)
    os.symlink(w / "a" / "router" / "router.pt", w / "link.pt")
    os.link(w / "a" / "router" / "router.pt", w / "hard.pt")


def _files(w: Path) -> dict[str, str]:
    """Every file under w (links not followed) with the sha256 of its bytes."""
    out = {}
    for root, _, names in os.walk(w):
        for n in names:
            p = Path(root) / n
            out[str(p.relative_to(w))] = "link" if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def ws(assets, tmp_path) -> Path:
    shutil.copytree(assets, tmp_path / "a")
    _bad_files(tmp_path)
    return tmp_path


def _refused(command: str, argv: list[str], expect: str, w: Path, capsys) -> str:
    argv = [command, *(x.replace("{W}", str(w)) for x in argv)]
    expect = expect.replace("{W}", str(w))
    before = _files(w)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"{argv}: exit {rc}, stderr {err!r}"
    assert len(lines) == 1 and "Traceback" not in err, f"{argv}: stderr is not one line: {err!r}"
    assert lines[0].startswith("l2c") and ": error: " in lines[0], lines[0]
    assert expect in lines[0], f"{argv}: {lines[0]!r} does not name {expect!r}"
    assert _files(w) == before, f"{argv}: files were written or changed although the command was refused"
    return lines[0]


def _ids(cases):
    return [" ".join(argv)[:60] for argv, _ in cases]


@pytest.mark.parametrize("argv,expect", CASES["pretrain"], ids=_ids(CASES["pretrain"]))
def test_pretrain_refuses(argv, expect, ws, capsys):
    _refused("pretrain", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["macs"], ids=_ids(CASES["macs"]))
def test_macs_refuses(argv, expect, ws, capsys):
    _refused("macs", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["sample"], ids=_ids(CASES["sample"]))
def test_sample_refuses(argv, expect, ws, capsys):
    _refused("sample", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["train-router"], ids=_ids(CASES["train-router"]))
def test_train_router_refuses(argv, expect, ws, capsys):
    _refused("train-router", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["schedule"], ids=_ids(CASES["schedule"]))
def test_schedule_refuses(argv, expect, ws, capsys):
    _refused("schedule", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["profile"], ids=_ids(CASES["profile"]))
def test_profile_refuses(argv, expect, ws, capsys):
    _refused("profile", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["evaluate"], ids=_ids(CASES["evaluate"]))
def test_evaluate_refuses(argv, expect, ws, capsys):
    _refused("evaluate", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["reference"], ids=_ids(CASES["reference"]))
def test_reference_refuses(argv, expect, ws, capsys):
    _refused("reference", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["train-features"], ids=_ids(CASES["train-features"]))
def test_train_features_refuses(argv, expect, ws, capsys):
    _refused("train-features", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["embedded-report"], ids=_ids(CASES["embedded-report"]))
def test_embedded_report_refuses(argv, expect, ws, capsys):
    _refused("embedded-report", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["bench"], ids=_ids(CASES["bench"]))
def test_bench_refuses(argv, expect, ws, capsys):
    _refused("bench", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["encode-latents"], ids=_ids(CASES["encode-latents"]))
def test_encode_latents_refuses(argv, expect, ws, capsys):
    _refused("encode-latents", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["bench-router"], ids=_ids(CASES["bench-router"]))
def test_bench_router_refuses(argv, expect, ws, capsys):
    _refused("bench-router", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["check-config"], ids=_ids(CASES["check-config"]))
def test_check_config_refuses(argv, expect, ws, capsys):
    _refused("check-config", argv, expect, ws, capsys)


@pytest.mark.parametrize("argv,expect", CASES["calibrate"], ids=_ids(CASES["calibrate"]))
def test_calibrate_refuses(argv, expect, ws, capsys):
    _refused("calibrate", argv, expect, ws, capsys)


def test_every_command_has_a_table():
    missing = sorted(set(COMMANDS) - set(CASES))
    assert not missing, f"sub-commands without bad-input cases in tests/test_cli_errors.py: {missing}"
    assert all(len(cases) >= 2 for cases in CASES.values())


def test_output_rule_names_both_paths(ws, capsys):
    line = _refused("sample", ["--checkpoint", "{W}/m.pt", "--nfe", "4", "--out", "{W}/m.pt", NP], "m.pt", ws, capsys)
    assert line.count(str(ws / "m.pt")) == 2 and "write over a file it reads" in line
    line = _refused("schedule", ["--router", R, "--theta", "0.5", "--nfe", "6", "--out", "{W}/hard.pt"], "hard.pt", ws, capsys)
    assert str(ws / "a" / "router" / "router.pt") in line and str(ws / "hard.pt") in line


def test_corrected_commands_run(ws, capsys):
    """A refused command leaves nothing that blocks its corrected form, and the README's bench
    commands (default model) and the suite's own router.pt in macs / bench now work."""
    w = str(ws)
    r = f"{w}/a/router/router.pt"
    small = ["--checkpoint", f"{w}/a/tiny.pt", "--num-samples", "2", "--batch-size", "2", NP]
    assert main(["sample", *small, "--nfe", "6", "--router", r, "--theta", "1.5", "--out", f"{w}/o.npz"]) == 2
    assert main(["sample", *small, "--nfe", "6", "--router", r, "--theta", "0.5", "--out", f"{w}/o.npz"]) == 0
    assert (ws / "o.npz").exists() and (ws / "o.json").exists() and not (ws / "o.npz.shards").exists()
    assert main(["sample", *small, "--nfe", "4", "--out", f"{w}/new/folder/o.npz"]) == 0  # parents are made
    assert main(["train-router", "--checkpoint", f"{w}/a/tiny.pt", "--nfe", "6", "--steps", "0", "--out", f"{w}/r", NP]) == 2
    assert main(["train-router", "--checkpoint", f"{w}/a/tiny.pt", "--nfe", "6", "--steps", "1", "--batch-size", "2", "--data", "random:1x8x8:10:8",
                 "--out", f"{w}/r", NP]) == 0
    capsys.readouterr()
    assert main(["macs", "--model", "DiT-Micro/2", "--pixel", "--image-size", "8", "--in-channels", "1", "--num-classes", "10",
                 "--nfe", "6", "--router", r, "--theta", "0.5", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert main(["schedule", "--router", r, "--theta", "0.5", "--nfe", "6", "--out", f"{w}/l2c.json"]) == 0
    assert rep["num_reused"] == json.loads((ws / "l2c.json").read_text())["meta"].get("num_reused", rep["num_reused"])
    from l2c.cache import CacheSchedule
    assert rep["num_reused"] == CacheSchedule.load(ws / "l2c.json").num_reused > 0
    assert main(["bench", "--checkpoint", f"{w}/a/tiny.pt", "--nfe", "6", "--router", r, "--theta", "0.5", "--batch", "2",
                 "--repeats", "1", "--warmup", "0", "--json", f"{w}/b.json"]) == 0
    assert json.loads((ws / "b.json").read_text())["schedule_source"] == "router:router.pt"
    # the README's bench lines with their defaults (the embedded pixel model's geometry)
    assert main(["bench", "--nfe", "4", "--batch", "2", "--cfg-scale", "1.5", "--repeats", "1", "--warmup", "0"]) == 0
    assert main(["bench-router", "--nfe", "4", "--batch", "2", "--iters", "1", "--warmup", "0"]) == 0


def test_bench_geometry_defaults():
    from l2c.bench import resolve_model_args
    from l2c.cli import build_parser
    a = build_parser().parse_args(["bench"])
    resolve_model_args(a)
    assert (a.image_size, a.pixel, a.in_channels, a.num_classes) == (8, True, 1, 10)
    a = build_parser().parse_args(["bench-router", "--model", "DiT-XL/2"])
    resolve_model_args(a)
    assert (a.image_size, a.pixel, a.num_classes) == (256, False, 1000)
    a = build_parser().parse_args(["bench", "--model", "DiT-XL/2", "--pixel", "--image-size", "32"])
    resolve_model_args(a)
    assert (a.image_size, a.pixel) == (32, True)


def test_last_resort_is_one_line_and_verbose_shows_the_traceback(monkeypatch, capsys):
    """An unforeseen exception is one line with exit 1 (not 2: it may be a bug), and --verbose re-raises it."""
    def boom(a):
        raise ValueError("something\nunforeseen")
    monkeypatch.setitem(COMMANDS, "reference", boom)
    assert main(["reference", "--out", "x.npz"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unexpected ValueError: something unforeseen" in err[0] and "--verbose" in err[0]
    with pytest.raises(ValueError):
        main(["--verbose", "reference", "--out", "x.npz"])
    with pytest.raises(ValueError):
        main(["reference", "--out", "x.npz", "--verbose"])
    monkeypatch.setitem(COMMANDS, "reference", lambda a: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "x.npz")))
    assert main(["reference", "--out", "x.npz"]) == 2
    assert capsys.readouterr().err.strip() == "l2c reference: error: Permission denied: x.npz"


def test_value_rules():
    from l2c.io import L2CError
    from l2c.validate import RULES, check_value
    assert check_value("--lr", "lr", "1e-3") == 0.001  # YAML reads 1e-3 as a string
    assert check_value("--theta", "theta", 1) == 1.0 and check_value("--theta", "theta", 0) == 0.0
    for key, bad in [("theta", 1.0001), ("theta", float("nan")), ("steps", True), ("steps", 1.0), ("lr", 0.0),
                     ("lr", float("inf")), ("label_dropout", 1.0), ("seeds", []), ("seeds", [0, -1]), ("nfe", "20")]:
        with pytest.raises(L2CError, match="^--x"):
            check_value("--x", key, bad)
    assert RULES["nfe"].expected() == "an integer in [1, 1000]" and RULES["theta"].expected() == "a finite number in [0, 1]"


# -- the workflow config: refused at parse time, one line naming the key path ---------------------

CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
D, U = "models.dit-digits", "models.uvit-digits"
CONFIG_CASES = [
    ({"models": {"dit-digits": {"nfe": {0: {}}}}}, f"{D}.nfe.0: an NFE is an integer in [1, 1000]"),
    ({"models": {"dit-digits": {"nfe": {1001: {}}}}}, f"{D}.nfe.1001"),
    ({"models": {"dit-digits": {"nfe": {"twenty": {}}}}}, f"{D}.nfe: key 'twenty'"),
    ({"models": {"uvit-digits": {"nfe": {19: {}}}}}, f"{U}.nfe.19: DPM-Solver-2"),
    ({"models": {"dit-digits": {"nfe": {20: {"theta": 1.5}}}}}, f"{D}.nfe.20.theta: 1.5 is out of range"),
    ({"models": {"dit-digits": {"nfe": {20: {"theta": float("nan")}}}}}, f"{D}.nfe.20.theta: nan is not a finite"),
    ({"models": {"dit-digits": {"nfe": {20: {"theta": "-0.1"}}}}}, f"{D}.nfe.20.theta: '-0.1' is out of range"),
    ({"models": {"dit-digits": {"nfe": {20: {"thetas": [0.5, 2]}}}}}, f"{D}.nfe.20.thetas: 2"),
    ({"models": {"dit-digits": {"nfe": {20: {"lambdas": ["-1e-3"]}}}}}, f"{D}.nfe.20.lambdas: '-1e-3'"),
    ({"models": {"dit-digits": {"nfe": {20: {"trajectory_theta": 7}}}}}, f"{D}.nfe.20.trajectory_theta: 7"),
    ({"models": {"dit-digits": {"nfe": {20: {"trajectory_router": {"lr": "abc"}}}}}}, f"{D}.nfe.20.trajectory_router"),
    ({"models": {"dit-digits": {"nfe": {20: {"router": {"lr": 0}}}}}}, f"{D}.nfe.20.router.lr: 0 is out of range"),
    ({"router": {"lr": -1}}, "router.lr: -1 is out of range"),
    ({"router": {"steps": 0}}, "router.steps: 0 is less than the minimum of 1"),
    ({"router": {"label_dropout": 1}}, "router.label_dropout: 1 is out of range"),
    ({"models": {"dit-digits": {"router": {"clamp": 0}}}}, f"{D}.router.clamp: 0 is out of range"),
    ({"models": {"dit-digits": {"cfg_scale": -1}}}, f"{D}.cfg_scale: -1 is out of range"),
    ({"models": {"dit-digits": {"cfg_channels": 0}}}, f"{D}.cfg_channels: 0 is less than the minimum of 1"),
    ({"models": {"dit-digits": {"model_kwargs": {"input_size": 0}}}}, f"{D}.model_kwargs.input_size: 0"),
    ({"models": {"dit-digits": {"sampler": "euler"}}}, f"{D}.sampler"),
    ({"models": {"dit-digits": {"sampling": {"batch_size": 0}}}}, f"{D}.sampling.batch_size: 0"),
    ({"sampling": {"num_samples": 0}}, "sampling.num_samples: 0 is less than the minimum of 1"),
    ({"latency": {"batch": -8}}, "latency.batch: -8"),
    ({"threads": 0}, "threads: 0"),
    ({"random_seeds": [0, -1]}, "random_seeds.1: -1 is less than the minimum of 0"),
    ({"sampling": {"seed": -1}}, "sampling.seed: -1"),
    ({"device": "gpu"}, "device: 'gpu'"),
    ({"nfes": [20]}, "(top level): Additional properties are not allowed ('nfes' was unexpected)"),
    ({"models": {"dit-digits": {"pretrain": {"lr": 0, "steps": 1}, "checkpoint": None}}}, f"{D}.pretrain.lr: 0 is out of range"),
    ({"models": {"dit-digits": {"pretrain": {"ema_decay": 1.0}, "checkpoint": None}}}, f"{D}.pretrain.ema_decay: 1.0"),
]


@pytest.mark.parametrize("overlay,expect", CONFIG_CASES, ids=[e.split(":")[0] for _, e in CONFIG_CASES])
def test_workflow_config_refused_with_the_key_path(overlay, expect):
    import yaml

    from l2c import cells
    config = cells._merge(yaml.safe_load(CONFIG.read_text()), overlay)
    with pytest.raises(cells.ConfigError) as e:
        cells.check_schema(config)
        cells.plan(cells.resolve(config))
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_check_config_names_the_yaml_line_and_the_key(tmp_path, capsys):
    """snakemake says only "Config file is not valid JSON or YAML" for a syntax error (before the
    workflow is read); l2c check-config reads the files as snakemake --configfile does and names the line."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  dit-digits:\n    nfe: {20: {theta: 0.5}\n    sampler: ddim\n")
    assert main(["check-config", str(CONFIG), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"l2c check-config: error: {bad}: not valid YAML at line 4") and "\n" not in err
    over = tmp_path / "over.yaml"
    over.write_text("models:\n  dit-digits:\n    nfe:\n      20:\n        theta: 1.5\n")
    assert main(["check-config", str(CONFIG), str(over)]) == 2
    assert "models.dit-digits.nfe.20.theta: 1.5 is out of range" in capsys.readouterr().err
    assert main(["check-config", str(CONFIG)]) == 0
    assert ": valid; " in capsys.readouterr().out
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err


def test_snakemake_refuses_a_bad_config_at_parse_time(tmp_path):
    """common.smk: the key path in one line, before any job (a dry run)."""
    import subprocess
    import sys
    over = tmp_path / "over.yaml"
    over.write_text("models:\n  uvit-digits:\n    nfe:\n      19: {}\n")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(CONFIG), str(over)],
                       cwd=CONFIG.parents[1], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "invalid config: models.uvit-digits.nfe.19: DPM-Solver-2" in r.stdout + r.stderr
