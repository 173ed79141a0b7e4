"""Training and evaluation entry points called by main.py (kept thin: the work lives in score_sde/)."""
from score_sde.evaluation import evaluate, sample  # noqa: F401
from score_sde.schedule_store import run_schedule as schedule  # noqa: F401
from score_sde.training import train  # noqa: F401
