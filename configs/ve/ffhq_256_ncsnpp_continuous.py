"""VE SDE, continuous-time DSM, NCSN++ on FFHQ 256x256 (score_sde_pytorch's re-trained checkpoint).

Same network as the LSUN configs with sigma_max = 348. The images are FFHQ at 256 px (the r08 level of
StyleGAN's dataset_tool: 2x2 box filtering from 1024 px, which `python -m score_sde.image_prep --method box`
reproduces); set --config.data.root to that folder.
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.root = "data/ffhq_256"
    config.model.sigma_max = 348.0
    return config
