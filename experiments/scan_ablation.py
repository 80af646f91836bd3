"""The scan-order ablation of issue 16: equal-parameter, equal-step ZigMa models that differ
only in the scan schedule (paper Table 1) or the positional embedding (Table 2), each trained
and scored with the real ``zigma train`` / ``zigma eval``, over several seeds.

Stated before any run (docs/ablation.md): on every distance metric (lower is better)
zigzag-8 <= zigzag-2 <= zigzag-1 < sweep, and learnable <= sincos <= none (learnable best).

    python experiments/scan_ablation.py rows                  # rows, overrides, parameters
    python experiments/scan_ablation.py run --setting fashion --seeds 0,1,2 \\
        --extractors inception-fp16:.gpu/inception-fp16.pt --deadline-s 540 --jobs 3 --out $OUT
    python experiments/scan_ablation.py run --setting fashion --rows zigzag-8   # one row
    python experiments/scan_ablation.py report                # docs/ablation.md + plot

When the data and the extractor's weights cannot be on one machine at once (a GPU call carries
64 MiB: Fashion-MNIST and the Inception copy do not fit together), ``run --score-later`` trains
and draws the eval samples with the data, computes only the metrics that need no extractor
(the domain classifier's), and packs the samples into ``--out/shards.tgz``; ``score`` then
computes the extractor's metrics from those shards elsewhere and completes the results:

    python experiments/scan_ablation.py run --setting fashion --score-later \
        --extractors inception-fp16:inception-fp16.pt --deadline-s 540 --jobs 2 --out $OUT
    python experiments/scan_ablation.py score --shards shards.tgz \
        --extractors inception-fp16:.gpu/inception-fp16.pt --cache REF_CACHE

``run`` is resumable: every finished (setting, row, seed) is one line of the results file
(``--results``, default experiments/results/scan_ablation.jsonl; a copy goes to ``--out``
after each), and a rerun skips those whose protocol is unchanged. A run cut off by
``--deadline-s`` (SIGTERM: ``zigma train`` checkpoints and exits 75) or killed outright
continues from its checkpoint or eval shards when ``--work`` still holds them, and starts
afresh otherwise; no new run starts when the deadline would cut it off.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from ablation_jobs import (
    UNSCORED,
    Job,
    append_result,
    finished_keys,
    read_results,
    run_jobs,
)

REPO = Path(__file__).resolve().parents[1]
# this checkout's zigma, as in the subprocesses (PYTHONPATH below), whatever else is installed
sys.path.insert(0, str(REPO / "src"))
DEFAULT_RESULTS = REPO / "experiments" / "results" / "scan_ablation.jsonl"
DEFAULT_DOC = REPO / "docs" / "ablation.md"


# -- what is compared ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One configuration: train overrides applied after the setting's (later keys win)."""

    name: str
    group: Literal["scan", "pos"]
    overrides: tuple[str, ...]
    what: str


def _scan(kind: str, k: int) -> tuple[str, ...]:
    return (f"model.scan={kind}", f"model.num_orders={k}")


# JSON-quoted: a bare `none` in a key=value override is null, which the model section reads as
# "the preset's value" (learnable) -- the row would silently be a copy of its learnable twin.
_NO_PE = 'model.pos_embed="none"'

