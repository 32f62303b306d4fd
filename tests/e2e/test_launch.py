"""launch.py and the configs: dry runs report the papers' sizes; the config is the network;
bad input is a clear error."""

import time
import types

import pytest

from diffjax import models
from diffjax.run.config import (
    ConfigError,
    base_config,
    network_hyperparameters,
    set_family,
    set_model,
    validate,
    validate_backend,
)
from diffjax.run.experiments import build_recipe
from tests.support.subprocesses import run_python
from tests.support.train_utils import load_experiment

pytestmark = pytest.mark.slow  # child processes (or a trained module fixture): not in the fast tier


def _launch(*args, timeout=240):
    return run_python(["launch.py", *args], timeout=timeout)


@pytest.mark.parametrize(
    "config,count",
    [("experiments/ddpm_cifar10.py", "35,746,307"), ("experiments/iddpm_cifar10.py:hybrid_cosine", "52,546,438")],
)
def test_dry_run_reports_the_paper_parameter_count(config, count):
    result = _launch("--config", config, "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "total" in result.stdout and count in result.stdout, result.stdout


def unet_param_count(*, channels, channel_mult, num_res_blocks, attention_levels, in_channels, out_channels,
                     scale_shift=False):
    """The UNet's parameters counted layer by layer from its description (unet.py's docstring):
    a 3x3 conv has 9·c_in·c_out + c_out, a dense layer c_in·c_out + c_out, a GroupNorm 2c;
    resampling by convs, timestep embedding 4·channels wide."""
    ch, emb = channels, 4 * channels

    def conv(cin, cout):
        return 9 * cin * cout + cout

    def dense(cin, cout):
        return cin * cout + cout

    def res(cin, cout):
        skip = dense(cin, cout) if cin != cout else 0
        return 2 * cin + conv(cin, cout) + dense(emb, (2 if scale_shift else 1) * cout) + 2 * cout + conv(cout, cout) + skip

    def attn(c):
        return 2 * c + dense(c, 3 * c) + dense(c, c)

    total = dense(ch, emb) + dense(emb, emb) + conv(in_channels, ch)
    h, skips = ch, [ch]
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            total += res(h, ch * mult) + (attn(ch * mult) if level in attention_levels else 0)
            h = ch * mult
            skips.append(h)
        if level != len(channel_mult) - 1:
            total += conv(h, h)
            skips.append(h)
    total += 2 * res(h, h) + attn(h)
    for level, mult in reversed(list(enumerate(channel_mult))):
        for _ in range(num_res_blocks + 1):
            total += res(h + skips.pop(), ch * mult) + (attn(ch * mult) if level in attention_levels else 0)
            h = ch * mult
        if level != 0:
            total += conv(h, h)
    return total + 2 * h + conv(h, out_channels)


def test_hand_count_gives_the_papers_counts():
    ddpm = dict(channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels={1}, in_channels=3, out_channels=3)
    assert unet_param_count(channels=128, **ddpm) == 35_746_307
    assert unet_param_count(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=3, attention_levels={1, 2},
                            in_channels=3, out_channels=6, scale_shift=True) == 52_546_438
    assert unet_param_count(channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels={1},
                            in_channels=1, out_channels=1) == 701_345


@pytest.mark.parametrize(
    "config,overrides,count",
    [
        # DDPM's CIFAR-10 UNet at half the width.
        ("experiments/ddpm_cifar10.py", ["--config.model.channels=64"],
         unet_param_count(channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_levels={1},
                          in_channels=3, out_channels=3)),
        # Tuples from the command line: a third level on the 8x8 digits, attention on its 2x2 maps, 2 heads.
        ("experiments/digits_ddpm.py", ["--config.model.channel_mult=(1,2,2)", "--config.model.attention_resolutions=2",
                                        "--config.model.num_heads=2", "--config.model.num_res_blocks=2"],
         unet_param_count(channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_levels={2},
                          in_channels=1, out_channels=1)),
    ],
)
def test_dry_run_counts_follow_model_overrides(config, overrides, count):
    result = _launch("--config", config, "--dry_run", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].split()[-1] == f"{count:,}", result.stdout


@pytest.mark.parametrize(
    "name,arg,count",
    [("digits_ddpm", None, 701_345), ("digits_ddpm", "smoke", 701_345), ("ddpm_cifar10", None, 35_746_307),
     ("ddpm_celebahq256", None, 113_673_219), ("ddpm_lsun_church256", None, 113_673_219),
     ("iddpm_cifar10", "hybrid_cosine", 52_546_438), ("iddpm_imagenet64", "vlb_cosine", 121_063_942),
     ("toy2d", None, 175_106), ("digits_vdm", "fixed", 701_345), ("digits_edm", None, 701_345),
     ("digits_naive", None, 701_345), ("digits_vdm", "toy2d", 175_106), ("digits_cond", None, 702_753),
     ("digits_classifier", None, 318_090)],
)
def test_every_experiment_builds_its_network_from_the_config(name, arg, count):
    experiment = load_experiment(name)
    config = experiment.get_config(arg)
    validate(config)
    recipe = build_recipe(experiment, config)
    assert models.count_params(models.abstract_params(recipe.model, recipe.input_shape)) == count
    for key, value in config.model.items():  # every key reaches the network
        if key in models.hyperparameters(config.model.arch):
            assert getattr(recipe.model, key) == (None if value == -1 else value), key


def test_set_model_writes_every_key_and_keeps_the_run_keys():
    config = base_config()
    config.model.class_dropout = 0.2
    config.model.dtype = "bfloat16"
    set_model(config, "toy2d", hidden=64)
    assert set(config.model) == {"arch", "hidden", "num_blocks", "sinusoid_dim", "dropout", "dtype",
                                 "class_dropout", "fourier_features"}
    assert config.model.arch == "mlp" and config.model.hidden == 64 and config.model.num_blocks == 3
    assert config.model.class_dropout == 0.2 and config.model.dtype == "bfloat16"
    set_model(config, "iddpm_cifar10")
    assert config.model.channels == 128 and config.model.channel_mult == (1, 2, 2, 2)
    assert config.model.num_head_channels == -1 and config.model.dropout == 0.3
    with pytest.raises(KeyError, match="hidden"):
        set_model(config, "digits", hidden=3)
    with pytest.raises(KeyError, match="no_such"):
        set_model(config, "no_such")


def test_build_recipe_uses_the_default_unless_the_file_has_build():
    config = load_experiment("digits_ddpm").get_config("smoke")
    recipe = build_recipe(types.ModuleType("no_build"), config)
    assert recipe.input_shape == (8, 8, 1) and isinstance(recipe.model, models.UNet)
    toy = load_experiment("toy2d").get_config("eight_gaussians,smoke")
    recipe = build_recipe(types.ModuleType("no_build"), toy)
    assert recipe.input_shape == (2,) and isinstance(recipe.model, models.MLPDenoiser)
    own = types.ModuleType("own_build")
    own.build = lambda config: ("built", config.experiment)
    assert build_recipe(own, config) == ("built", "digits_ddpm")


def assert_user_error(result, message):
    """A non-zero exit whose stderr says ``message`` without a Python traceback."""
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_unknown_config_key_is_an_error_with_did_you_mean_last():
    result = _launch("--config", "experiments/digits_ddpm.py", "--config.train.batchsize=3", "--dry_run")
    assert_user_error(result, "--config.train.batchsize=3: unknown config key 'batchsize'")
    assert result.stderr.strip().splitlines()[-1] == 'Did you mean "batch_size" instead of "batchsize"?'


def test_missing_experiment_file_is_named():
    result = _launch("--config", "experiments/nope.py", "--dry_run")
    assert_user_error(result, "error: no experiment file experiments/nope.py")
    assert "config_config" not in result.stderr


def test_bad_experiment_variant_is_one_line():
    result = _launch("--config", "experiments/iddpm_cifar10.py:kl_cosine", "--dry_run")
    assert_user_error(result, "variant must be OBJECTIVE_SCHEDULE")
    assert len(result.stderr.strip().splitlines()) == 1


def test_user_errors_show_their_traceback_with_verbosity_1():
    args = ("--config", "experiments/digits_ddpm.py", "--config.diffusion.schedule=cosin", "--dry_run")
    assert_user_error(_launch(*args), "error: config.diffusion.schedule: 'cosin' is not one of")
    result = _launch(*args, "--verbosity=1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_wrong_type_is_an_error():
    result = _launch("--config", "experiments/digits_ddpm.py", "--config.train.batch_size=many", "--dry_run")
    assert result.returncode != 0
    assert "batch_size" in result.stderr and "many" in result.stderr


def test_bad_value_is_an_error_naming_the_key():
    result = _launch("--config", "experiments/digits_ddpm.py", "--config.diffusion.schedule=cosin", "--dry_run")
    assert_user_error(result, "config.diffusion.schedule: 'cosin' is not one of")


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("diffusion.objective", "l1", "config.diffusion.objective: 'l1' is not one of"),
        ("diffusion.var_type", "fixed_small", "config.diffusion.var_type: the hybrid objective"),
        ("train.batch_size", 0, "config.train.batch_size: must be a positive integer"),
        ("train.ema_decay", 1.0, "config.train.ema_decay"),
        ("sample.steps", "ddimx", "config.sample.steps"),
        ("diffusion.timestep_sampler", "importance", "config.diffusion.timestep_sampler"),
        ("model.attention_resolutions", (16, 12), r"config.model.attention_resolutions: \[12\] are not feature-map "
         r"sizes of this UNet: its maps are \[32, 16, 8, 4\] pixels high"),
        ("model.channel_mult", (), "config.model.channel_mult: must be a non-empty tuple"),
        ("model.channel_mult", (1, 2, 0), "config.model.channel_mult: must be a non-empty tuple of positive integers"),
        ("model.norm_groups", 48, "config.model.norm_groups: 48 groups do not divide model.channels = 128"),
        ("model.channels", 0, "config.model.channels: must be an integer >= 1"),
        ("model.num_heads", 3, r"config.model.num_heads: 3 heads do not divide the attention widths \[256\]"),
        ("model.num_head_channels", 0, "config.model.num_head_channels: must be a positive integer or -1"),
        ("model.num_head_channels", 96, "config.model.num_head_channels: 96 does not divide"),
        ("model.downsample_padding", "valid", "config.model.downsample_padding: 'valid' is not one of"),
        ("model.dropout", 1.0, "config.model.dropout"),
        ("model.arch", "mlp", r"config.model.arch: 'mlp' is not the network config.model describes .* set_model"),
        ("model.arch", "vit", "config.model.arch: 'vit' is not one of"),
        ("data.image_size", 36, "config.data.image_size: 36 is not divisible by 8"),
        ("model.attention_implementation", "flash", "config.model.attention_implementation: 'flash' is not one of"),
        ("model.attention_implementation", "cudnn", r"config.model.attention_implementation: 'cudnn': cuDNN flash "
         r"attention takes bfloat16 or float16 inputs, and this model computes in float32 \(set model.dtype"),
        ("runtime.xla_gpu_flags", "--xla_gpu_autotune_level=2 --xla_gpu_fast=true",
         r"config.runtime.xla_gpu_flags: --xla_gpu_fast is not one of the XLA:GPU flags allowed here"),
    ],
)
def test_validate_names_the_bad_key(key, value, message):
    config = load_experiment("iddpm_cifar10").get_config("hybrid_cosine")
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_cudnn_attention_is_checked_against_the_backend_and_old_configs_still_build():
    import ml_collections

    config = load_experiment("digits_classifier").get_config(None)
    assert config.model.attention_implementation == "xla" and config.runtime.xla_gpu_flags == ""
    validate_backend(config, "cpu")
    config.model.attention_implementation = "cudnn"
    config.model.dtype = "bfloat16"
    validate(config)  # head_dim 64, bf16: cuDNN could run it
    validate_backend(config, "gpu")
    with pytest.raises(ConfigError, match=r"config.model.attention_implementation: 'cudnn' .*needs an NVIDIA GPU, "
                                          r"and JAX runs on 'cpu': use 'xla'"):
        validate_backend(config, "cpu")
    config.model.num_heads = 8  # head_dim 8 is fine, 64 / 16 = 4 is not
    validate(config)
    config.model.num_heads = 16
    with pytest.raises(ConfigError, match=r"model.attention_implementation: 'cudnn': .*head_dim \[4\]"):
        validate(config)
    # A config.json written before the key existed builds the network as it was trained.
    old = ml_collections.ConfigDict({k: v for k, v in config.model.items() if k != "attention_implementation"})
    assert "attention_implementation" not in network_hyperparameters(old)
    assert models.make_network("classifier", **network_hyperparameters(old)).attention_implementation == "xla"


