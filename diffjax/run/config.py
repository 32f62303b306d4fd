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

import json
import math

import ml_collections

from diffjax.data.toy2d import TOY_NAMES
from diffjax.diffusion.families.registry import FAMILIES
from diffjax.diffusion.schedules import space_timesteps
from diffjax.diffusion.solvers import option_defaults as solver_option_defaults
from diffjax.errors import ConfigError
from diffjax.models.blocks import ATTENTION_IMPLEMENTATIONS, cudnn_attention_problem
from diffjax.models.classifier import POOLS
from diffjax.models.configs import NETWORKS, PRESETS, get_preset, hyperparameters
from diffjax.models.layers import DOWNSAMPLE_PADDINGS
from diffjax.run.families import family_from_config
from diffjax.runtime.sampler_choice import SamplerChoice
from diffjax.runtime.xla_cpu import check_fusions
from diffjax.runtime.xla_gpu import parse_gpu_flags

__all__ = ["MODEL_COMMON_KEYS", "UNSET", "ConfigError", "base_config", "network_hyperparameters", "read_config_json",
           "set_family", "set_model", "upgrade_config", "validate", "validate_backend"]

# config.model keys of every network besides its hyperparameters, with their defaults.
MODEL_COMMON_KEYS = {"dtype": "float32", "class_dropout": 0.1, "fourier_features": False}
# An optional integer hyperparameter that is not set (the network's None): config fields need a
# fixed type for --config overrides, and improved DDPM's code uses -1 for num_head_channels too.
UNSET = -1
_OPTIONAL_INTS = ("num_head_channels",)
# Hyperparameters added after runs were saved: a config.json without one (e.g. a classifier's,
# restored for guidance) gets the network's default, which is what those runs computed.
_LATER_HYPERPARAMETERS = ("attention_implementation", "sinusoid_cos_first", "sinusoid_freq_shift", "resblock_updown",
                          "pool")


