"""Figures, tables and the Markdown report of a comparison.

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects (Agg
rendering, no pyplot state), so this works on machines without a display and
does not change the backend of a caller's session.
"""
from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ssl.evaluation import io
from nnunet_ssl.evaluation.compare import COMPARED_METRICS, Comparison

METRIC_TITLES = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "avd_ml": "AVD (mL)"}
_DIGITS = {"dice": 3, "hd95_mm": 2, "avd_ml": 2}


def _figure(size=(6.0, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    return fig, fig.add_subplot()


def _values(comp: Comparison, label: int, run_name: str, metric: str) -> np.ndarray:
    run = next(r for r in comp.runs if r.name == run_name)
    x = np.array([run.values[label][c][metric] for c in comp.shared[label]], float)
    return x[~np.isnan(x)]


def boxplot(comp: Comparison, label: int, metric: str, path: Path) -> Path:
    """Box plot of one metric per run with significance brackets for every pair.

    Marks come from the unadjusted Wilcoxon p-value: ``*`` p < 0.05, ``**``
    p < 0.01, ``***`` p < 0.001, ``ns`` otherwise.

    Example:
        >>> boxplot(comp, 1, "dice", Path("boxplot_dice_label1.png"))  # doctest: +SKIP
    """
    names = [r.name for r in comp.runs]
    data = [_values(comp, label, n, metric) for n in names]
    fig, ax = _figure((max(4.5, 1.4 * len(names) + 2), 4.8))
    ax.boxplot([d if d.size else [np.nan] for d in data], showfliers=True)
    # n under each box: HD95 can have fewer values than shared cases (undefined ones are left out).
    ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n = {d.size})" for n, d in zip(names, data)],
                  rotation=20 if len(names) > 3 else 0)
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.set_title(f"{METRIC_TITLES.get(metric, metric)}, label {label} ({len(comp.shared[label])} shared cases)")

    finite = np.concatenate([d for d in data if d.size]) if any(d.size for d in data) else np.zeros(1)
    low, high = float(finite.min()), float(finite.max())
    step = (high - low) * 0.08 or 0.05
    tests = {(t["run_a"], t["run_b"]): t for t in comp.tests if t["label"] == label and t["metric"] == metric}
    # Short brackets first so longer ones stack above them without crossing.
    pairs = sorted(combinations(range(len(names)), 2), key=lambda ij: (ij[1] - ij[0], ij[0]))
    top = high
    for level, (i, j) in enumerate(pairs, start=1):
        y = high + level * step
        ax.plot([i + 1, i + 1, j + 1, j + 1], [y - step * 0.3, y, y, y - step * 0.3], color="black", lw=1)
        ax.text((i + j) / 2 + 1, y, tests[(names[i], names[j])]["mark"], ha="center", va="bottom")
        top = y
    ax.set_ylim(low - step, top + step * 1.2)
    if metric == "dice":
        # The brackets need room above 1, but Dice ticks beyond 1 would suggest impossible values.
        ax.set_yticks([t for t in np.round(np.linspace(0, 1, 11), 1) if low - step <= t])
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def volume_scatter(comp: Comparison, label: int, path: Path) -> Path:
    """Predicted against true volume (mL) for every run, with the identity line.

    Example:
        >>> volume_scatter(comp, 1, Path("volume_scatter_label1.png"))  # doctest: +SKIP
    """
    fig, ax = _figure((5.5, 5.5))
    highest = 0.0
    for run, marker in zip(comp.runs, "osD^v<>ph*"):
        true = np.array([run.values[label][c]["volume_true_ml"] for c in comp.shared[label]])
        pred = np.array([run.values[label][c]["volume_pred_ml"] for c in comp.shared[label]])
        ax.scatter(true, pred, label=run.name, marker=marker, alpha=0.7, s=22)
        highest = max(highest, float(np.nanmax(true)), float(np.nanmax(pred)))
    highest = highest * 1.05 or 1.0
    ax.plot([0, highest], [0, highest], color="grey", lw=1, ls="--", label="identity")
    ax.set_xlim(0, highest)
    ax.set_ylim(0, highest)
    ax.set_aspect("equal")
    ax.set_xlabel("True volume (mL)")
    ax.set_ylabel("Predicted volume (mL)")
    ax.set_title(f"Lesion volume, label {label}")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def _num(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(comp: Comparison, figures: dict[int, list[Path]]) -> str:
    """The Markdown report: inputs, one table per label, the paired tests and the figures."""
    lines = ["# Comparison of segmentation runs", ""]
    lines += ["Runs:", ""] + [f"- **{r.name}**: `{r.path}`" for r in comp.runs] + [""]
    for w in comp.warnings:
        lines += [f"> Warning: {w}", ""]
    for label in comp.labels:
        n, dropped = len(comp.shared[label]), comp.dropped[label]
        lines += [f"## Label {label}", "",
                  f"{n} case(s) shared by every run. Cases dropped because another run lacks them: "
                  + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ".", ""]
        header = ["Run"] + [f"{METRIC_TITLES[m]} {s}" for m in COMPARED_METRICS for s in ("mean", "median (IQR)")]
        header += ["Volume Spearman ρ", "Volume ICC(3,1)"]
        body = []
        for row in (t for t in comp.table if t["label"] == label):
            cells = [row["run"]]
            for m in COMPARED_METRICS:
                d = _DIGITS[m]
                cells.append(_num(row[f"{m}_mean"], d))
                cells.append(f"{_num(row[f'{m}_median'], d)} ({_num(row[f'{m}_q1'], d)}–{_num(row[f'{m}_q3'], d)})")
            cells += [_num(row["volume_spearman_rho"]), _num(row["volume_icc_3_1"])]
            body.append(cells)
        lines += _markdown_table(header, body) + [""]
        hd_nan = {row["run"]: row["hd95_mm_n_nan"] for row in comp.table if row["label"] == label}
        if any(hd_nan.values()):
            lines += ["HD95 is undefined when exactly one mask is empty; such cases are left out of the "
                      "HD95 statistics and tests (" + ", ".join(f"{k}: {v}" for k, v in hd_nan.items()) + ").", ""]
        lines += [f"### Paired tests, label {label}", ""]
        body = [[METRIC_TITLES[t["metric"]], f"{t['run_a']} vs {t['run_b']}", t["n"],
                 _num(t["median_diff"], _DIGITS[t["metric"]]), _p(t["p_shapiro"]), _p(t["p_wilcoxon"]),
                 _p(t["p_holm"]), _num(t["rank_biserial"], 2), t["mark"]]
                for t in comp.tests if t["label"] == label]
        lines += _markdown_table(["Metric", "Pair (A vs B)", "n", "Median A−B", "Shapiro-Wilk p",
                                  "Wilcoxon p", "Holm p", "Rank-biserial r", "Mark"], body) + [""]
        lines += [f"![{p.stem}]({p.name})" for p in figures.get(label, [])] + [""]
    lines += ["## Methods", "",
              "Per-case metrics come from `nnunet-ssl evaluate`. Runs are compared over the cases they "
              "share. For each pair of runs and each metric: Shapiro-Wilk test of normality on the paired "
              "differences A−B, two-sided Wilcoxon signed-rank test (zero differences dropped), and the "
              "matched-pairs rank-biserial correlation r = (T+ − T−)/(T+ + T−) as effect size (positive: A "
              "larger than B). Holm p-values adjust over the pairs of runs within a metric and label; the "
              "marks on the box plots use the unadjusted Wilcoxon p (* < 0.05, ** < 0.01, *** < 0.001, "
              "ns otherwise). Medians are given with the first and third quartiles in parentheses.", ""]
    return "\n".join(lines)


TABLE_FILE = "summary_table.csv"
TESTS_FILE = "paired_tests.csv"
REPORT_FILE = "report.md"


def write_report(comp: Comparison, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, the two CSV tables and the PNG figures into ``out_dir``.

    Example:
        >>> write_report(comp, Path("comparison"))["report"]  # doctest: +SKIP
        PosixPath('comparison/report.md')
    """
    with io.output_folder(out_dir) as out_dir:
        return _write_report(comp, out_dir)


def _write_report(comp: Comparison, out_dir: Path) -> dict[str, Path]:
    figures: dict[int, list[Path]] = {}
    for label in comp.labels:
        figures[label] = [boxplot(comp, label, m, out_dir / f"boxplot_{m}_label{label}.png")
                          for m in COMPARED_METRICS]
        figures[label].append(volume_scatter(comp, label, out_dir / f"volume_scatter_label{label}.png"))
    table_cols = ["label", "run", "n_cases"] + [f"{m}_{k}" for m in COMPARED_METRICS for k in
                                                 ("mean", "std", "median", "q1", "q3", "n", "n_nan")]
    table_cols += ["volume_spearman_rho", "volume_spearman_p", "volume_icc_3_1"]
    io.write_csv(out_dir / TABLE_FILE, comp.table, table_cols)
    io.write_csv(out_dir / TESTS_FILE, comp.tests,
                 ["label", "metric", "run_a", "run_b", "n", "mean_diff", "median_diff", "p_shapiro",
                  "w_statistic", "p_wilcoxon", "p_holm", "rank_biserial", "mark"])
    (out_dir / REPORT_FILE).write_text(markdown(comp, figures), encoding="utf-8")
    return {"report": out_dir / REPORT_FILE, "table": out_dir / TABLE_FILE, "tests": out_dir / TESTS_FILE,
            **{p.stem: p for paths in figures.values() for p in paths}}
