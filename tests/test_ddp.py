"""DDP training and evaluation under torchrun-style process groups (CPU, gloo).

Exactness argument of the equivalence test: each rank's loss is the mean over its B/K items and DDP
averages gradients over ranks, so the synchronized gradient is the mean of the K per-chunk mean
gradients = the gradient of (1/K) sum_r loss_r. Each item's loss noise (t, z) is keyed by its stream
position (data_stream.KeyedItems), so this is the gradient of the mean loss over the whole global batch
that ONE process computes (the toy MLP has no dropout, the one draw keyed by rank); Adam, clipping and
EMA then see equal inputs. The only difference is the order of float additions, hence a 1e-5 tolerance.
"""
import os

import ml_collections
import pytest
import torch
from multiproc import free_port, launch, rank_env, run_command, run_commands
from score_sde import builders, data_stream, datasets, distributed, losses, parameterization

SEED = 3


def info(rank, world):
    return distributed.DistInfo(rank, world, rank, torch.device("cpu"))


def toy_config(batch_size=8):
    return ml_collections.ConfigDict({
        "seed": SEED,
        "training": {"sde": "vpsde", "continuous": True, "reduce_mean": False, "likelihood_weighting": False,
                     "batch_size": batch_size, "precision": "auto", "compile": False, "channels_last": False},
        "data": {"dataset": "toy_ring", "dim": 2, "num_train": 40, "num_eval": 8, "seed": 0, "centered": False},
        "model": {"name": "mlp", "hidden_dims": (16, 16), "embedding_dim": 8, "nonlinearity": "swish",
                  "ema_rate": 0.9, "beta_min": 0.1, "beta_max": 20.0, "num_scales": 1000},
        "optim": {"optimizer": "Adam", "lr": 1e-2, "beta1": 0.9, "eps": 1e-8, "weight_decay": 0.0,
                  "warmup": 2, "grad_clip": 1.0},
    })


# ----------------------------------------------------------------------------- data stream and seeds
@pytest.mark.parametrize("world", [2, 4])
def test_step_batches_shard_the_single_process_stream(world):
    """Union over ranks (in rank order) of every step's keys == the K=1 keys; epochs run into each other."""
    n, B, steps = 10, 8, 7  # 56 positions: 5.6 epochs, several steps straddle an epoch boundary
    single = data_stream.StepBatches(n, B, SEED, info(0, 1))
    shards = [data_stream.StepBatches(n, B, SEED, info(r, world)) for r in range(world)]
    for step in range(steps):
        assert [k for s in shards for k in s.keys(step)] == single.keys(step)
    stream = [idx for step in range(steps) for _, idx in single.keys(step)]
    for e in range(5):  # each full epoch is a permutation of the data set
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]  # epochs are shuffled independently
    resumed = iter(data_stream.StepBatches(n, B, SEED, info(1, world), start_step=4))
    assert next(resumed) == shards[1].keys(4)  # resuming needs no sampler state


def test_global_batch_must_divide():
    with pytest.raises(ValueError, match="GLOBAL batch.*divisible by the number of processes \\(3\\)"):
        data_stream.local_batch_size(8, info(0, 3))
    assert data_stream.local_batch_size(8, info(1, 4)) == 2


def test_keyed_items_tie_augmentation_to_stream_position():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3) + i

    items = data_stream.KeyedItems(Noisy(), SEED)
    a, b = items[(5, 2)], items[(6, 2)]
    torch.rand(10)  # unrelated draws in between change nothing
    assert torch.equal(items[(5, 2)], a) and not torch.equal(a, b)


