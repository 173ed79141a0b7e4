"""Training: `train(config, workdir)`. The loop lives in score_sde/pipeline/train.py, the checkpoint
side (seeding, save, resume, finite checks) in pipeline/train_state.py, logging and snapshot samples in
pipeline/train_report.py; this module keeps every name importable from its old place."""
from .builders import build_sampler  # noqa: F401
from .pipeline.train import (batch_iterator, eval_batch, prepare_workdir, read_settings,  # noqa: F401
                             split_labels, train)
from .pipeline.train_report import (SNAPSHOT_IMAGES, SNAPSHOT_POINTS, Logger, snapshot_missing,  # noqa: F401
                                    snapshot_samples)
from .pipeline.train_state import (check_grad_norm, fingerprint_fields, require_finite, resume, save,  # noqa: F401
                                   seed_everything)
