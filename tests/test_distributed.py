"""torchrun helpers: sharding covers the data exactly once; gathers work for uneven per-rank sizes (gloo)."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from multiproc import launch, rank_env
from score_sde import distributed


def info(rank, world):
    return distributed.DistInfo(rank, world, rank, torch.device("cpu"))


@pytest.mark.parametrize("n,world", [(10, 3), (2, 4), (7, 1), (0, 2)])
def test_shards_partition_the_range(n, world):
    shards = [distributed.shard_indices(n, info(r, world)) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))
    assert [distributed.split_count(n, info(r, world)) for r in range(world)] == [len(s) for s in shards]


def test_rank_seeds_differ_and_are_stable():
    seeds = [distributed.rank_seed(42, r) for r in range(4)]
    assert len(set(seeds)) == 4 and seeds == [distributed.rank_seed(42, r) for r in range(4)]


def _worker(rank, world, port, out):
    rank_env(rank, world, port)
    dist_info = distributed.setup("cpu")
    try:
        x = torch.full((rank + 1, 2), float(rank))          # uneven first dimension per rank
        gathered = distributed.all_gather_cat(x, dist_info)
        total = distributed.all_reduce_sum(torch.tensor([rank + 1.0]), dist_info)
        obj = distributed.broadcast_object({"step": 7} if rank == 0 else None, dist_info)
        out[rank] = (gathered.tolist(), float(total), obj)
    finally:
        distributed.cleanup()


def test_gather_reduce_broadcast_across_two_gloo_processes(gloo):
    manager = mp.Manager()
    out = manager.dict()
    launch(_worker, 2, out)
    expected = [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
    for rank in range(2):
        gathered, total, obj = out[rank]
        assert gathered == expected and total == 3.0 and obj == {"step": 7}


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "lo"),          # one node: loopback
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, None),          # two nodes: gloo's own choice
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GLOO_SOCKET_IFNAME": "eth7"}, "eth7"),  # the user's
])
def test_single_node_gloo_is_pinned_to_loopback(monkeypatch, env, expected):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(distributed, "loopback_interface", lambda: "lo")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    distributed.pin_gloo_to_loopback()
    assert os.environ.get("GLOO_SOCKET_IFNAME") == expected