def test_label_dropout_is_keyed_per_item_so_any_rank_split_drops_the_same_labels():
    """Classifier-free training: the labels each step trains on (after dropout) and the loss noise of every
    item are the same whether K = 1, 2 or 4 ranks load the global batch (the draws follow stream position)."""
    from score_sde.pipeline.spec import Spec
    from score_sde.training import split_labels

    class Points(torch.utils.data.Dataset):
        shape, num_levels = (2,), None

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.full((2,), float(i))

    ds = datasets.LabeledDataset(Points(), torch.arange(10) % 3, num_classes=3)
    spec = Spec.from_config({"training": {"label_dropout": 0.5}, "data": {"num_classes": 3}})
    items, B = data_stream.KeyedItems(ds, SEED, with_noise=True), 8

    def step_labels(world, step):
        out = []
        for r in range(world):
            keys = data_stream.StepBatches(len(ds), B, SEED, info(r, world)).keys(step)
            batch, noise = data_stream.split_batch(torch.utils.data.default_collate([items[k] for k in keys]))
            x, y = split_labels(batch, spec, torch.device("cpu"), True, noise.drop)
            out.append((x, y, noise.u, noise.z))
        return [torch.cat(v) for v in zip(*out)]

    dropped = 0
    for step in range(5):
        single = step_labels(1, step)
        for world in (2, 4):
            assert all(torch.equal(a, b) for a, b in zip(step_labels(world, step), single))
        dropped += int((single[1] == 3).sum())
    assert 0 < dropped < 5 * B  # the test can fail: some labels, not all, went to the null class
    with pytest.raises(ValueError, match="one keyed uniform per item"):
        split_labels((torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)), spec, torch.device("cpu"), True)


def test_seeds_differ_per_step_and_rank():
    seeds = {data_stream.step_seed(SEED, s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400 and all(0 <= x < 2 ** 63 for x in seeds)
    assert data_stream.step_seed(SEED, 1, 0) != data_stream.step_seed(SEED + 1, 1, 0)


def test_precision_and_layout_switches_on_cpu():
    cpu = torch.device("cpu")
    assert distributed.resolve_precision("auto", cpu) == "fp32"
    assert distributed.resolve_precision("bf16", cpu) == "fp32"  # autocast is CUDA-only here
    with pytest.raises(ValueError, match="training.precision='fp16'"):
        distributed.resolve_precision("fp16", cpu)
    assert distributed.use_channels_last(True, True) and not distributed.use_channels_last(True, False)
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        distributed.use_channels_last("auto", True)
    x = distributed.to_memory_format(torch.zeros(2, 3, 4, 4), True)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_compiled_and_wrapped_models_save_plain_state_dicts():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    wrapped = distributed.wrap_for_training(model, info(0, 1), compile=True)
    assert distributed.unwrap(wrapped) is model
    state = builders.state_dict_for_checkpoint({"model": wrapped, "step": 0})
    assert list(state["model"]) == ["0.weight", "0.bias"]  # no "_orig_mod." / "module." prefixes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the CI machine)")
def test_bf16_step_on_cuda_keeps_fp32_weights_loss_and_ema():
    cuda = torch.device("cuda")
    assert distributed.resolve_precision("auto", cuda) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    config = toy_config()
    torch.manual_seed(SEED)
    state = builders.create_state(config, cuda)
    state["model"] = distributed.wrap_for_training(state["model"], distributed.DistInfo(0, 1, 0, cuda))
    sde = builders.sde_from_config(config)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config.optim),
                                 precision=distributed.resolve_precision("auto", cuda))
    out = step_fn(state, torch.randn(8, 2, device=cuda))
    assert isinstance(out["loss"], float) and out["loss"] == out["loss"]
    assert all(p.dtype == torch.float32 for p in state["model"].parameters())
    assert all(p.dtype == torch.float32 for p in state["ema"].shadow_params)


# ----------------------------------------------------------------------------- DDP == single-process reference
def _train_steps(config, dist_info, steps, ddp: bool):
    """The training loop of score_sde.training, reduced to its DDP-relevant parts."""
    torch.manual_seed(config.seed)  # identical initialisation on every rank (DDP also broadcasts rank 0's)
    state = builders.create_state(config, dist_info.device)
    if ddp:
        state["model"] = distributed.wrap_for_training(state["model"], dist_info)
    sde = builders.sde_from_config(config)
    precision = distributed.resolve_precision(config.training.precision, dist_info.device)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config.optim),
                                 kind=builders.loss_kind(config), continuous=True,
                                 reduce_mean=config.training.reduce_mean, precision=precision)
    train_ds, _ = datasets.get_dataset(config)
    sampler = data_stream.StepBatches(len(train_ds), config.training.batch_size, config.seed, dist_info,
                                      num_steps=steps)
    loader = torch.utils.data.DataLoader(data_stream.KeyedItems(train_ds, config.seed, with_noise=True),
                                         batch_sampler=sampler)
    logs = []
    for step, collated in enumerate(loader):
        batch, noise = data_stream.split_batch(collated)
        data_stream.seed_step(config.seed, step, dist_info)
        logs.append(distributed.all_reduce_mean(step_fn(state, batch, noise), dist_info)["loss"])
    return state, logs


