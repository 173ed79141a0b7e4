"""VE SDE, continuous-time DSM, NCSN++ on FFHQ 1024x1024 (score_sde_pytorch's ffhq_1024 checkpoint).

Eight resolutions 1024..8 with 16 base channels (ch_mult up to 32), one residual block each, sigma_max 1348,
2000 scales, batch 8, PC sampling with snr 0.15. Set --config.data.root to the 1024 px FFHQ images.
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.batch_size = 8
    training.reduce_mean = True

    config.sampling.snr = 0.15
    config.eval.batch_size = 1024

    data = config.data
    data.root = "data/ffhq_1024"
    data.image_size = 1024

    model = config.model
    model.sigma_max = 1348.0
    model.ema_rate = 0.9999
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    return config
