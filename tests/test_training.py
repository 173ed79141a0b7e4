"""Training pipeline: every config kind trains and writes its files; kill + resume == uninterrupted;
non-finite loss stops cleanly; data order and batch splitting; CLI errors are one line."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from score_sde import data_stream, distributed, checkpoint, datasets, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ is imported as a package, as main.py does


# One thread per process: on a shared 2-core machine OpenMP's spin-waiting threads make tiny
# convolutions 10-50x slower when other processes compete for the cores.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def load_config(name: str):
    import importlib

    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


def tiny(name: str, n_iters: int = 3):
    """The named config shrunk to seconds: tiny network, few noise levels, few sampler steps."""
    c = load_config(name)
    tr = c.training
    tr.batch_size, tr.n_iters = 8, n_iters
    tr.log_freq = tr.eval_freq = 1
    tr.snapshot_freq, tr.snapshot_freq_for_preemption = n_iters, 1
    c.model.num_scales = 50  # VP: beta_max / N < 1 keeps every discrete level's mean coefficient > 0
    if c.model.name == "mlp":
        c.model.hidden_dims = (16, 16)
        c.model.embedding_dim = 8
        c.data.num_train, c.data.num_eval = 64, 32
    else:
        c.model.nf = 32 if c.model.name == "ddpm" else 16
    for key, value in (("steps", 4), ("n_steps_each", 1)):
        if key in c.sampling:
            c.sampling[key] = value
    c.device = "cpu"
    return c


KINDS = ["vp/toy_mlp_continuous", "ve/toy_mlp_continuous", "vp/digits_ddpmpp_continuous",
         "vp/ddpm/digits", "ve/ncsn/digits"]


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_trains_and_writes_checkpoint_events_png(name, tmp_path):
    config = tiny(name)
    state = training.train(config, str(tmp_path))
    assert state["step"] == 3
    ckpt = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path), 3))
    assert ckpt["step"] == 3 and {"model", "ema", "optimizer", "rng", "config"} <= set(ckpt)
    for k, v in state["model"].state_dict().items():
        assert torch.equal(ckpt["model"][k], v), k
    assert checkpoint.load_checkpoint(checkpoint.meta_checkpoint_path(str(tmp_path)))["step"] == 3
    assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    png = tmp_path / "samples" / "iter_3" / "samples.png"
    assert png.is_file() and png.stat().st_size > 0
    # loss, lr, grad_norm and the eval loss reached TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert "samples" in acc.Tags()["images"]


def test_second_call_resumes_instead_of_restarting(tmp_path):
    config = tiny("vp/toy_mlp_continuous", n_iters=2)
    training.train(config, str(tmp_path))
    config.training.n_iters = 4
    state = training.train(config, str(tmp_path))
    assert state["step"] == 4
    assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [2, 4]


# ------------------------------------------------------------------ kill -9 and resume
def _cli(workdir, *overrides):
    return [sys.executable, os.path.join(ROOT, "main.py"), "--config",
            os.path.join(ROOT, "configs/vp/digits_ddpmpp_continuous.py"), "--workdir", str(workdir),
            "--mode", "train", "--config.device=cpu", "--config.training.batch_size=8",
            "--config.training.n_iters=40", "--config.training.snapshot_freq=40",
            "--config.training.snapshot_freq_for_preemption=3", "--config.training.eval_freq=7",
            "--config.training.log_freq=5", "--config.training.snapshot_sampling=False",
            "--config.model.nf=16", *overrides]


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    ref = subprocess.Popen(_cli(whole), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_cli(broken), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = checkpoint.meta_checkpoint_path(str(broken))
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if os.path.isfile(meta) and checkpoint.load_checkpoint(meta)["step"] >= 6:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = checkpoint.load_checkpoint(meta)["step"]
    assert 6 <= killed_at < 40, "the run finished before it could be killed"
    assert not os.path.exists(checkpoint.checkpoint_path(str(broken), 40))
    resumed = _run(_cli(broken))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-2000:]
    a = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(whole), 40))
    b = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(broken), 40))
    assert a["step"] == b["step"] == 40
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=0, atol=1e-6), k
    for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]):
        assert torch.allclose(x, y, rtol=0, atol=1e-6)
    # and the run did change the weights (the comparison is not between two untouched inits)
    assert any(not torch.equal(a["model"][k], torch.zeros_like(a["model"][k])) for k in a["model"])


# ------------------------------------------------------------------ non-finite loss
def test_nonfinite_loss_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    config = tiny("vp/toy_mlp_continuous", n_iters=10)
    config.training.eval_freq = 100
    calls = {"n": 0}
    real_scaler = datasets.get_data_scaler

    def poisoned(cfg):
        scale = real_scaler(cfg)

        def fn(x):
            calls["n"] += 1
            return scale(x) * (float("nan") if calls["n"] == 4 else 1.0)  # the 4th batch is NaN
        return fn

    monkeypatch.setattr(datasets, "get_data_scaler", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        training.train(config, str(tmp_path))
    last = checkpoint.latest_checkpoint(str(tmp_path))
    ckpt = checkpoint.load_checkpoint(last)
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ------------------------------------------------------------------ data order, batch split
def test_step_batches_cover_each_epoch_once_and_restart_anywhere():
    """training reads its data through score_sde.data_stream.StepBatches (more cases in tests/test_ddp.py)."""
    n, b = 10, 4
    one = distributed.DistInfo(0, 1, 0, torch.device("cpu"))
    s = data_stream.StepBatches(n, b, 3, one)
    stream = [i for step in range(5) for _, i in s.keys(step)]  # 20 = two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # a new order each epoch
    it = iter(data_stream.StepBatches(n, b, 3, one, start_step=3))
    assert [i for _, i in next(it)] == stream[12:16] and [i for _, i in next(it)] == stream[16:20]
    ranks = [data_stream.StepBatches(n, b, 3, distributed.DistInfo(r, 2, r, torch.device("cpu"))).keys(1)
             for r in range(2)]
    assert ranks[0] + ranks[1] == s.keys(1)


def test_global_batch_must_split_evenly():
    assert data_stream.local_batch_size(128, distributed.DistInfo(0, 4, 0, torch.device("cpu"))) == 32
    with pytest.raises(ValueError, match="divisible by the number of processes \\(3\\)"):
        data_stream.local_batch_size(128, distributed.DistInfo(0, 3, 0, torch.device("cpu")))


def test_settings_reject_bad_values():
    config = tiny("vp/toy_mlp_continuous")
    config.training.n_iters = 0
    with pytest.raises(ValueError, match="training.n_iters must be a positive integer"):
        training.read_settings(config)
    config = tiny("vp/toy_mlp_continuous")
    config.training.precision = "fp16"
    with pytest.raises(ValueError, match="precision"):
        training.read_settings(config)


# ------------------------------------------------------------------ command line errors
CLI_ERRORS = [
    (["--config.training.batch_sizee=3"], "batch_sizee", 'Did you mean "batch_size"'),
    (["--config.training.sde=vpsd"], "unknown training.sde 'vpsd'", "vesde"),
    (["--mode=fit"], "--mode=fit", "train|eval|sample"),
    (["--config=configs/vp/nope.py"], "No such file", "nope.py"),
    (["--config.training.batch_size=abc"], "batch_size", "abc"),
    (["--config.sampling.method=dpm"], "sampling.method='dpm' is not a sampler", "dpm_solver"),
]


@pytest.mark.slow
def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cases = CLI_ERRORS + [([f"--workdir={blocker}/run"], "cannot write to --workdir", "writable")]
    base = [sys.executable, "main.py", "--config", "configs/vp/toy_mlp_continuous.py", "--workdir",
            str(tmp_path / "w"), "--mode", "train", "--config.device=cpu"]
    procs = [subprocess.Popen(base + extra, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra, _, _ in cases]
    for p, (extra, must, hint) in zip(procs, cases):
        out, err = p.communicate(timeout=300)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert p.returncode != 0, (extra, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (extra, err[-3000:])
        assert must in lines[0] and hint in lines[0], (extra, lines[0])


# ------------------------------------------------------------------ pictures
def test_image_grid_places_tiles_and_rounds_levels(tmp_path):
    from PIL import Image

    from score_sde import images

    x = torch.zeros(3, 1, 2, 2)
    x[1] = 1.0
    x[2, 0, 0, 1] = 0.5
    grid = images.image_grid(x, nrow=2, padding=1)
    assert grid.shape == (7, 7, 1) and grid.dtype.name == "uint8"  # 2 rows x 2 columns of 2x2 + padding
    assert (grid[1:3, 4:6, 0] == 255).all() and (grid[1:3, 1:3, 0] == 0).all()
    assert grid[4, 2, 0] == 128 and grid[0].max() == 0  # 0.5 -> 127.5 rounds to 128; padding stays black
    path = images.save_image_grid(x, str(tmp_path / "g.png"), nrow=2, scale=1)
    assert (Image.open(path).size) == (7, 7)
    pts = torch.tensor([[0.0, 0.0], [1.0, 1.0], [float("nan"), 0.0]])
    img = Image.open(images.scatter_png(pts, str(tmp_path / "s.png"), size=11, bounds=(0, 1, 0, 1), radius=1))
    assert img.getpixel((0, 10)) == (0, 0, 0) and img.getpixel((10, 0)) == (0, 0, 0)  # y grows upwards
    assert img.getpixel((5, 5)) == (255, 255, 255)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        images.image_grid(torch.zeros(2, 8, 8))
