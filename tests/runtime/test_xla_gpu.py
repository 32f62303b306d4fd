"""diffjax.runtime.xla_gpu: config.runtime.xla_gpu_flags is checked against its allow-list and
added to XLA_FLAGS, where a flag the user set already wins. String work only: no process is
started and no GPU is needed."""

import os

import pytest

from diffjax.run.config import ConfigError, base_config, validate
from diffjax.runtime.xla_gpu import GPU_FLAGS, gpu_xla_flags, parse_gpu_flags, use_gpu_flags


def test_flags_are_parsed_normalised_and_checked():
    assert parse_gpu_flags("") == {}
    assert parse_gpu_flags(" --xla_gpu_autotune_level=2   --xla_gpu_force_conv_nhwc=TRUE ") == {
        "xla_gpu_autotune_level": "2", "xla_gpu_force_conv_nhwc": "true"}
    assert parse_gpu_flags("--xla_gpu_enable_command_buffer=") == {"xla_gpu_enable_command_buffer": ""}
    assert parse_gpu_flags("--xla_gpu_enable_command_buffer=-CUDNN,+WHILE")["xla_gpu_enable_command_buffer"] == \
        "-CUDNN,+WHILE"
    for bad, message in [
        ("--xla_gpu_autotune_level=6", "integer from 0 to 5"),
        ("--xla_gpu_enable_latency_hiding_scheduler=yes", "true or false"),
        ("--xla_gpu_enable_command_buffer=FUSION,GRAPHS", r"unknown command type\(s\) \['GRAPHS'\]"),
        ("--xla_gpu_enable_command_buffer=FUSION,-CUDNN", "not both"),
        ("--xla_cpu_use_xnnpack=false", "not one of the XLA:GPU flags allowed here"),
        ("xla_gpu_autotune_level=2", "not of the form"),
        ("--xla_gpu_autotune_level", "not of the form"),
        ("--xla_gpu_autotune_level=1 --xla_gpu_autotune_level=2", "given twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_gpu_flags(bad)
    assert len(GPU_FLAGS) == len(set(GPU_FLAGS)) == 5


def test_flags_are_added_and_the_users_own_setting_wins():
    ours = "--xla_gpu_autotune_level=2 --xla_gpu_enable_latency_hiding_scheduler=true"
    assert gpu_xla_flags("", ours) == ours
    assert gpu_xla_flags("", "") == ""
    assert gpu_xla_flags(" --xla_dump_to=/tmp/x ", "") == " --xla_dump_to=/tmp/x "  # unchanged, not reformatted
    assert gpu_xla_flags("--xla_dump_to=/tmp/x", ours) == f"--xla_dump_to=/tmp/x {ours}"
    # The user's --xla_gpu_autotune_level=0 stays; only the flag the user did not set is added.
    assert gpu_xla_flags("--xla_gpu_autotune_level=0", ours) == \
        "--xla_gpu_autotune_level=0 --xla_gpu_enable_latency_hiding_scheduler=true"
    # A boolean flag given bare (XLA reads it as true) counts as set; a longer name is another flag.
    assert gpu_xla_flags("--xla_gpu_enable_latency_hiding_scheduler", ours) == \
        "--xla_gpu_enable_latency_hiding_scheduler --xla_gpu_autotune_level=2"
    assert gpu_xla_flags("--xla_gpu_autotune_level_x=1", "--xla_gpu_autotune_level=2") == \
        "--xla_gpu_autotune_level_x=1 --xla_gpu_autotune_level=2"
    with pytest.raises(ValueError):
        gpu_xla_flags("", "--xla_gpu_unknown=1")


def test_use_gpu_flags_writes_xla_flags_only_before_jax_starts(monkeypatch):
    import jax

    jax.devices()  # the backends are up in this process
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=0")
    use_gpu_flags("--xla_gpu_autotune_level=3")  # nothing to add: no error, nothing changed
    use_gpu_flags("")
    with pytest.raises(RuntimeError, match="before the first jax.devices"):
        use_gpu_flags("--xla_gpu_force_conv_nhwc=true")
    assert os.environ["XLA_FLAGS"] == "--xla_gpu_autotune_level=0"


def test_bad_gpu_flags_are_a_config_error_naming_the_key():
    config = base_config()
    assert config.runtime.xla_gpu_flags == ""
    config.runtime.xla_gpu_flags = "--xla_gpu_autotune_level=4 --xla_gpu_force_conv_nhwc=true"
    validate(config)
    config.runtime.xla_gpu_flags = "--xla_gpu_autotune_level=9"
    with pytest.raises(ConfigError, match=r"^config.runtime.xla_gpu_flags: --xla_gpu_autotune_level takes an integer"):
        validate(config)
