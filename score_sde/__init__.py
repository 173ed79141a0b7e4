"""score_sde: score-based generative modelling through SDEs in plain PyTorch.

    import score_sde
    exp = score_sde.load("runs/digits_vp")               # newest checkpoint, EMA weights, its config
    x = exp.sample(16, method="dpm_solver", steps=10)    # model space: [n, C, H, W] or [n, d]
    nll = exp.nll(x)                                     # nats per sample (probability-flow ODE)
"""
__version__ = "0.1.0"


def load(path, **kwargs):
    """Experiment of a workdir (its newest checkpoint) or a checkpoint file: see score_sde.pipeline.experiment.

    Imported on call, so that `import score_sde.sde_lib` stays light (no models, data or pipeline)."""
    from .pipeline.experiment import load as _load

    return _load(path, **kwargs)
