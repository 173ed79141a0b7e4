"""score_sde: score-based generative modelling through SDEs in plain PyTorch."""
__version__ = "0.1.0"
