"""Record the golden values of every model family (``tests/golden/cases.py``) and the old-workdir
fixtures, from the code on the path:

    PYTHONPATH=$PWD python -m tests.golden.record               # families.json and old_workdir/
    PYTHONPATH=$PWD python -m tests.golden.record --out x.json  # only the json, elsewhere

It trains each run of ``cases.RUNS`` (4 steps, tiny networks) in a temporary folder, with XLA:CPU's
fusions set as the tests set them (``tests/conftest.py``), measures it, and writes the json, stamped
with the commit and the CPU it was computed on. With the default ``--out`` it also replaces
``old_workdir/<name>/`` by the ``config.json`` and checkpoints of the runs ``cases.OLD_WORKDIRS``
names, and records what the test restores from them; with another ``--out`` it records what the
committed fixtures restore to. The second use makes a recording for another kind of CPU
(``cases.GOLDEN_FILES``, e.g. ``families_avx2.json``): run it from the commit of the first
recording (its ``recorded_from``), so that both hold what the same code computes. The test
(``tests/golden/test_family_golden.py``) runs it in a child process, at the XLA flags of the
recordings, with ``--core --keep_going`` (``DIFFJAX_GOLDEN=all``: without ``--core``).
"""

from diffjax.runtime.xla_cpu import use_cpu_fusions

use_cpu_fusions("")  # as tests/conftest.py, before JAX starts a backend

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

from tests.golden.cases import GOLDEN_DIR, GOLDEN_FILE, OLD_WORKDIRS, RUNS, Runs, old_workdir_record  # noqa: E402

OLD_WORKDIR_DIR = os.path.join(GOLDEN_DIR, "old_workdir")


def source_commit() -> str:
    """The commit of the code being recorded (and whether its tree had changes)."""
    repo = os.path.dirname(os.path.dirname(GOLDEN_DIR))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "diffjax", "experiments"],
                           cwd=repo, capture_output=True, text=True).stdout.strip()
    return commit + (" (with uncommitted changes)" if dirty else "")


def cpu_description() -> str:
    """The CPU the numbers were computed on: its model and the vector extensions XLA:CPU compiles for."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    isa = [flag for flag in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if flag in flags]
    return f"{model} ({' '.join(isa) or 'no x86 vector flags read'})"


def write_old_workdir(kind: str, workdir: str) -> str:
    """``old_workdir/<kind>``: the run's ``config.json`` and ``checkpoints/``, nothing else."""
    target = os.path.join(OLD_WORKDIR_DIR, kind)
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    shutil.copy(os.path.join(workdir, "config.json"), target)
    shutil.copytree(os.path.join(workdir, "checkpoints"), os.path.join(target, "checkpoints"))
    return target


def _measured(measure, keep_going: bool):
    """``measure()``, or (``keep_going``) its exception's traceback as ``{"error": ...}``."""
    if not keep_going:
        return measure()
    try:
        return measure()
    except Exception:  # noqa: BLE001 -- reported by the test that reads this item
        return {"error": traceback.format_exc()}


def _old_workdir(runs: Runs, root: str, kind: str, fixtures: bool, recorded_state) -> dict:
    """What ``old_workdir/<kind>`` restores to (first rewritten from its run when ``fixtures``)."""
    name = OLD_WORKDIRS[kind]
    if fixtures:
        workdir = write_old_workdir(kind, runs.trained(name)[2])
    else:  # the committed fixtures, as the test restores them (trained on the machine that wrote them)
        workdir = os.path.join(OLD_WORKDIR_DIR, kind)
    copy = shutil.copytree(workdir, os.path.join(root, f"old_workdir_{kind}"))
    fixture = old_workdir_record(copy, name, runs.mesh)
    if fixtures and fixture["state"] != recorded_state:
        raise AssertionError(f"old_workdir/{kind} does not restore to run {name}'s state")
    return fixture


def record(root: str, fixtures: bool, core: bool = False, keep_going: bool = False) -> dict:
    """The recording: every run of ``cases.RUNS`` (``core``: only its core draws and evaluations)
    and every old-workdir fixture; ``keep_going``: a measurement that raises is recorded as its
    traceback and the others go on."""
    runs = Runs(root)
    golden = {"recorded_from": source_commit(), "cpu": cpu_description(), "runs": {}, "old_workdir": {}}
    for name in RUNS:
        started = time.perf_counter()
        golden["runs"][name] = _measured(lambda: runs.record(name, core), keep_going)
        print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    for kind, name in OLD_WORKDIRS.items():
        state = golden["runs"][name].get("state")
        golden["old_workdir"][kind] = _measured(lambda: _old_workdir(runs, root, kind, fixtures, state), keep_going)
    return golden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=GOLDEN_FILE, help="the json to write (default: families.json)")
    parser.add_argument("--core", action="store_true", help="only the draws and evaluations marked core")
    parser.add_argument("--keep_going", action="store_true",
                        help="record a measurement that raises as its traceback and go on (the test's use)")
    args = parser.parse_args()
    fixtures = os.path.abspath(args.out) == GOLDEN_FILE
    if fixtures and (args.core or args.keep_going):
        parser.error("families.json is a whole recording: --core and --keep_going need another --out")
    with tempfile.TemporaryDirectory() as root:
        golden = record(root, fixtures, args.core, args.keep_going)
    with open(args.out, "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {args.out}" + (f" and {OLD_WORKDIR_DIR}" if fixtures else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
