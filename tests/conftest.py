"""Test session setup: XLA:CPU's fusions as the digits experiments set them (none: the
tests' models are small), before JAX starts a backend; and the slow end-to-end tests first.

Under ``pytest -n 2 --dist loadscope`` (the README's command with pyproject's options) each
module runs on one worker, in the order the modules first appear. A module holding a long
end-to-end test (marked ``slow``) that happened to be scheduled last would run alone while
the other worker sits idle; moving the slow tests to the front (a stable sort, so every
other order is kept) lets the many short tests fill the end of the run instead."""

from diffjax.runtime.xla_cpu import use_cpu_fusions

use_cpu_fusions("")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
