"""Paired comparison of evaluation runs over the cases they share.

Each run is the per-case CSV written by ``nnunet-ssl evaluate`` (or the folder
holding it). Every pair of runs is compared per label and metric with a
Shapiro-Wilk test on the paired differences, a Wilcoxon signed-rank test and
the matched-pairs rank-biserial correlation as effect size.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation import io, stats
from nnunet_ssl.evaluation.folder import PER_CASE_COLUMNS, PER_CASE_FILE, SUMMARY_FILE

#: Metrics that are compared between runs and summarised in the table.
COMPARED_METRICS = ("dice", "hd95_mm", "avd_ml")


@dataclass
class Run:
    """One evaluation run: per-case values ``values[label][case][metric]``."""

    name: str
    path: Path
    values: dict[int, dict[str, dict[str, float]]]
    settings: dict = field(default_factory=dict)


def _csv_of(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if not (path / PER_CASE_FILE).is_file():
            raise UserError(f"{path} holds no {PER_CASE_FILE}. Give a folder written by "
                            "`nnunet-ssl evaluate` (its -o folder) or the CSV file itself.")
        return path / PER_CASE_FILE
    if not path.is_file():
        raise UserError(f"{path} does not exist. Give an evaluation folder or its {PER_CASE_FILE}.")
    return path


def load_run(path: Path, name: str) -> Run:
    """Read one run from an evaluation folder or per-case CSV.

    Raises:
        UserError: missing file or columns, unreadable numbers, no rows.

    Example:
        >>> run = load_run(Path("eval_baseline"), "baseline")  # doctest: +SKIP
        >>> sorted(run.values[1])[:2]  # doctest: +SKIP
        ['CASE_001', 'CASE_002']
    """
    csv_path = _csv_of(path)
    rows = io.read_csv(csv_path)
    if not rows:
        raise UserError(f"{csv_path} has no cases.")
    needed = ("case", "label") + COMPARED_METRICS + ("volume_pred_ml", "volume_true_ml")
    lacking = [c for c in needed if c not in rows[0]]
    if lacking:
        raise UserError(f"{csv_path} lacks the column(s) {', '.join(lacking)}; it is not a per-case "
                        "CSV of `nnunet-ssl evaluate`.")
    values: dict[int, dict[str, dict[str, float]]] = {}
    for i, row in enumerate(rows, start=2):
        try:
            label = int(row["label"])
            values.setdefault(label, {})[row["case"]] = {
                c: float(row[c]) if row[c] not in ("", None) else math.nan
                for c in PER_CASE_COLUMNS[2:] if c in row}
        except ValueError as e:
            raise UserError(f"{csv_path}, line {i}: {e}") from None
    settings = {}
    summary = csv_path.parent / SUMMARY_FILE
    if summary.is_file():
        try:
            settings = json.loads(summary.read_text(encoding="utf-8")).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            settings = {}
    return Run(name=name, path=csv_path, values=values, settings=settings)


def default_names(paths: Sequence[Path]) -> list[str]:
    """Shortest trailing parts of the run paths that tell the runs apart.

    Example:
        >>> default_names([Path("a/fold_0/eval"), Path("b/fold_0/eval")])
        ['a/fold_0/eval', 'b/fold_0/eval']
        >>> default_names([Path("baseline"), Path("desd")])
        ['baseline', 'desd']
    """
    parts = []
    for p in paths:
        p = Path(p).resolve()
        parts.append((p.parent if p.name == PER_CASE_FILE else p).parts)
    for depth in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-depth:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [f"{'/'.join(x[-1:])} #{i + 1}" for i, x in enumerate(parts)]


@dataclass
class Comparison:
    """Everything the report shows: per-label shared cases, table rows and tests."""

    runs: list[Run]
    labels: list[int]
    skipped_labels: list[int]
    shared: dict[int, list[str]]
    dropped: dict[int, dict[str, int]]
    table: list[dict]
    tests: list[dict]
    warnings: list[str]


def compare_runs(runs: Sequence[Run]) -> Comparison:
    """Summaries per run and paired tests between every two runs, per label.

    Only cases present in every run count (per label); how many each run lost
    is in ``dropped``. Holm-adjusted p-values are computed over the pairs of
    runs within one label and metric.

    Raises:
        UserError: fewer than two runs, a run given twice, no label or no case shared by all runs.

    Example:
        >>> comp = compare_runs([load_run(Path("eval_a"), "a"), load_run(Path("eval_b"), "b")])  # doctest: +SKIP
        >>> comp.tests[0]["p_wilcoxon"]  # doctest: +SKIP
        0.0039
    """
    if len(runs) < 2:
        raise UserError("compare needs at least two runs.")
    seen: dict[Path, str] = {}
    for r in runs:
        same = seen.setdefault(Path(r.path).resolve(), r.name)
        if same != r.name:
            raise UserError(f"{same} and {r.name} are the same run ({r.path}); a run compared with itself "
                            "only doubles its cases. Give each evaluation once.")
    label_sets = [set(r.values) for r in runs]
    labels = sorted(set.intersection(*label_sets))
    skipped = sorted(set.union(*label_sets) - set(labels))
    if not labels:
        raise UserError("The runs share no label; were they evaluated on the same task?")
    warnings = []
    if skipped:
        warnings.append(f"Label(s) {skipped} are not in every run and are not compared.")
    for key in ("min_lesion_ml", "filter_prediction"):
        seen = {json.dumps(r.settings.get(key)) for r in runs if key in r.settings}
        if len(seen) > 1:
            warnings.append(f"The runs were evaluated with different {key}: "
                            + ", ".join(f"{r.name}={r.settings.get(key)}" for r in runs) + ".")

    shared, dropped, table, tests = {}, {}, [], []
    for label in labels:
        cases = sorted(set.intersection(*(set(r.values[label]) for r in runs)))
        if not cases:
            raise UserError(f"The runs share no case for label {label}; were they evaluated on the same data?")
        shared[label] = cases
        dropped[label] = {r.name: len(r.values[label]) - len(cases) for r in runs}
        column = {r.name: {m: np.array([r.values[label][c][m] for c in cases]) for m in
                           COMPARED_METRICS + ("volume_pred_ml", "volume_true_ml")} for r in runs}
        for r in runs:
            col = column[r.name]
            rho, p, _ = stats.spearman(col["volume_pred_ml"], col["volume_true_ml"])
            row = {"label": label, "run": r.name, "n_cases": len(cases)}
            for m in COMPARED_METRICS:
                d = stats.describe(col[m])
                row.update({f"{m}_{k}": d[k] for k in ("mean", "std", "median", "q1", "q3", "n", "n_nan")})
            row.update(volume_spearman_rho=rho, volume_spearman_p=p,
                       volume_icc_3_1=stats.icc_3_1(np.column_stack([col["volume_pred_ml"],
                                                                     col["volume_true_ml"]])))
            table.append(row)
        for m in COMPARED_METRICS:
            family = []
            for a, b in combinations(runs, 2):
                res = stats.paired_test(column[a.name][m], column[b.name][m])
                family.append({"label": label, "metric": m, "run_a": a.name, "run_b": b.name, **res})
            for row, p_adj in zip(family, stats.holm([f["p_wilcoxon"] for f in family])):
                row["p_holm"] = p_adj
                row["mark"] = stats.significance_mark(row["p_wilcoxon"])
            tests.extend(family)
    return Comparison(runs=list(runs), labels=labels, skipped_labels=skipped, shared=shared,
                      dropped=dropped, table=table, tests=tests, warnings=warnings)