ROWS: tuple[Row, ...] = (
    Row("sweep", "scan", _scan("sweep", 1), "raster order in every layer"),
    Row("zigzag-1", "scan", _scan("zigzag", 1), "one zigzag order (S0) in every layer"),
    Row("zigzag-2", "scan", _scan("zigzag", 2), "layer i scans S_(i mod 2)"),
    Row("zigzag-4", "scan", _scan("zigzag", 4), "layer i scans S_(i mod 4)"),
    Row("zigzag-8", "scan", _scan("zigzag", 8), "layer i scans S_(i mod 8) (the paper's ZigMa)"),
    Row("hilbert-8", "scan", _scan("hilbert", 8), "eight Hilbert-curve orders, one per layer"),
    Row("random-8", "scan", _scan("random", 8), "eight random permutations (scan_seed 0)"),
    Row(
        "vim",
        "scan",
        ("model.preset=Vim-S/2", *_scan("bidirectional", 1), "model.hidden_size=184"),
        "Vision-Mamba block: raster order forwards and backwards with two sets of SSM weights; "
        "width 184 so its parameters match",
    ),
    Row("sweep-pe-none", "pos", (*_scan("sweep", 1), _NO_PE), "sweep, no PE"),
    Row("sweep-pe-sincos", "pos", (*_scan("sweep", 1), "model.pos_embed=sincos"), "sweep, sin-cos"),
    Row("zigzag-8-pe-none", "pos", (*_scan("zigzag", 8), _NO_PE), "zigzag-8, no PE"),
    Row(
        "zigzag-8-pe-sincos",
        "pos",
        (*_scan("zigzag", 8), "model.pos_embed=sincos"),
        "zigzag-8, sin-cos",
    ),
)
ROW_NAMES = tuple(r.name for r in ROWS)
# The learnable-PE member of each positional-embedding triple is the scan row itself.
POS_TRIPLES = {
    "sweep": ("sweep-pe-none", "sweep-pe-sincos", "sweep"),
    "zigzag-8": ("zigzag-8-pe-none", "zigzag-8-pe-sincos", "zigzag-8"),
}
# Predictions as (better, worse, strict) pairs on lower-is-better metrics.
PREDICTIONS: tuple[tuple[str, str, bool], ...] = (
    ("zigzag-8", "zigzag-2", False),
    ("zigzag-2", "zigzag-1", False),
    ("zigzag-1", "sweep", True),
    ("sweep", "sweep-pe-sincos", False),
    ("sweep-pe-sincos", "sweep-pe-none", False),
    ("zigzag-8", "zigzag-8-pe-sincos", False),
    ("zigzag-8-pe-sincos", "zigzag-8-pe-none", False),
)

# The paper's numbers (FID-5k). Table 1: MultiModal-CelebA at 256^2 and 512^2. Table 4:
# MS-COCO at batch 256 (the only table with sweep, zigzag and Vision Mamba together). Table 2:
# unconditional CelebA 256^2, positional embeddings none / cosine / learnable, for ZigMa and
# Vision Mamba (the paper has no sweep triple; its Vision Mamba is our "vim").
PAPER_TABLE1 = {
    "sweep": (158.1, 162.3),
    "zigzag-1": (65.7, 121.0),
    "zigzag-2": (54.7, 96.0),
    "zigzag-8": (45.5, 34.9),
}
PAPER_TABLE4 = {"sweep": 195.1, "zigzag-1": 73.1, "vim": 60.2, "zigzag-8": 41.8}
PAPER_TABLE2 = {
    "zigzag-8": {"none": 14.27, "sincos": 14.04, "learnable": 13.32},
    "vim": {"none": 21.33, "sincos": 18.47, "learnable": 16.38},
}


@dataclass(frozen=True)
class Setting:
    """Data, recipe and eval protocol shared by every row.

    ``estimate_s`` is one run's train + eval wall time alone on one H200, estimated from
    BENCHMARKS.md (not measured): the deadline uses it until the results file holds measured
    times of this setting.
    """

    name: str
    what: str
    preset: str
    overrides: tuple[str, ...]
    classes: int  # the data's, so parameters can be counted without loading it
    tokens: int
    num: int  # samples drawn per eval, and real images compared with
    sampler: str
    sample_steps: int
    shard_size: int
    eval_batch: int
    metrics: str
    headline: str  # the metric (label prefix) the plot shows
    estimate_s: float


