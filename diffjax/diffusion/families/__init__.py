"""Model families: the contract (``base.Family``), what Gaussian families share (``gaussian``),
guidance of any family's sampler (``guidance``), and the registry ``registry.FAMILIES``.

A family is one class in one module of ``diffjax.diffusion``:

* ``discrete.DiscreteDiffusion`` ("discrete"): DDPM's T-step chain, improved DDPM's options;
* ``continuous.ContinuousDiffusion`` ("continuous"): VP / EDM / VDM processes, any reading of
  the output and any weighting of one per-level loss;
* ``naive.NaiveDiffusion`` ("naive"): pixels replaced by noise, undo one level, iterate;
* ``noisy_classifier.NoisyClassification`` ("classifier"): a noise-conditional classifier that
  guides the others' samplers.

Adding a family is one module and one line in ``registry`` (docs/architecture.md).
"""
