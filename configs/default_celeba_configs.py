"""Defaults for CelebA / CelebA-HQ image folders (score_sde_pytorch field names).

The images are read from a folder of PNG/JPEG files (config.data.root), centre-cropped and resized.
"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()
    config.training.batch_size = 128
    config.training.n_iters = 1300001
    config.sampling.snr = 0.17
    config.eval.bpd_dataset = "test"

    data = config.data
    data.dataset = "image_folder"
    data.root = "data/celeba"
    data.image_size = 64
    data.num_channels = 3
    data.num_levels = 256
    data.eval_fraction = 0.1
    data.random_flip = True
    return config
