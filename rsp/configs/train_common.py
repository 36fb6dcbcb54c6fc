"""Shared parsing and checks of the training configs' ``method[,mode]`` argument."""

from __future__ import annotations

import ml_collections

METHODS = ('standard', 'gaussian', 'macer', 'smoothadv')
MODES = ('paper', 'small', 'tiny')


def parse_arg(arg: str | None, default_method: str = 'gaussian',
              methods: tuple[str, ...] = METHODS,
              modes: tuple[str, ...] = MODES) -> tuple[str, str]:
  """``'macer,small'`` -> ``('macer', 'small')``; missing parts take the defaults.

  Shared by the training and attack configs (which pass their own ``methods``).
  """
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  method, mode = default_method, 'paper'
  for p in parts:
    if p in methods:
      method = p
    elif p in modes:
      mode = p
    else:
      raise ValueError(f'config argument {arg!r}: {p!r} is neither a method '
                       f'({", ".join(methods)}) nor a mode ({", ".join(modes)}).')
  return method, mode


def base_config() -> ml_collections.ConfigDict:
  """Fields every training config has (values are overwritten by the dataset files)."""
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist_embedded'
  c.data_dir = ''          # TFDS data directory ('' = TFDS default).
  c.data_seed = 0          # Seeds the train/val split (and the train subset).
  c.train_subset = 0       # Train on this many training points (0: all of them).
  c.seed = 0               # Seeds initialisation, batch order and noise.
  c.model = 'lenet'
  c.model_kwargs = ml_collections.ConfigDict()
  c.method = 'gaussian'
  c.loss = ml_collections.ConfigDict()  # Keyword hyperparameters of the method's loss.
  c.smoothadv_warmup_epochs = 0
  c.augment = False        # Pad-4 random crop + horizontal flip (CIFAR).
  c.optimizer = 'adam'     # The paper's: Adam, constant lr 1e-3, no weight decay.
  c.learning_rate = 1e-3
  c.weight_decay = 0.0
  c.batch_size = 200
  c.num_epochs = 101
  c.eval_batch_size = 1000
  c.eval_every_epochs = 0  # 0: evaluate at the end only.
  c.log_every_steps = 50
  c.poison_file = ''       # Train on the training set with these poisons applied.
  c.target_class = 8       # Reported separately (target-class clean accuracy).
  return c
