"""Training: the state, the compiled step, the loop."""

from diffjax.train.loop import NonFiniteLossError, abstract_train_state, train_and_evaluate
from diffjax.train.state import TrainState
from diffjax.train.step import make_train_step, train_step

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "abstract_train_state",
    "make_train_step",
    "train_and_evaluate",
    "train_step",
]
