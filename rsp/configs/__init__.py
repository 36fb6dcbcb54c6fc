"""ml_collections configs, one file per experiment; ``get_config(arg)`` in each.

Pass them to the scripts as ``--config=rsp/configs/FILE.py:ARG`` and override fields with
``--config.FIELD=VALUE``. Every file has a paper-scale default and ``small`` (this 2-core
CPU, minutes) and ``tiny`` (tests, seconds) modes.
"""