def test_every_experiment_config_is_valid():
    for name, arg in [("digits_ddpm", None), ("digits_ddpm", "smoke"), ("toy2d", None), ("ddpm_cifar10", None),
                      ("ddpm_celebahq256", None), ("ddpm_lsun_church256", None), ("iddpm_imagenet64", "vlb_linear")] + [
        (experiment, f"{o}_{s}") for experiment in ("iddpm_cifar10", "digits_iddpm")
        for o in ("simple", "hybrid", "vlb") for s in ("linear", "cosine")
    ]:
        validate(load_experiment(name).get_config(arg))
    for name, args in [("digits_vdm", ("fixed", "learned_linear", "learned", "learned,smoke", "fixed,toy2d",
                                       "learned,toy2d,smoke")),
                       ("digits_edm", (None, "smoke", "toy2d", "toy2d,smoke")),
                       ("digits_naive", (None, "smoke", "toy2d,smoke")),
                       ("digits_cond", (None, "smoke")), ("digits_classifier", (None, "smoke"))]:
        for arg in args:
            validate(load_experiment(name).get_config(arg))
    with pytest.raises(ValueError, match="OBJECTIVE_SCHEDULE"):
        load_experiment("iddpm_cifar10").get_config("kl_cosine")
    with pytest.raises(ValueError, match="unknown variant"):
        load_experiment("digits_vdm").get_config("fixed,learned")


