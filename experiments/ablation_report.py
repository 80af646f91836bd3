"""The scan-ablation report: results lines (experiments/scan_ablation.py) -> mean ± std over
seeds per (setting, row, metric), the paper's numbers beside them, the predicted orderings
checked against the seed noise, a bar plot (Pillow) and the runs' provenance, written into
docs/ablation.md between its results markers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ablation_jobs import UNSCORED
from scan_ablation import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    PAPER_TABLE4,
    POS_TRIPLES,
    PREDICTIONS,
    ROW_NAMES,
    ROWS,
    SETTINGS,
)

BEGIN, END = "<!-- ablation-results:begin -->", "<!-- ablation-results:end -->"
_DISTANCE = ("FD", "FID", "KD", "KID")  # metric label prefixes where lower is better


@dataclass
class Group:
    """The finished runs of one setting under one protocol."""

    setting: str
    protocol: str
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # row -> label -> v
    seeds: dict[str, list[int]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def cell(self, row: str, label: str) -> list[float]:
        return self.values.get(row, {}).get(label, [])


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    if not values:
        raise ValueError("no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _num(v: float) -> str:
    a = abs(v)
    return f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.4f}"


def format_cell(values: Sequence[float]) -> str:
    """ "mean ± std", both to two significant digits of the std ("54.7 ± 3.2", "0.0286 ±
    0.0012"); the mean alone for one value; "–" for none."""
    if not values:
        return "–"
    m, s = mean_std(values)
    if not s:
        return _num(m)
    decimals = max(0, 1 - math.floor(math.log10(s)))
    return f"{m:.{decimals}f} ± {s:.{decimals}f}"


def aggregate(records: Sequence[dict[str, Any]]) -> list[Group]:
    """Groups by (setting, protocol), largest first. Of several finished results of one (row,
    seed) the last counts; a failure counts only where that (row, seed) never finished."""
    groups: dict[tuple[str, str], Group] = {}
    last: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for rec in records:
        if rec.get("status") == UNSCORED:  # neither a result nor a failure yet
            continue
        key = (rec["setting"], rec["protocol"], rec["row"], int(rec["seed"]))
        if rec.get("status") == "ok" or last.get(key, {}).get("status") != "ok":
            last[key] = rec
    for (setting, protocol, row, seed), rec in last.items():
        g = groups.setdefault((setting, protocol), Group(setting, protocol))
        if rec.get("status") != "ok":
            g.failed.append(rec)
            continue
        g.records.append(rec)
        g.seeds.setdefault(row, []).append(seed)
        g.wall.setdefault(row, []).append(rec["wall_s"])
        g.params[row] = rec["params"]["total"]
        for label, m in rec["metrics"].items():
            if label not in g.labels:
                g.labels.append(label)
            g.values.setdefault(row, {}).setdefault(label, []).append(m["value"])
    return sorted(groups.values(), key=lambda g: (-len(g.records), g.setting, g.protocol))


def headline(group: Group) -> str | None:
    """The metric the plot and the ratio columns use (the setting's ``headline`` prefix)."""
    prefix = SETTINGS[group.setting].headline if group.setting in SETTINGS else "F"
    return next((lab for lab in group.labels if lab.startswith(prefix)), None)


def check_prediction(a: Sequence[float], b: Sequence[float], strict: bool) -> tuple[str, str]:
    """(difference text, verdict) of "mean(a) <= mean(b)" on a lower-is-better metric: holds or
    is reversed when the difference of means exceeds two standard errors, else within noise."""
    if not a or not b:
        return "–", "not run"
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return f"{d:+.4g}", "no error bar (n < 2)"
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    text = f"{d:+.4g} (2 SE {2 * se:.3g})"
    if d < -2 * se:
        return text, "holds"
    if d > 2 * se:
        return text, "**reversed**"
    lean = "as predicted" if (d < 0 if strict else d <= 0) else "against"
    return text, f"within noise (leans {lean})"


def _ratio(values: Sequence[float], ref: Sequence[float]) -> str:
    if not values or not ref or statistics.fmean(ref) == 0:
        return "–"
    return f"{statistics.fmean(values) / statistics.fmean(ref):.2f}"


def _scan_table(g: Group, head: str | None) -> list[str]:
    labels = g.labels
    cols = ["row", "params", "seeds", *labels]
    cols += [
        f"÷ sweep ({head})" if head else "÷ sweep",
        "paper FID 256² / 512² (T1)",
        "paper ÷ sweep 256² / 512²",
        "paper COCO FID (T4)",
        "wall s (median)",
    ]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    sweep = g.cell("sweep", head) if head else []
    for row in (r.name for r in ROWS if r.group == "scan"):
        if row not in g.seeds:
            out.append(f"| {row} | | 0 |" + " |" * (len(cols) - 3))
            continue
        t1 = PAPER_TABLE1.get(row)
        paper = f"{t1[0]} / {t1[1]}" if t1 else ""
        pr = PAPER_TABLE1["sweep"]
        paper_ratio = f"{t1[0] / pr[0]:.2f} / {t1[1] / pr[1]:.2f}" if t1 else ""
        cells = [row, f"{g.params[row] / 1e6:.3f}M", str(len(g.seeds[row]))]
        cells += [format_cell(g.cell(row, lab)) for lab in labels]
        cells += [
            _ratio(g.cell(row, head), sweep) if head else "–",
            paper,
            paper_ratio,
            str(PAPER_TABLE4.get(row, "")),
            f"{statistics.median(g.wall[row]):.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _pos_table(g: Group) -> list[str]:
    labels = g.labels
    cols = ["scan", "PE", "seeds", *labels, "paper FID (T2: ZigMa / Vision Mamba)"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for scan, triple in POS_TRIPLES.items():
        for pe, row in zip(("none", "sincos", "learnable"), triple, strict=True):
            paper = f"{PAPER_TABLE2['zigzag-8'][pe]} / {PAPER_TABLE2['vim'][pe]}"
            cells = [scan, pe, str(len(g.seeds.get(row, [])))]
            cells += [format_cell(g.cell(row, lab)) for lab in labels] + [paper]
            out.append("| " + " | ".join(cells) + " |")
    return out


def _checks(g: Group) -> list[str]:
    out = ["| prediction | metric | mean difference | verdict |", "|---|---|---|---|"]
    for label in (lab for lab in g.labels if lab.startswith(_DISTANCE)):
        for a, b, strict in PREDICTIONS:
            if a in g.seeds and b in g.seeds:
                diff, verdict = check_prediction(g.cell(a, label), g.cell(b, label), strict)
                out.append(f"| {a} {'<' if strict else '≤'} {b} | {label} | {diff} | {verdict} |")
    return out if len(out) > 2 else ["No predicted pair has results on both sides yet."]


def _protocol(g: Group) -> str:
    """What every run of the group shares, read from its first eval record."""
    r = next((x for rec in g.records for x in rec.get("records", [])), None)
    steps = sorted({rec.get("steps") for rec in g.records}, key=str)
    text = f"training steps reached: {', '.join(map(str, steps))}"
    if r is None:
        return text
    extractors = sorted(
        {
            f"{x['extractor']['name']} ({x['extractor']['sha256'][:12]})"
            for rec in g.records
            for x in rec.get("records", [])
        }
    )
    return (
        f"{text}; {r['num_fake']} samples against {r['num_real']} real {r['real']} "
        f"({r['real_split']}), {r['sampler']} {r['steps']} steps (NFE {r['nfe']}), guidance "
        f"{r['guidance']}, sample seed = training seed; features: {', '.join(extractors)}"
    )


def _provenance(g: Group) -> list[str]:
    recs = g.records
    commits = sorted({str(r.get("commit")) for r in recs})
    cards = sorted({str(r.get("card")) for r in recs})
    torch_versions = sorted({str(r.get("torch")) for r in recs})
    jobs = sorted({int(r.get("jobs", 1)) for r in recs})
    dates = sorted(str(r.get("finished", ""))[:10] for r in recs)
    device_s = sum(r["wall_s"] / max(1, int(r.get("jobs", 1))) for r in recs)
    example = next((r for r in recs if r["row"] == "zigzag-8"), recs[0])
    lines = [
        f"- {len(recs)} runs, {dates[0]} to {dates[-1]}; commit {', '.join(commits)}; card "
        f"{', '.join(cards)}; torch {', '.join(torch_versions)}; {', '.join(map(str, jobs))} "
        f"run(s) at once; about {device_s / 60:.0f} device-minutes (wall time / runs at once).",
        f"- The {example['row']} run of seed {example['seed']} (other rows change only their "
        "overrides, other seeds `seed=` and `--seed`):",
        "",
        "```bash",
        *example["commands"],
        "```",
    ]
    if g.failed:
        failed = ", ".join(
            f"{r['row']}/seed {r['seed']} (exit {r.get('exit_code')})" for r in g.failed
        )
        lines.insert(0, f"- **Failed, never finished:** {failed}.")
    return lines


def format_results(groups: Sequence[Group], plot_name: str | None) -> str:
    """The markdown that goes between the markers."""
    if not groups:
        return "No results yet: nothing has been run (see *Running it*).\n"
    parts: list[str] = []
    for g in groups:
        head = headline(g)
        s = SETTINGS.get(g.setting)
        parts += [f"### {g.setting} (protocol `{g.protocol}`)", ""]
        parts += [f"{s.what if s else g.setting}; {_protocol(g)}.", ""]
        parts += ["Scan order (mean ± std over seeds):", "", *_scan_table(g, head), ""]
        parts += ["Positional embedding:", "", *_pos_table(g), ""]
        parts += ["Predicted orderings against the seed noise:", "", *_checks(g), ""]
        parts += [*_provenance(g), ""]
    if plot_name:
        alt = "headline metric per row: bar at the mean, whisker ± one std, a circle per seed"
        parts += [f"![{alt}]({plot_name})"]
    return "\n".join(parts).rstrip() + "\n"


# -- the plot -----------------------------------------------------------------------------------
_BAR, _WHISKER, _DOT = (150, 180, 225), (30, 30, 30), (200, 40, 40)
_TEXT, _GRID = (30, 30, 30), (225, 225, 225)


def _ticks(hi: float, count: int = 4) -> list[float]:
    raw = (hi if hi > 0 else 1.0) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(hi / step - 1e-9) + 1)] if hi > 0 else [0, step]


def bar_plot(panels: Sequence[tuple[str, list[tuple[str, list[float]]]]], path: Path) -> Path:
    """One panel per (title, [(row, values)]): a horizontal bar at each row's mean, a whisker
    of ± one standard deviation and a dot per seed. Written atomically as PNG."""
    from zigma.artifacts import atomic_write

    font = ImageFont.load_default(size=13)
    label_w, bar_w, row_h, top, bottom = 150, 360, 24, 40, 40
    height = top + bottom + row_h * max(len(rows) for _, rows in panels)
    width = len(panels) * (label_w + bar_w + 30)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for p, (title, rows) in enumerate(panels):
        x0 = p * (label_w + bar_w + 30) + label_w
        hi = max((v for _, vals in rows for v in vals), default=1.0)
        spreads = [mean_std(vals) for _, vals in rows if vals]
        hi = max([hi] + [m + (s or 0) for m, s in spreads])
        ticks = _ticks(hi * 1.02)
        scale = bar_w / (ticks[-1] or 1.0)
        for t in ticks:
            u = x0 + t * scale
            draw.line([(u, top - 4), (u, height - bottom)], fill=_GRID)
            text = f"{t:g}"
            draw.text(
                (u - draw.textlength(text, font=font) / 2, height - bottom + 4),
                text,
                fill=_TEXT,
                font=font,
            )
        draw.text((x0 - label_w + 8, 12), title, fill=_TEXT, font=font)
        for i, (name, vals) in enumerate(rows):
            y = top + i * row_h + row_h / 2
            draw.text(
                (x0 - 8 - draw.textlength(name, font=font), y - 7), name, fill=_TEXT, font=font
            )
            if not vals:
                continue
            m, s = mean_std(vals)
            draw.rectangle([x0, y - 7, x0 + m * scale, y + 7], fill=_BAR)
            for v in vals:  # one open circle a seed, under the whisker
                u = x0 + v * scale
                draw.ellipse([u - 4, y - 4, u + 4, y + 4], outline=_DOT, width=2)
            if s is not None:
                lo, up = x0 + max(m - s, 0) * scale, x0 + (m + s) * scale
                draw.line([(lo, y), (up, y)], fill=_WHISKER, width=2)
                for u in (lo, up):
                    draw.line([(u, y - 6), (u, y + 6)], fill=_WHISKER, width=2)
        draw.line([(x0, top - 4), (x0, height - bottom)], fill=_WHISKER)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def write_report(records: Sequence[dict[str, Any]], doc: Path, plot: Path) -> str:
    """Aggregate ``records``, draw ``plot`` (one panel per group with a headline metric) and
    replace the text between the results markers of ``doc``; returns that text.

    Raises:
        FileNotFoundError: ``doc`` does not exist.
        ValueError: ``doc`` lacks the markers.
    """
    from zigma.artifacts import write_text_atomic

    text = doc.read_text(encoding="utf-8")
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{doc}: needs one {BEGIN} line before one {END} line")
    groups = aggregate(records)
    panels = []
    for g in groups:
        head = headline(g)
        if head:
            rows = [(r, g.cell(r, head)) for r in ROW_NAMES if r in g.seeds]
            same = sum(h.setting == g.setting for h in groups) > 1
            name = f"{g.setting} [{g.protocol[:6]}]" if same else g.setting
            panels.append((f"{name}: {head} (lower is better)", rows))
    plot_name = None
    if panels:
        bar_plot(panels, plot)
        plot_name = Path(plot).name if plot.parent.resolve() == doc.parent.resolve() else str(plot)
    body = format_results(groups, plot_name)
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    write_text_atomic(doc, text[:start] + "\n" + body + text[end:])
    return body
