"""The config every experiment edits, and its validation.

An experiment file's ``get_config(arg)`` starts from ``base_config()`` and changes what
its paper changed; ``launch.py`` then applies ``--config.group.key=value`` overrides. The
config is locked, so a misspelt key is an error, and ``validate`` checks every value
before anything is compiled.

Groups: ``runtime``, ``data``, ``model``, ``diffusion``, ``train``, ``sample``, ``eval``.
``config.model`` is the network itself: ``arch`` and every hyperparameter of that class
(see the comments in ``base_config``), filled from a named preset by ``set_model``.
"""

from __future__ import annotations

import math

import ml_collections

from diffjax.data.toy2d import TOY_NAMES
from diffjax.diffusion.continuous import GAMMA_SCHEDULES, NOISE_SAMPLERS, PREDICTIONS, PROCESS_NAMES
from diffjax.diffusion.losses import OBJECTIVES, WEIGHTINGS
from diffjax.diffusion.parameterization import MEAN_TYPES, VAR_TYPES, DiffusionSpec
from diffjax.diffusion.schedules import BETA_SCHEDULES, space_timesteps
from diffjax.diffusion.timesteps import TIMESTEP_SAMPLERS
from diffjax.diffusion.weighting import WEIGHTINGS as CONTINUOUS_WEIGHTINGS
from diffjax.errors import ConfigError
from diffjax.models.blocks import ATTENTION_IMPLEMENTATIONS, cudnn_attention_problem
from diffjax.models.configs import NETWORKS, PRESETS, get_preset, hyperparameters
from diffjax.models.layers import DOWNSAMPLE_PADDINGS
from diffjax.runtime.sampling import SOLVER_OPTION_DEFAULTS, SamplerChoice
from diffjax.runtime.xla_cpu import check_fusions
from diffjax.runtime.xla_gpu import parse_gpu_flags

__all__ = ["MODEL_COMMON_KEYS", "UNSET", "ConfigError", "base_config", "network_hyperparameters", "set_model", "validate",
           "validate_backend"]

# config.model keys of every network besides its hyperparameters, with their defaults.
MODEL_COMMON_KEYS = {"dtype": "float32", "rescale_timesteps": False, "class_dropout": 0.1, "fourier_features": False}
# An optional integer hyperparameter that is not set (the network's None): config fields need a
# fixed type for --config overrides, and improved DDPM's code uses -1 for num_head_channels too.
UNSET = -1
_OPTIONAL_INTS = ("num_head_channels",)
# Hyperparameters added after runs were saved: a config.json without one (e.g. a classifier's,
# restored for guidance) gets the network's default, which is what those runs computed.
_LATER_HYPERPARAMETERS = ("attention_implementation",)


def set_model(config: ml_collections.ConfigDict, preset: str, **overrides) -> None:
    """Make ``config.model`` the named preset's network (``diffjax.models.PRESETS``): ``arch``
    and every hyperparameter of that network, then ``overrides`` of them. ``dtype``,
    ``rescale_timesteps`` and ``class_dropout`` keep the values they had (their defaults in a
    config without a model section).

    Raises:
      KeyError: unknown preset, or an override that is not a key of that network.
    """
    values = get_preset(preset)
    old = config.get("model")
    for key, default in MODEL_COMMON_KEYS.items():
        values[key] = old[key] if old is not None and key in old else default
    unknown = set(overrides) - (set(values) - {"arch"})
    if unknown:
        raise KeyError(f"{sorted(unknown)} are not keys of the {values['arch']} network of preset {preset!r}; "
                       f"known: {sorted(set(values) - {'arch'})}")
    values.update(overrides)
    for key in _OPTIONAL_INTS:
        if key in values and values[key] is None:
            values[key] = UNSET
    config.model = ml_collections.ConfigDict(values)


