"""RankMe and the collapse guard."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_ssl.desd.monitor import collapse_reason
from nnunet_ssl.desd.rankme import gather_rows, rankme
from test_distributed import _free_port


@pytest.mark.parametrize("r", [1, 3, 10])
def test_rankme_of_rank_r_matrix_is_r(r):
    g = torch.Generator().manual_seed(r)
    u, _ = torch.linalg.qr(torch.randn(200, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(64, r, generator=g, dtype=torch.float64))
    assert rankme(5.0 * u @ v.T) == pytest.approx(r, rel=1e-3)
    # unequal singular values give less than r but more than 1
    if r > 1:
        s = torch.diag(torch.linspace(1.0, 0.1, r, dtype=torch.float64))
        assert 1.0 < rankme(u @ s @ v.T) < r


def test_rankme_of_constant_matrix_is_one():
    assert rankme(torch.full((50, 16), 3.0)) == pytest.approx(1.0, abs=1e-4)
    assert rankme(torch.zeros(5, 4)) == 1.0


def test_collapse_reasons():
    k = 4096
    assert "one-hot" in collapse_reason(0.01, k, 50.0)
    assert "uniform" in collapse_reason(0.99 * math.log(k), k, 50.0)
    assert "RankMe" in collapse_reason(3.0, k, 1.1)
    assert collapse_reason(3.0, k, 50.0) is None and collapse_reason(3.0, k, None) is None


def _worker(rank, world, port, rows, out):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mine = rows[:7] if rank == 0 else rows[7:]  # unequal shares
        gathered = gather_rows(mine)
        torch.save({"rankme": rankme(gathered), "rows": gathered}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_rankme_over_two_processes_equals_one_process(tmp_path):
    rows = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    mp.spawn(_worker, args=(2, _free_port(), rows, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(got["rows"], rows)
        assert got["rankme"] == pytest.approx(rankme(rows))
    assert rankme(rows[:7]) != pytest.approx(rankme(rows))
