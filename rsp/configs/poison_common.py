"""Shared fields of the PACD attack configs (SPEC.md sections B and C)."""

from __future__ import annotations

import ml_collections

from rsp.configs import train_common

METHODS = ('gaussian', 'macer', 'smoothadv')
MODES = ('paper', 'small', 'tiny')


def parse_arg(arg: str | None) -> tuple[str, str]:
  """``'macer,small'`` -> ``('macer', 'small')``; defaults gaussian, paper."""
  return train_common.parse_arg(arg, 'gaussian', METHODS, MODES)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist'
  c.data_dir = ''
  c.data_seed = 0
  c.seed = 0
  c.model = 'lenet'          # The surrogate (the paper: the victim's architecture).
  c.model_kwargs = ml_collections.ConfigDict()
  c.target_class = 8
  c.eps = 0.1                # L-inf budget of the poisons.
  a = c.attack = ml_collections.ConfigDict()
  a.method = 'gaussian'      # The victim's training method the attack targets.
  a.sigma = 0.5              # Noise level of the outer surrogate.
  a.inner = ml_collections.ConfigDict()  # Hyperparameters of the inner training loss.
  a.outer_num_noise = 20     # k noise draws of the outer soft smoothed classifier.
  a.beta = 16.0
  a.alpha = 1e-3
  a.augment = False          # Crop+flip of clean and validation batches (CIFAR).
  a.mode = 'implicit'        # 'implicit' (paper) or 'unrolled'.
  a.solver = 'approxgrad'    # Linear solver of the implicit hypergradient.
  a.damping = 1e-3           # The paper's sig.
  a.inner_steps = 10         # niter1 (implicit) or unrolled steps K.
  a.solver_steps = 10        # niter2.
  a.lr_v = 1e-3              # Inner Adam.
  a.lr_p = 1e-2              # ApproxGrad's Adam on the residual (or Neumann step).
  a.lr_u = 0.1               # Poisons' optimiser.
  a.poison_optimizer = 'adam'
  a.clean_batch_size = 900   # B_c
  a.poison_batch_size = 100  # B_p
  a.val_batch_size = 100     # B_v
  a.num_epochs = 50
  a.steps_per_epoch = 0      # 0: floor(|D_c| / B_c), the reference's epoch.
  a.reinit_every_epochs = 10
  a.remat = False
  # Unroll the solver's iterations / the unrolled mode's inner steps when tracing: on
  # XLA CPU rolled loops of convolutional second-order work ran 4-14x slower
  # (benchmarks/hypergrad.py); compile time grows with the count. Same numbers either way.
  a.unroll = True
  a.log_every_steps = 10
  a.checkpoint_every_steps = 0  # 0: every epoch.
  return c