def set_model(config: ml_collections.ConfigDict, preset: str, **overrides) -> None:
    """Make ``config.model`` the named preset's network (``diffjax.models.PRESETS``): ``arch``
    and every hyperparameter of that network, then ``overrides`` of them. ``dtype``,
    ``class_dropout`` and ``fourier_features`` keep the values they had (their defaults in a
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

    _runtime_data_model_sections(config)
    _train_section(config)
    _sample_section(config)
    _eval_section(config)
    return config


def _runtime_data_model_sections(config: ml_collections.ConfigDict) -> None:
    """``config.runtime``, ``config.data``, ``config.model`` (DDPM's CIFAR-10 UNet) and
    ``config.diffusion`` (DDPM's chain)."""
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
    # downsample_padding ("same" or "symmetric"), norm_groups, norm_eps, sinusoid_cos_first and
    # sinusoid_freq_shift (the timestep sinusoid: True, 0 as improved DDPM; False, 1 as DDPM's
    # checkpoints), attention_implementation
    # ("xla", the default, or "cudnn": cuDNN flash attention, NVIDIA GPU and dtype bfloat16 only).
    # Classifier keys: the UNet's but out_channels, num_classes and the sinusoid's, plus pool
    # ("mean" or "attention": ADM's attention pooling).
    # MLP keys: hidden, num_blocks, sinusoid_dim, dropout.
    # Every network also has: dtype ("bfloat16": bf16 compute, float32 params),
    # fourier_features (VDM's input features sin/cos(2^n pi x), n = 7, 8: models/fourier.py)
    # and class_dropout (p_uncond of classifier-free guidance, when conditional).
    set_model(config, "ddpm_cifar10")

    # The model family and exactly its keys (diffjax/diffusion/families/: each family's CONFIG lists them
    # with comments), filled by set_family(config, NAME, **overrides) in the experiment file: "discrete"
    # (DDPM's T-step chain: schedule, timesteps, prediction, var_type, objective, ...), "continuous" (VP /
    # EDM / VDM processes: process, prediction, weighting, noise_sampler, ...), "naive" (num_levels) or
    # "classifier" (a noise-conditional classifier of data.num_classes classes on a chain's q(x_t | x_0);
    # it guides the others' samplers through sample.classifier_workdir).
    set_family(config, "discrete")


def _train_section(config: ml_collections.ConfigDict) -> None:
    """``config.train``: DDPM's optimiser, EMA and schedule of checkpoints and samples."""
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


def _sample_section(config: ml_collections.ConfigDict) -> None:
    """``config.sample``: how samples are drawn (``runtime.sampler_choice.SamplerChoice``)."""
    config.sample = ml_collections.ConfigDict()
    # The discrete chain (solver "") or a continuous-time solver of diffusion.solvers (runtime/sampling.py).
    config.sample.solver = ""  # "": the chain (method, steps a respacing); else e.g. "dpmpp_2m", "heun", "unipc_3"
    config.sample.method = "ddim"  # the chain's step: "ddpm" (ancestral) or "ddim"
    config.sample.steps = "ddim50"  # chain: a respacing ("", "250", "10,15,20", "ddimN"); solver: K steps ("10")
    config.sample.eta = 0.0  # the chain's DDIM eta
    config.sample.grid = "uniform_log_snr"  # solver: uniform_t, uniform_log_snr, karras, quadratic, discrete_<rule>
    # (all start at the top step, but discrete_ddim_truncated / discrete_ddim_quadratic_truncated: DDIM's exact spacings)
    config.sample.rho = 7.0  # the karras grid's rho
    config.sample.dynamic_threshold = 0.0  # solver: Imagen's percentile (e.g. 0.995) instead of clipping; 0: off
    config.sample.solver_options = ml_collections.ConfigDict(solver_option_defaults())  # solvers.SOLVERS[*].options
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


def _eval_section(config: ml_collections.ConfigDict) -> None:
    """``config.eval``: the bounds and the sample metrics of ``--mode=eval``."""
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




def set_family(config: ml_collections.ConfigDict, family: str, **overrides) -> None:
    """Make ``config.diffusion`` the keys of ``family`` (``FAMILIES``) with their defaults, then
    ``overrides`` of them.

    Raises:
      KeyError: unknown family, or an override that is not a key of that family.
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    keys = dict(FAMILIES[family].CONFIG)
    unknown = set(overrides) - set(keys)
    if unknown:
        raise KeyError(f"{sorted(unknown)} are not keys of the {family} family; known: {sorted(keys)}")
    config.diffusion = ml_collections.ConfigDict({"family": family, **keys, **overrides})


# config.json files written before the families owned their keys: every family's keys sat in one
# config.diffusion, two concepts had two names, and the chain's time rescaling was a model key.
_OLD_DISCRETE_NAMES = {"mean_type": "prediction", "loss_weighting": "weighting"}
_OLD_NAIVE_NAMES = {"naive_levels": "num_levels"}


# Family keys added after runs were saved, with the value those runs computed with.
_LATER_FAMILY_KEYS = {"classifier": {"time_input": "log_snr"}}


def upgrade_config(config: dict) -> dict:
    """A ``config.json`` (as a dict) in today's layout: an old file's ``diffusion`` section
    (every family's keys, ``mean_type`` / ``loss_weighting`` / ``naive_levels``) becomes its
    family's keys, and ``model.rescale_timesteps`` the discrete family's; a family key added
    later (``_LATER_FAMILY_KEYS``) gets the value the run used. Today's files are returned
    unchanged."""
    later = _LATER_FAMILY_KEYS.get(config.get("diffusion", {}).get("family"), {})
    if any(key not in config["diffusion"] for key in later):
        config = {**config, "diffusion": {**later, **config["diffusion"]}}
    diffusion, model = dict(config.get("diffusion", {})), dict(config.get("model", {}))
    rescale = model.pop("rescale_timesteps", None)
    if "mean_type" not in diffusion and rescale is None:
        return config
    family = diffusion.get("family", "discrete")
    names = _OLD_DISCRETE_NAMES if family == "discrete" else _OLD_NAIVE_NAMES if family == "naive" else {}
    if family == "discrete":
        for key in _OLD_DISCRETE_NAMES.values():  # the continuous family's keys of the same names, unused
            diffusion.pop(key, None)
        diffusion["rescale_timesteps"] = bool(rescale)
    renamed = {**{names.get(key, key): value for key, value in diffusion.items()}, "family": family}
    keys = {"family", *FAMILIES[family].CONFIG}
    return {**config, "model": model, "diffusion": {k: v for k, v in renamed.items() if k in keys}}


def read_config_json(path: str) -> ml_collections.ConfigDict:
    """A run's ``config.json`` as a ConfigDict in today's layout (``upgrade_config``)."""
    with open(path) as f:
        return ml_collections.ConfigDict(upgrade_config(json.load(f)))


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
    family = _validate_family(config)
    _one_of(config, "sample.method", ("ddpm", "ddim"))
    _validate_model(config)
    _validate_classifier_model(config, family)
    try:
        check_fusions(config.runtime.xla_cpu_ynn_fusions)
    except ValueError as error:
        raise ConfigError(f"config.runtime.xla_cpu_ynn_fusions: {error}") from None
    try:
        parse_gpu_flags(config.runtime.xla_gpu_flags)
    except ValueError as error:
        raise ConfigError(f"config.runtime.xla_gpu_flags: {error}") from None
    _one_of(config, "train.lr_decay", ("constant", "cosine"))
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
        _require(config.data.num_classes > 0 and family.draws_samples, "sample.guidance_weight",
                 "classifier-free guidance needs a class-conditional model (data.num_classes > 0)")
    _validate_classifier_guidance(config, family)
    _validate_choices(config, family)
    if "nll" in family.bounds:
        try:
            space_timesteps(family.num_timesteps, config.eval.nll_chain)
        except ValueError as error:
            raise ConfigError(f"config.eval.nll_chain: {error}") from None
    else:
        _require(not config.eval.nll_chain, "eval.nll_chain",
                 f"the discrete T-step bound applies to the discrete chain, not a {d.family} model")
    _require(config.eval.num_samples > 0, "eval.num_samples", "must be positive")
    _validate_ode_nll(config.eval)
    _require(isinstance(config.eval.elbo, bool), "eval.elbo", f"must be True or False, got {config.eval.elbo!r}")
    _int_at_least(config, "eval.elbo_draws", 1)
    _int_at_least(config, "eval.elbo_steps", 0)
    if config.eval.elbo:
        _require("elbo" in family.bounds, "eval.elbo", f"a {d.family} model has no likelihood bound")
    _require(config.eval.fid_image_size >= 75, "eval.fid_image_size", "Inception-v3 needs at least 75 (299 for FID)")
    _require(config.eval.fid_batch_size > 0, "eval.fid_batch_size", "must be positive")
    _require(config.eval.fid_reference_examples >= 0, "eval.fid_reference_examples", "must be non-negative")


def _validate_family(config: ml_collections.ConfigDict):
    """The model family of ``config.diffusion``, built by its own constructor (whose checks are the
    only copy of its rules; a ``ValueError`` that starts with one of its keys names that key)."""
    d = config.diffusion
    _one_of(config, "diffusion.family", FAMILIES)
    expected = {"family", *FAMILIES[d.family].CONFIG}
    if set(d.keys()) != expected:
        missing, foreign = sorted(expected - set(d.keys())), sorted(set(d.keys()) - expected)
        what = f"lacks its keys {missing}" if missing else f"has keys it does not: {foreign}"
        raise ConfigError(f"config.diffusion.family: {d.family!r} is not the family config.diffusion describes (it "
                          f"{what}); the family is chosen in the experiment file with set_family(config, FAMILY)")
    try:
        return family_from_config(d, discrete_data=config.data.name not in TOY_NAMES,
                                  num_classes=config.data.num_classes)
    except ValueError as error:
        key = str(error).partition(":")[0]
        if "." in key:  # about another section's key (e.g. data.num_classes)
            raise ConfigError(f"config.{error}") from None
        raise ConfigError(f"config.diffusion.{error}" if key in d else f"config.diffusion: {error}") from None


def _validate_choices(config: ml_collections.ConfigDict, family) -> None:
    """``config.sample``'s sampler choice and each of ``config.eval.sample_steps``, as the family checks them."""
    s = config.sample
    if not family.draws_samples:  # a classifier is trained and evaluated (accuracy), never sampled
        return
    choices = [("sample.steps" if not s.solver else "sample", SamplerChoice.from_settings(s))]
    choices += [("eval.sample_steps", SamplerChoice.from_settings(s, entry))
                for entry in config.eval.sample_steps.replace(";", " ").split()]
    for key, choice in choices:
        try:
            family.check_choice(choice)
        except ValueError as error:
            where = f"config.{key}" if key == "sample.steps" else f"config.{key} ({choice.label})"
            raise ConfigError(f"{where}: {error}") from None


def _validate_classifier_guidance(config: ml_collections.ConfigDict, family) -> None:
    """``sample.classifier_scale`` and ``sample.classifier_workdir`` (whether the workdir holds a
    classifier checkpoint is checked when it is restored, before anything compiles)."""
    s = config.sample
    value = s.classifier_scale
    _require(_is_finite_number(value), "sample.classifier_scale", f"must be a finite number, got {value!r}")
    if value == 0:
        return
    _require(family.gaussian, "sample.classifier_scale",
             f"classifier guidance steers a Gaussian diffusion model's sampler, not a {family.name!r} model")
    _require(bool(s.classifier_workdir), "sample.classifier_workdir",
             "classifier guidance (sample.classifier_scale != 0) needs the workdir of a trained noise-conditional "
             "classifier, e.g. --config.sample.classifier_workdir=runs/digits_classifier (train one with "
             "experiments/digits_classifier.py)")


def _validate_classifier_model(config: ml_collections.ConfigDict, family) -> None:
    """A classifier experiment: the classifier network, labels, no label dropout; and only there."""
    m = config.model
    if family.draws_samples:
        _require(m.arch != "classifier", "model.arch",
                 "the 'classifier' network is trained by an experiment of diffusion.family 'classifier'")
        return
    _require(m.arch == "classifier", "model.arch",
             f"a classifier experiment (diffusion.family 'classifier') trains the 'classifier' network, not {m.arch!r}")
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
    for key in [k for k in ("use_scale_shift_norm", "resblock_updown", "conv_resample", "sinusoid_cos_first")
                if k in m]:
        _require(isinstance(m[key], bool), f"model.{key}", f"must be True or False, got {m[key]!r}")
    if "sinusoid_freq_shift" in m:
        _require(m.sinusoid_freq_shift in (0, 1) and not isinstance(m.sinusoid_freq_shift, bool),
                 "model.sinusoid_freq_shift", f"must be 0 (improved DDPM) or 1 (DDPM), got {m.sinusoid_freq_shift!r}")
    _one_of(config, "model.downsample_padding", DOWNSAMPLE_PADDINGS)
    if "pool" in m:
        _one_of(config, "model.pool", POOLS)
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
