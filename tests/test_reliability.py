"""Reliability suite (issue 10): runs never share a workdir, a signal saves and stops, non-finite state
is never saved, checkpoints carry version/fingerprint/checksum, operator faults end in one line.

Tiny configs; subprocesses only where a real signal or a second process is the point."""
from __future__ import annotations

import errno
import gzip
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch

from score_sde.pipeline.spec import as_spec
from tiny_configs import tiny
from score_sde import (checkpoint, cli_errors, data_stream, datasets, evaluation, integrity, losses,
                       preemption, training, workdir_lock)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/ is imported as a package, as main.py does
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TOY = "configs/vp/toy_mlp_continuous.py"
QUIET = ["--config.training.snapshot_sampling=False", "--config.training.eval_freq=100000",
         "--config.training.log_freq=100000", "--config.training.snapshot_freq=100000"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread




def cli(workdir, *extra, config=TOY):
    return [sys.executable, os.path.join(ROOT, "main.py"), "--config", os.path.join(ROOT, config),
            "--workdir", str(workdir), "--mode", "train", "--config.device=cpu",
            "--config.training.batch_size=8", "--config.model.hidden_dims=(16,16)",
            "--config.model.embedding_dim=8", "--config.data.num_train=64", "--config.data.num_eval=32",
            *QUIET, *extra]


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("I1", "W1", "INFO", "WARNING"))
             and "train:" not in ln]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def weights_equal(a, b) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and all(
        torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))


# ------------------------------------------------------------------------------------- 1. lock
def test_second_holder_is_refused_naming_pid_and_host_and_lock_is_released(tmp_path):
    with workdir_lock.hold(str(tmp_path)):
        with pytest.raises(workdir_lock.LockedError, match=rf"pid {os.getpid()} on host \S+"):
            with workdir_lock.hold(str(tmp_path)):
                pass
    assert not (tmp_path / ".lock").exists()
    with workdir_lock.hold(str(tmp_path)):  # free again
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    with caplog.at_level(logging.INFO, logger="score_sde.workdir_lock"):
        with workdir_lock.hold(str(tmp_path)):
            holder = json.loads((tmp_path / ".lock").read_text())
            assert holder["pid"] == os.getpid()
    assert f"pid {dead.pid}" in caplog.text


