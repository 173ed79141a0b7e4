"""Defaults for 2-D toy data (toy_ring has an exact density) with a small MLP score network."""
import ml_collections

from configs.default_cifar10_configs import get_default_configs as _cifar10_defaults


def get_default_configs() -> ml_collections.ConfigDict:
    config = _cifar10_defaults()
    config.seed = 0
    training = config.training
    training.batch_size = 256
    training.n_iters = 5000
    training.log_freq = 100
    training.eval_freq = 500
    training.snapshot_freq = 2500
    training.snapshot_freq_for_preemption = 500
    training.snapshot_sampling = True
    training.reduce_mean = True

    evaluate = config.eval
    evaluate.batch_size = 1000
    evaluate.enable_loss = True
    evaluate.enable_bpd = True
    evaluate.enable_sampling = True
    evaluate.num_samples = 2000
    evaluate.bpd_dataset = "test"
    evaluate.likelihood.trace = "exact"
    evaluate.bpd_num_batches = 1
    evaluate.reference_split = "test"  # SW2 and exact NLL against held-out draws
    evaluate.num_reference = 10000

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "toy_ring"
    data.dim = 2
    data.num_train = 10000
    data.num_eval = 2000
    data.seed = 0
    data.centered = False

    model = config.model
    model.name = "mlp"
    model.hidden_dims = (256, 256, 256)
    model.embedding_dim = 64
    model.nonlinearity = "swish"
    model.ema_rate = 0.999
    del model["dropout"], model["embedding_type"]  # the MLP has no dropout and one embedding

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 100
    return config
