"""launch.py and the configs: dry runs report the papers' sizes; bad input is a clear error."""

import time

import pytest

from diffjax.run.config import ConfigError, validate
from tests.train_utils import load_experiment, run_python


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
    ],
)
def test_validate_names_the_bad_key(key, value, message):
    config = load_experiment("iddpm_cifar10").get_config("hybrid_cosine")
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_every_experiment_config_is_valid():
    for name, arg in [("digits_ddpm", None), ("digits_ddpm", "smoke"), ("toy2d", None), ("ddpm_cifar10", None),
                      ("ddpm_celebahq256", None), ("ddpm_lsun_church256", None), ("iddpm_imagenet64", "vlb_linear")] + [
        (experiment, f"{o}_{s}") for experiment in ("iddpm_cifar10", "digits_iddpm")
        for o in ("simple", "hybrid", "vlb") for s in ("linear", "cosine")
    ]:
        validate(load_experiment(name).get_config(arg))
    with pytest.raises(ValueError, match="OBJECTIVE_SCHEDULE"):
        load_experiment("iddpm_cifar10").get_config("kl_cosine")


def test_missing_dataset_fails_at_once_with_what_to_do(tmp_path):
    start = time.time()
    result = _launch("--config", "experiments/ddpm_cifar10.py", "--workdir", str(tmp_path / "run"),
                     f"--config.data.data_dir={tmp_path / 'empty'}")
    assert_user_error(result, "download_and_prepare")
    assert "cifar10" in result.stderr
    assert not (tmp_path / "run").exists()
    assert time.time() - start < 60  # tfds would retry a download for ~205 s
