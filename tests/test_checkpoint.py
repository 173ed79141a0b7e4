"""Checkpoint tests: atomic writes, safe loading, clear errors, RNG round-trip, ordering."""
import os
import pickle
import random

import numpy as np
import pytest
import torch

from score_sde import checkpoint as ck


def _state(step=3, value=1.0):
    return {"model": {"w": torch.full((4,), value)}, "step": step,
            "ema": {"decay": 0.999, "num_updates": 7, "shadow_params": [torch.zeros(2)]},
            "config": "{\"a\": 1}"}


def test_save_load_roundtrip(tmp_path):
    path = str(tmp_path / "c.pth")
    ck.save_checkpoint(path, _state(step=5, value=2.0))
    out = ck.load_checkpoint(path)
    assert out["step"] == 5
    assert torch.equal(out["model"]["w"], torch.full((4,), 2.0))
    assert out["ema"]["num_updates"] == 7 and out["config"] == "{\"a\": 1}"


def test_save_rejects_state_without_mandatory_keys(tmp_path):
    with pytest.raises(ValueError, match="step"):
        ck.save_checkpoint(str(tmp_path / "c.pth"), {"model": {}})


def test_atomic_save_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pth")
    ck.save_checkpoint(path, _state(step=1, value=1.0))
    before = open(path, "rb").read()

    def broken_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial bytes")  # some bytes reach the disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, _state(step=2, value=9.0))
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c.pth"]
    assert ck.load_checkpoint(path)["step"] == 1


def test_missing_file_error_names_path(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("cut", [0, 10, 0.5, -20])
def test_truncated_file_gives_clear_error(tmp_path, cut):
    path = str(tmp_path / "c.pth")
    ck.save_checkpoint(path, _state())
    data = open(path, "rb").read()
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
    with open(path, "wb") as f:
        f.write(data[:n])
    with pytest.raises(ValueError, match="corrupt or truncated.*delete it to fall back"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("content", [b"this is not a checkpoint at all" * 20, b"garbage\n"])
def test_garbage_file_gives_clear_error(tmp_path, content):
    """Text is not taken for pickled code ('g' is a pickle opcode): it is reported as corrupt."""
    path = str(tmp_path / "c.pth")
    with open(path, "wb") as f:
        f.write(content)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        ck.load_checkpoint(path)


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("payload_cls", [_Evil, _EvilOpen])
@pytest.mark.parametrize("writer", ["torch_zip", "raw_pickle"])
def test_pickled_code_is_refused_and_never_executed(tmp_path, payload_cls, writer):
    marker = tmp_path / "PWNED"
    payload_cls.marker = str(marker)
    evil = {"model": {"w": payload_cls()}, "step": 1}
    path = str(tmp_path / "evil.pth")
    if writer == "torch_zip":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refuses.*nothing was executed.*plain state dict"):
        ck.load_checkpoint(path)
    assert not marker.exists()


def test_non_checkpoint_dict_is_rejected(tmp_path):
    path = str(tmp_path / "c.pth")
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(ValueError, match="needs keys"):
        ck.load_checkpoint(path)


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist())


def test_rng_roundtrip_through_weights_only_file(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's state
    np.random.randn()   # numpy's Box-Muller leaves a cached value too
    path = str(tmp_path / "c.pth")
    ck.save_checkpoint(path, dict(_state(), rng=ck.capture_rng_state()))
    expected = _draws()
    for _ in range(5):  # scramble every generator
        _draws()
    random.seed(99); np.random.seed(99); torch.manual_seed(99)
    ck.restore_rng_state(ck.load_checkpoint(path)["rng"])
    assert _draws() == expected


def test_restore_rng_rejects_malformed_state():
    with pytest.raises(ValueError, match="capture_rng_state"):
        ck.restore_rng_state({"torch": torch.get_rng_state()})


def test_list_and_latest_order_by_step(tmp_path):
    wd = str(tmp_path)
    assert ck.list_checkpoints(wd) == [] and ck.latest_checkpoint(wd) is None
    for step in (9, 10, 2):
        ck.save_checkpoint(ck.checkpoint_path(wd, step), _state(step=step))
    open(os.path.join(wd, "checkpoints", "checkpoint_x.pth"), "w").close()  # ignored
    listed = ck.list_checkpoints(wd)
    assert [s for s, _ in listed] == [2, 9, 10]
    assert listed[-1][1].endswith(os.path.join("checkpoints", "checkpoint_10.pth"))
    assert ck.latest_checkpoint(wd) == ck.checkpoint_path(wd, 10)


def test_latest_considers_preemption_checkpoint(tmp_path):
    wd = str(tmp_path)
    ck.save_checkpoint(ck.checkpoint_path(wd, 10), _state(step=10))
    meta = ck.meta_checkpoint_path(wd)
    ck.save_checkpoint(meta, _state(step=10))
    assert ck.latest_checkpoint(wd) == ck.checkpoint_path(wd, 10)  # tie -> numbered file
    ck.save_checkpoint(meta, _state(step=15))
    assert ck.latest_checkpoint(wd) == meta
    assert meta == os.path.join(wd, "checkpoints-meta", "checkpoint.pth")
