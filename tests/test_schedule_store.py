"""The optimized schedule stored next to the checkpoint (issue 13): --mode schedule, schedule="optimized"."""
from __future__ import annotations

import json
import os

import pytest
import torch

from score_sde import builders, checkpoint, evaluation, schedule_store
from score_sde.pipeline.spec import Spec
from score_sde.sampling import schedules
from test_evaluation import tiny_config


def _unipc_config(**optimize):
    cfg = tiny_config(begin_ckpt=None, enable_loss=False, enable_bpd=False, num_samples=6, batch_size=6)
    cfg.sampling = dict(method="unipc", steps=5, progress=False,
                        optimize=dict(dict(batch=16, sweeps=1, ref_steps=40), **optimize))
    return cfg


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory) -> str:
    wd = str(tmp_path_factory.mktemp("sched"))
    torch.manual_seed(0)
    state = builders.create_state(_unipc_config(), torch.device("cpu"))
    checkpoint.save_checkpoint(checkpoint.checkpoint_path(wd, 3), builders.state_dict_for_checkpoint(dict(state, step=3)))
    return wd


def test_optimize_section_is_not_a_sampler_option():
    spec = Spec.from_config(_unipc_config(), overrides={"sampling.optimize.sweeps": "3"})
    assert spec.sampling.optimize.sweeps == 3 and spec.sampling.optimize.batch == 16
    assert "optimize" not in spec.sampling.options
    assert Spec.from_config(spec.to_json()) == spec
    with pytest.raises(ValueError, match="optimize.steps"):
        Spec.from_config(_unipc_config(steps=2))


def test_mode_schedule_stores_and_eval_loads(toy_workdir):
    path = schedule_store.run_schedule(_unipc_config(), toy_workdir)
    assert path == os.path.join(toy_workdir, "checkpoints", "schedule_unipc.json")
    table = schedules.load_schedule(path)
    meta = json.load(open(path))["meta"]
    assert list(table) == [5] and meta["checkpoint_step"] == 3 and meta["method"] == "unipc"
    # both ends fixed (sigma_max and the endpoint), interior levels moved from the logSNR start
    spec = Spec.from_config(_unipc_config())
    sde = builders.sde_from_config(spec)
    from score_sde.sampling import sigma_space
    start = sigma_space.sigma_grid(sde, 5, "logSNR", 7.0, 80.0, None)[:-1]
    assert table[5][0] == pytest.approx(start[0]) and table[5][-1] == pytest.approx(start[-1])
    assert table[5] != pytest.approx(start)
    # a second step count is added, the first kept
    cfg = _unipc_config(steps=4)
    schedule_store.run_schedule(cfg, toy_workdir)
    assert sorted(schedules.load_schedule(path)) == [4, 5]
    # eval with schedule="optimized" samples on the stored levels and records the file
    cfg = _unipc_config()
    cfg.sampling["schedule"] = "optimized"
    evaluation.evaluate(cfg, toy_workdir)
    root = os.path.join(toy_workdir, "eval", "ckpt_3")
    (folder,) = [d for d in os.listdir(root) if d.startswith("unipc_")]
    rep = json.load(open(os.path.join(root, folder, "report.json")))
    assert rep["options"]["schedule"] == path and rep["nfe"] == 5
    # score_sde.load(workdir).sample(..., schedule="optimized") finds the same file
    import score_sde
    exp = score_sde.load(toy_workdir, config=_unipc_config())
    x = exp.sample(3, schedule="optimized", seed=1)
    y = exp.sample(3, schedule=path, seed=1)
    assert torch.equal(x, y)


def test_optimized_without_file_is_a_clear_error(tmp_path):
    cfg = _unipc_config()
    cfg.sampling["schedule"] = "optimized"
    with pytest.raises(FileNotFoundError, match="--mode schedule"):
        evaluation.evaluate(cfg, str(tmp_path))


def test_sampler_without_optimizer_rejected(toy_workdir):
    cfg = _unipc_config()
    cfg.sampling = dict(method="ddim", steps=4)
    with pytest.raises(ValueError, match="sampling.method='ddim'"):
        schedule_store.run_schedule(cfg, toy_workdir)
