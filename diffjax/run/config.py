"""The config every experiment edits, and its validation.

An experiment file's ``get_config(arg)`` starts from ``base_config()`` and changes what
its paper changed; ``launch.py`` then applies ``--config.group.key=value`` overrides. The
config is locked, so a misspelt key is an error, and ``validate`` checks every value
before anything is compiled.

Groups: ``data``, ``model``, ``diffusion``, ``train``, ``sample``, ``eval``.
"""

from __future__ import annotations

import ml_collections

from diffjax.diffusion.gaussian import MEAN_TYPES, VAR_TYPES
from diffjax.diffusion.losses import OBJECTIVES, WEIGHTINGS
from diffjax.diffusion.schedules import BETA_SCHEDULES, space_timesteps
from diffjax.diffusion.timesteps import TIMESTEP_SAMPLERS
from diffjax.errors import ConfigError

__all__ = ["ConfigError", "base_config", "validate"]


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment: DDPM's CIFAR-10 recipe where one exists."""
    config = ml_collections.ConfigDict()
    config.experiment = ""  # set by each experiment file

    config.runtime = ml_collections.ConfigDict()
    # XLA:CPU's YNNPACK library fusions (diffjax/runtime/xla_cpu.py): a comma list of dot,
    # individual_dot, individual_convolution, reduce, eltwise; "" for none; "xla_default" for
    # XLA's own choice. Only the CPU backend reads it; docs/performance.md has the measurements.
    config.runtime.xla_cpu_ynn_fusions = "dot,reduce"

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"  # a tfds name, "digits", or a toy2d name for toy experiments
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True
    config.data.num_classes = 0  # > 0: class-conditional training with labels

    config.model = ml_collections.ConfigDict()
    config.model.name = "ddpm_cifar10"  # a diffjax.models config name
    config.model.dropout = 0.1
    config.model.dtype = "float32"  # "bfloat16": bf16 compute, float32 params
    config.model.rescale_timesteps = False  # improved DDPM feeds t * 1000 / T
    config.model.class_dropout = 0.1  # p_uncond of classifier-free guidance, when conditional

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
    config.sample.method = "ddim"  # "ddpm" (ancestral) or "ddim"
    config.sample.steps = "ddim50"  # a respacing: "", "250", "10,15,20", "ddimN"
    config.sample.eta = 0.0
    config.sample.num = 64
    config.sample.clip_denoised = True
    config.sample.guidance_weight = 0.0
    config.sample.seed = 0  # --mode=sample: chunk j of the samples uses fold_in(PRNGKey(seed), j)
    config.sample.batch_size = 256  # --mode=sample: samples per compiled call (a multiple of the devices)

    config.eval = ml_collections.ConfigDict()
    config.eval.split = ""  # "": the data set's own evaluation split
    config.eval.batch_size = 256
    config.eval.num_examples = 0  # 0: the whole split
    config.eval.sample_steps = ""  # respacings to score samples at, e.g. "ddim25 ddim50 250"; "": sample.steps
    config.eval.num_samples = 1000
    config.eval.nll_chain = ""  # "": the full T-step bound; a respacing gives a cheaper K-step bound
    config.eval.nll_seed = 0
    # FID/IS: pytorch-fid's weights file (.pth, or the .npz of `python -m diffjax.evaluation.inception
    # convert`); "" scores only with the in-domain metric (digits, toy2d) and skips FID.
    config.eval.fid_weights = ""
    config.eval.fid_reference = ""  # statistics .npz (mean/cov or pytorch-fid's mu/sigma); "": computed, cached
    config.eval.fid_reference_split = "train"  # the tfds split the reference statistics come from
    config.eval.fid_reference_examples = 0  # 0: the whole split
    config.eval.fid_image_size = 299  # Inception's input side; only 299 gives FIDs comparable to papers
    config.eval.fid_batch_size = 100
    return config


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
    _one_of(config, "sample.method", ("ddpm", "ddim"))
    _one_of(config, "model.dtype", ("float32", "bfloat16"))
    from diffjax.runtime.xla_cpu import check_fusions

    try:
        check_fusions(config.runtime.xla_cpu_ynn_fusions)
    except ValueError as error:
        raise ConfigError(f"config.runtime.xla_cpu_ynn_fusions: {error}") from None
    _one_of(config, "train.lr_decay", ("constant", "cosine"))
    _require(d.timesteps >= 2, "diffusion.timesteps", f"must be at least 2, got {d.timesteps}")
    if d.schedule == "linear":
        _require(d.timesteps >= 50, "diffusion.timesteps", "the linear schedule needs T >= 50 (its betas are scaled by 1000/T)")
    if d.objective == "hybrid":
        _require(d.var_type in ("learned", "learned_range"), "diffusion.var_type",
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
    _require(0.0 <= config.model.dropout < 1.0, "model.dropout", "must be in [0, 1)")
    _require(0.0 <= config.model.class_dropout < 1.0, "model.class_dropout", "must be in [0, 1)")
    _require(s.eta >= 0, "sample.eta", "must be non-negative")
    _require(s.seed >= 0, "sample.seed", "must be non-negative")
    _require(config.data.num_classes >= 0, "data.num_classes", "must be non-negative")
    if s.guidance_weight != 0:
        _require(config.data.num_classes > 0, "sample.guidance_weight", "guidance needs a class-conditional model (data.num_classes > 0)")
    for key, spacings in [("sample.steps", [s.steps]), ("eval.nll_chain", [config.eval.nll_chain]),
                          ("eval.sample_steps", config.eval.sample_steps.replace(";", " ").split())]:
        for spacing in spacings:
            try:
                space_timesteps(d.timesteps, spacing)
            except ValueError as error:
                raise ConfigError(f"config.{key}: {error}") from None
    _require(config.eval.num_samples > 0, "eval.num_samples", "must be positive")
    _require(config.eval.fid_image_size >= 75, "eval.fid_image_size", "Inception-v3 needs at least 75 (299 for FID)")
    _require(config.eval.fid_batch_size > 0, "eval.fid_batch_size", "must be positive")
    _require(config.eval.fid_reference_examples >= 0, "eval.fid_reference_examples", "must be non-negative")
