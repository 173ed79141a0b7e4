"""Issue 10, phase 2: per-item loss noise, resumable sampling / bits/dim shards, the checksum-keyed eval
cache, --allow_fingerprint_mismatch and the converter's checkpoint format (docs/reliability.md)."""
import os
import sys

import numpy as np
import pytest
import torch

import tiny_configs
from score_sde import checkpoint, data_stream, evaluation, losses, report, sde_lib, shards, training
from score_sde.pipeline import train_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ is imported as a package, as main.py does


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def tiny(name: str = "vp/toy_mlp_continuous", n_iters: int = 2):
    """tiny_configs.tiny with 40 noise levels and small evaluation jobs."""
    c = tiny_configs.tiny(name, n_iters)
    c.model.num_scales = 40
    c.eval.num_samples, c.eval.batch_size = 10, 4
    c.eval.enable_loss = c.eval.enable_bpd = c.eval.enable_sampling = False
    c.eval.enable_fid = False
    return c


# ----------------------------------------------------------------------------- item 6: per-item loss noise
def test_loss_noise_is_keyed_per_item_so_any_split_of_the_batch_gives_the_same_loss():
    """The mean of per-chunk losses (what K ranks average) equals the full-batch loss, draws given per item."""
    sde = sde_lib.VPSDE(0.1, 20.0, 1000)
    score_fn = lambda x, t: -x * (1 + t[:, None])  # noqa: E731  any fixed function
    x = torch.randn(8, 3, dtype=torch.float64)
    noise = [data_stream.item_noise(5, p, (3,)) for p in range(8)]
    u, z, normal = (torch.stack(v).double() for v in zip(*noise))
    for time_sampling in ("uniform", "importance", "lognormal"):
        loss_fn = losses.get_loss_fn(sde, time_sampling=time_sampling)
        full = loss_fn(score_fn, x, noise=(u, z, normal))
        halves = [loss_fn(score_fn, x[i:i + 4], noise=(u[i:i + 4], z[i:i + 4], normal[i:i + 4])) for i in (0, 4)]
        assert float(full) == pytest.approx(float(sum(halves) / 2), rel=1e-12)
    with pytest.raises(ValueError, match="noise shapes"):
        losses.get_loss_fn(sde)(score_fn, x, noise=(u[:4], z))
    # the position decides the draw, not the order of loading
    a, b = data_stream.item_noise(5, 3, (3,)), data_stream.item_noise(5, 3, (3,))
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not torch.equal(a[1], data_stream.item_noise(5, 4, (3,))[1])


# ----------------------------------------------------------------------------- item 2: resumable jobs
class _Killed(Exception):
    pass


def _kill_after(monkeypatch, saves: int):
    real, count = shards.ShardStore.save, [0]

    def save(self, index, tensors):
        if count[0] == saves:
            raise _Killed(f"killed before batch {index} was saved")
        count[0] += 1
        real(self, index, tensors)

    monkeypatch.setattr(shards.ShardStore, "save", save)
    return count


def _samples(workdir, folder):
    [npz] = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(workdir, folder)) for f in fs
             if f == "samples.npz"]
    with np.load(npz) as data:
        return data["samples"], data["nfe"]


def test_killed_sampling_and_bpd_jobs_resume_with_identical_results(tmp_path, monkeypatch):
    config = tiny()
    training.train(config, str(tmp_path), progress=False)
    evaluation.sample(config, str(tmp_path), "whole")
    want, want_nfe = _samples(tmp_path, "whole")
    assert want.shape == (10, 2) and want_nfe.shape == (3,)  # batches of 4, 4, 2

    count = _kill_after(monkeypatch, 2)
    with pytest.raises(_Killed):
        evaluation.sample(config, str(tmp_path), "killed")
    [out] = [d for d, _, fs in os.walk(tmp_path / "killed") if "shards" in os.listdir(d)]
    assert len(os.listdir(os.path.join(out, "shards"))) == 2 and not os.path.exists(os.path.join(out, "report.json"))
    count[0] = -100  # no more kills
    evaluation.sample(config, str(tmp_path), "killed")
    assert count[0] == -99  # only the missing third batch was drawn
    got, got_nfe = _samples(tmp_path, "killed")
    assert np.array_equal(got, want) and np.array_equal(got_nfe, want_nfe)
    assert not os.path.exists(os.path.join(out, "shards"))  # deleted once the report was written

    config.eval.enable_bpd, config.eval.bpd_num_batches = True, 2
    evaluation.evaluate(config, str(tmp_path), "bpd_whole")
    count = _kill_after(monkeypatch, 1)
    with pytest.raises(_Killed):
        evaluation.evaluate(config, str(tmp_path), "bpd_killed")
    count[0] = -100
    evaluation.evaluate(config, str(tmp_path), "bpd_killed")
    assert count[0] == -99
    whole, killed = (report.read_json(str(tmp_path / f / "ckpt_2" / "bpd.json")) for f in ("bpd_whole", "bpd_killed"))
    assert whole["bits_per_dim"] == killed["bits_per_dim"] and whole["num_examples"] == 8
    assert not os.path.exists(tmp_path / "bpd_killed" / "ckpt_2" / "bpd_shards")


