"""What training and evaluation both run on: the device mesh and ``jax.distributed``
(``mesh``), Orbax checkpoints (``checkpoint``), XLA:CPU settings (``xla_cpu``), the
``Recipe`` contract between an experiment and the trainer (``recipe``) and compiled
sampling over the mesh (``sampling``)."""