def _ddp_worker(rank, world, port, steps, path):
    rank_env(rank, world, port)
    dist_info = distributed.setup("cpu")
    try:
        state, logs = _train_steps(toy_config(), dist_info, steps, ddp=True)
        model = distributed.unwrap(state["model"])
        torch.save({"params": [p.detach() for p in model.parameters()],
                    "ema": state["ema"].shadow_params, "loss": logs}, f"{path}.{rank}")
    finally:
        distributed.cleanup()


def _reference(config, worlds):
    """One process; at step s the gradient of (1/K) sum_r loss_r over the chunks and noise draws of
    the K = worlds[s] ranks (the number of ranks may change between steps, as on a resume)."""
    torch.manual_seed(config.seed)
    state = builders.create_state(config, torch.device("cpu"))
    model, opt = state["model"], state["optimizer"]
    sde = builders.sde_from_config(config)
    loss_fn = losses.get_loss_fn(sde, kind="dsm", reduce_mean=config.training.reduce_mean)
    optimize_fn = losses.optimization_manager(config.optim)
    score_fn = parameterization.get_score_fn(sde, model, continuous=True, train=True)
    train_ds, _ = datasets.get_dataset(config)
    items = data_stream.KeyedItems(train_ds, config.seed, with_noise=True)
    logs = []
    for step, world in enumerate(worlds):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for r in range(world):
            keys = data_stream.StepBatches(len(train_ds), config.training.batch_size, config.seed,
                                           info(r, world)).keys(step)
            batch, noise = data_stream.split_batch(torch.utils.data.default_collate([items[k] for k in keys]))
            torch.manual_seed(data_stream.step_seed(config.seed, step, r))
            loss = loss_fn(score_fn, batch, noise=noise)
            (loss / world).backward()
            total += float(loss.detach()) / world
        optimize_fn(opt, model.parameters(), step=step)
        state["ema"].update(model.parameters())
        logs.append(total)
    return state, logs


def test_two_processes_match_single_process_reference(tmp_path, gloo):
    steps, world = 4, 2
    launch(_ddp_worker, world, steps, str(tmp_path / "out"))
    runs = [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in range(world)]
    ref, ref_logs = _reference(toy_config(), [1] * steps)  # ONE process on the same global batches
    ref_params = [p.detach() for p in ref["model"].parameters()]
    for run in runs:
        for got, want in zip(run["params"], ref_params):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        for got, want in zip(run["ema"], ref["ema"].shadow_params):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert run["loss"] == pytest.approx(ref_logs, rel=1e-5)
    # the comparison can fail: training moved the parameters well beyond the tolerance
    torch.manual_seed(SEED)
    init = builders.create_state(toy_config(), torch.device("cpu"))
    moved = max(float((a - b.detach()).abs().max()) for a, b in zip(ref_params, init["model"].parameters()))
    assert moved > 1e-2


# ----------------------------------------------------------------------------- evaluation: uneven work
def _adaptive_solve(x0: torch.Tensor, rtol: float = 1e-6):
    """Explicit Euler with step halving on dx/dt = -x^3 to t=1: the step count depends on the data."""
    x, t, h, steps = x0.clone().double(), 0.0, 0.5, 0
    while t < 1.0:
        h = min(h, 1.0 - t)
        full, half = x - h * x ** 3, x - h / 2 * x ** 3
        half = half - h / 2 * half ** 3
        if float((full - half).abs().max()) > rtol and h > 1e-4:
            h /= 2
            continue
        x, t, steps, h = half, t + h, steps + 1, 1.5 * h
    return x, steps