def network_hyperparameters(model: ml_collections.ConfigDict) -> dict:
    """The hyperparameters of ``model``'s network (``model.arch``) as its keyword arguments:
    ``UNSET`` becomes None and a list (a config read back from JSON) a tuple."""
    kwargs = {}
    for key in hyperparameters(model.arch):
        if key in _LATER_HYPERPARAMETERS and key not in model:
            continue  # the network's default
        value = model[key]
        if key in _OPTIONAL_INTS and value == UNSET:
            value = None
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment: DDPM's CIFAR-10 recipe where one exists."""
    config = ml_collections.ConfigDict()
    config.experiment = ""  # set by each experiment file

    config.runtime = ml_collections.ConfigDict()
    # XLA:CPU's YNNPACK library fusions (diffjax/runtime/xla_cpu.py): a comma list of dot,
    # individual_dot, individual_convolution, reduce, eltwise; "" for none; "xla_default" for
    # XLA's own choice. Only the CPU backend reads it; docs/performance.md has the measurements.
    config.runtime.xla_cpu_ynn_fusions = "dot,reduce"
    # XLA:GPU flags (diffjax/runtime/xla_gpu.py) in XLA_FLAGS syntax, from a small allow-list, e.g.
    # "--xla_gpu_autotune_level=2 --xla_gpu_force_conv_nhwc=true"; "" keeps XLA's defaults. Only the
    # GPU backend reads them; a flag set in the XLA_FLAGS environment variable wins. Not measured yet.
    config.runtime.xla_gpu_flags = ""

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"  # a tfds name, "digits", or a toy2d name for toy experiments
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True
    config.data.num_classes = 0  # > 0: class-conditional training with labels

    # The network. config.model.arch picks the class ("unet": diffjax.models.UNet, "mlp":
    # MLPDenoiser) and the section holds every hyperparameter of that class under its field
    # name, so each is a --config.model.KEY override (tuples as "(1,2,2)"). An experiment
    # file fills the section from a named preset with set_model(config, NAME) (presets:
    # diffjax.models.PRESETS); nothing records the preset's name, the fields are the truth.
    # arch cannot be changed by an override alone (validate() finds the other network's
    # keys): choose the network in the experiment file. Not keys, derived from the data:
    # the output channels (data.channels, x2 when diffusion.var_type is learned or
    # learned_range) and num_classes (data.num_classes).
    # UNet keys: channels (base width), channel_mult, num_res_blocks, attention_resolutions
    # (feature-map heights in pixels), num_heads, num_head_channels (-1: unset, heads from
    # num_heads), dropout, use_scale_shift_norm, resblock_updown, conv_resample,
    # downsample_padding ("same" or "symmetric"), norm_groups, norm_eps, attention_implementation
    # ("xla", the default, or "cudnn": cuDNN flash attention, NVIDIA GPU and dtype bfloat16 only).
    # MLP keys: hidden, num_blocks, sinusoid_dim, dropout.
    # Every network also has: dtype ("bfloat16": bf16 compute, float32 params),
    # fourier_features (VDM's input features sin/cos(2^n pi x), n = 7, 8: models/fourier.py),
    # rescale_timesteps (improved DDPM feeds t * 1000 / T) and class_dropout (p_uncond of
    # classifier-free guidance, when conditional).
    set_model(config, "ddpm_cifar10")

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.schedule = "linear"
    config.diffusion.timesteps = 1000
    config.diffusion.mean_type = "eps"
    config.diffusion.var_type = "fixed_large"
    config.diffusion.objective = "simple"
    config.diffusion.rescale_vlb = True
    config.diffusion.loss_weighting = "none"
    config.diffusion.snr_gamma = 5.0
    config.diffusion.timestep_sampler = "uniform"
    # The model family: "discrete" (the T-step chain above: schedule ... timestep_sampler), "continuous"
    # (diffusion/continuous.py: the keys below; the chain's keys are unused), "naive" (diffusion/naive.py:
    # pixels replaced by noise, naive_levels levels) or "classifier" (a noise-conditional classifier of
    # data.num_classes classes, model.arch "classifier", trained on the chain's q(x_t | x_0) at uniform t:
    # diffusion/noisy_classifier.py; it guides the others' samplers through sample.classifier_workdir).
    config.diffusion.family = "discrete"
    config.diffusion.process = "vp_linear"  # continuous: vp_linear, vp_cosine, edm, vdm
    config.diffusion.prediction = "eps"  # continuous: eps, x0, v, edm (Karras et al.'s c_skip/c_out/c_in)
    config.diffusion.weighting = "eps_mse"  # continuous: x0_mse, eps_mse, v_mse, min_snr, elbo, edm
    config.diffusion.noise_sampler = "uniform"  # continuous: uniform (t, low-discrepancy) or log_normal (edm)
    config.diffusion.gamma_schedule = "fixed_linear"  # process vdm: fixed_linear, learned_linear, monotone
    config.diffusion.gamma_0 = -13.3  # process vdm: gamma(0) = -log SNR at t = 0 (initial value if learned)
    config.diffusion.gamma_1 = 5.0  # process vdm: gamma(1)
    config.diffusion.learn_endpoints = True  # monotone schedule: learn gamma_0, gamma_1 by the bound
    config.diffusion.schedule_hidden = 1024  # monotone schedule: width of its hidden layer (VDM: 1024)
    config.diffusion.variance_gradient = True  # monotone schedule: its shape minimises the loss variance
    config.diffusion.sigma_data = 0.5  # EDM's sigma_d (prediction edm, weighting edm)
    config.diffusion.p_mean = -1.2  # EDM's log-normal training sigma: ln sigma ~ N(p_mean, p_std^2)
    config.diffusion.p_std = 1.2
    config.diffusion.naive_levels = 100  # naive: K corruption levels (the sampler's NFE)

    config.train = ml_collections.ConfigDict()
    config.train.seed = 0
    config.train.batch_size = 128
    config.train.num_steps = 800_000
    config.train.lr = 2e-4
    config.train.warmup_steps = 5000
    config.train.lr_decay = "constant"  # or "cosine" to 0 at num_steps
    config.train.grad_clip = 1.0  # global-norm clipping; 0 disables it
    config.train.adam_b1 = 0.9
    config.train.adam_b2 = 0.999
    config.train.adam_eps = 1e-8
    config.train.weight_decay = 0.0
    config.train.ema_decay = 0.9999
    config.train.log_every = 100
    config.train.checkpoint_every = 5000
    config.train.keep_checkpoints = 3
    config.train.sample_every = 10_000
    config.train.async_checkpoints = True

    config.sample = ml_collections.ConfigDict()
    # The discrete chain (solver "") or a continuous-time solver of diffusion.solvers (runtime/sampling.py).
    config.sample.solver = ""  # "": the chain (method, steps a respacing); else e.g. "dpmpp_2m", "heun", "unipc_3"
    config.sample.method = "ddim"  # the chain's step: "ddpm" (ancestral) or "ddim"
    config.sample.steps = "ddim50"  # chain: a respacing ("", "250", "10,15,20", "ddimN"); solver: K steps ("10")
    config.sample.eta = 0.0  # the chain's DDIM eta
    config.sample.grid = "uniform_log_snr"  # solver: uniform_t, uniform_log_snr, karras, quadratic, discrete_<rule>
    config.sample.rho = 7.0  # the karras grid's rho
    config.sample.dynamic_threshold = 0.0  # solver: Imagen's percentile (e.g. 0.995) instead of clipping; 0: off
    config.sample.solver_options = ml_collections.ConfigDict(dict(SOLVER_OPTION_DEFAULTS))  # stochastic solvers'
    config.sample.num = 64
    config.sample.clip_denoised = True
    config.sample.guidance_weight = 0.0  # classifier-free guidance w (a class-conditional model)
    # Classifier guidance (Dhariwal & Nichol 2021): the scale s (0: off) and the workdir of a noise-conditional
    # classifier trained with --mode=train of an experiment of family "classifier" (its EMA params are used).
    config.sample.classifier_scale = 0.0
    config.sample.classifier_workdir = ""
    config.sample.seed = 0  # --mode=sample: chunk j of the samples uses fold_in(PRNGKey(seed), j)
    config.sample.batch_size = 256  # --mode=sample: samples per compiled call (a multiple of the devices)
    # --mode=sample: also a grid of DDIM-latent interpolations (rows of slerps between two x_T, DDIM section 5);
    # needs a deterministic sampler. 0 rows: none.
    config.sample.interpolation_rows = 0
    config.sample.interpolation_columns = 9

    config.eval = ml_collections.ConfigDict()
    config.eval.split = ""  # "": the data set's own evaluation split
    config.eval.batch_size = 256
    config.eval.num_examples = 0  # 0: the whole split
    # What to score samples at: respacings of the chain and SOLVER:K pairs, e.g. "ddim25 250 dpmpp_2m:10 heun:5";
    # "": config.sample's choice.
    config.eval.sample_steps = ""
    config.eval.num_samples = 1000
    config.eval.nll_chain = ""  # "": the full T-step bound; a respacing gives a cheaper K-step bound
    config.eval.nll_seed = 0
    # The probability-flow ODE bound (eval/ode_nll.json): uniform dequantisation, Hutchinson divergence with
    # ode_probes Rademacher probes, an adaptive solve with tolerances ode_rtol / ode_atol, over the NLL's
    # examples (ode_num_examples = 0) or the first ode_num_examples of them; ode_seed draws noise and probes.
    config.eval.ode_nll = False
    config.eval.ode_probes = 1
    config.eval.ode_rtol = 1e-5
    config.eval.ode_atol = 1e-5
    config.eval.ode_num_examples = 0
    config.eval.ode_seed = 0
    # The continuous-time variational bound (eval/elbo.json; VDM's L_inf + prior + reconstruction, in
    # bits/dim) of any Gaussian model, continuous or discrete (on its continuous view), over the NLL's
    # examples: elbo_draws low-discrepancy times per example; elbo_steps = T > 0: VDM's T-step diffusion loss L_T
    # of the same model instead of L_inf (eval/elbo_T<T>.json).
    config.eval.elbo = False
    config.eval.elbo_draws = 16
    config.eval.elbo_steps = 0
    # FID/IS: pytorch-fid's weights file (.pth, or the .npz of `python -m diffjax.evaluation.inception
    # convert`); "" scores only with the in-domain metric (digits, toy2d) and skips FID.
    config.eval.fid_weights = ""
    config.eval.fid_reference = ""  # statistics .npz (mean/cov or pytorch-fid's mu/sigma); "": computed, cached
    config.eval.fid_reference_split = "train"  # the tfds split the reference statistics come from
    config.eval.fid_reference_examples = 0  # 0: the whole split
    config.eval.fid_image_size = 299  # Inception's input side; only 299 gives FIDs comparable to papers
    config.eval.fid_batch_size = 100
    return config


