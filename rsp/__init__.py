"""rsp: data poisoning against randomized-smoothing certificates, in JAX.

Submodules (import what you need; each is importable on its own):

* ``rsp.data``: datasets, paper splits, batching by key, poison files.
* ``rsp.models``: flax.linen classifiers and their registry.
* ``rsp.robust_training``: the victim's training losses (standard, gaussian, macer,
  smoothadv).
* ``rsp.train``: ``train_and_evaluate(config, workdir)``.
* ``rsp.smoothing``: Monte Carlo PREDICT / CERTIFY (Cohen et al. 2019).
* ``rsp.metrics``: ACR, certified accuracy, intervals, paired statistics, row arithmetic.
* ``rsp.workdir``: the run record (atomic JSON/text writes, the settings check).
* ``rsp.bilevel``: implicit and unrolled hypergradients.
* ``rsp.attack``: PACD (Mehra et al. 2021).
* ``rsp.baselines``: the random and no-target poison sets PACD is compared with.
* ``rsp.protocol``: the whole evaluation protocol; ``rsp.report``, ``rsp.plotting``: its
  results.md, figures and machine record.
* ``rsp.runtime``: process-wide speed settings (the allocator, the compilation cache).

Importing rsp keeps large freed blocks in glibc's heap (``rsp.runtime.keep_freed_memory``:
XLA CPU then runs about 1.3x faster); ``RSP_KEEP_FREED_MEMORY=0`` turns that off.
"""

from rsp import runtime as _runtime
from rsp.version import __version__

_runtime.apply_defaults()
