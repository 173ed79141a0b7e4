"""Defaults shared by the CIFAR-10 configs: score_sde_pytorch's field names and paper hyper-parameters.

Song et al. 2021 (ICLR), Appendix: Adam lr 2e-4, warm-up 5000, grad clip 1, batch 128, 1.3M iterations.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.device = "auto"  # "auto" | "cpu" | "cuda"

    config.training = training = ml_collections.ConfigDict()
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = False
    training.likelihood_weighting = False
    training.batch_size = 128  # global: split evenly across torchrun processes
    training.n_iters = 1300001
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq = 50000
    training.snapshot_freq_for_preemption = 10000
    training.snapshot_sampling = True
    training.precision = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16"
    training.compile = False
    training.channels_last = False

    config.sampling = sampling = ml_collections.ConfigDict()
    # the paper's sampler: every CIFAR-10/LSUN/FFHQ config replicates the published protocol (its FID);
    # the recommended fast one is --config.sampling.method=unipc --config.sampling.steps=20 (docs/samplers.md)
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.snr = 0.16
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    # every other option of every sampler (steps, eta, rtol, sigma_max, ...) is a config.sampling field
    # too, derived from the sampler signatures (score_sde/pipeline/spec.py): unset means the sampler's
    # own default, so defaults live only there (--config.sampling.method=ddim --config.sampling.steps=50)
    sampling.progress = False

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = placeholder(int)  # training steps; both unset: the newest checkpoint
    evaluate.end_ckpt = placeholder(int)    # (the paper's FID range: 450000 .. 1300000)
    evaluate.batch_size = 1024
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.bpd_dataset = "test"
    # bits/dim protocol (issue 12): score_sde_pytorch's likelihood_fn - eps 1e-5, one Rademacher probe, RK45 1e-5
    evaluate.likelihood = ml_collections.ConfigDict(dict(eps=1e-5, trace="hutchinson-rademacher", num_probes=1,
                                                         rtol=1e-5, atol=1e-5, backend="scipy"))
    evaluate.bpd_num_repeats = 1  # the paper averages 5 passes over the test set
    evaluate.bpd_num_batches = 0  # 0: the whole split
    evaluate.reference_split = "train"  # the paper's FID protocol: samples vs the training set
    evaluate.num_reference = 50000
    evaluate.enable_fid = False
    evaluate.inception_path = placeholder(str)  # local FID Inception weights
    evaluate.import_ckpt = placeholder(str)  # a score_sde_pytorch checkpoint to evaluate

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "cifar10"
    data.root = "data/cifar10"  # folder holding cifar-10-python.tar.gz or cifar-10-batches-py/
    data.image_size = 32
    data.num_channels = 3
    data.num_levels = 256
    data.centered = False
    data.random_flip = True
    data.uniform_dequantization = False

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.dropout = 0.1
    model.embedding_type = "fourier"

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0
    return config