# The recipe every row of both settings trains with (beside the setting's data and batch):
# ZigMa-S/2's block at width 192, depth 8 (every zigzag-8 order once), patch 1, class labels
# with 10% dropout, AdamW 5e-4 with 100 warm-up steps and a cosine decay to 5e-5, clip 2.0,
# logit-normal times, EMA 0.999, bf16 autocast, 1500 steps.
RECIPE: tuple[str, ...] = (
    "model.preset=ZigMa-S/2",
    "model.hidden_size=192",
    "model.depth=8",
    "model.patch_size=1",
    "model.pos_embed=learnable",
    "transport.time_dist=logit-normal",
    "optim.lr=5e-4",
    "optim.warmup_steps=100",
    "optim.decay=cosine",
    "optim.min_lr_ratio=0.1",
    "ema.decay=0.999",
    "steps=1500",
    "precision=bf16",
    "ckpt_every=250",
    "keep_last_checkpoints=2",
    "preview.every=0",
    "logging.every=50",
    "export.dtype=fp32",
)

SETTINGS: dict[str, Setting] = {
    "fashion": Setting(
        "fashion",
        "Fashion-MNIST padded to 32x32, patch 1: 1024 tokens (the paper's CelebA-256 latent "
        "length), 10 classes, batch 32",
        "fashion-mnist",
        (*RECIPE, "data.name=fashion-mnist", "data.resolution=32", "batch_size=32"),
        classes=10,
        tokens=1024,
        num=1000,
        sampler="heun",
        sample_steps=20,
        shard_size=250,
        eval_batch=250,
        metrics="fid,kid,fd-classifier,cond-acc",
        headline="FD-fashion-mnist-classifier",
        estimate_s=170.0,
    ),
    "scenes": Setting(
        "scenes",
        "procedural scenes (1-3 shapes on a 3x3 grid) at 64x64, patch 1: 4096 tokens, 3 classes "
        "(the first object's kind), batch 8 (the same tokens per step as fashion)",
        "shapes-s",
        (*RECIPE, "data.name=scenes", "data.resolution=64", "batch_size=8", "num_workers=2"),
        classes=3,
        tokens=4096,
        num=500,
        sampler="heun",
        sample_steps=20,
        shard_size=125,
        eval_batch=125,
        metrics="fid,kid",  # no domain classifier of scenes exists: Inception only
        headline="F",  # FID or FD-inception-...-fp16copy, whichever extractor was given
        estimate_s=200.0,
    ),
}


