"""VE SDE, continuous-time DSM, NCSN++ on LSUN bedroom 256x256 (Song et al. 2021, Fig. 1 / Appendix H).

Set --config.data.root to a folder of bedroom images (or a cache written by `python -m score_sde.image_prep`).
"""
from configs.default_lsun_configs import get_default_configs


def get_config():
    config = get_default_configs()
    config.data.root = "data/lsun_bedroom"
    return config
