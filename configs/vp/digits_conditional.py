"""Class-conditional digits (issue 11): the embedded VP/DDPM++ model with a label embedding and label dropout 0.1,
so one network gives both p(x | c) and, through its null class, p(x) (classifier-free guidance).

    python main.py --config configs/vp/digits_conditional.py --workdir runs/digits_cond --mode train
    python main.py --config configs/vp/digits_conditional.py --workdir runs/digits_cond --mode sample
    python main.py --config configs/vp/digits_conditional.py --workdir runs/digits_cond --mode inpaint

Measured in bench/RESULTS.md (bench/conditional_digits.py).
"""
from configs.vp.digits_ddpmpp_continuous import get_config as _unconditional


def get_config():
    config = _unconditional()
    config.data.num_classes = 10
    config.training.label_dropout = 0.1
    config.training.n_iters = 1500  # as the unconditional digits default (measured run: bench/RESULTS.md)
    config.training.snapshot_freq = 500
    config.sampling.guidance = 0.0  # classifier-free w; e.g. --config.sampling.guidance=1
    config.inpaint = dict(method="smc", particles=8, steps=100, mask="half", mask_fraction=0.5, num_images=16)
    config.classifier = dict(arch="wideresnet", depth=10, widen_factor=2, n_iters=1500, batch_size=128, lr=1e-3)
    return config