def train_overrides(setting: Setting, row: Row, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """The ``key=value`` list of one run: the setting's, the row's, the seed, then ``extra``."""
    return [*setting.overrides, *row.overrides, f"seed={seed}", *extra]


def train_config(setting: Setting, row: Row, seed: int = 0, extra: Sequence[str] = ()):
    """The row's ``TrainConfig``, as ``zigma train`` builds it from the same overrides."""
    from zigma.train import build_config

    return build_config(setting.preset, overrides=train_overrides(setting, row, seed, extra))


def model_parameters(setting: Setting, row: Row, extra: Sequence[str] = ()) -> dict[str, int]:
    """{"total", "pos_embed"}: parameters of the row's model, built on the meta device."""
    import torch

    from zigma.models import count_parameters
    from zigma.models.registry import preset_family

    cfg = train_config(setting, row, extra=extra)
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        model = preset_family(cfg.model.preset).model_class(cfg.model_config(setting.classes))
    pos = sum(p.numel() for n, p in model.named_parameters() if n.endswith("pos_embed"))
    return {"total": count_parameters(model), "pos_embed": pos}


# -- protocol keys ------------------------------------------------------------------------------
# zigma eval metrics computed on --extractors' features; the others use the shipped classifiers
EXTRACTOR_METRICS = ("fid", "kid", "prdc")


def split_metrics(metrics: str) -> tuple[list[str], list[str]]:
    """(metrics computed without --extractors, metrics on --extractors' features)."""
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    return (
        [m for m in names if m not in EXTRACTOR_METRICS],
        [m for m in names if m in EXTRACTOR_METRICS],
    )


@dataclass(frozen=True)
class EvalArgs:
    """What ``zigma eval`` is given besides the model (the setting's unless overridden)."""

    num: int
    sampler: str
    steps: int
    shard_size: int
    batch_size: int
    metrics: str
    extractors: str

    def key_fields(self) -> dict[str, Any]:
        # a file's folder differs between machines: its name (and the sha256 in every record)
        # identifies it. The batch size changes nothing but rounding.
        extractors = []
        for spec in self.extractors.split(","):
            kind, sep, path = spec.partition(":")
            extractors.append(kind + sep + (Path(path).name if sep else ""))
        return {
            "num": self.num,
            "sampler": self.sampler,
            "steps": self.steps,
            "shard_size": self.shard_size,
            "metrics": self.metrics,
            "extractors": extractors,
        }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def protocol_key(setting: Setting, ev: EvalArgs, extra: Sequence[str]) -> str:
    """The setting-level protocol (what every row shares): results are grouped by it."""
    return _digest(
        {"preset": setting.preset, "train": [*setting.overrides, *extra], "eval": ev.key_fields()}
    )


def run_key(setting: Setting, row: Row, ev: EvalArgs, extra: Sequence[str]) -> str:
    """The row-level key: a finished result with this key (and seed) is not run again."""
    return _digest({"protocol": protocol_key(setting, ev, extra), "row": list(row.overrides)})


# -- the run command ----------------------------------------------------------------------------
def _zigma(*args: str) -> list[str]:
    return [sys.executable, "-m", "zigma", *args]


def _card(device: str | None) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def _commit(given: str | None) -> str:
    if given:
        return given
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _fail(message: str) -> NoReturn:
    """A usage error: one line on stderr, exit status 2, before anything is run or written."""
    print(f"scan_ablation: {message}", file=sys.stderr)
    raise SystemExit(2)


def _select(text: str | None, known: Sequence[str], what: str) -> list[str]:
    if text is None:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        _fail(f"--{what} takes names from {', '.join(known)}; got {text!r}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds):
        _fail(f"--seeds takes non-negative integers, e.g. 0,1,2; got {text!r}")
    return seeds


def run_folder(row: str, seed: int, key: str) -> str:
    """The folder of one run under ``--work/<setting>`` (and in ``shards.tgz``)."""
    return f"{row}-s{seed}-{key[:8]}"


def build_jobs(args: argparse.Namespace, env: dict[str, str]) -> tuple[list[Job], list[dict]]:
    """The jobs of the selection not finished in the results file, and those results."""
    records = read_results(args.results)
    # a run waiting for its extractor metrics is finished here: `score` completes it
    done = finished_keys(records) | {
        (r["key"], int(r["seed"])) for r in records if r.get("status") == UNSCORED
    }
    work = Path(args.work)
    device = ["device=cpu"] if args.device == "cpu" else []
    jobs = []
    for setting_name in _select(args.setting, list(SETTINGS), "setting"):
        setting = SETTINGS[setting_name]
        ev = EvalArgs(
            num=args.num or setting.num,
            sampler=setting.sampler,
            steps=args.sample_steps or setting.sample_steps,
            shard_size=args.shard_size or setting.shard_size,
            batch_size=args.eval_batch or setting.eval_batch,
            metrics=args.metrics or setting.metrics,
            extractors=args.extractors,
        )
        extra = list(args.train_override)
        for seed in _seeds(args.seeds):  # seed-major: every row of seed 0 first
            for row in (r for r in ROWS if r.name in _select(args.rows, ROW_NAMES, "rows")):
                key = run_key(setting, row, ev, extra)
                if (key, seed) in done:
                    continue
                folder = work / setting.name / run_folder(row.name, seed, key)
                overrides = train_overrides(setting, row, seed, [*extra, *device])
                train = _zigma(
                    "train",
                    "--preset",
                    setting.preset,
                    "--out",
                    str(folder / "train"),
                    "--resume",
                    *overrides,
                )
                now, later = split_metrics(ev.metrics)
                if not getattr(args, "score_later", False):
                    scored = ["--metrics", ev.metrics, "--extractors", ev.extractors]
                elif now:
                    scored = ["--metrics", ",".join(now)]
                else:
                    scored = ["--sample-only"]
                evaluate = _zigma(
                    "eval",
                    "--ckpt",
                    str(folder / "train"),
                    "--out",
                    str(folder / "eval"),
                    "--num",
                    str(ev.num),
                    *scored,
                    "--sampler",
                    ev.sampler,
                    "--steps",
                    str(ev.steps),
                    "--cfg",
                    "1",
                    "--seed",
                    str(seed),
                    "--batch-size",
                    str(ev.batch_size),
                    "--shard-size",
                    str(ev.shard_size),
                    *(["--device", args.device] if args.device else []),
                )
                protocol = protocol_key(setting, ev, extra)
                job = Job(setting.name, row.name, seed, key, protocol, folder, train, evaluate, env)
                jobs.append(job)
    return jobs, records


def check_extractors(specs: str, metrics: Sequence[str]) -> None:
    """Load every extractor a run will use once, here, so that a missing file or package stops
    the call in one line before anything trains (not at each run's eval).

    Raises:
        SystemExit: (status 2) an extractor cannot be loaded.
    """
    if not any(m in ("fid", "kid", "prdc") for ms in metrics for m in ms.split(",")):
        return
    import zigma.evaluate.classifier  # noqa: F401  (registers the classifier: extractors)
    from zigma.evaluate.features import load_extractor

    for spec in (s.strip() for s in specs.split(",") if s.strip()):
        try:
            load_extractor(spec, "cpu")
        except (OSError, ValueError, ImportError) as e:
            _fail(f"--extractors {spec}: {e}")


def _copy_out(results: Path, out: Path | None) -> None:
    if out is not None and results.is_file():
        from zigma.artifacts import write_text_atomic

        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "results.jsonl", results.read_text(encoding="utf-8"))


def _sample_grid(job: Job) -> None:
    """The first 32 eval samples as a PNG beside the logs (read back from the shard: no
    extra sampling)."""
    from zigma.data.grid import save_image_grid
    from zigma.evaluate.run import read_shard

    try:
        samples, _ = read_shard(job.folder / "eval", 0)
        save_image_grid(samples[:32].float() / 127.5 - 1, job.folder / "samples.png", nrow=8)
    except (OSError, ValueError) as e:
        print(f"no sample grid for {job.name}: {e}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("ZIGMA_CACHE", str(Path(args.work).resolve() / "cache"))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    jobs, records = build_jobs(args, env)
    if jobs and not args.score_later:  # with --score-later the extractor is not loaded here
        metrics = {args.metrics or SETTINGS[j.setting].metrics for j in jobs}
        check_extractors(args.extractors, sorted(metrics))
    results, out = Path(args.results), Path(args.out) if args.out else None
    print(f"{len(jobs)} run(s) to do; results in {results}", flush=True)
    common = {"commit": _commit(args.commit), "card": _card(args.device), "jobs": args.jobs}
    import torch

    common["torch"] = torch.__version__
    params = {}
    for job in jobs:
        if (job.setting, job.row) not in params:
            row = ROWS[ROW_NAMES.index(job.row)]
            params[job.setting, job.row] = model_parameters(
                SETTINGS[job.setting], row, args.train_override
            )

    def expected(job: Job) -> float:
        """The median measured wall time of this setting at this concurrency, else the
        setting's estimate for one run alone, times jobs / 2 for several at once (four video
        runs together got about twice one run's throughput, BENCHMARKS.md); ``--expected-s``
        replaces both."""
        if args.expected_s is not None:
            return args.expected_s
        walls = sorted(
            r["wall_s"]
            for r in records
            if r.get("status") == "ok"
            and r.get("setting") == job.setting
            and r.get("jobs") == args.jobs
        )
        if walls:
            return walls[len(walls) // 2]
        return SETTINGS[job.setting].estimate_s * max(1.0, args.jobs / 2)

    finished: list[Job] = []

    def over(job: Job) -> None:
        if job.state == "stopped":
            return  # resumable: nothing recorded
        if job.state == "ok":
            _sample_grid(job)
        rec = job.record({**common, "params": params[job.setting, job.row]})
        if args.score_later and rec["status"] == "ok":
            later = split_metrics(args.metrics or SETTINGS[job.setting].metrics)[1]
            rec = {
                **rec,
                "status": UNSCORED,
                "pending": {"metrics": ",".join(later), "extractors": args.extractors},
            }
        append_result(results, rec)
        records.append(rec)
        finished.append(job)
        _copy_out(results, out)
        if rec["status"] in ("ok", UNSCORED):
            shown = ", ".join(f"{k} {v['value']:.4g}" for k, v in rec["metrics"].items())
            print(f"  {job.name}: {shown} ({rec['wall_s']:.0f} s)", flush=True)

    # SIGTERM to this script (a call's time running out) stops the runs as the deadline does
    limit = [t0 + args.deadline_s if args.deadline_s else float("inf")]
    signal.signal(signal.SIGTERM, lambda *_: limit.__setitem__(0, 0.0))
    left = run_jobs(jobs, args.jobs, lambda: limit[0], expected, over)
    _copy_out(results, out)
    # stopped runs too: their logs say how far and how fast they got (the checkpoints, which a
    # later call could resume from, stay in --work)
    kept = finished + [j for j in jobs if j.state == "stopped"]
    if out is not None and kept:
        with tarfile.open(out / "runs.tgz", "w:gz") as tar:
            for job in kept:
                for name in (
                    "train.log",
                    "eval.log",
                    "wall.json",
                    "samples.png",
                    "train/log.txt",
                    "train/loss.png",
                    "train/metrics.jsonl",
                    "eval/results.json",
                ):
                    path = job.folder / name
                    if path.is_file():
                        tar.add(path, arcname=f"{job.setting}/{job.folder.name}/{name}")
    if out is not None and args.score_later and finished:
        pack_shards([j for j in finished if j.state == "ok"], out / "shards.tgz")
    ok = sum(j.state == "ok" for j in finished)
    stopped = sum(j.state == "stopped" for j in jobs)
    print(
        f"done in {time.monotonic() - t0:.0f} s: {ok} finished, "
        f"{len(finished) - ok} failed, {stopped} stopped, {len(left)} not started"
    )
    return 0 if len(finished) == ok else 1


# -- scoring elsewhere (run --score-later, then score) ------------------------------------------
def pack_shards(jobs: Sequence[Job], path: Path) -> None:
    """The eval folders (samples, manifest, partial results) of ``jobs`` as one ``.tgz``,
    each under ``<setting>/<run folder>/eval``."""
    with tarfile.open(path, "w:gz") as tar:
        for job in jobs:
            tar.add(job.folder / "eval", arcname=f"{job.setting}/{job.folder.name}/eval")


def _unscored(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest record of each (key, seed) when it still waits for ``score``."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in records:
        k = (rec["key"], int(rec["seed"]))
        if rec.get("status") in ("ok", UNSCORED) or k not in last:
            last[k] = rec
    return [r for r in last.values() if r.get("status") == UNSCORED]


def _extractor_names(specs: str) -> list[str]:
    return [s.split(":", 1)[0] + ":" + Path(s.split(":", 1)[1]).name if ":" in s else s
            for s in (x.strip() for x in specs.split(",")) if s]  # fmt: skip


def _check_shards(path: Path) -> None:
    """Stop with one line unless ``path`` is a readable .tgz of eval folders."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
    except (OSError, EOFError, tarfile.TarError) as e:
        _fail(f"--shards {path}: not a readable .tgz ({e})")
    if not any(n.endswith("/eval/eval.json") for n in names):
        _fail(f"--shards {path}: holds no eval folder (the shards.tgz of run --score-later)")


def cmd_score(args: argparse.Namespace) -> int:
    """Complete the unscored runs of ``--results`` from the shards in ``--shards``."""
    t0 = time.monotonic()
    results, out = Path(args.results), Path(args.out) if args.out else None
    if not results.is_file():
        _fail(f"--results {results}: no such file (the results of run --score-later)")
    for tgz in args.shards:
        _check_shards(Path(tgz))
    records = read_results(results)
    waiting = _unscored(records)
    print(f"{len(waiting)} run(s) wait for scoring in {results}", flush=True)
    if not waiting:
        return 0
    for rec in waiting:  # the key names the extractor: another one would make it a lie
        if _extractor_names(rec["pending"]["extractors"]) != _extractor_names(args.extractors):
            _fail(
                f"{rec['setting']}/{rec['row']}/seed {rec['seed']} was run for "
                f"--extractors {rec['pending']['extractors']}, not {args.extractors}"
            )
    check_extractors(args.extractors, [r["pending"]["metrics"] for r in waiting])
    unpacked = Path(args.work) / "scoring"
    for tgz in args.shards:
        with tarfile.open(tgz, "r:gz") as tar:
            tar.extractall(unpacked, filter="data")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("ZIGMA_CACHE", str(Path(args.work).resolve() / "cache"))
    common = {"commit": _commit(args.commit), "card": _card(args.device)}
    failed = 0
    for rec in waiting:
        name = f"{rec['setting']}/{rec['row']}/seed {rec['seed']}"
        folder = (
            unpacked / rec["setting"] / run_folder(rec["row"], rec["seed"], rec["key"]) / "eval"
        )
        if not (folder / "eval.json").is_file():
            print(f"no shards for {name} in {', '.join(args.shards)}: left unscored", flush=True)
            failed += 1
            continue
        scored_json = folder / "scored.json"
        cmd = _zigma(
            "eval", "--samples", str(folder), "--metrics", rec["pending"]["metrics"],
            "--extractors", args.extractors, "--json", str(scored_json),
            *(["--cache", args.cache] if args.cache else []),
            *(["--batch-size", str(args.eval_batch)] if args.eval_batch else []),
            *(["--device", args.device] if args.device else []),
        )  # fmt: skip
        t = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"scoring {name} failed:\n{(proc.stdout + proc.stderr)[-1500:]}", flush=True)
            failed += 1
            continue
        scored = json.loads(scored_json.read_text())["results"]
        metrics = {
            **rec["metrics"],
            **{r["metric"]: {"value": r["value"], "std": r.get("std")} for r in scored},
        }
        done = {k: v for k, v in rec.items() if k != "pending"}
        done.update(
            status="ok",
            metrics=metrics,
            records=[*rec.get("records", []), *scored],
            scored={**common, "command": "zigma " + " ".join(cmd[3:]),
                    "seconds": round(time.monotonic() - t, 1)},
        )  # fmt: skip
        append_result(results, done)
        _copy_out(results, out)
        shown = ", ".join(f"{k} {v['value']:.4g}" for k, v in metrics.items())
        print(f"  {name}: {shown}", flush=True)
    print(f"scored in {time.monotonic() - t0:.0f} s: {len(waiting) - failed} of {len(waiting)}")
    return 1 if failed else 0


# -- the rows and report commands ----------------------------------------------------------------
def parameter_table(names: Sequence[str]) -> str:
    """Markdown: every row's overrides and parameters per setting, against zigzag-8's (in
    total, and without the positional table, which is what the PE rows change)."""
    lines = [
        "| row | what | train overrides | " + " | ".join(f"parameters, {n}" for n in names) + " |",
        "|" + "---|" * (3 + len(names)),
    ]
    ref = {n: model_parameters(SETTINGS[n], ROWS[ROW_NAMES.index("zigzag-8")]) for n in names}
    for row in ROWS:
        cells = []
        for n in names:
            p, r = model_parameters(SETTINGS[n], row), ref[n]
            total = (p["total"] - r["total"]) / r["total"]
            bare = (p["total"] - p["pos_embed"]) / (r["total"] - r["pos_embed"]) - 1
            cells.append(f"{p['total']:,} ({total:+.1%}; without PE {bare:+.1%})")
        lines.append(
            f"| {row.name} | {row.what} | `{' '.join(row.overrides)}` | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def cmd_rows(args: argparse.Namespace) -> int:
    names = _select(args.setting, list(SETTINGS), "setting")
    print(parameter_table(names))
    for n in names:
        s = SETTINGS[n]
        print(f"\n{n}: {s.what}\n  zigma train --preset {s.preset} {' '.join(s.overrides)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ablation_report import write_report

    records = [r for path in args.results for r in read_results(path)]
    text = write_report(records, Path(args.doc), Path(args.plot))
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("rows", help="print the rows, their overrides and parameter counts")
    p.add_argument("--setting", default=None, help="comma-separated settings (default all)")
    p.set_defaults(func=cmd_rows)

    p = sub.add_parser("run", help="train and score the (row, seed) runs not yet in --results")
    p.add_argument("--setting", default=None, help=f"comma-separated of {', '.join(SETTINGS)}")
    p.add_argument("--rows", default=None, help="comma-separated row names (default all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--work", default="runs/ablation", help="run folders (default runs/ablation)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="results JSONL (appended)")
    p.add_argument("--out", default=None, help="copy results.jsonl and runs.tgz here")
    p.add_argument("--deadline-s", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--jobs", type=int, default=1, help="runs at once on the one device")
    p.add_argument(
        "--expected-s",
        type=float,
        default=None,
        help="seconds one run is assumed to take when deciding whether it can start before "
        "the deadline (default: the median measured here, else the setting's estimate)",
    )
    p.add_argument("--extractors", default="inception", help="zigma eval --extractors")
    p.add_argument("--metrics", default=None, help="zigma eval --metrics (default: setting's)")
    p.add_argument("--num", type=int, default=None, help="eval samples (default: setting's)")
    p.add_argument("--sample-steps", type=int, default=None, help="eval sampler steps")
    p.add_argument("--shard-size", type=int, default=None, help="eval samples per shard")
    p.add_argument("--eval-batch", type=int, default=None, help="eval batch size")
    p.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra zigma train override for every run (repeatable; changes the protocol key)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--commit", default=None, help="commit recorded (default: git HEAD)")
    p.add_argument(
        "--score-later",
        action="store_true",
        help="compute only the metrics that need no --extractors, pack the samples into "
        "--out/shards.tgz and leave the runs for `score` (data and extractor on two machines)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("score", help="compute the extractor metrics of --score-later runs")
    p.add_argument("--shards", nargs="+", required=True, help="shards.tgz files of run --out")
    p.add_argument("--extractors", required=True, help="zigma eval --extractors (the run's)")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="results JSONL (appended)")
    p.add_argument("--work", default="runs/ablation", help="where the shards are unpacked")
    p.add_argument("--cache", default=None, help="reference feature cache (zigma eval --cache DIR)")
    p.add_argument("--out", default=None, help="copy results.jsonl here")
    p.add_argument("--eval-batch", type=int, default=None, help="eval batch size")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--commit", default=None, help="commit recorded (default: git HEAD)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", help="aggregate results into docs/ablation.md and a plot")
    p.add_argument("--results", nargs="+", default=[str(DEFAULT_RESULTS)], help="JSONL files")
    p.add_argument("--doc", default=str(DEFAULT_DOC), help="the markdown file to fill")
    p.add_argument("--plot", default=str(DEFAULT_DOC.with_suffix(".png")), help="PNG written")
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        ap.error("--jobs must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
