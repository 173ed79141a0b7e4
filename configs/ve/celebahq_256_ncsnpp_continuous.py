"""VE SDE, continuous-time DSM, NCSN++ on CelebA-HQ 256x256 (Song et al. 2021, Fig. 1/12).

Images are read from a folder of PNG/JPEG files: set --config.data.root=/path/to/celebahq_256.
"""
from configs.default_celeba_configs import get_default_configs
from configs.default_cifar10_unets import ncsnpp


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = True
    training.batch_size = 8
    training.n_iters = 2400001
    training.snapshot_sampling = True
    training.snapshot_freq = 50000
    training.snapshot_freq_for_preemption = 5000

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.snr = 0.075

    config.eval.batch_size = 8
    data = config.data
    data.root = "data/celebahq_256"
    data.image_size = 256
    data.centered = False
    data.random_flip = True

    ncsnpp(config.model)
    model = config.model
    model.sigma_max = 348.0
    model.num_scales = 2000
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
    model.dropout = 0.0
    model.progressive = "output_skip"
    model.progressive_input = "input_skip"
    config.optim.lr = 2e-4
    del config.model["beta_min"], config.model["beta_max"]  # VP-only parameters, unread by a VE run
    return config
