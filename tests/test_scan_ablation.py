"""experiments/scan_ablation.py: its rows (equal parameters; configs that differ only in the
scan schedule or the positional embedding), the job scheduler's deadline with real processes,
the results file, one tiny row end to end through the real CLI (and skipped when run again),
and the report's mean ± std against numpy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from zigma.data.idx import FASHION_MNIST_DEBIAN_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "scan_ablation.py"
sys.path.insert(0, str(SCRIPT.parent))  # the scripts import each other from their folder

import ablation_jobs as jobs  # noqa: E402
import ablation_report as report  # noqa: E402
import scan_ablation as ablation  # noqa: E402

ROW = {r.name: r for r in ablation.ROWS}


def _flat(obj, prefix=""):
    """Nested dataclass / dict -> {"a.b": leaf}."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


@pytest.mark.parametrize("setting", list(ablation.SETTINGS))
def test_rows_have_equal_parameters(setting):
    s = ablation.SETTINGS[setting]
    counts = {r.name: ablation.model_parameters(s, r) for r in ablation.ROWS}
    ref = counts["zigzag-8"]
    assert ref["pos_embed"] == s.tokens * 192  # the learnable table: one 192-wide row a token
    for name, c in counts.items():
        row = ROW[name]
        if name == "vim":  # its own block: width chosen so the total is within 2%
            assert c["total"] != ref["total"]
            assert abs(c["total"] - ref["total"]) / ref["total"] < 0.02, c
        elif row.group == "scan":  # orders are buffers: not one parameter more or less
            assert c == ref, name
        else:  # the PE rows differ by exactly the learnable table
            assert c["pos_embed"] == 0
            assert c["total"] == ref["total"] - ref["pos_embed"], name


def test_rows_differ_only_in_scan_schedule_or_pos_embed():
    s = ablation.SETTINGS["fashion"]
    configs = {}
    for row in ablation.ROWS:
        cfg = ablation.train_config(s, row, seed=1)
        configs[row.name] = {
            **_flat(cfg, "train."),
            **_flat(cfg.model_config(s.classes), "built."),
        }
    ref = configs["zigzag-8"]
    scan_keys = {"model.scan", "model.num_orders", "built.scan", "built.num_orders"}
    allowed = {
        "scan": scan_keys,
        "pos": scan_keys | {"model.pos_embed", "built.pos_embed"},
    }
    for name, flat in configs.items():
        changed = {k.removeprefix("train.") for k in flat if flat[k] != ref[k]}
        extra = (
            {"model.preset", "model.hidden_size", "built.hidden_size"} if name == "vim" else set()
        )
        assert changed <= allowed[ROW[name].group] | extra, (name, changed)
        assert flat["train.seed"] == 1 and flat["train.steps"] == 1500
    # every row is a different model (no override silently falling back to the preset's value)
    built = [
        tuple(sorted((k, str(v)) for k, v in f.items() if k.startswith("built.")))
        for f in configs.values()
    ]
    assert len(set(built)) == len(ablation.ROWS)
    assert configs["sweep-pe-none"]["built.pos_embed"] == "none"
    assert configs["zigzag-8-pe-sincos"]["built.pos_embed"] == "sincos"
    assert configs["vim"]["built.scan"] == "bidirectional"
    assert configs["vim"]["built.depth"] == ref["built.depth"] == 8
    for k in (1, 2, 4, 8):
        assert configs[f"zigzag-{k}"]["built.num_orders"] == k


def _job(tmp_path: Path, name: str, train: str, evaluate: str) -> jobs.Job:
    py = [sys.executable, "-c"]
    return jobs.Job(
        "s", name, 0, "k", "p", tmp_path / name, [*py, train], [*py, evaluate], dict(os.environ)
    )


def test_run_jobs_stops_at_the_deadline_and_starts_only_what_fits(tmp_path):
    quick = _job(tmp_path, "quick", "pass", "pass")
    slow = _job(tmp_path, "slow", "pass", "import time; time.sleep(60)")
    late = _job(tmp_path, "late", "pass", "pass")
    over = []
    start = time.monotonic()
    expected = {"quick": 0.1, "slow": 0.1, "late": 100.0}
    left = jobs.run_jobs(
        [quick, slow, late],
        2,
        lambda: start + 3.0,
        lambda j: expected[j.row],
        over.append,
        poll_s=0.05,
    )
    assert time.monotonic() - start < 15  # SIGTERM ended the sleeper long before its 60 s
    assert left == [late]  # 100 s could never fit before the deadline
    assert [j.row for j in over] == ["quick", "slow"]
    assert quick.state == "ok" and slow.state == "stopped"
    wall = json.loads((slow.folder / "wall.json").read_text())
    assert wall["train_calls"] == wall["eval_calls"] == 1 and 2 < wall["eval_s"] < 14
    assert (slow.folder / "train_done.json").is_file()  # next call goes straight to eval
    rec = slow.record({})
    assert rec["status"] == "failed" and rec["exit_code"] < 0  # what over() never appends


