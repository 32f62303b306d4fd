"""Evaluation: the NLL bound over a split, sampling over devices, Fréchet distances, the
digits feature net, toy-sample metrics and pictures. ``diffjax.train.evaluate`` runs them on
a checkpoint."""