def test_learned_schedule_params_sit_beside_the_network():
    """VDM's monotone schedule (1 + 1024 + 1024 weights, 1 + 1024 + 1 biases, 2 learned ends) joins
    the digits UNet's 701,345 parameters under params["schedule"]."""
    experiment = load_experiment("digits_vdm")
    recipe = build_recipe(experiment, experiment.get_config("learned"))
    params = models.abstract_params(recipe.model, recipe.input_shape)
    assert set(params) == {"network", "schedule"}
    assert models.count_params(params["network"]) == 701_345
    assert models.count_params(params["schedule"]) == (1 + 1024 + 1024) + (1 + 1024 + 1) + 2


@pytest.mark.parametrize(
    "updates,message",
    [
        (dict(family="continuous", process="vp_linear", noise_sampler="log_normal"),
         "config.diffusion.noise_sampler: log_normal draws EDM's sigma and needs process 'edm'"),
        (dict(family="continuous", weighting="snr"), "config.diffusion.weighting: 'snr' is not one of"),
        (dict(family="continuous", process="edm", weighting="v_mse"), "config.diffusion.weighting: v_mse"),
        (dict(family="continuous", gamma_0=6.0), r"config.diffusion.gamma_0: gamma_0 \(6.0\) must be below"),
        (dict(family="continuous", schedule_hidden=0), "config.diffusion.schedule_hidden: must be an integer >= 1"),
        (dict(family="continuous"), "config.sample.steps: a continuous-time model is sampled by a solver"),
        (dict(family="naive", num_levels=0), "config.diffusion.num_levels: must be an integer >= 1"),
        (dict(family="discrete", prediction="score"), "config.diffusion.prediction: 'score' is not one of"),
    ],
)
def test_validate_names_the_bad_family_key(updates, message):
    config = load_experiment("digits_ddpm").get_config()
    set_family(config, **updates)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_a_family_section_holds_exactly_its_keys():
    config = load_experiment("digits_ddpm").get_config()
    config.diffusion.family = "ddim"
    with pytest.raises(ConfigError, match="config.diffusion.family: 'ddim' is not one of"):
        validate(config)
    config.diffusion.family = "continuous"  # the chain's keys under another family's name
    with pytest.raises(ConfigError, match="config.diffusion.family: 'continuous' is not the family config.diffusion "
                                          "describes"):
        validate(config)
    with pytest.raises(KeyError, match="not keys of the naive family"):
        set_family(config, "naive", process="edm")
    config.lock()  # as launch.py locks it: another family's key is refused
    with pytest.raises(AttributeError):
        config.diffusion.process = "edm"


