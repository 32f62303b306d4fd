"""Metrics only: the NLL bound over a split (``nll``), FID and Inception Score with the FID
Inception-v3 (``fid``, ``inception``), Fréchet distances (``frechet``), the digits feature
net (``digits_features``) and 2-D toy metrics (``toy_metrics``). ``diffjax.run.evaluate``
runs them on a checkpoint."""
