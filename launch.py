"""The one entry point: train an experiment, or check it with --dry_run.

    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits
    python launch.py --config experiments/ddpm_cifar10.py --workdir runs/c10 --config.train.batch_size=64
    python launch.py --config experiments/iddpm_cifar10.py:hybrid_cosine --workdir runs/x --dry_run
    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits --mode=eval
    python launch.py --config experiments/digits_ddpm.py --workdir runs/digits --mode=sample \
        --config.sample.num=5000 --config.sample.steps=ddim100 --config.sample.seed=1
    python launch.py --config experiments/pretrained.py:ddpm_cifar10 --workdir runs/released --mode=import \
        --config.pretrained.path=PATH/google-ddpm-cifar10-32   # then any mode on runs/released

An experiment file defines ``get_config(arg)`` (a locked ml_collections ConfigDict; ``arg``
is what follows ":" in --config) and, only where its recipe differs from the default one
(``diffjax.run.recipes.default_recipe``), ``build(config)`` returning the ``Recipe``.
Multi-host: on TPU pods and SLURM clusters JAX finds its peers by itself; elsewhere give
--coordinator_address, --num_processes and --process_id to every process.

A mistake in what was asked for (a config key or value, a missing experiment file, data
set, checkpoint or weights file, a NaN loss) is printed as its message alone and exits
with status 1 (2 for command-line errors); ``--verbosity=1`` shows the Python traceback too.
"""

from __future__ import annotations

import os
import re
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffjax.errors import UserError
from diffjax.models.summary import parameter_table
from diffjax.run.config import validate, validate_backend
from diffjax.run.evaluate import evaluate
from diffjax.run.experiments import build_recipe, load_experiment
from diffjax.run.pretrained import import_pretrained, read_pretrained
from diffjax.run.sample import generate
from diffjax.runtime import mesh
from diffjax.runtime.xla_cpu import use_cpu_fusions
from diffjax.runtime.xla_gpu import use_gpu_flags
from diffjax.train import train_and_evaluate

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment file, optionally with ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go (resumes from it).")
flags.DEFINE_bool("dry_run", False, "Validate the config, build the model, print its parameters and exit.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "import"], "train (resuming from --workdir); eval: "
                  "NLL and sample quality of the latest checkpoint of --workdir, written to WORKDIR/eval/*.json; "
                  "sample: config.sample.num samples of it (config.sample.*) to WORKDIR/samples/*.npz and PNG grids; "
                  "import: config.pretrained's released weights as the step-0 checkpoint of an empty --workdir "
                  "(experiments/pretrained.py).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for multi-process runs.")
flags.DEFINE_integer("process_id", None, "This process's index, for multi-process runs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with JAX's own cluster detection (TPU pods, "
                  "SLURM, Open MPI); SLURM and Open MPI jobs are also detected without it.")
flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "diffjax", "xla"),
    "JAX's persistent compilation cache ('' disables it): a second launch of an experiment skips compiling.",
)
flags.mark_flags_as_required(["config"])


def _fail(message: str, status: int = 1):
    """Print ``message`` as a user error and exit (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _experiment_path(argv: list[str]) -> str | None:
    """The file part of ``--config FILE[:arg]`` / ``--config=FILE[:arg]`` in ``argv``."""
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":")[0]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1].split(":")[0]
    return None


def _unknown_key_message(error: AttributeError, argv: list[str]) -> str:
    """ml_collections' unknown-key error as ``--config.a.b=...: no key ...``, with its
    "Did you mean" line last."""
    lines = str(error).strip("'\"").encode().decode("unicode_escape").split("\n")
    key = lines[0].strip("'\"")
    override = next((a for a in argv if a.startswith("--config.") and re.search(rf"\.{re.escape(key)}(=|$)", a)), None)
    where = f"{override}: " if override else ""
    return "\n".join([f"{where}unknown config key {key!r}", *lines[1:]])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a user's mistakes reported in one message instead of a traceback."""
    path = _experiment_path(argv)
    if path is not None and not os.path.isfile(path):
        _fail(f"no experiment file {path}", 2)
    try:
        return FLAGS(argv)
    except AttributeError as error:  # an override of a key the config does not have
        _fail(_unknown_key_message(error, argv), 2)
    except flags.Error as error:
        message = str(error)
        flag, _, details = message.partition(": Error whilst parsing config file")
        if details:  # get_config(arg) raised: keep the exception line of its traceback
            message = f"{flag}: {details.strip().splitlines()[-1].strip()}"
        _fail(message, 2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        _run()
    except UserError as error:
        if FLAGS.verbosity >= 1:
            raise
        _fail(str(error))


def _run():
    if not FLAGS["verbosity"].present:
        # Some libraries raise absl's verbosity to INFO on import, and Orbax then logs every
        # step of every save.
        logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    # XLA reads its flags when JAX starts its first backend, which nothing imported above
    # does: set XLA:CPU's fusions and XLA:GPU's flags now, before any array exists (each
    # backend reads only its own; each checks its own key). validate() builds the model
    # family (its tables are arrays), so it comes after them and after the distributed
    # start, which must also precede any computation.
    use_cpu_fusions(config.runtime.xla_cpu_ynn_fusions)
    use_gpu_flags(config.runtime.xla_gpu_flags)
    if FLAGS.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", FLAGS.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    mesh.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                                force=FLAGS.distributed)
    validate(config)  # the one validation of a run's config
    # JAX's backend is known from here on (asking starts it): refuse what it cannot run
    # (cuDNN attention off a GPU) before any model is built or compiled.
    validate_backend(config, jax.default_backend())
    experiment = load_experiment(config_flags.get_config_filename(FLAGS["config"]))
    recipe = build_recipe(experiment, config)
    if FLAGS.mode == "import" and FLAGS.dry_run:
        read_pretrained(config, recipe.num_classes)  # the file is read and checked; nothing is written
    if FLAGS.dry_run:
        print(parameter_table(recipe.model, recipe.input_shape))
        return
    if not FLAGS.workdir:
        raise app.UsageError(f"--workdir is required to {FLAGS.mode}")
    if FLAGS.mode == "eval":
        evaluate(config, FLAGS.workdir, recipe)
    elif FLAGS.mode == "sample":
        print(f"wrote {generate(config, FLAGS.workdir, recipe)['npz']}")
    elif FLAGS.mode == "import":
        print(f"wrote {import_pretrained(config, FLAGS.workdir, recipe)}")
    else:
        train_and_evaluate(config, FLAGS.workdir, recipe)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