def test_results_file_survives_a_cut_last_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    first = {"format": jobs.RESULT_FORMAT, "status": "ok", "key": "a", "seed": 0}
    jobs.append_result(path, first)
    with open(path, "a") as f:
        f.write('{"format": "zigma-scan-abl')  # a write cut off by a kill
    second = {**first, "key": "b"}
    jobs.append_result(path, second)
    assert jobs.read_results(path) == [first, second]
    assert "not a JSON line" in capsys.readouterr().err
    assert jobs.finished_keys(jobs.read_results(path)) == {("a", 0), ("b", 0)}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZIGMA_CACHE": str(cwd / "cache")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist)",
)
def test_one_tiny_row_end_to_end_then_skipped(tmp_path):
    results = tmp_path / "results.jsonl"
    tiny = ["steps=2", "precision=fp32", "model.hidden_size=32", "model.depth=2", "batch_size=2"]
    args = [
        "run",
        "--setting",
        "fashion",
        "--rows",
        "zigzag-8",
        "--seeds",
        "3",
        "--device",
        "cpu",
        "--work",
        str(tmp_path / "work"),
        "--results",
        str(results),
        "--out",
        str(tmp_path / "out"),
        "--num",
        "16",
        "--shard-size",
        "16",
        "--eval-batch",
        "16",
        "--sample-steps",
        "2",
        "--metrics",
        "fd-classifier,kid",
        "--extractors",
        "classifier:fashion-mnist",
        *(f"--train-override={o}" for o in tiny),
    ]
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (rec,) = jobs.read_results(results)
    assert rec["status"] == "ok" and (rec["setting"], rec["row"], rec["seed"]) == (
        "fashion",
        "zigzag-8",
        3,
    )
    assert rec["steps"] == 2 and rec["wall_s"] > 0 and rec["calls"] == 1
    fd = rec["metrics"]["FD-fashion-mnist-classifier"]["value"]
    assert math.isfinite(fd) and fd > 0
    assert rec["records"][0]["num_fake"] == 16 and rec["records"][0]["seed"] == 3
    assert rec["params"]["total"] < 200_000  # counted with the overrides, not the full model
    assert rec["commands"][0].startswith("zigma train --preset fashion-mnist")
    assert "seed=3" in rec["commands"][0] and "--seed 3" in rec["commands"][1]
    assert (tmp_path / "out" / "results.jsonl").read_text() == results.read_text()
    assert (tmp_path / "out" / "runs.tgz").is_file()

    again = _run(*args, cwd=tmp_path)  # finished: nothing is trained or drawn again
    assert again.returncode == 0 and "0 run(s) to do" in again.stdout, again.stdout
    assert len(jobs.read_results(results)) == 1


def _records(values: dict[str, list[float]], setting: str = "fashion") -> list[dict]:
    out = []
    for row, vals in values.items():
        for seed, v in enumerate(vals):
            out.append(
                {
                    "format": jobs.RESULT_FORMAT,
                    "status": "ok",
                    "setting": setting,
                    "protocol": "p1",
                    "row": row,
                    "seed": seed,
                    "wall_s": 100.0 + seed,
                    "params": {"total": 3_000_000, "pos_embed": 0},
                    "steps": 1500,
                    "metrics": {"FD-fashion-mnist-classifier": {"value": v, "std": None}},
                    "records": [],
                    "commands": ["zigma train ...", "zigma eval ..."],
                    "commit": "abc",
                    "card": "test card",
                    "jobs": 1,
                    "finished": "2026-12-03T00:00",
                }
            )
    return out


def test_report_mean_std_and_verdicts(tmp_path):
    values = {
        "sweep": [60.0, 64.0, 62.0],
        "zigzag-1": [40.0, 42.5, 41.0],
        "zigzag-2": [41.0, 39.0, 40.2],
        "zigzag-8": [30.0, 31.0, 29.5],
        "zigzag-8-pe-none": [20.0, 21.0, 19.0],  # better than learnable: a reversal
    }
    recs = _records(values)
    recs.append({**recs[0], "status": "failed", "row": "vim", "exit_code": 1})
    (group,) = report.aggregate(recs)
    for row, vals in values.items():
        assert group.cell(row, "FD-fashion-mnist-classifier") == vals
        m, s = report.mean_std(vals)
        assert m == pytest.approx(np.mean(vals)) and s == pytest.approx(np.std(vals, ddof=1))
    assert report.format_cell([60.0, 64.0, 62.0]) == "62.0 ± 2.0"
    assert report.format_cell([0.0286, 0.0298, 0.0274]) == "0.0286 ± 0.0012"
    assert report.format_cell([5.0]) == "5.00" and report.format_cell([]) == "–"

    fd = lambda row: group.cell(row, "FD-fashion-mnist-classifier")  # noqa: E731
    assert report.check_prediction(fd("zigzag-1"), fd("sweep"), True)[1] == "holds"
    assert report.check_prediction(fd("zigzag-8-pe-none"), fd("zigzag-8"), False)[1] == "holds"
    assert report.check_prediction(fd("zigzag-8"), fd("zigzag-8-pe-none"), False)[1] == (
        "**reversed**"
    )
    assert report.check_prediction(fd("zigzag-2"), fd("zigzag-1"), False)[1].startswith(
        "within noise (leans as predicted"
    )

    doc = tmp_path / "ablation.md"
    doc.write_text(f"# kept\n{report.BEGIN}\nold\n{report.END}\nkept too\n")
    body = report.write_report(recs, doc, tmp_path / "ablation.png")
    text = doc.read_text()
    assert text.startswith("# kept\n") and text.endswith("kept too\n") and "\nold\n" not in text
    assert "| sweep | 3.000M | 3 | 62.0 ± 2.0 | 1.00 | 158.1 / 162.3 |" in body
    (line,) = [x for x in body.splitlines() if x.startswith("| zigzag-1 < sweep | FD-")]
    assert line.endswith("| holds |"), line
    assert "**Failed, never finished:** vim/seed 0 (exit 1)" in body
    assert (tmp_path / "ablation.png").stat().st_size > 1000
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n")
    with pytest.raises(ValueError, match="ablation-results:begin"):
        report.write_report(recs, plain, tmp_path / "p.png")


@pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist)",
)
def test_score_later_gives_the_one_call_result(tmp_path):
    tiny = ["steps=2", "precision=fp32", "model.hidden_size=32", "model.depth=2", "batch_size=2"]
    common = [
        "--setting", "fashion", "--rows", "zigzag-8", "--seeds", "1", "--device", "cpu",
        "--num", "16", "--shard-size", "8", "--eval-batch", "16", "--sample-steps", "2",
        "--metrics", "fd-classifier,kid", "--extractors", "classifier:fashion-mnist",
        *(f"--train-override={o}" for o in tiny),
    ]  # fmt: skip

    def run(name: str, *extra: str) -> tuple[Path, subprocess.CompletedProcess]:
        results = tmp_path / f"{name}.jsonl"
        where = ["--work", str(tmp_path / name), "--results", str(results)]
        return results, _run("run", *common, *where, "--out", str(tmp_path / name / "out"),
                             *extra, cwd=tmp_path)  # fmt: skip

    split, proc = run("split", "--score-later")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (rec,) = jobs.read_results(split)
    assert rec["status"] == "unscored" and set(rec["metrics"]) == {"FD-fashion-mnist-classifier"}
    assert rec["pending"]["metrics"] == "kid"
    shards = tmp_path / "split" / "out" / "shards.tgz"
    assert shards.is_file()
    _, again = run("split", "--score-later")  # waiting for score counts as done
    assert again.returncode == 0 and "0 run(s) to do" in again.stdout, again.stdout

    # scored elsewhere: the training folders (and their run configs) are not there
    (tmp_path / "split" / "fashion").rename(tmp_path / "gone")
    score = ["score", "--shards", str(shards), "--results", str(split)]
    wrong = _run(*score, "--extractors", "inception", "--work", str(tmp_path / "w"), cwd=tmp_path)
    assert wrong.returncode != 0 and "was run for --extractors" in wrong.stderr
    scored = _run(*score, "--extractors", "classifier:fashion-mnist", "--device", "cpu",
                  "--work", str(tmp_path / "scoring"), cwd=tmp_path)  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    final = jobs.read_results(split)[-1]
    assert final["status"] == "ok" and final["key"] == rec["key"] and "pending" not in final
    assert (
        final["metrics"]["FD-fashion-mnist-classifier"]
        == rec["metrics"]["FD-fashion-mnist-classifier"]
    )
    # the same run in one call (data and extractor together) gives the same numbers
    whole, proc = run("whole")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (one,) = jobs.read_results(whole)
    assert one["key"] == final["key"] and one["protocol"] == final["protocol"]
    assert set(one["metrics"]) == set(final["metrics"])
    for label, m in one["metrics"].items():
        assert final["metrics"][label]["value"] == pytest.approx(m["value"], rel=1e-5, abs=1e-7)


def test_score_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path):
    results = tmp_path / "r.jsonl"
    line = {"format": jobs.RESULT_FORMAT, "status": "unscored", "key": "k", "seed": 0}
    results.write_text(json.dumps(line) + "\n")
    garbage = tmp_path / "garbage.tgz"
    garbage.write_bytes(b"not a tar at all" * 10)
    empty = tmp_path / "empty.tgz"
    with tarfile.open(empty, "w:gz") as tar:
        note = tmp_path / "note.txt"
        note.write_text("no eval folder here")
        tar.add(note, arcname="fashion/x/note.txt")
    cases = [
        (["--results", str(tmp_path / "none.jsonl"), "--shards", str(empty)], "no such file"),
        (["--results", str(results), "--shards", str(tmp_path / "none.tgz")], "not a readable"),
        (["--results", str(results), "--shards", str(garbage)], "not a readable .tgz"),
        (["--results", str(results), "--shards", str(empty)], "holds no eval folder"),
    ]
    for args, message in cases:
        proc = _run("score", "--extractors", "inception", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert results.read_text() == json.dumps(line) + "\n"
    assert not (tmp_path / "runs").exists()  # nothing unpacked
