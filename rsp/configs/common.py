"""What the config files share: their argument, the base configs and the tiny mode.

Every file's ``get_config(arg)`` reads its argument with ``parse_arg`` (``METHOD[,MODE]``:
the training and attack configs) or ``parse_mode`` (``MODE``: the certification and
protocol configs), starts from ``train_base_config`` or ``attack_base_config`` where it
is a training or attack config, and shrinks its ``tiny`` mode with ``shrink_to_tiny``.
"""

from __future__ import annotations

import ml_collections

from rsp import robust_training

# paper: the paper's scale (a GPU); small: minutes on a 2-core CPU; tiny: seconds, tests.
MODES = ('paper', 'small', 'tiny')
# The modes of the protocols on the embedded MNIST data; the paper-scale protocols are
# files of their own, with the single mode 'paper'.
CPU_MODES = ('small', 'tiny')
# Training methods of the victims: standard, gaussian, macer, smoothadv.
TRAIN_METHODS = robust_training.METHODS
# Training methods an attack crafts its poisons against: those with certificates.
ATTACK_METHODS = tuple(m for m in TRAIN_METHODS if m != 'standard')


def parse_arg(arg: str | None, *, methods: tuple[str, ...],
              modes: tuple[str, ...] = MODES, default_method: str = 'gaussian',
              default_mode: str = 'paper') -> tuple[str, str]:
  """Reads a ``METHOD[,MODE]`` config argument (``MODE`` alone takes the default method).

  ``'macer,small'`` -> ``('macer', 'small')``, ``'tiny'`` -> ``('gaussian', 'tiny')``,
  ``None`` or ``''`` -> ``(default_method, default_mode)``.

  Args:
    arg: the text after the colon of ``--config=FILE.py:ARG`` (None if there is none).
    methods: the accepted methods.
    modes: the accepted modes.
    default_method: the method if ``arg`` names none.
    default_mode: the mode if ``arg`` names none.

  Returns:
    ``(method, mode)``.

  Raises:
    ValueError: naming ``arg`` and the accepted choices, if a part of ``arg`` is neither
      a method nor a mode, or ``arg`` names two methods or two modes.
  """
  method = mode = None
  for part in filter(None, (p.strip() for p in (arg or '').split(','))):
    if part in methods and method is None:
      method = part
    elif part in modes and mode is None:
      mode = part
    else:
      kind = 'method' if part in methods else 'mode' if part in modes else ''
      problem = (f'names a second {kind}' if kind else
                 f'has {part!r}, neither a method nor a mode')
      raise ValueError(f'config argument {arg!r} {problem}; accepted: METHOD[,MODE] with '
                       f'METHOD in {", ".join(methods)} and MODE in {", ".join(modes)}.')
  return method or default_method, mode or default_mode


def parse_mode(arg: str | None, *, modes: tuple[str, ...] = MODES,
               default: str = 'paper') -> str:
  """Reads a ``MODE`` config argument: ``'tiny'`` -> ``'tiny'``, None or '' -> ``default``.

  Args:
    arg: the text after the colon of ``--config=FILE.py:ARG`` (None if there is none).
    modes: the accepted modes.
    default: the mode if ``arg`` is empty.

  Returns:
    The mode.

  Raises:
    ValueError: naming ``arg`` and the accepted modes, if ``arg`` is not one of them.
  """
  mode = (arg or '').strip() or default
  if mode not in modes:
    raise ValueError(f'config argument {arg!r} is not a mode; accepted: '
                     f'{", ".join(modes)}.')
  return mode


def train_base_config() -> ml_collections.ConfigDict:
  """Fields every training config has (the dataset files overwrite the values)."""
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
  c.checkpoint_every_epochs = 1  # And at the end; may change on resume.
  c.poison_file = ''       # Train on the training set with these poisons applied.
  c.target_class = 8       # Reported separately (target-class clean accuracy).
  # Training-time defenses against poisoning (rsp.train's docstring); all off here.
  c.mixup_alpha = 0.0      # > 0: mixup, lam ~ Beta(alpha, alpha) (standard, gaussian).
  c.dp_sgd = ml_collections.ConfigDict()  # DP-SGD; needs optimizer 'sgd'.
  c.dp_sgd.enabled = False
  c.dp_sgd.l2_norm_clip = 1.0       # C: per-example gradients clipped to L2 norm C.
  c.dp_sgd.noise_multiplier = 1.0   # Noise N(0, (multiplier C)^2) on the clipped sum.
  c.purify = ml_collections.ConfigDict()  # The training images, once before training.
  c.purify.kind = 'none'   # 'none', 'bit_depth', 'blur' or 'jpeg'.
  c.purify.bits = 4        # bit_depth: levels 2^bits (1..8).
  c.purify.sigma = 1.0     # blur: Gaussian standard deviation in pixels (> 0).
  c.purify.quality = 75    # jpeg: Pillow quality (1..100).
  return c


