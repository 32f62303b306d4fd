"""The driver: pairs configs with functions. The base config and its validation
(``config``), experiment files (``experiments``), recipes built from a config
(``recipes``), the entry points of ``launch.py`` (``train``, ``evaluate``, ``sample``) and
run comparison reports (``compare``). The only layer that reads a config."""
