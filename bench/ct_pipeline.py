"""Seconds per case (and per step) of `nnunet-ssl preprocess-ct` on a 1 mm head CT.

The input is the real CT brain shipped in ``tests/data`` (see its README),
upsampled to 1 mm and wrapped in a synthetic skull and scalp (about 242 x 242 x
220 voxels), with a 10 HU hypodense lesion in the left hemisphere; every case
is turned by a different small rotation so that the mirror registration has
work to do. The cases go through the same code as the command (reading,
resampling, brain mask, contralateral image, difference, writing, QC picture).

Usage::

    python bench/ct_pipeline.py                    # 3 cases, ct+diff, one process
    python bench/ct_pipeline.py --cases 4 -j 2 --channels ct
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnunet_ssl.ct.dataset import run_dataset  # noqa: E402
from nnunet_ssl.ct.pipeline import PreprocessConfig  # noqa: E402
from nnunet_ssl.ct.symmetry import _centroid  # noqa: E402
from nnunet_ssl.ct.synthetic import head_from_brain, insert_lesion, move, rigid_motion  # noqa: E402

STEPS = ["read", "resample", "brain_mask", "contralateral", "labels", "write"]


def _cpu_seconds() -> float:
    t = os.times()  # finished worker processes count under children
    return t.user + t.system + t.children_user + t.children_system


def make_inputs(folder: Path, n: int, spacing: float) -> tuple[int, ...]:
    brain = sitk.ReadImage(str(REPO / "tests" / "data" / "ct_brain_2mm.nii.gz"))
    head, truth = head_from_brain(brain, spacing=[spacing] * 3, noise_hu=3.0, seed=0)
    head, _ = insert_lesion(head, truth, _centroid(truth) + np.array([32.0, 10.0, 12.0]), 12.0, 10.0)
    for i in range(n):
        angle = (-1) ** i * (4.0 + 3.0 * i)
        moved = move(head, rigid_motion(head, (0.0, 2.0, angle), (2.0 * i, -1.0, 0.5)))
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(sitk.Round(moved), sitk.sitkInt16), str(folder / f"bench{i:02d}.nii.gz"))
    return head.GetSize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--channels", default="ct+diff", choices=["ct", "ct+diff", "ct+contra"])
    parser.add_argument("-j", "--jobs", type=int, default=1)
    parser.add_argument("--input-spacing", type=float, default=1.0, help="spacing of the made-up input (mm)")
    parser.add_argument("--keep", type=Path, help="keep inputs and outputs in this folder")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ct_bench_") as tmp:
        root = args.keep or Path(tmp)
        size = make_inputs(root / "in", args.cases, args.input_spacing)
        config = PreprocessConfig(channels=args.channels, brain_method="builtin")
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        rows = run_dataset(root / "in", root / "out", config, jobs=args.jobs, overwrite=True, progress=False)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start

    ok = [r for r in rows if r["status"] == "ok"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end (other work slows the wall clock); "
          f"SimpleITK {sitk.Version.VersionString()}")
    print(f"input: {args.cases} head CTs of {size[0]}x{size[1]}x{size[2]} voxels at {args.input_spacing:g} mm; "
          f"channels {args.channels}; -j {args.jobs}; output 1 mm")
    for r in rows:
        if r["status"] != "ok":
            print(f"  {r['case']}: {r['status']} {r['reason']}")
    if not ok:
        return 1
    print(f"{'step':<15}{'mean s':>8}{'min s':>8}{'max s':>8}")
    for step in [*STEPS, "total"]:
        values = [float(r.get(f"seconds_{step}", 0.0) or 0.0) for r in ok]
        print(f"{step:<15}{statistics.mean(values):>8.2f}{min(values):>8.2f}{max(values):>8.2f}")
    print(f"wall clock {wall:.1f} s for {len(rows)} cases = {wall / len(rows):.1f} s per case; "
          f"CPU time {cpu / len(rows):.1f} s per case (all threads and worker processes)")
    print(f"plane tilts found (degrees): {', '.join(str(r['plane_angle_deg']) for r in ok if 'plane_angle_deg' in r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