def test_naive_and_elbo_settings_are_checked():
    config = load_experiment("digits_naive").get_config()
    config.eval.elbo = True
    with pytest.raises(ConfigError, match="config.eval.elbo: a naive model has no likelihood bound"):
        validate(config)
    config = load_experiment("digits_naive").get_config()
    config.sample.solver = "heun"
    with pytest.raises(ConfigError, match="naive diffusion has its own iterative sampler"):
        validate(config)


@pytest.mark.parametrize(
    "experiment,updates,message",
    [
        ("digits_ddpm", {"sample.guidance_weight": 2.0},
         "config.sample.guidance_weight: classifier-free guidance needs a class-conditional model"),
        ("digits_ddpm", {"sample.classifier_scale": 2.0}, "config.sample.classifier_workdir: classifier guidance"),
        ("digits_ddpm", {"sample.classifier_scale": float("nan")}, "config.sample.classifier_scale: must be a finite"),
        ("digits_naive", {"sample.classifier_scale": 1.0, "sample.classifier_workdir": "x"},
         "config.sample.classifier_scale: classifier guidance steers a Gaussian diffusion model's sampler, not a 'naive'"),
        ("digits_ddpm", {"model.arch": "classifier"}, "config.model.arch: 'classifier' is not the network"),
        ("digits_classifier", {"diffusion.family": "discrete"}, "config.model.arch: the 'classifier' network is trained"),
        ("digits_classifier", {"model.class_dropout": 0.1}, "config.model.class_dropout: a classifier's labels"),
        ("digits_classifier", {"data.num_classes": 0}, "config.data.num_classes: a classifier needs labelled data"),
        ("digits_classifier", {"eval.elbo": True}, "config.eval: a classifier has no likelihood bound"),
    ],
)
def test_guidance_settings_are_checked(experiment, updates, message):
    config = load_experiment(experiment).get_config()
    for key, value in updates.items():
        group, name = key.split(".")
        if key == "diffusion.family":
            set_family(config, value)
        else:
            config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_a_workdir_without_a_classifier_is_named_with_what_to_do(tmp_path):
    from diffjax.run.restore import NoClassifierError, restore_classifier

    with pytest.raises(NoClassifierError, match=r"it has no config.json\): train one first"):
        restore_classifier(str(tmp_path / "none"), None)
    diffusion = tmp_path / "diffusion"
    diffusion.mkdir()
    (diffusion / "config.json").write_text(load_experiment("digits_ddpm").get_config().to_json())
    with pytest.raises(NoClassifierError, match="holds a 'discrete' model .* not a noise-conditional classifier"):
        restore_classifier(str(diffusion), None)


