"""diffjax.runtime.xla_cpu: the XLA:CPU fusion choice is applied, respected when the user sets it,
and changes how convolution gradients compile but not their values."""

import json

import numpy as np
import pytest

from diffjax.run.config import ConfigError, base_config, validate
from diffjax.runtime.xla_cpu import YNN_FUSION_OPTION, cpu_xla_flags, use_cpu_fusions
from tests.support.subprocesses import run_python

# Prints, as JSON, whether a 3x3 conv's ops (forward and both gradients) run inside
# YNNPACK fusions in the compiled program, and the gradients.
PROBE = """
import json, sys
from diffjax.runtime.xla_cpu import use_cpu_fusions
use_cpu_fusions(sys.argv[1])
import jax, jax.numpy as jnp
from jax import lax

def loss(x, k):
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y) ** 2)

x = jax.random.normal(jax.random.key(0), (4, 16, 16, 64))
k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
text = grad.lower(x, k).compile().as_text()
conv_lines = [line for line in text.splitlines() if "conv_general_dilated" in line and " = " in line]
in_ynn = any("ynn_fusion" in line and "kind=kCustom" in line for line in conv_lines)
dx, dk = grad(x, k)
print(json.dumps({"conv_in_ynn_fusion": in_ynn, "plain_convs": text.count(" convolution("),
                  "dx": dx[0, :2, :2, :4].tolist(), "dk": dk[:, :, :4, :4].tolist()}))
"""


def test_flags_are_added_once_and_the_users_choice_wins():
    added = cpu_xla_flags("--xla_dump_to=/tmp/x", "dot,reduce", jaxlib_version=(0, 10))
    assert added == f"--xla_dump_to=/tmp/x --{YNN_FUSION_OPTION}=dot,reduce"
    assert cpu_xla_flags(added, "", jaxlib_version=(0, 10)) == added
    assert cpu_xla_flags("", "", jaxlib_version=(0, 10)) == f"--{YNN_FUSION_OPTION}="
    assert cpu_xla_flags("", "xla_default", jaxlib_version=(0, 10)) == ""
    assert cpu_xla_flags("", "dot", jaxlib_version=(0, 9)) == ""  # not measured: XLA's default


def test_unknown_fusion_type_is_a_config_error():
    config = base_config()
    config.runtime.xla_cpu_ynn_fusions = "dot,convolution"
    with pytest.raises(ConfigError, match=r"runtime.xla_cpu_ynn_fusions.*'convolution'"):
        validate(config)


def test_too_late_is_an_error(monkeypatch):
    import jax

    jax.devices()  # the backends are up in this process
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.raises(RuntimeError, match="before the first jax.devices"):
        use_cpu_fusions("dot")


def probe(fusions):
    result = run_python(["-c", PROBE, fusions], env={"XLA_FLAGS": ""}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fusions", ["dot,reduce", ""])
@pytest.mark.slow
def test_chosen_fusions_keep_convolutions_out_of_ynnpack_with_the_same_gradients(fusions):
    chosen = probe(fusions)
    ynn_convs = probe("individual_dot,individual_convolution,reduce")
    assert not chosen["conv_in_ynn_fusion"] and chosen["plain_convs"] >= 3
    assert ynn_convs["conv_in_ynn_fusion"]  # the probe can tell the difference
    for name in ("dx", "dk"):
        np.testing.assert_allclose(chosen[name], ynn_convs[name], rtol=1e-4, atol=1e-6)
