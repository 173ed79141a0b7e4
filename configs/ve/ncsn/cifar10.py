"""Discrete NCSN (SMLD) on CIFAR-10: score_sde_pytorch's ve/ncsn/cifar10_1245 (NCSN with NCSNv2's techniques 1, 2, 4, 5).

The network is the NCSN RefineNet (``model.name='ncsn'``: conditional InstanceNorm++ on the level
index, ELU, dilated residual blocks, four refine blocks; 39,750,659 parameters) with the output
not divided by sigma. Noise schedule: 232 geometric levels from sigma_max 50 to sigma_min 0.01
(technique 1, 2); EMA 0.999 (technique 5); Adam lr 1e-3 without warm-up or gradient clipping.

Sampling is NCSNv2's annealed Langevin dynamics (technique 4): 5 steps per level, final denoising.
score_sde_pytorch states it as pc with predictor 'none', corrector 'ald', snr 0.176, whose step per
level is 2 (snr sigma_i)^2 = 6.2e-6 (sigma_i / sigma_min)^2 - NCSNv2's step_lr 6.2e-6 in its update
x + a s + sqrt(2a) z. Our ``ald`` sampler is used instead because it walks each of the 232 levels
exactly once and ends with NCSNv2's Tweedie denoising x + sigma_min^2 s, whereas our ``pc`` time grid
(N + 1 uniform times) rounds to level indices that skip the smallest level and repeat a middle one,
and its noise_removal returns the last corrector mean. ``ald`` writes Algorithm 1 of Song & Ermon 2019,
x + (a/2) s + sqrt(a) z, so NCSNv2's step_lr 6.2e-6 is step_size 2 * 6.2e-6 = 1.24e-5 here.
"""
from configs.default_cifar10_configs import get_default_configs


def get_config():
    config = get_default_configs()
    training = config.training
    training.sde = "vesde"
    training.continuous = False

    sampling = config.sampling
    sampling.method = "ald"
    sampling.n_steps_each = 5
    sampling.step_size = 1.24e-5   # = NCSNv2's 6.2e-6 in Algorithm 1's a/2 convention (see above)
    sampling.noise_removal = True
    sampling.corrector = "ald"     # for --config.sampling.method=pc: score_sde_pytorch's own sampler settings
    sampling.predictor = "none"
    sampling.snr = 0.176

    config.data.centered = False
    model = config.model
    model.name = "ncsn"
    model.scale_by_sigma = False
    model.sigma_max = 50.0
    model.sigma_min = 0.01
    model.num_scales = 232
    model.ema_rate = 0.999
    model.normalization = "InstanceNorm++"
    model.nonlinearity = "elu"
    model.nf = 128
    model.interpolation = "bilinear"
    # VP-only and NCSN++-only fields: nothing reads them for this model and SDE
    del model["beta_min"], model["beta_max"], model["dropout"], model["embedding_type"]

    optim = config.optim
    optim.optimizer = "Adam"
    optim.lr = 1e-3
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 0
    optim.grad_clip = -1.0   # no clipping (losses.optimization_manager clips only for grad_clip > 0)
    return config