def test_network_and_data_must_fit():
    toy = load_experiment("toy2d").get_config()
    toy.data.name = "digits"
    with pytest.raises(ConfigError, match="config.model.arch: the mlp denoises vectors"):
        validate(toy)
    digits = load_experiment("digits_ddpm").get_config()
    digits.data.name = "swiss_roll"
    with pytest.raises(ConfigError, match="config.model.arch: 'unet' denoises images"):
        validate(digits)


def test_bad_model_override_is_one_line_naming_the_key():
    result = _launch("--config", "experiments/digits_ddpm.py", "--dry_run", "--config.model.attention_resolutions=(3,)")
    assert_user_error(result, "error: config.model.attention_resolutions: [3] are not feature-map sizes of this UNet")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_dataset_fails_at_once_with_what_to_do(tmp_path):
    start = time.time()
    result = _launch("--config", "experiments/ddpm_cifar10.py", "--workdir", str(tmp_path / "run"),
                     f"--config.data.data_dir={tmp_path / 'empty'}")
    assert_user_error(result, "download_and_prepare")
    assert "cifar10" in result.stderr
    assert not (tmp_path / "run").exists()
    assert time.time() - start < 60  # tfds would retry a download for ~205 s


def test_fourier_features_widen_the_first_convolution():
    """VDM's input features: [x, sin, cos at n = 7, 8] gives the digits UNet's conv_in 5 input
    channels instead of 1, i.e. 3 x 3 x 4 x 32 more weights."""
    experiment = load_experiment("digits_vdm")
    config = experiment.get_config("fixed")
    config.model.fourier_features = True
    validate(config)
    recipe = build_recipe(experiment, config)
    params = models.abstract_params(recipe.model, recipe.input_shape)
    assert models.count_params(params) == 701_345 + 3 * 3 * 4 * 32
    assert params["network"]["conv_in"]["kernel"].shape == (3, 3, 5, 32)
