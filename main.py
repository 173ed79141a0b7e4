"""Command line: train, evaluate or sample a score-based model from a config file.

    python main.py --config configs/vp/digits_edm.py --workdir runs/digits_vp --mode train
    python main.py --config configs/vp/digits_edm.py --workdir runs/digits_vp --mode eval \
        --config.sampling.method=ode

Any config field can be overridden with --config.<section>.<field>=<value>; a misspelled field is an
error. Every field of the spec (score_sde/pipeline/spec.py) and every option of every sampler can be
set even where the config file leaves it out, and `=None` resets a field to its default (a sampler
option: to the sampler's own default). Mistakes in flags, configs or paths end with a one-line
`error: ...` and exit status 1.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

# idle OpenMP threads sleep instead of spinning (set before torch loads libgomp): on a machine shared
# with other jobs spinning threads made training 20x slower (bench/threads.py, bench/RESULTS.md)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from absl import app, flags
from ml_collections import config_flags

from score_sde import cli_errors

def split_overrides(argv: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """Take out the overrides the spec applies: spec fields, sampler options and `=None` resets.

    config_flags only knows the fields the config file defines and cannot parse None into a typed
    field; these go to Spec.from_config instead, which knows every field and its type."""
    from score_sde.pipeline.spec import is_spec_field

    rest, taken = [], {}
    for arg in argv:
        path, eq, text = arg[len("--config."):].partition("=") if arg.startswith("--config.") else ("", "", "")
        if eq and (is_spec_field(path) or text.strip() == "None"):
            taken[path] = text
        else:
            rest.append(arg)
    return rest, taken


# config_flags reads its overrides from sys.argv when the flag is defined: take ours out first
SPEC_OVERRIDES: Dict[str, str] = {}
if __name__ == "__main__":
    sys.argv, SPEC_OVERRIDES = split_overrides(sys.argv)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training/evaluation config file (configs/...).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, TensorBoard logs and samples.")
flags.DEFINE_enum("mode", None, ["train", "eval", "sample", "schedule", "train_classifier", "inpaint", "colorize"],
                  "Running mode: train, eval, sample; schedule (store the optimized sampling schedule); "
                  "train_classifier, inpaint, colorize (docs/conditioning.md).")
flags.DEFINE_string("eval_folder", "eval", "Sub-folder of workdir for evaluation results (eval/sample modes).")
flags.DEFINE_bool("progress", True, "Rank-0 progress bars for training, sampling, bits/dim and evaluation loops.")
flags.DEFINE_bool("allow_fingerprint_mismatch", False, "Resume/evaluate/sample a checkpoint written under a "
                  "config whose model/SDE fields differ (docs/reliability.md); off: such a checkpoint is refused.")
flags.DEFINE_integer("threads", None, "CPU threads for torch (default: min(cores, 4), see docs/configuration.md).")
flags.mark_flags_as_required(["config", "workdir", "mode"])

# errors caused by the user's flags, configs, paths or data: reported in one line, no traceback
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, NotADirectoryError, FloatingPointError, KeyError)


def set_threads(threads: Optional[int]) -> None:
    """Intra-op threads: at most 4 unless asked (more spin against other jobs on a shared machine)."""
    import torch

    n = threads if threads is not None else min(4, os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--threads={n} must be >= 1")
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(n)


def run(config, workdir: str, mode: str, eval_folder: str, overrides: Optional[Dict[str, str]] = None,
        progress: bool = True, allow_fingerprint_mismatch: bool = False) -> None:
    import run_lib
    from score_sde.pipeline.spec import Spec

    spec = Spec.from_config(config, overrides=overrides)
    if not progress:
        spec = spec.replace(eval={"progress": False})
    allow = {"allow_fingerprint_mismatch": bool(allow_fingerprint_mismatch)}
    if mode in ("train_classifier", "inpaint", "colorize") or (mode == "sample" and _conditional(spec)):
        from score_sde.pipeline import conditional  # issue 11: labels, guidance, inverse problems
        conditional.run(spec, workdir, mode, eval_folder, progress=progress)
    elif mode == "train":
        run_lib.train(spec, workdir, progress=progress, **allow)
    elif mode == "eval":
        run_lib.evaluate(spec, workdir, eval_folder, **allow)
    elif mode == "schedule":
        run_lib.schedule(spec, workdir)
    else:
        run_lib.sample(spec, workdir, eval_folder, **allow)


def _conditional(spec) -> bool:
    """True when sampling needs labels or guidance (a class-conditional model, a label, a guidance)."""
    s = spec.sampling
    return bool(spec.data.num_classes or s.label is not None or s.guidance or s.classifier)


def main(argv) -> None:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; pass options as --flag=value", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        set_threads(FLAGS.threads)
        run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.eval_folder, SPEC_OVERRIDES, FLAGS.progress,
            FLAGS.allow_fingerprint_mismatch)
    except USER_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        if isinstance(e, OSError) and e.errno is not None:  # raw OS error: name the path and the fix
            message = cli_errors.describe_os_error(e)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    except AttributeError as e:
        if not _from_config_dict(e):
            raise
        print(f"error: the config lacks field {_field_name(e)}; start from a file in configs/ "
              f"(configs/default_*_configs.py lists every field)", file=sys.stderr)
        sys.exit(1)
    except BaseException as e:  # disk full, read-only, held workdir, preemption, ...: one line; bugs re-raise
        report = cli_errors.describe(e)
        if report is None:
            raise
        print(report[0], file=sys.stderr)
        sys.exit(report[1])


def _from_config_dict(e: BaseException) -> bool:
    """True when the exception was raised by ml_collections' ConfigDict (a missing config field)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "ml_collections" in tb.tb_frame.f_code.co_filename


def _field_name(e: BaseException) -> str:
    """The field named by ConfigDict's (nested) KeyError/AttributeError, with its did-you-mean hint."""
    msg: object = e
    while isinstance(msg, BaseException):
        msg = msg.args[0] if msg.args else ""
    lines = [ln.strip().strip("'\"") for ln in str(msg).splitlines() if ln.strip()]
    return " ".join(lines[:1] + [f"({ln})" for ln in lines[1:2]])


def parse_flags(argv):
    """absl flag parsing where flag/config-file mistakes print one line instead of absl's usage wall."""
    try:
        argv, taken = split_overrides(argv)  # (sys.argv was split already; argv may be another list)
        SPEC_OVERRIDES.update(taken)
        argv = FLAGS(argv)
        FLAGS.config.get("seed")  # config_flags defers config-file errors to the first access: surface them here
        return argv
    except flags.Error as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:  # --config.<path> names a field the config does not have
        print(f"error: unknown config field in an override: {_field_name(e)}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, TypeError, OSError, SyntaxError) as e:
        # the config file itself failed to load, or an override does not fit the config
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        print(f"error: --config: {' '.join(dict.fromkeys(lines[:1] + lines[-1:])) if lines else type(e).__name__}",
              file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # raised by the code inside the config file
        print(cli_errors.describe_config_error(e, _config_path(argv)), file=sys.stderr)
        sys.exit(2)


def _config_path(argv) -> str:
    """The --config file named on the command line (for error messages)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