def attack_base_config() -> ml_collections.ConfigDict:
  """Fields every PACD attack config has (the dataset files overwrite the values).

  The three learning rates are the paper's: ``poison_learning_rate`` of the poisons u
  (the outer variable), ``inner_learning_rate`` of the surrogate's weights v (the inner
  variable) and ``solver_learning_rate`` of ApproxGrad's p, the solution of the linear
  system of the implicit hypergradient.
  """
  c = ml_collections.ConfigDict()
  c.dataset = 'mnist'
  c.data_dir = ''
  c.data_seed = 0
  c.seed = 0
  c.model = 'lenet'          # The surrogate (the paper: the victim's architecture).
  c.model_kwargs = ml_collections.ConfigDict()
  c.target_class = 8
  c.eps = 0.1                # L-inf budget of the poisons.
  c.poison_fraction = 1.0    # Poison this fraction of the class's images, in (0, 1].
  c.poison_subset_seed = 0   # Seeds which images a fraction < 1 poisons.
  a = c.attack = ml_collections.ConfigDict()
  a.method = 'gaussian'      # The victim's training method the attack targets.
  a.inner_method = ''        # The surrogate's training method ('': a.method).
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
  a.inner_learning_rate = 1e-3   # v: the inner Adam on the surrogate's weights.
  a.solver_learning_rate = 1e-2  # p: ApproxGrad's Adam on the residual (or Neumann step).
  a.poison_learning_rate = 0.1   # u: the poisons' optimiser.
  a.poison_optimizer = 'adam'
  a.clean_batch_size = 900   # B_c
  a.poison_batch_size = 100  # B_p
  a.val_batch_size = 100     # B_v
  a.num_epochs = 50
  a.steps_per_epoch = 0      # 0: floor(|D_c| / B_c), the reference's epoch.
  a.reinit_every_epochs = 10
  # Surrogates trained side by side, each re-initialised every reinit_every_epochs with
  # staggered offsets; the poisons follow their mean hypergradient (K times the cost).
  a.num_surrogates = 1
  # Epochs a fresh surrogate first trains on the current training set (clean points and
  # the poisons as they are, labels unchanged) before the outer steps resume: the poisons
  # then meet a surrogate as far into training as the victim's end (0: from scratch).
  a.pretrain_epochs = 0
  a.remat = False
  # Unroll the solver's iterations / the unrolled mode's inner steps when tracing: on
  # XLA CPU rolled loops of convolutional second-order work ran 4-14x slower
  # (benchmarks/hypergrad.py); compile time grows with the count. Same numbers either way.
  a.unroll = True
  a.log_every_steps = 10
  a.checkpoint_every_steps = 0  # 0: every epoch.
  return c


# The tiny mode of each kind of config: a few steps on a few points. The values are the
# MNIST files'; a file whose data or model needs others sets them after
# ``shrink_to_tiny``.
_TINY_TRAIN = dict(num_epochs=2, batch_size=16, train_subset=64, eval_batch_size=256,
                   log_every_steps=1)
_TINY_ATTACK = dict(clean_batch_size=16, poison_batch_size=4, val_batch_size=4,
                    outer_num_noise=2, solver_steps=2, num_epochs=2, steps_per_epoch=2,
                    reinit_every_epochs=1, log_every_steps=1)
_TINY_CERTIFY = dict(num_points=4, n0=16, n=64, batch_size=64)
# Protocol victims are larger than the training configs' tiny ones: 800 training points
# (about 80 of the target class, drawn after poisoning) at a larger learning rate give
# victims that certify some points.
_TINY_VICTIM = dict(train_subset=800, batch_size=100, num_epochs=1, learning_rate=3e-3,
                    log_every_steps=4)


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config in place to its ``tiny`` mode: seconds of work, for tests.

  What it shrinks depends on the kind of config:

  * training (``rsp/configs/train_*.py``): 2 epochs of batches of 16 from a subset of 64
    training points, at most 2 noise draws per point (MACER), a SmoothAdv warm-up of at
    most 1 epoch, every step logged;
  * attack (``poison_*.py``): 2 epochs of 2 outer steps on batches of 16 clean points,
    4 poisons and 4 validation points, k = 2, at most 2 inner steps (SmoothAdv keeps its
    single one) and 2 solver steps, the surrogate re-initialised every epoch, every step
    logged;
  * certification (``certify.py``): 4 points, N0 = 16, N = 64;
  * protocol (``protocol*.py``): each victim (and DPA's base classifiers) 1 epoch on
    800 training points, batches of 100, learning rate 3e-3; 4 figure images. Its
    nested attack, victim and certification configs are expected to be tiny already
    (their files' tiny modes).

  Args:
    config: a config of one of the kinds above.

  Raises:
    ValueError: if ``config`` is of none of these kinds.
  """
  if 'victims' in config:
    for victim in config.victims.values():
      victim.update(_TINY_VICTIM)
    if 'dpa_victim' in config:
      config.dpa_victim.update(_TINY_VICTIM)
      config.dpa_victim.checkpoint_every_epochs = config.dpa_victim.num_epochs
    config.num_figure_images = 4
  elif 'attack' in config:
    a = config.attack
    a.update(_TINY_ATTACK)
    a.inner_steps = min(a.inner_steps, 2)
  elif 'loss' in config:
    config.update(_TINY_TRAIN)
    if 'num_noise' in config.loss:
      config.loss.num_noise = min(config.loss.num_noise, 2)  # MACER's k.
    config.smoothadv_warmup_epochs = min(config.smoothadv_warmup_epochs, 1)
  elif 'n0' in config:
    config.update(_TINY_CERTIFY)
  else:
    raise ValueError(f'config with fields {sorted(config)} is not a training, attack, '
                     'certification or protocol config; shrink_to_tiny accepts those.')

