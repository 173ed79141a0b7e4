"""A config file shrunk to a few seconds of CPU: tiny model, tiny data, no periodic work."""
import importlib


def tiny(name: str = "vp/toy_mlp_continuous", n_iters: int = 3):
    """configs/<name>.py with batch 8, `n_iters` steps, a preemption checkpoint every step, a 16x16 MLP."""
    c = importlib.import_module("configs." + name.replace("/", ".")).get_config()
    tr = c.training
    tr.batch_size, tr.n_iters = 8, n_iters
    tr.log_freq = tr.eval_freq = 100000
    tr.snapshot_freq, tr.snapshot_freq_for_preemption = n_iters, 1
    tr.snapshot_sampling = False
    c.model.hidden_dims, c.model.embedding_dim = (16, 16), 8
    c.data.num_train, c.data.num_eval = 64, 32
    c.device = "cpu"
    return c
