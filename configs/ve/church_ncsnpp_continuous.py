"""VE SDE, continuous-time DSM, NCSN++ on LSUN church_outdoor 256x256 (Song et al. 2021, Appendix H).

Set --config.data.root to a folder of church_outdoor images. sigma_max = 380 as in score_sde_pytorch.
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.root = "data/lsun_church_outdoor"
    config.model.sigma_max = 380.0
    return config