def test_cli_refuses_a_held_workdir_and_a_config_that_raises(tmp_path):
    bad = tmp_path / "bad_config.py"
    bad.write_text("def get_config():\n    return 1 / 0\n")
    with workdir_lock.hold(str(tmp_path / "run")):
        held = subprocess.Popen(cli(tmp_path / "run"), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        raising = subprocess.Popen([sys.executable, "main.py", "--config", str(bad), "--workdir",
                                    str(tmp_path / "x"), "--mode", "train"], cwd=ROOT, env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out_held, out_raising = held.communicate(timeout=300)[1], raising.communicate(timeout=300)[1]
    assert held.returncode == 1
    line = one_line(out_held)
    assert line.startswith("error: ") and f"pid {os.getpid()}" in line and "in use" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert raising.returncode == 2
    line = one_line(out_raising)
    assert "bad_config.py" in line and "ZeroDivisionError" in line and "line 2" in line


# ------------------------------------------------------------------------------------- 2. signals
def test_sigterm_saves_and_exits_143_and_the_restart_is_bitwise_equal(tmp_path):
    broken = tmp_path / "broken"
    victim = subprocess.Popen(cli(broken, "--config.training.n_iters=100000",
                                  "--config.training.snapshot_freq_for_preemption=10"),
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    meta = checkpoint.meta_checkpoint_path(str(broken))
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None and not os.path.isfile(meta):
        time.sleep(0.05)
    victim.send_signal(signal.SIGTERM)
    err = victim.communicate(timeout=120)[1]
    assert victim.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = one_line(err)
    stopped = checkpoint.load_checkpoint(meta)["step"]
    assert line == (f"stopped by SIGTERM after step {stopped}; saved {meta}; run the same command again "
                    f"to resume")
    assert 10 <= stopped < 100000
    assert not [f for f in os.listdir(os.path.dirname(meta)) if f.endswith(".tmp")]
    # restart (in-process) to a few steps further, against an uninterrupted run to the same step
    end = stopped + 7
    config = tiny(n_iters=end)
    config.training.snapshot_freq_for_preemption = 100000
    resumed = training.train(config, str(broken))
    whole = training.train(config, str(tmp_path / "whole"))
    assert resumed["step"] == whole["step"] == end
    a = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(broken), end))
    b = checkpoint.load_checkpoint(checkpoint.checkpoint_path(str(tmp_path / "whole"), end))
    assert weights_equal(a, b)
    first = checkpoint.load_checkpoint(meta)  # and training did move the weights
    assert not weights_equal(first, a)


def test_sigint_finishes_the_step_saves_and_raises_preempted(tmp_path, monkeypatch):
    config = tiny(n_iters=50)
    config.training.snapshot_freq_for_preemption = 100000
    real = data_stream.seed_step

    def interrupt_at_5(seed, step, info):
        if step == 5:
            signal.raise_signal(signal.SIGINT)  # arrives just before step 6's update
        real(seed, step, info)

    monkeypatch.setattr(data_stream, "seed_step", interrupt_at_5)
    with pytest.raises(preemption.Preempted) as caught:
        training.train(config, str(tmp_path))
    assert caught.value.exit_code == 130 and caught.value.step == 6
    assert checkpoint.load_checkpoint(checkpoint.meta_checkpoint_path(str(tmp_path)))["step"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert cli_errors.describe(caught.value) == (str(caught.value), 130)


# ------------------------------------------------------------------------------------- 3. non-finite
@pytest.mark.parametrize("target,named", [("gradient", r"non-finite gradient norm \(inf\) at step 4"),
                                          ("model", r"non-finite values in model/\S+ after step 4"),
                                          ("optimizer", r"non-finite values in optimizer/\S+exp_avg_sq after step 4")])
def test_nonfinite_state_after_an_update_is_never_saved(tmp_path, monkeypatch, target, named):
    config = tiny(n_iters=8)
    config.training.snapshot_freq_for_preemption = 2
    real = losses.optimization_manager

    def poisoning(optim_config):
        step_fn = real(optim_config)

        def fn(optimizer, params, step):  # step 3 -> 4; the loss of that step is finite
            params = list(params)
            if step == 3 and target == "gradient":
                params[0].grad[0, 0] = float("inf")
            norm = step_fn(optimizer, params, step)
            with torch.no_grad():
                if step == 3 and target == "model":
                    params[0][0, 0] = float("nan")
                if step == 3 and target == "optimizer":  # an overflowing second moment; weights stay finite
                    optimizer.state[params[1]]["exp_avg_sq"][0] = float("inf")
            return norm
        return fn

    monkeypatch.setattr(losses, "optimization_manager", poisoning)
    meta = checkpoint.meta_checkpoint_path(str(tmp_path))
    with pytest.raises(FloatingPointError, match=rf"{named}; nothing was saved - the last good checkpoint is "
                                                 rf"{meta}; lower optim.lr"):
        training.train(config, str(tmp_path))
    saved = checkpoint.load_checkpoint(meta)
    assert saved["step"] == 2
    assert not integrity.first_nonfinite(integrity.float_tensors({k: saved[k] for k in ("model", "ema", "optimizer")}))


def test_save_checkpoint_refuses_nonfinite_and_writes_nothing(tmp_path):
    path = str(tmp_path / "c.pth")
    with pytest.raises(FloatingPointError, match=r"ema/shadow_params\[0\] after step 3.*\(none yet\)"):
        checkpoint.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 3,
                                          "ema": {"shadow_params": [torch.tensor([1.0, float("inf")])]}},
                                   check_finite=True)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------- 4. format
def _trained(tmp_path, name="vp/toy_mlp_continuous"):
    config = tiny(name, n_iters=2)
    training.train(config, str(tmp_path))
    return config, checkpoint.checkpoint_path(str(tmp_path), 2)


