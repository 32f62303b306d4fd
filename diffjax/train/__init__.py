"""Training: the state, the compiled step, the loop."""

from diffjax.train.loop import NonFiniteLossError, abstract_train_state, train_and_evaluate
from diffjax.train.recipe import Diffusion, Recipe, diffusion_from_config
from diffjax.train.state import TrainState
from diffjax.train.step import make_train_step, train_step

__all__ = [
    "Diffusion",
    "NonFiniteLossError",
    "Recipe",
    "TrainState",
    "abstract_train_state",
    "diffusion_from_config",
    "make_train_step",
    "train_and_evaluate",
    "train_step",
]
