"""dist.py's small collectives as their docstrings give them, with two real gloo processes, each
passing values of its own: agree (the flag OR-ed, rank 0's value, the largest `most`), broadcast
(rank 0's object) and all_gather (every rank's, in rank order).

Stop.requested paces its checks by agree's value, which is rank 0's clock ("only rank 0's counts");
the tests that stop a two-process run passed whichever rank's value it took, so it is checked here,
with the ranks disagreeing, as the helpers of a rank-0 answer are meant to settle.
"""
from __future__ import annotations

import torch.distributed as tdist
import torch.multiprocessing as mp

from fastdcgan import dist


def ranks_see(rank: int, store: str, out) -> None:
    tdist.init_process_group("gloo", rank=rank, world_size=2, store=tdist.FileStore(store, 2))
    try:
        out.put((rank, {
            # rank 1 raises the flag and passes the larger value and the smaller `most`
            "agree": dist.agree(rank == 1, [10, 99][rank], [7, 3][rank]),
            "agree_none": dist.agree(False, [5, 0][rank], 0),
            "broadcast": dist.broadcast({"from": rank}),
            "all_gather": dist.all_gather(f"rank{rank}"),
        }))
    finally:
        tdist.destroy_process_group()


def test_each_helper_gives_every_rank_the_answer_it_promises(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=ranks_see, args=(r, str(tmp_path / "store"), out)) for r in (0, 1)]
    for p in procs:
        p.start()
    seen = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for rank in (0, 1):
        s = seen[rank]
        assert s["agree"] == (True, 10, 7), (rank, s)       # rank 0's value, not the larger one
        assert s["agree_none"] == (False, 5, 0), (rank, s)  # rank 0's value, though rank 1 passed 0
        assert s["broadcast"] == {"from": 0}, (rank, s)
        assert s["all_gather"] == ["rank0", "rank1"], (rank, s)
