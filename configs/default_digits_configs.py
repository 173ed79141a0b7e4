"""Defaults for the embedded data set: scikit-learn's 8x8 digits (1797 images, 17 grey levels).

Small enough to train, sample and score (bits/dim) on a 2-core CPU in minutes.
"""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()
    config.seed = 0
    training = config.training
    training.batch_size = 128
    training.n_iters = 1500  # measured: see bench/RESULTS.md
    training.log_freq = 50
    training.eval_freq = 250
    training.snapshot_freq = 500
    training.snapshot_freq_for_preemption = 250
    training.snapshot_sampling = True

    evaluate = config.eval
    evaluate.batch_size = 300
    evaluate.enable_loss = True
    evaluate.enable_bpd = True
    evaluate.enable_sampling = True
    evaluate.num_samples = 64
    evaluate.bpd_dataset = "test"
    evaluate.likelihood.trace = "hutchinson-rademacher"
    evaluate.bpd_num_batches = 1
    evaluate.reference_split = "test"  # SW2 (and FID) against held-out items
    evaluate.num_reference = 10000

    data = config.data
    data.dataset = "digits"
    del data["root"]  # bundled with scikit-learn
    data.image_size = 8
    data.num_channels = 1
    data.num_levels = 17
    data.centered = True
    data.random_flip = False  # digits are not mirror-symmetric
    data.uniform_dequantization = True  # makes bits/dim a bound on the discrete data

    optim = config.optim
    optim.lr = 2e-3
    optim.warmup = 200
    optim.grad_clip = 1.0
    return config