def test_checkpoint_carries_version_fingerprint_and_checksum(tmp_path):
    config, path = _trained(tmp_path)
    ckpt = checkpoint.load_checkpoint(path)
    assert ckpt["format_version"] == checkpoint.FORMAT_VERSION
    assert json.loads(ckpt["fingerprint"]) == training.fingerprint_fields(config)
    assert {"training.sde", "model.beta_max", "model.name", "training.continuous"} <= set(json.loads(ckpt["fingerprint"]))
    assert ckpt["checksum"] == integrity.checksum(ckpt)


def test_resume_or_evaluate_under_another_sde_is_refused_unless_allowed(tmp_path, caplog):
    vp, path = _trained(tmp_path)
    ve = tiny("ve/toy_mlp_continuous", n_iters=4)  # same network shapes, other SDE
    with pytest.raises(ValueError, match=r"another model/SDE config \(.*training.sde: 'vpsde' \(checkpoint\) vs "
                                         r"'vesde' \(config\).*allow_fingerprint_mismatch"):
        training.train(ve, str(tmp_path))
    ctx = evaluation._context(as_spec(ve))
    with pytest.raises(ValueError, match="another model/SDE config"):
        evaluation.load_ema_weights(ctx, path)
    with caplog.at_level(logging.WARNING, logger="score_sde.checkpoint"):
        assert evaluation.load_ema_weights(ctx, path, allow_fingerprint_mismatch=True) == 2
    assert "loading it anyway" in caplog.text
    assert evaluation.load_ema_weights(evaluation._context(as_spec(vp)), path) == 2  # the right config loads


def _flip_tensor_byte(path: str) -> None:
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with open(path, "rb") as f:
            f.seek(info.header_offset + 26)
            name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    offset = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def test_flipped_tensor_byte_is_reported_as_damage(tmp_path):
    _, path = _trained(tmp_path)
    _flip_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(ValueError, match=r"is damaged: its contents do not match the checksum"):
        checkpoint.load_checkpoint(path)


def test_old_checkpoints_load_with_a_warning_and_newer_formats_ask_for_an_upgrade(tmp_path, caplog):
    old = str(tmp_path / "old.pth")
    torch.save({"model": {"w": torch.ones(2)}, "step": 1}, old)  # as written before format 1
    with caplog.at_level(logging.WARNING, logger="score_sde.checkpoint"):
        assert checkpoint.load_checkpoint(old, fingerprint_fields={"training.sde": "vpsde"})["step"] == 1
    assert "predates checkpoint format" in caplog.text
    new = str(tmp_path / "new.pth")
    torch.save({"model": {}, "step": 1, "format_version": checkpoint.FORMAT_VERSION + 1}, new)
    with pytest.raises(ValueError, match="upgrade score_sde"):
        checkpoint.load_checkpoint(new)


def test_newer_torch_archive_is_not_called_corrupt(tmp_path):
    src, dst = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"model": {"w": torch.ones(2)}, "step": 1}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info, b"99\n" if info.filename.endswith("/version") else data)
    with pytest.raises(ValueError) as caught:
        checkpoint.load_checkpoint(str(dst))
    assert "newer torch" in str(caught.value) and "corrupt" not in str(caught.value).replace("not corrupt", "")


class Evil:  # module-level so pickle can name it; a weights-only load must refuse it
    pass


def test_refused_import_ckpt_does_not_repeat_torch_advice(tmp_path):
    from score_sde.models import compat

    path = str(tmp_path / "evil.pth")
    torch.save({"model": Evil(), "step": 1}, path)
    with pytest.raises(ValueError) as caught:
        compat.load_score_sde_pytorch(path, torch.nn.Linear(1, 1))
    msg = str(caught.value)
    assert "nothing was executed" in msg and "weights_only=False" not in msg and "\n" not in msg


def test_shape_mismatch_names_the_key_and_the_file(tmp_path):
    _, path = _trained(tmp_path)
    other = tiny(n_iters=4)
    other.model.hidden_dims = (16, 32)
    ctx = evaluation._context(as_spec(other))
    with pytest.raises(ValueError, match=rf"{path} does not fit .*size mismatch for \S+"):
        evaluation.load_ema_weights(ctx, path, allow_fingerprint_mismatch=True)


# ------------------------------------------------------------------------------------- 5. errors
@pytest.mark.parametrize("code,where,fix", [(errno.ENOSPC, "write", "disk is full"),
                                            (errno.EROFS, "create", "read-only"),
                                            (errno.EACCES, "create", "permission")])
