"""Per-layer cost of the DeSD heads' kernels against the memory traffic they need.

For every weight matrix of one projection head (``in -> hidden -> hidden -> bottleneck``
MLP and the ``bottleneck -> K`` last layer, for each stage width of a ``bench/desd_step.py``
configuration) it times, on ``N = 2 x batch`` rows:

* ``read``: one pass over the weight (``W.sum()``), the memory-traffic floor of any pass;
* ``forward``: ``W x^T`` as the heads compute it on the CPU (``heads.HeadLinear``);
* ``x W^T``: the same product as ``nn.Linear`` computes it (``F.linear``), for comparison;
* ``input grad``: ``g W``, the gradient sent back to the layer's input
  (``nnunet_ssl.desd.heads.few_rows_times``, as the heads' backward computes it);
* ``weight grad``: the rank-N weight gradient ``g^T x``, block by block into one buffer as the
  in-backward update computes it (``LowRankGrad.rows``);
* ``adamw``: PyTorch's fused AdamW step on the whole weight (dense gradient): reads the weight,
  gradient and both moments, writes the weight and both moments;
* ``update``: the in-backward update as a training step takes it
  (``nnunet_ssl.desd.step.InBackwardAdamW``): each block's rank-N gradient, then fused AdamW on
  the block, from the factored gradient. ``--outer-max-rank 0`` forms every gradient block with
  ``mm`` instead of broadcast outer products, for comparison.

Each figure is the median of ``--repeats`` calls, cycling over several copies of the weight so
that it is read from memory, not from cache. The totals compare what the kernels take with the
streaming floor (a student head reads its weights twice, AdamW touches seven weight-sized arrays,
the teacher head is read once and averaged into).

Usage::

    python bench/head_kernels.py --config tiny
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from desd_step import CONFIGS
from nnunet_ssl.desd import heads
from nnunet_ssl.desd.heads import LowRankGrad, few_rows_times
from nnunet_ssl.desd.step import InBackwardAdamW
from nnunet_ssl.desd.step import block_rows as rows_per_block


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def layer_costs(rows: int, cols: int, n: int, repeats: int, copies: int) -> dict:
    ws = [torch.randn(rows, cols) * 0.02 for _ in range(copies)]
    states = [(torch.zeros(rows, cols), torch.zeros(rows, cols), torch.zeros(())) for _ in range(copies)]
    grad = torch.randn(rows, cols) * 1e-3
    x, g = torch.randn(n, cols), torch.randn(n, rows)
    block_rows = rows_per_block(ws[0])
    buffer = torch.empty(block_rows, cols)
    i = [0]

    def pick():
        i[0] = (i[0] + 1) % copies
        return i[0]

    factored = LowRankGrad(g, x)

    def weight_grad():
        for start in range(0, rows, block_rows):
            stop = min(start + block_rows, rows)
            factored.rows(start, stop, out=buffer[:stop - start])

    def adamw():
        k = pick()
        m, v, step = states[k]
        torch._fused_adamw_([ws[k]], [grad], [m], [v], [], [step], lr=1e-4, beta1=0.9, beta2=0.999,
                            weight_decay=0.04, eps=1e-8, amsgrad=False, maximize=False)

    params = [torch.nn.Parameter(w.clone()) for w in ws]
    update = InBackwardAdamW(torch.optim.AdamW(params, lr=1e-4, weight_decay=0.04, fused=True), clip_grad=0.0)
    for param in params:  # AdamW's state is allocated at the first update, before the timing
        update(param, factored)

    return {
        "read": timed(lambda: ws[pick()].sum(), repeats),
        "forward": timed(lambda: torch.mm(ws[pick()], x.t()), repeats),
        "x W^T": timed(lambda: F.linear(x, ws[pick()]), repeats),
        "input grad": timed(lambda: few_rows_times(g, ws[pick()]), repeats),
        "weight grad": timed(weight_grad, repeats),
        "adamw": timed(adamw, repeats),
        "update": timed(lambda: update(params[pick()], factored), repeats),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--hidden-dim", type=int, default=2048)
    p.add_argument("--bottleneck-dim", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--outer-max-rank", type=int, default=heads.OUTER_MAX_RANK,
                   help="form rank-N gradient blocks as outer products up to this N (0: always mm)")
    args = p.parse_args()
    heads.OUTER_MAX_RANK = args.outer_max_rank
    cfg = CONFIGS[args.config]
    n = 2 * args.batch
    h, b, k = args.hidden_dim, args.bottleneck_dim, cfg["out_dim"]
    shapes: dict[tuple[int, int], int] = {}  # (out, in) -> number of student heads with that layer
    for c in cfg["features"]:
        for shape in ((h, c), (h, h), (b, h), (k, b)):
            shapes[shape] = shapes.get(shape, 0) + 1
    teacher = [(h, cfg["features"][-1]), (h, h), (b, h), (k, b)]
    print(f"config {args.config}: {len(cfg['features'])} heads, N = {n} rows, MLP width {h}, K = {k}, "
          f"{torch.get_num_threads()} threads; milliseconds, median of {args.repeats}")
    cols = ["read", "forward", "x W^T", "input grad", "weight grad", "adamw", "update"]
    print(f"{'weight (out x in)':<20} {'heads':>5} " + " ".join(f"{c:>11}" for c in cols))
    costs = {}
    for (rows, width), count in sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        copies = max(2, (64 * 2**20) // (rows * width * 4) + 1)  # more than the last-level cache
        costs[rows, width] = layer_costs(rows, width, n, args.repeats, copies)
        print(f"{f'{rows} x {width}':<20} {count:>5} " + " ".join(f"{costs[rows, width][c]:>11.3f}" for c in cols))
    student = {c: sum(costs[s][c] * count for s, count in shapes.items()) for c in cols}
    teacher_read = sum(costs[s]["read"] for s in teacher)
    kernels = (student["forward"] + student["input grad"] + student["weight grad"] + student["adamw"]
               + sum(costs[s]["forward"] for s in teacher))
    floor = 2 * student["read"] + student["adamw"] + 3 * teacher_read
    print("student heads, all layers: " + ", ".join(f"{c} {student[c]:.1f}" for c in cols if c != "x W^T"))
    print(f"kernels of one step (student forward, input and weight gradients, AdamW; teacher forward): "
          f"{kernels:.1f} ms")
    print(f"the same with the in-backward update as taken (update in place of weight grad + adamw): "
          f"{kernels - student['weight grad'] - student['adamw'] + student['update']:.1f} ms")
    print(f"streaming floor (student weights read twice, AdamW, teacher head read and averaged): "
          f"{floor:.1f} ms")


if __name__ == "__main__":
    main()
