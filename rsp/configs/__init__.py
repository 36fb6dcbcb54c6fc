"""ml_collections configs, one file per experiment; ``get_config(arg)`` in each.

Pass them to the scripts as ``--config=rsp/configs/FILE.py:ARG`` and override fields with
``--config.FIELD=VALUE``. ARG is ``METHOD[,MODE]`` (training and attack configs) or
``MODE`` (certification and protocol configs); the modes are ``paper`` (the paper's
scale, a GPU), ``small`` (minutes on a 2-core CPU) and ``tiny`` (seconds, for tests), as
each file's docstring lists. ``common.py`` holds what the files share.
"""