def test_shards_from_other_settings_or_weights_are_not_reused(tmp_path):
    store = shards.ShardStore(str(tmp_path / "s"), {"a": 1}, "sha256:x")
    store.save(0, {"x": torch.ones(2)})
    assert torch.equal(store.load(0)["x"], torch.ones(2))
    assert shards.ShardStore(str(tmp_path / "s"), {"a": 2}, "sha256:x").load(0) is None
    assert shards.ShardStore(str(tmp_path / "s"), {"a": 1}, "sha256:y").load(0) is None
    (tmp_path / "s" / "shard_000001.pt").write_bytes(b"truncated")
    assert store.load(1) is None and store.load(2) is None
    store.clear()
    assert not os.path.exists(tmp_path / "s")


# ----------------------------------------------------------------------------- item 3: eval cache
def test_eval_cache_is_keyed_on_the_checkpoint_checksum(tmp_path, caplog):
    config = tiny()
    training.train(config, str(tmp_path), progress=False)
    path = checkpoint.checkpoint_path(str(tmp_path), 2)
    out = evaluation.sample(config, str(tmp_path))
    first = report.read_json(os.path.join(out, "report.json"))
    assert first["settings"]["checkpoint_checksum"] == checkpoint.load_checkpoint(path)["checksum"]
    evaluation.sample(config, str(tmp_path))
    assert report.read_json(os.path.join(out, "report.json")) == first  # same weights: skipped
    ckpt = checkpoint.load_checkpoint(path)  # replace the file: same step, other weights
    ckpt["ema"]["shadow_params"][0].add_(0.5)
    checkpoint.save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("checksum", "format_version")},
                               training.fingerprint_fields(config))
    evaluation.sample(config, str(tmp_path))
    again = report.read_json(os.path.join(out, "report.json"))
    assert again["settings"]["checkpoint_checksum"] != first["settings"]["checkpoint_checksum"]
    old = {k: v for k, v in ckpt.items() if k not in ("checksum", "format_version", "fingerprint")}
    torch.save(old, path)  # an old-format file (no checksum): keyed on the file's SHA-256
    assert checkpoint.content_id(path, old).startswith("file-sha256:")


# ----------------------------------------------------------------------------- item 4: CLI override flag
def test_allow_fingerprint_mismatch_reaches_train_eval_and_sample(tmp_path):
    import main

    training.train(tiny(), str(tmp_path), progress=False)
    ve = tiny("ve/toy_mlp_continuous")
    with pytest.raises(ValueError, match="allow_fingerprint_mismatch"):
        main.run(ve, str(tmp_path), "sample", "eval", progress=False)
    main.run(ve, str(tmp_path), "sample", "eval", progress=False, allow_fingerprint_mismatch=True)
    ve.training.n_iters = 3
    main.run(ve, str(tmp_path), "train", "eval", progress=False, allow_fingerprint_mismatch=True)
    assert checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path), 3))["step"] == 3


# ----------------------------------------------------------------------------- item 5: snapshot after SIGKILL
def test_snapshot_samples_killed_after_their_checkpoint_are_drawn_on_resume(tmp_path, monkeypatch):
    config = tiny(n_iters=2)
    config.training.snapshot_sampling, config.training.snapshot_freq = True, 2
    config.training.snapshot_freq_for_preemption = 100000
    real = training.snapshot_samples

    def killed(*args, **kwargs):
        raise _Killed("SIGKILL while drawing snapshot samples")

    monkeypatch.setattr(train_report, "snapshot_samples", killed)  # where log_snapshot looks it up
    with pytest.raises(_Killed):
        training.train(config, str(tmp_path), progress=False)
    npz = tmp_path / "samples" / "iter_2" / "samples.npz"
    assert os.path.isfile(checkpoint.checkpoint_path(str(tmp_path), 2)) and not npz.exists()
    monkeypatch.setattr(train_report, "snapshot_samples", real)
    training.train(config, str(tmp_path), progress=False)  # resumes at step 2 = n_iters: only the snapshot
    assert npz.exists()


def test_tensorboard_disk_full_names_the_folder(tmp_path, monkeypatch):
    import errno

    from score_sde import cli_errors, distributed

    logger = training.Logger(str(tmp_path), distributed.DistInfo(0, 1, 0, torch.device("cpu")), 0, 1, False)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as TensorBoard's writer thread re-raises it

    monkeypatch.setattr(logger.writer, "add_scalar", full)
    with pytest.raises(OSError) as caught:
        logger.scalars(1, {"loss": 1.0})
    assert cli_errors.describe_os_error(caught.value).startswith(
        f"No space left on device at {tmp_path / 'tensorboard'}: ")
    logger.close()