def _eval_worker(rank, world, port, n, batch_size, path):
    rank_env(rank, world, port)
    dist_info = distributed.setup("cpu")
    try:
        calls = []

        def fn(indices):
            x0 = torch.tensor([[1.0 + 0.5 * i] for i in indices])  # later items are stiffer: more steps
            x, steps = _adaptive_solve(x0)
            calls.append(steps)
            return torch.cat([torch.tensor([[float(i)] for i in indices], dtype=torch.float64), x], dim=1)

        out = distributed.gather_over_shards(fn, n, batch_size, dist_info)
        torch.save({"out": out, "calls": calls}, f"{path}.{rank}")
    finally:
        distributed.cleanup()


@pytest.mark.parametrize("n,batch_size", [(7, 2), (1, 4)])
def test_uneven_evaluation_gathers_exactly_n_in_order(tmp_path, gloo, n, batch_size):
    world = 2
    launch(_eval_worker, world, n, batch_size, str(tmp_path / "ev"))
    runs = [torch.load(f"{tmp_path / 'ev'}.{r}", weights_only=True) for r in range(world)]
    for run in runs:
        assert run["out"].shape == (n, 2)
        assert run["out"][:, 0].tolist() == [float(i) for i in range(n)]
        exact = (1 + 0.5 * run["out"][:, 0]) / torch.sqrt(1 + 2 * (1 + 0.5 * run["out"][:, 0]) ** 2)
        torch.testing.assert_close(run["out"][:, 1], exact, rtol=1e-3, atol=1e-4)  # dx/dt=-x^3 closed form
    calls = [run["calls"] for run in runs]
    if n == 7:  # 4 items / 2 batches on rank 0, 3 items / 2 batches on rank 1, different solver work
        assert len(calls[0]) == 2 and len(calls[1]) == 2 and sum(calls[0]) != sum(calls[1])
    else:  # rank 1 has nothing to do and still takes part in the gather
        assert len(calls[0]) == 1 and calls[1] == []


# ----------------------------------------------------------------------------- end to end: torchrun + main.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = "configs/vp/toy_mlp_continuous.py"
OVERRIDES = {"seed": SEED, "device": "cpu", "training.batch_size": 8, "training.log_freq": 1,
             "training.eval_freq": 10 ** 6, "training.snapshot_freq": 10 ** 6,
             "training.snapshot_freq_for_preemption": 2, "training.snapshot_sampling": False,
             "data.num_train": 40, "data.num_eval": 8, "model.hidden_dims": (16, 16), "model.embedding_dim": 8,
             "model.ema_rate": 0.9, "optim.lr": 1e-2, "optim.warmup": 2, "optim.grad_clip": 1.0,
             "eval.batch_size": 4, "sampling.method": "ode"}


def main_config(**extra):
    """The config main.py builds from TOY + OVERRIDES (+ extra), for the in-process reference."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("toy_cfg", os.path.join(ROOT, TOY))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in {**OVERRIDES, **extra}.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def torchrun(nproc, workdir, mode="train", wait=True, **extra):
    """`python -m torch.distributed.run --nproc_per_node=K main.py ...` as a subprocess (own session)."""
    import subprocess
    import sys

    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "main.py", f"--config={TOY}", f"--workdir={workdir}", f"--mode={mode}",
           *flags]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, SCORE_SDE_DIST_TIMEOUT_MIN="2")
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, text=True)
    done = run_command(cmd, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def torchrun_nodes(nnodes, workdir, **extra):
    """`torchrun --nnodes=N --node_rank=r --rdzv_backend=c10d --rdzv_endpoint=...` once per node, as the
    README's multi-node launch, with every node on this host (gloo over loopback, set by hand there)."""
    import sys

    flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]
    endpoint = f"127.0.0.1:{free_port()}"
    cmds = [[sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", "--nproc_per_node=1",
             f"--node_rank={r}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}", "--rdzv_id=nodes_test",
             "main.py", f"--config={TOY}", f"--workdir={workdir}", "--mode=train", *flags] for r in range(nnodes)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, GLOO_SOCKET_IFNAME="lo")
    done = run_commands(cmds, cwd=ROOT, env=env)
    for d in done:
        assert d.returncode == 0, d.stdout[-3000:]