FAMILIES = ("discrete", "continuous", "naive", "classifier")
"""``config.diffusion.family``."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{key}: {message}")


def _one_of(config: ml_collections.ConfigDict, key: str, allowed) -> None:
    group, name = key.split(".")
    value = config[group][name]
    _require(value in allowed, key, f"{value!r} is not one of {sorted(allowed)}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Check every value the trainer relies on; raise ``ConfigError`` naming the key.

    Unknown keys are caught earlier, by the locked ConfigDict.
    """
    d, tr, s = config.diffusion, config.train, config.sample
    _one_of(config, "diffusion.schedule", BETA_SCHEDULES)
    _one_of(config, "diffusion.mean_type", MEAN_TYPES)
    _one_of(config, "diffusion.var_type", VAR_TYPES)
    _one_of(config, "diffusion.objective", OBJECTIVES)
    _one_of(config, "diffusion.loss_weighting", WEIGHTINGS)
    _one_of(config, "diffusion.timestep_sampler", TIMESTEP_SAMPLERS)
    _validate_family(config)
    _one_of(config, "sample.method", ("ddpm", "ddim"))
    _validate_model(config)
    _validate_classifier_model(config)
    try:
        check_fusions(config.runtime.xla_cpu_ynn_fusions)
    except ValueError as error:
        raise ConfigError(f"config.runtime.xla_cpu_ynn_fusions: {error}") from None
    try:
        parse_gpu_flags(config.runtime.xla_gpu_flags)
    except ValueError as error:
        raise ConfigError(f"config.runtime.xla_gpu_flags: {error}") from None
    _one_of(config, "train.lr_decay", ("constant", "cosine"))
    _require(d.timesteps >= 2, "diffusion.timesteps", f"must be at least 2, got {d.timesteps}")
    if d.schedule == "linear":
        _require(d.timesteps >= 50, "diffusion.timesteps", "the linear schedule needs T >= 50 (its betas are scaled by 1000/T)")
    if d.objective == "hybrid":
        _require(DiffusionSpec(d.mean_type, d.var_type).learns_variance, "diffusion.var_type",
                 f"the hybrid objective trains the variance: use learned or learned_range, not {d.var_type!r}")
    _require(d.snr_gamma > 0, "diffusion.snr_gamma", "must be positive")
    for key, value in [("train.batch_size", tr.batch_size), ("train.num_steps", tr.num_steps),
                       ("train.log_every", tr.log_every), ("train.checkpoint_every", tr.checkpoint_every),
                       ("train.keep_checkpoints", tr.keep_checkpoints), ("train.sample_every", tr.sample_every),
                       ("eval.batch_size", config.eval.batch_size), ("sample.num", s.num),
                       ("sample.batch_size", s.batch_size)]:
        _require(isinstance(value, int) and value > 0, key, f"must be a positive integer, got {value!r}")
    _require(tr.seed >= 0, "train.seed", "must be non-negative")
    _require(tr.lr > 0, "train.lr", f"must be positive, got {tr.lr}")
    _require(tr.warmup_steps >= 0, "train.warmup_steps", "must be non-negative")
    _require(0.0 <= tr.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {tr.ema_decay}")
    _require(tr.grad_clip >= 0, "train.grad_clip", "must be non-negative (0 disables clipping)")
    _require(s.eta >= 0, "sample.eta", "must be non-negative")
    _require(s.interpolation_rows >= 0, "sample.interpolation_rows", "must be non-negative")
    _require(s.interpolation_columns >= 2, "sample.interpolation_columns", "must be at least 2 (both ends)")
    _require(s.seed >= 0, "sample.seed", "must be non-negative")
    _require(config.data.num_classes >= 0, "data.num_classes", "must be non-negative")
    if s.guidance_weight != 0:
        _require(config.data.num_classes > 0 and d.family != "classifier", "sample.guidance_weight",
                 "classifier-free guidance needs a class-conditional model (data.num_classes > 0)")
    _validate_classifier_guidance(config)
    choices = [("sample.steps" if not s.solver else "sample", SamplerChoice.from_settings(s))]
    choices += [("eval.sample_steps", SamplerChoice.from_settings(s, entry))
                for entry in config.eval.sample_steps.replace(";", " ").split()]
    if d.family == "classifier":  # trained and evaluated (accuracy), never sampled
        choices = []
    for key, choice in choices:
        try:
            choice.check(d.timesteps, family=d.family)
            if not choice.solver and d.family == "discrete":
                space_timesteps(d.timesteps, choice.steps)
        except ValueError as error:
            where = f"config.{key}" if key == "sample.steps" else f"config.{key} ({choice.label})"
            raise ConfigError(f"{where}: {error}") from None
    try:
        space_timesteps(d.timesteps, config.eval.nll_chain)
    except ValueError as error:
        raise ConfigError(f"config.eval.nll_chain: {error}") from None
    _require(config.eval.num_samples > 0, "eval.num_samples", "must be positive")
    _validate_ode_nll(config.eval)
    _require(isinstance(config.eval.elbo, bool), "eval.elbo", f"must be True or False, got {config.eval.elbo!r}")
    _int_at_least(config, "eval.elbo_draws", 1)
    _int_at_least(config, "eval.elbo_steps", 0)
    if config.eval.elbo:
        _require(d.family != "naive", "eval.elbo", "naive diffusion has no likelihood bound")
    _require(config.eval.fid_image_size >= 75, "eval.fid_image_size", "Inception-v3 needs at least 75 (299 for FID)")
    _require(config.eval.fid_batch_size > 0, "eval.fid_batch_size", "must be positive")
    _require(config.eval.fid_reference_examples >= 0, "eval.fid_reference_examples", "must be non-negative")


def _validate_family(config: ml_collections.ConfigDict) -> None:
    """The model family's keys: those of a continuous or naive model (the chain's are checked by
    ``validate`` for every family, as they keep their defaults)."""
    d = config.diffusion
    _one_of(config, "diffusion.family", FAMILIES)
    _one_of(config, "diffusion.process", PROCESS_NAMES)
    _one_of(config, "diffusion.prediction", PREDICTIONS)
    _one_of(config, "diffusion.weighting", tuple(CONTINUOUS_WEIGHTINGS))
    _one_of(config, "diffusion.noise_sampler", NOISE_SAMPLERS)
    _one_of(config, "diffusion.gamma_schedule", GAMMA_SCHEDULES)
    for key in ("gamma_0", "gamma_1", "sigma_data", "p_mean", "p_std"):
        value = d[key]
        _require(_is_finite_number(value), f"diffusion.{key}", f"must be a finite number, got {value!r}")
    _require(d.gamma_0 < d.gamma_1, "diffusion.gamma_0", f"gamma_0 ({d.gamma_0}) must be below gamma_1 ({d.gamma_1})")
    _require(d.sigma_data > 0, "diffusion.sigma_data", "must be positive")
    _require(d.p_std > 0, "diffusion.p_std", "must be positive")
    _int_at_least(config, "diffusion.schedule_hidden", 1)
    _int_at_least(config, "diffusion.naive_levels", 1)
    for key in ("learn_endpoints", "variance_gradient"):
        _require(isinstance(d[key], bool), f"diffusion.{key}", f"must be True or False, got {d[key]!r}")
    if d.family == "continuous":
        if d.noise_sampler == "log_normal":
            _require(d.process == "edm", "diffusion.noise_sampler",
                     f"log_normal draws EDM's sigma and needs process 'edm', not {d.process!r}")
        if d.weighting == "v_mse":
            _require(d.process != "edm", "diffusion.weighting", "v_mse is defined for variance-preserving processes")
        _require(d.var_type in ("fixed_small", "fixed_large"), "diffusion.var_type",
                 "a continuous-time model predicts no variance (learned variances are the discrete chain's)")
    if d.family != "discrete":
        _require(not config.eval.nll_chain, "eval.nll_chain",
                 "the discrete T-step bound applies to the discrete family only")


def _validate_classifier_guidance(config: ml_collections.ConfigDict) -> None:
    """``sample.classifier_scale`` and ``sample.classifier_workdir`` (whether the workdir holds a
    classifier checkpoint is checked when it is restored, before anything compiles)."""
    s, family = config.sample, config.diffusion.family
    value = s.classifier_scale
    _require(_is_finite_number(value), "sample.classifier_scale", f"must be a finite number, got {value!r}")
    if value == 0:
        return
    _require(family in ("discrete", "continuous"), "sample.classifier_scale",
             f"classifier guidance steers a Gaussian diffusion model's sampler, not a {family!r} model")
    _require(bool(s.classifier_workdir), "sample.classifier_workdir",
             "classifier guidance (sample.classifier_scale != 0) needs the workdir of a trained noise-conditional "
             "classifier, e.g. --config.sample.classifier_workdir=runs/digits_classifier (train one with "
             "experiments/digits_classifier.py)")


def _validate_classifier_model(config: ml_collections.ConfigDict) -> None:
    """A classifier experiment: the classifier network, labels, no label dropout; and only there."""
    d, m = config.diffusion, config.model
    if d.family != "classifier":
        _require(m.arch != "classifier", "model.arch",
                 "the 'classifier' network is trained by an experiment of diffusion.family 'classifier'")
        return
    _require(m.arch == "classifier", "model.arch",
             f"a classifier experiment (diffusion.family 'classifier') trains the 'classifier' network, not {m.arch!r}")
    _require(config.data.num_classes > 0, "data.num_classes", "a classifier needs labelled data (num_classes > 0)")
    _require(m.class_dropout == 0, "model.class_dropout", "a classifier's labels are its targets: they are never dropped")
    _require(not config.eval.elbo and not config.eval.ode_nll and not config.eval.nll_chain, "eval",
             "a classifier has no likelihood bound (eval.elbo, eval.ode_nll, eval.nll_chain)")


def _validate_ode_nll(e: ml_collections.ConfigDict) -> None:
    """The probability-flow ODE bound's keys (checked whether or not ``eval.ode_nll`` is set)."""
    _require(isinstance(e.ode_nll, bool), "eval.ode_nll", f"must be True or False, got {e.ode_nll!r}")
    _require(_is_int(e.ode_probes) and e.ode_probes >= 1, "eval.ode_probes",
             f"Hutchinson's estimator needs at least 1 probe per example, got {e.ode_probes!r}")
    for key in ("ode_rtol", "ode_atol"):
        value = e[key]
        _require(_is_finite_number(value) and 0 < value < 1, f"eval.{key}",
                 f"the solver's tolerance must be in (0, 1), got {value!r}")
    _require(_is_int(e.ode_num_examples) and e.ode_num_examples >= 0, "eval.ode_num_examples",
             f"must be a non-negative integer (0: the NLL's examples), got {e.ode_num_examples!r}")
    if e.num_examples:
        _require(e.ode_num_examples <= e.num_examples, "eval.ode_num_examples",
                 f"the ODE bound's examples come from the NLL's: at most eval.num_examples = {e.num_examples}, "
                 f"got {e.ode_num_examples}")
    _require(_is_int(e.ode_seed) and e.ode_seed >= 0, "eval.ode_seed", f"must be a non-negative integer, got {e.ode_seed!r}")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(config: ml_collections.ConfigDict, key: str, low: int) -> None:
    group, name = key.split(".")
    value = config[group][name]
    _require(_is_int(value) and value >= low, key, f"must be an integer >= {low}, got {value!r}")


def _validate_model(config: ml_collections.ConfigDict) -> None:
    """``config.model``: the network ``arch`` names, with exactly its keys and sound values."""
    m = config.model
    _one_of(config, "model.arch", NETWORKS)
    expected = {"arch", *MODEL_COMMON_KEYS, *hyperparameters(m.arch)}
    present = set(m.keys())
    if present != expected:
        missing, foreign = sorted(expected - present), sorted(present - expected)
        what = f"lacks the {m.arch}'s keys {missing}" if missing else f"has keys the {m.arch} does not: {foreign}"
        raise ConfigError(
            f"config.model.arch: {m.arch!r} is not the network config.model describes (it {what}); the network "
            f"is chosen in the experiment file with set_model(config, PRESET), PRESET one of {sorted(PRESETS)}"
        )
    _one_of(config, "model.dtype", ("float32", "bfloat16"))
    _require(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout!r}")
    _require(isinstance(m.fourier_features, bool), "model.fourier_features",
             f"must be True or False, got {m.fourier_features!r}")
    _require(0.0 <= m.class_dropout < 1.0, "model.class_dropout", f"must be in [0, 1), got {m.class_dropout!r}")
    toy = config.data.name in TOY_NAMES
    if m.arch == "mlp":
        _require(toy, "model.arch", f"the mlp denoises vectors (the 2-D toys {list(TOY_NAMES)}); "
                 f"image data {config.data.name!r} need the unet")
        _int_at_least(config, "model.hidden", 1)
        _int_at_least(config, "model.num_blocks", 0)
        _int_at_least(config, "model.sinusoid_dim", 1)
    else:
        _require(not toy, "model.arch", f"{m.arch!r} denoises images; the 2-D toy {config.data.name!r} "
                 "needs the mlp (set_model(config, 'toy2d'))")
        _validate_unet(config)


def _validate_unet(config: ml_collections.ConfigDict) -> None:
    m, size = config.model, config.data.image_size
    _int_at_least(config, "model.channels", 1)
    mult = m.channel_mult
    _require(isinstance(mult, tuple) and len(mult) > 0 and all(_is_int(x) and x > 0 for x in mult),
             "model.channel_mult", f"must be a non-empty tuple of positive integers such as (1,2,2,2), got {mult!r}")
    _int_at_least(config, "model.num_res_blocks", 0)
    _require(_is_int(size) and size > 0, "data.image_size", f"must be a positive integer for the unet, got {size!r}")
    factor = 2 ** (len(mult) - 1)
    _require(size % factor == 0, "data.image_size",
             f"{size} is not divisible by {factor}, the downsampling of the {len(mult)} levels of model.channel_mult")
    heights = [size // 2**level for level in range(len(mult))]
    attention = m.attention_resolutions
    _require(isinstance(attention, tuple) and all(_is_int(r) for r in attention), "model.attention_resolutions",
             f"must be a tuple of feature-map heights in pixels such as (16,), got {attention!r}")
    stray = sorted(set(attention) - set(heights))
    _require(not stray, "model.attention_resolutions",
             f"{stray} are not feature-map sizes of this UNet: its maps are {heights} pixels high "
             f"(data.image_size {size}, {len(mult)} levels of model.channel_mult)")
    _int_at_least(config, "model.num_heads", 1)
    _require(m.num_head_channels == UNSET or (_is_int(m.num_head_channels) and m.num_head_channels > 0),
             "model.num_head_channels", f"must be a positive integer or {UNSET} (unset: heads from model.num_heads), "
             f"got {m.num_head_channels!r}")
    # Attention runs at the chosen heights and in the middle block (the last level's width).
    widths = sorted({m.channels * mult[level] for level, h in enumerate(heights) if h in attention}
                    | {m.channels * mult[-1]})
    if m.num_head_channels == UNSET:
        bad = [w for w in widths if w % m.num_heads]
        _require(not bad, "model.num_heads", f"{m.num_heads} heads do not divide the attention widths {bad} "
                 "(model.channels x model.channel_mult)")
    else:
        bad = [w for w in widths if w % m.num_head_channels]
        _require(not bad, "model.num_head_channels", f"{m.num_head_channels} does not divide the attention "
                 f"widths {bad} (model.channels x model.channel_mult)")
    for key in [k for k in ("use_scale_shift_norm", "resblock_updown", "conv_resample") if k in m]:
        _require(isinstance(m[key], bool), f"model.{key}", f"must be True or False, got {m[key]!r}")
    _one_of(config, "model.downsample_padding", DOWNSAMPLE_PADDINGS)
    _int_at_least(config, "model.norm_groups", 1)
    # Every GroupNorm sees a sum of multiples of model.channels.
    _require(m.channels % m.norm_groups == 0, "model.norm_groups",
             f"{m.norm_groups} groups do not divide model.channels = {m.channels}")
    _require(m.norm_eps > 0, "model.norm_eps", f"must be positive, got {m.norm_eps!r}")
    _one_of(config, "model.attention_implementation", ATTENTION_IMPLEMENTATIONS)
    if m.attention_implementation == "cudnn":
        head_dims = [w // m.num_heads if m.num_head_channels == UNSET else m.num_head_channels for w in widths]
        problem = cudnn_attention_problem(m.dtype, head_dims)
        _require(problem is None, "model.attention_implementation",
                 f"'cudnn': {problem}" + (" (set model.dtype = 'bfloat16')" if m.dtype != "bfloat16" else ""))


def validate_backend(config: ml_collections.ConfigDict, backend: str) -> None:
    """The checks that need to know the backend JAX runs on (``jax.default_backend()``), made by
    ``launch.py`` once JAX has started, before any model is built or compiled. ``validate``
    cannot make them: asking JAX for its backend starts it, after which XLA's flags are fixed.

    Raises:
      ConfigError: ``model.attention_implementation`` is "cudnn" on a backend other than a GPU
        (cuDNN's flash attention never falls back to XLA's).
    """
    implementation = config.model.get("attention_implementation", "xla")
    _require(implementation != "cudnn" or backend == "gpu", "model.attention_implementation",
             f"'cudnn' (cuDNN flash attention) needs an NVIDIA GPU, and JAX runs on {backend!r}: use 'xla'")
