"""The pipeline half: the typed spec (the only reader of a config), building, training, evaluation."""
from .spec import Spec, as_spec  # noqa: F401