def test_os_errors_while_saving_end_in_one_line_naming_the_path(tmp_path, monkeypatch, capsys, code, where, fix):
    config = tiny(n_iters=2)
    training.train(config, str(tmp_path))
    before = checkpoint.load_checkpoint(checkpoint.meta_checkpoint_path(str(tmp_path)))
    if where == "write":
        def full_disk(obj, f, *a, **k):
            f.write(b"partial")
            raise OSError(code, os.strerror(code))  # a real write() names no file
        monkeypatch.setattr(torch, "save", full_disk)
    else:
        import tempfile

        def refuse(*a, **k):
            raise OSError(code, os.strerror(code), k.get("dir"))
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    config.training.n_iters = 4
    import main
    monkeypatch.setattr(main, "run", lambda *a: training.train(config, str(tmp_path)))
    main.FLAGS.unparse_flags()
    main.FLAGS(["main.py", "--config", os.path.join(ROOT, TOY), "--workdir", str(tmp_path), "--mode", "train"])
    with pytest.raises(SystemExit) as caught:
        main.main(["main.py"])
    assert caught.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: ") and fix in line.lower() and "checkpoint" in line
    meta_dir = os.path.dirname(checkpoint.meta_checkpoint_path(str(tmp_path)))
    assert not [f for f in os.listdir(meta_dir) if f.endswith(".tmp")]
    assert weights_equal(before, checkpoint.load_checkpoint(checkpoint.meta_checkpoint_path(str(tmp_path))))


def test_leftover_tmp_files_are_removed_at_the_next_start(tmp_path):
    config = tiny(n_iters=2)
    training.train(config, str(tmp_path))
    left = tmp_path / "checkpoints-meta" / ".checkpoint.pth.x1y2.tmp"
    left.write_bytes(b"half a checkpoint")
    keep = tmp_path / "checkpoints-meta" / "notes.tmp"  # not one of ours: kept
    keep.write_text("mine")
    config.training.n_iters = 3
    training.train(config, str(tmp_path))
    assert not left.exists() and keep.exists()


def test_decompression_bomb_in_an_image_folder_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    path = str(tmp_path / "big.png")
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 3)  # > 2x the limit: Pillow raises
    with pytest.raises(ValueError, match=rf"image {path} is over Pillow's decompression-bomb limit") as caught:
        datasets.load_image_levels(path, 8, "RGB")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("blob", [b"\x1f\x8b\x08\x00" + bytes(6) + b"garbage" * 50, b"not an archive" * 9])
def test_corrupt_cifar_archive_is_one_line(tmp_path, blob):
    (tmp_path / datasets.CIFAR_ARCHIVE).write_bytes(blob)
    with pytest.raises(ValueError, match=r"is not a readable tar.gz \(method gz: ReadError.*\); re-download") as caught:
        datasets.load_cifar10_levels(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_describe_names_path_and_fix_and_leaves_bugs_alone():
    line, code = cli_errors.describe(OSError(errno.ENOSPC, "No space left on device", "/w/x.pth"))
    assert code == 1 and line == ("error: No space left on device at /w/x.pth: the disk is full; free space or "
                                  "point --workdir at a larger disk, then rerun to resume")
    assert cli_errors.describe(ZeroDivisionError("bug")) is None


def test_eval_folder_is_locked_and_nan_weights_are_not_evaluated(tmp_path):
    config, path = _trained(tmp_path)
    with workdir_lock.hold(str(tmp_path / "eval")):
        with pytest.raises(workdir_lock.LockedError, match=rf"eval is in use by pid {os.getpid()}"):
            evaluation.sample(config, str(tmp_path))
    ckpt = checkpoint.load_checkpoint(path)
    ckpt["ema"]["shadow_params"][0][0] = float("nan")
    checkpoint.save_checkpoint(path, {k: v for k, v in ckpt.items() if k not in ("checksum", "format_version")},
                               training.fingerprint_fields(config))
    with pytest.raises(ValueError, match=rf"{path} holds non-finite weights \(\S+\); it cannot be evaluated"):
        evaluation.load_ema_weights(evaluation._context(as_spec(config)), path)
