"""Defaults of the 256x256 VE NCSN++ configs (LSUN bedroom / church, FFHQ 256): score_sde_pytorch's
default_lsun_configs.py values on top of the CIFAR-10 defaults.

Song et al. 2021 (ICLR), Appendix H: batch 64, 2.4M iterations, sigma_max from the "technique 1" rule of
Song & Ermon 2020 (378 for bedroom), 2000 noise scales, PC sampling with snr 0.075, no dropout.
Images are read from a folder of PNG/JPEG files (config.data.root), centre-cropped to a square and
resized to 256 with bicubic filtering; `python -m score_sde.image_prep` writes a fast-loading cache.
"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults
from configs.default_cifar10_unets import ncsnpp


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()
    training = config.training
    training.sde = "vesde"
    training.continuous = True
    training.batch_size = 64
    training.n_iters = 2400001
    training.snapshot_freq_for_preemption = 5000

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.075

    evaluate = config.eval
    evaluate.begin_ckpt = 50000
    evaluate.end_ckpt = None
    evaluate.batch_size = 512
    evaluate.bpd_dataset = "test"

    data = config.data
    data.dataset = "image_folder"
    data.root = "data/lsun"
    data.image_size = 256
    data.num_channels = 3
    data.num_levels = 256
    data.eval_fraction = 0.1
    data.random_flip = True
    data.centered = False

    ncsnpp(config.model)
    model = config.model
    model.sigma_max = 378.0
    model.num_scales = 2000
    model.dropout = 0.0
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
    model.progressive = "output_skip"
    model.progressive_input = "input_skip"
    del model["beta_min"], model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