def test_two_node_rendezvous_launch_matches_the_reference(tmp_path, gloo):
    """The multi-node command of docs/distributed.md (c10d rendezvous, one process per node) trains like 2 ranks."""
    from score_sde import checkpoint

    steps = 3
    workdir = str(tmp_path / "nodes")
    torchrun_nodes(2, workdir, **{"training.n_iters": steps, "training.snapshot_freq": steps})
    ref, _ = _reference(main_config(), [1] * steps)
    ckpt = _assert_checkpoint_matches(checkpoint.checkpoint_path(workdir, steps), ref)
    assert ckpt["step"] == steps
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1  # the global rank 0 alone writes


def _children(pid):
    """PIDs whose parent is `pid` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


def _assert_checkpoint_matches(path, ref):
    ckpt = torch.load(path, weights_only=True)
    for name, want in ref["model"].state_dict().items():
        assert ckpt["model"][name].dtype == torch.float32
        torch.testing.assert_close(ckpt["model"][name], want, rtol=0, atol=1e-5)
    for got, want in zip(ckpt["ema"]["shadow_params"], ref["ema"].shadow_params):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    return ckpt


def test_killed_two_process_run_resumes_with_one_then_two_processes(tmp_path, gloo):
    """K=2 killed mid-run -> resumed with K=1 -> resumed with K=2; the parameters equal one uninterrupted
    process (same data stream, loss noise keyed per item; the toy MLP has no dropout)."""
    import signal
    import time

    from score_sde import checkpoint

    workdir = str(tmp_path / "run")
    meta = checkpoint.meta_checkpoint_path(workdir)
    proc = torchrun(2, workdir, wait=False, **{"training.n_iters": 10 ** 6})
    deadline = time.time() + 90
    while not os.path.exists(meta) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # torchrun starts each worker in its own session: kill the agent and every worker, as a lost node would
    for pid in [*_children(proc.pid), proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    assert os.path.exists(meta), "the two-process run wrote no preemption checkpoint"
    killed_at = int(checkpoint.load_checkpoint(checkpoint.latest_checkpoint(workdir))["step"])
    assert killed_at >= 2

    torchrun(1, workdir, **{"training.n_iters": killed_at + 3})
    torchrun(2, workdir, **{"training.n_iters": killed_at + 5})
    ref, _ = _reference(main_config(), [1] * (killed_at + 5))  # = one uninterrupted process
    ckpt = _assert_checkpoint_matches(checkpoint.checkpoint_path(workdir, killed_at + 5), ref)
    assert ckpt["step"] == killed_at + 5
    assert sorted(os.listdir(workdir)) == ["checkpoints", "checkpoints-meta", "tensorboard"]
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 3  # one event file per launch: rank 0's

    # evaluation under torchrun: 7 samples on 2 ranks (4 + 3), adaptive ODE solver (NFE differ per rank)
    torchrun(2, workdir, mode="sample", **{"eval.num_samples": 7})
    [npz] = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(workdir, "eval")) for f in fs
             if f == "samples.npz"]
    import numpy as np

    with np.load(npz) as data:
        assert data["samples"].shape == (7, 2) and np.isfinite(data["samples"]).all()
        assert data["nfe"].shape == (2,)  # one solver call per rank


def _resume_worker(rank, world, port, whole, halves):
    """Three training runs in one 2-rank process group (train() leaves a group it did not create alone)."""
    import torch.distributed as dist

    from score_sde import training

    rank_env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for workdir, n_iters in ((whole, 6), (halves, 3), (halves, 6)):
            training.train(main_config(**{"training.n_iters": n_iters, "training.snapshot_freq": n_iters}),
                           workdir, progress=False)
    finally:
        dist.destroy_process_group()


def test_two_process_resume_is_bitwise(tmp_path, gloo):
    """K=2 stopped at step 3 and resumed at K=2 ends bitwise equal to an uninterrupted K=2 run (K=2 -> 1 -> 2
    against one process: test_killed_two_process_run_resumes_with_one_then_two_processes)."""
    from score_sde import checkpoint

    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    launch(_resume_worker, 2, whole, halves)
    a, b = (torch.load(checkpoint.checkpoint_path(w, 6), weights_only=True) for w in (whole, halves))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    assert all(torch.equal(x, y) for x, y in zip(a["optimizer"]["state"][0].values(),
                                                 b["optimizer"]["state"][0].values()))
