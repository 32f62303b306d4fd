"""Test session setup: XLA:CPU's fusions as the digits experiments set them (none: the
tests' models are small), before JAX starts a backend."""

from diffjax.runtime.xla_cpu import use_cpu_fusions

use_cpu_fusions("")
