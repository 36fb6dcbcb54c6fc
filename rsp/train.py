"""Training a (robust) classifier: state, step, evaluation and the resumable loop.

``train_and_evaluate(config, workdir)`` loads the data the config names (optionally with a
poison file applied), trains with the config's method and writes everything to
``workdir``:

* ``config.json``: the resolved config, written first;
* ``settings.json``: what a resumed run must match: the config and fingerprints of the
  inputs (the SHA-256 of the poison file and of the training split actually trained on);
* ``metrics.jsonl``: one JSON line per logged step (loss, accuracy, images/s) and per
  evaluation (clean accuracy overall and per class);
* ``checkpoints/``: orbax checkpoints at the end of every
  ``config.checkpoint_every_epochs``-th epoch (default 1) and of the last; a run
  restarted with the same workdir resumes from the newest intact one and ends with
  exactly the weights of an uninterrupted run (batches and noise come from
  ``fold_in(key, epoch | step)``);
* ``summary.json``: final clean test accuracy overall, per class and on
  ``config.target_class``; training time and images/s; number of parameters.

A workdir holds one run: restarting with other settings (anything but the fields of
``RESUMABLE_FIELDS``) or other inputs (a poison file changed under the same path, another
training split) raises ``rsp.workdir.SettingsMismatchError`` (a ``ValueError``) listing
every difference, before any file is written. Runs alike in one process (victims on clean
and poisoned data) share one compiled step.

The step is data parallel over all local devices: the batch is sharded along a
``'data'`` mesh axis and the state replicated (``jax.sharding``); XLA inserts the
gradient all-reduce. BatchNorm statistics are computed over the global batch.

Training-time defenses against poisoning (``rsp.defenses``), each off by default:

* ``config.mixup_alpha > 0``: mixup (Zhang et al. 2018) of every batch with
  ``lam ~ Beta(alpha, alpha)``, trained on the soft labels; the clean images are mixed
  and the method's loss then adds its Gaussian noise to the mixed images, so that the
  victim still trains at the sigma it is certified at (mixing two noisy copies would
  train at ``sigma sqrt(lam^2 + (1 - lam)^2) < sigma``). Methods ``standard`` and
  ``gaussian`` only (MACER and SmoothAdv take integer labels).
* ``config.dp_sgd.enabled``: DP-SGD (Abadi et al. 2016, ``optax.contrib.dpsgd``):
  per-example gradients clipped to ``config.dp_sgd.l2_norm_clip`` and summed, Gaussian
  noise of standard deviation ``noise_multiplier * l2_norm_clip`` added, then an SGD
  step of ``config.learning_rate`` (with ``config.momentum``, default 0.9). Needs
  ``config.optimizer='sgd'``, no weight decay, no mixup and a model without BatchNorm
  statistics. The noise is seeded by ``config.seed`` and lives in the optimiser state,
  so a resumed run ends with the same weights.
* ``config.purify.kind`` in ``'bit_depth'`` (``bits``), ``'blur'`` (``sigma``) or
  ``'jpeg'`` (``quality``): the training images are purified once, before training
  (the test images and the certified points are not).

The settings a resumed run must match leave out a defense that is off
(``recorded_config``), so that workdirs made before these fields existed resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Mapping

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rsp import checkpointing
from rsp import data as data_lib
from rsp import defenses
from rsp import models
from rsp import robust_training
from rsp import validation
from rsp import workdir as workdir_lib


class TrainState(flax.struct.PyTreeNode):
  """Everything that changes during training (a pytree; saved in checkpoints)."""
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any


# ------------------------------------------------------------------------------------
# Configuration checks.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a config that cannot work, before any data is loaded."""
  validation.check_choice('config.dataset', config.dataset, data_lib.DATASETS)
  validation.check_choice('config.model', config.model, models.MODELS)
  validation.check_choice('config.method', config.method, robust_training.METHODS)
  shape = data_lib.info(config.dataset)['shape']
  if tuple(models.input_shape(config.model)) != tuple(shape):
    raise ValueError(f'config.model={config.model!r} takes images of shape '
                     f'{models.input_shape(config.model)}, but config.dataset='
                     f'{config.dataset!r} has images of shape {shape}.')
  robust_training.validate_hparams(config.method, prefix='config.loss.',
                                   **dict(config.loss))
  robust_training.get_loss(config.method, **dict(config.loss))
  validation.check_ints('config.', config, ('batch_size', 'num_epochs', 'eval_batch_size'))
  num_classes = data_lib.info(config.dataset)['num_classes']
  if config.get('target_class') is not None:
    validation.check_int('config.target_class', config.target_class, 0, num_classes - 1,
                         meaning=f'a class of {config.dataset!r}')
  if config.learning_rate <= 0:
    raise ValueError(f'config.learning_rate={config.learning_rate} must be > 0.')
  validation.check_choice('config.optimizer', config.optimizer, _OPTIMIZERS)
  subset = config.get('train_subset', 0)
  validation.check_int('config.train_subset', subset, 0,
                       meaning='0: the whole training split')
  if subset and subset < config.batch_size:
    raise ValueError(f'config.train_subset={subset} is smaller than config.batch_size='
                     f'{config.batch_size}: not one batch.')
  validation.check_int('config.checkpoint_every_epochs',
                       config.get('checkpoint_every_epochs', 1),
                       meaning='a checkpoint every this many epochs, and at the end')
  n_dev = jax.local_device_count()
  if config.batch_size % n_dev:
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the '
                     f'number of local devices ({n_dev}) for data-parallel training.')
  _validate_defenses(config)


# Training methods whose losses take mixup's soft labels.
MIXUP_METHODS = ('standard', 'gaussian')
PURIFY_KINDS = ('none', 'bit_depth', 'blur', 'jpeg')
# The fields of config.dp_sgd and config.purify, and what a config without them means.
DP_SGD_DEFAULTS = {'enabled': False, 'l2_norm_clip': 1.0, 'noise_multiplier': 1.0}
PURIFY_DEFAULTS = {'kind': 'none', 'bits': 4, 'sigma': 1.0, 'quality': 75}


def _nested_fields(config: ml_collections.ConfigDict, field: str,
                   defaults: Mapping[str, Any]) -> dict[str, Any]:
  """``config[field]`` over its defaults; refuses a non-mapping or an unknown field."""
  value = config.get(field)
  if value is None:
    return dict(defaults)
  if not hasattr(value, 'items'):
    raise ValueError(f'config.{field}={value!r} must be a ConfigDict with fields '
                     f'{", ".join(defaults)}.')
  unknown = sorted(set(value) - set(defaults))
  if unknown:
    raise ValueError(f'config.{field} has unknown field(s) {unknown}; accepted: '
                     f'{", ".join(defaults)}.')
  return {**defaults, **dict(value)}


def _finite_number(name: str, value: Any, *, minimum: float, strict: bool,
                   meaning: str = '') -> float:
  x = validation.real_number(value)
  ok = x is not None and math.isfinite(x) and (x > minimum if strict else x >= minimum)
  if not ok:
    suffix = f' ({meaning})' if meaning else ''
    raise ValueError(f'{name}={value!r} must be a finite number '
                     f'{">" if strict else ">="} {minimum:g}{suffix}.')
  return x


def mixup_alpha(config: ml_collections.ConfigDict) -> float:
  """``config.mixup_alpha`` (0.0 if the config has no such field: no mixup)."""
  return float(config.get('mixup_alpha', 0.0) or 0.0)


def dp_sgd_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.dp_sgd`` over ``DP_SGD_DEFAULTS`` (disabled if absent)."""
  return _nested_fields(config, 'dp_sgd', DP_SGD_DEFAULTS)


def purify_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.purify`` over ``PURIFY_DEFAULTS`` (kind ``'none'`` if absent)."""
  return _nested_fields(config, 'purify', PURIFY_DEFAULTS)


def _validate_defenses(config: ml_collections.ConfigDict) -> None:
  """The training-time defenses' fields (module docstring), before any work."""
  alpha = _finite_number('config.mixup_alpha', config.get('mixup_alpha', 0.0),
                         minimum=0.0, strict=False, meaning='0: no mixup')
  if alpha > 0 and config.method not in MIXUP_METHODS:
    raise ValueError(f'config.mixup_alpha={alpha!r} (mixup) is accepted with '
                     f'config.method in {", ".join(MIXUP_METHODS)}; config.method='
                     f'{config.method!r} trains on integer labels. Set '
                     'config.mixup_alpha=0.')
  dp = dp_sgd_settings(config)
  if not isinstance(dp['enabled'], bool):
    raise ValueError(f'config.dp_sgd.enabled={dp["enabled"]!r} must be True or False.')
  _finite_number('config.dp_sgd.l2_norm_clip', dp['l2_norm_clip'], minimum=0.0,
                 strict=True)
  _finite_number('config.dp_sgd.noise_multiplier', dp['noise_multiplier'],
                 minimum=0.0, strict=False, meaning='0: clipping only')
  if dp['enabled']:
    if config.optimizer != 'sgd':
      raise ValueError(f'config.dp_sgd.enabled=True trains with DP-SGD (SGD on clipped, '
                       f'noised per-example gradients), but config.optimizer='
                       f"{config.optimizer!r}; set config.optimizer='sgd' "
                       '(config.learning_rate and config.momentum apply to it).')
    if config.get('weight_decay', 0.0):
      raise ValueError(f'config.weight_decay={config.weight_decay!r} with '
                       'config.dp_sgd.enabled=True: DP-SGD takes per-example gradients, '
                       'to which weight decay cannot be added; set it to 0.')
    if alpha > 0:
      raise ValueError(f'config.mixup_alpha={alpha!r} with config.dp_sgd.enabled=True: '
                       'mixup mixes examples, so clipping per example no longer bounds '
                       "one example's influence; use one of the two.")
    model = models.get_model(config.model, data_lib.info(config.dataset)['num_classes'],
                             **dict(config.get('model_kwargs', {})))
    shape = tuple(data_lib.info(config.dataset)['shape'])
    collections = jax.eval_shape(lambda k: models.init_model(k, model, shape),
                                 jax.random.key(0))
    if set(collections) != {'params'}:
      raise ValueError(f'config.dp_sgd.enabled=True with config.model={config.model!r} '
                       f'(model_kwargs {dict(config.get("model_kwargs", {}))}), which '
                       f'keeps {sorted(set(collections) - {"params"})}: BatchNorm mixes '
                       "the examples of a batch; use lenet, wide_cnn, mlp or "
                       "norm='frozen'.")
  purify = purify_settings(config)
  validation.check_choice('config.purify.kind', purify['kind'], PURIFY_KINDS)
  validation.check_int('config.purify.bits', purify['bits'], 1, 8)
  _finite_number('config.purify.sigma', purify['sigma'], minimum=0.0, strict=True)
  validation.check_int('config.purify.quality', purify['quality'], 1, 100)
  channels = data_lib.info(config.dataset)['shape'][-1]
  if purify['kind'] == 'jpeg' and channels not in (1, 3):
    raise ValueError(f"config.purify.kind='jpeg' needs 1 or 3 channels; config.dataset="
                     f'{config.dataset!r} has {channels}.')


def purify_images(config: ml_collections.ConfigDict, images: np.ndarray) -> np.ndarray:
  """The training images purified as ``config.purify`` says (unchanged for 'none')."""
  p = purify_settings(config)
  if p['kind'] == 'bit_depth':
    return defenses.bit_depth_reduce(images, int(p['bits']))
  if p['kind'] == 'blur':
    return defenses.gaussian_blur(images, float(p['sigma']))
  if p['kind'] == 'jpeg':
    return defenses.jpeg_compress(images, int(p['quality']))
  return images


def recorded_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a run records it for the settings check: ``config.to_dict()``
  without the defenses that are off (``mixup_alpha`` 0, ``dp_sgd`` disabled,
  ``purify.kind`` 'none'), whose other fields change no number."""
  d = config.to_dict()
  if not mixup_alpha(config):
    d.pop('mixup_alpha', None)
  if not dp_sgd_settings(config)['enabled']:
    d.pop('dp_sgd', None)
  if purify_settings(config)['kind'] == 'none':
    d.pop('purify', None)
  return d


_OPTIMIZERS = {
    'adam': lambda c: optax.adam(c.learning_rate),
    'sgd': lambda c: optax.sgd(c.learning_rate, momentum=c.get('momentum', 0.9),
                               nesterov=False),
}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The config's optimiser (constant learning rate, as in the paper's code); DP-SGD
  (``rsp.defenses.dp_sgd_optimizer``, seeded by ``config.seed``) if
  ``config.dp_sgd.enabled``: its ``update`` takes per-example gradients."""
  dp = dp_sgd_settings(config)
  if dp['enabled']:
    momentum = config.get('momentum', 0.9)
    return defenses.dp_sgd_optimizer(
        learning_rate=config.learning_rate, l2_norm_clip=float(dp['l2_norm_clip']),
        noise_multiplier=float(dp['noise_multiplier']), seed=int(config.seed),
        momentum=momentum or None)
  tx = _OPTIMIZERS[config.optimizer](config)
  if config.get('weight_decay', 0.0):
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  return tx


# ------------------------------------------------------------------------------------
# Pieces.


def create_train_state(key: jax.Array, model, tx: optax.GradientTransformation,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Step 0: the model's initial variables and the optimiser's initial state."""
  params, model_state = models.split_variables(models.init_model(key, model, image_shape))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    model_state=model_state, opt_state=tx.init(params))


# Compiled (op by op, a ResNet's init costs seconds) once per model, optimiser and shape.
_create_train_state_jit = jax.jit(create_train_state, static_argnums=(1, 2, 3))


def _init_state(key, model, tx, image_shape, sharding=None) -> TrainState:
  state = _create_train_state_jit(key, model, tx, tuple(image_shape))
  return state if sharding is None else jax.device_put(state, sharding)


def make_train_step(loss_fn: Callable[..., Any], train_apply_fn,
                    tx: optax.GradientTransformation, *, augment: bool = False,
                    dynamic_hparams: tuple[str, ...] = (), donate: bool = False,
                    mixup_alpha: float = 0.0, num_classes: int | None = None,
                    per_example: bool = False):
  """A jitted ``step(state, batch, key, hparams) -> (state, metrics)``.

  ``hparams`` is a dict of traced scalars named in ``dynamic_hparams`` (e.g. SmoothAdv's
  warm-up epsilon) so that changing them does not recompile. With ``donate`` the input
  state's buffers are reused for the output (the caller must not touch the old state).
  With ``mixup_alpha > 0`` the (augmented) batch is mixed (``rsp.defenses.mixup`` with
  the key ``fold_in(k_aug, 1)``, one-hot labels of ``num_classes``) and the loss gets
  the soft labels. With ``per_example`` the gradients handed to ``tx`` are per example
  (``rsp.defenses.per_example_grads``, for DP-SGD); the model state is not updated
  (models without BatchNorm keep none). ``grad_norm`` is the norm of the mean gradient.
  """
  if mixup_alpha > 0 and not num_classes:
    raise ValueError(f'mixup_alpha={mixup_alpha} needs num_classes; got {num_classes!r}.')

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def step(state: TrainState, batch, key, hparams):
    k_aug, k_loss = jax.random.split(key)
    images = batch['image']
    if augment:
      images = data_lib.random_crop_flip(k_aug, images)
    batch = {'image': images, 'label': batch['label']}
    if mixup_alpha > 0:
      mixed, soft = defenses.mixup(jax.random.fold_in(k_aug, 1), images,
                                   jax.nn.one_hot(batch['label'], num_classes),
                                   alpha=mixup_alpha)
      batch = {'image': mixed, 'label': jnp.argmax(soft, -1), 'soft_label': soft}
    kwargs = {k: hparams[k] for k in dynamic_hparams}

    if per_example:
      # Example i's noise key is split(k_loss, B)[i], as per_example_grads(k_loss) would
      # draw it, handed over inside the batch so that every device computes the
      # gradients of its own examples (shard_map): XLA's SPMD partitioning of the
      # vmapped convolution gradients over a sharded batch gave wrong gradients for the
      # examples off the first device (jax 0.10.2, CPU).
      keys = jax.random.key_data(jax.random.split(k_loss, images.shape[0]))

      def local_grads(params, model_state, local_batch, hp):
        def example_objective(p, example, unused_key):
          del unused_key
          k = jax.random.wrap_key_data(example['noise_key'][0])
          example = {n: v for n, v in example.items() if n != 'noise_key'}
          loss, (_, metrics) = loss_fn(p, model_state, example, k,
                                       apply_fn=train_apply_fn, **hp)
          return loss, metrics

        return defenses.per_example_grads(example_objective, params, local_batch,
                                          jax.random.key(0), has_aux=True)

      mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
      spec, replicated = jax.sharding.PartitionSpec('data'), jax.sharding.PartitionSpec()
      grads, metrics = jax.shard_map(
          local_grads, mesh=mesh, in_specs=(replicated, replicated, spec, replicated),
          out_specs=(spec, spec), check_vma=False)(
              state.params, state.model_state, dict(batch, noise_key=keys), kwargs)
      metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
      model_state = state.model_state
      mean_grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    else:
      def objective(params):
        return loss_fn(params, state.model_state, batch, k_loss,
                       apply_fn=train_apply_fn, **kwargs)

      (_, (model_state, metrics)), grads = jax.value_and_grad(
          objective, has_aux=True)(state.params)
      mean_grads = grads
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=_global_norm(mean_grads))
    return state.replace(step=state.step + 1, params=params, model_state=model_state,
                         opt_state=opt_state), metrics

  return step


def _global_norm(tree) -> jax.Array:
  tree_norm = getattr(getattr(optax, 'tree', None), 'norm', None)  # optax >= 0.2.4
  return tree_norm(tree) if tree_norm else optax.global_norm(tree)


@functools.partial(jax.jit, static_argnums=0)
def _predict_batch(apply_fn, variables, images):
  return jnp.argmax(apply_fn(variables, images), -1)


def predict_labels(apply_fn, variables, images: np.ndarray, *,
                   batch_size: int = 1000) -> np.ndarray:
  """Clean predictions (argmax of the logits) in fixed-size, zero-padded batches."""
  n = len(images)
  size = min(batch_size, n)
  out = np.empty((n,), np.int32)
  for start in range(0, n, size):
    chunk = images[start:start + size]
    m = len(chunk)
    if m < size:  # Pad the tail so that every batch has one shape: one compilation.
      chunk = np.concatenate([chunk, np.zeros((size - m, *chunk.shape[1:]), chunk.dtype)])
    out[start:start + m] = np.asarray(_predict_batch(apply_fn, variables,
                                                     jnp.asarray(chunk)))[:m]
  return out


def evaluate(apply_fn, variables, ds: Mapping[str, np.ndarray], *, num_classes: int,
             batch_size: int = 1000) -> dict[str, Any]:
  """Clean accuracy overall and per class of ``apply_fn(variables, .)`` on ``ds``."""
  pred = predict_labels(apply_fn, variables, np.asarray(ds['image']),
                        batch_size=batch_size)
  labels = np.asarray(ds['label'])
  correct = pred == labels
  per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else None
               for c in range(num_classes)]
  return {'accuracy': float(correct.mean()) if len(correct) else float('nan'),
          'per_class_accuracy': per_class, 'num_examples': int(len(labels))}


_OPTIMIZER_FIELDS = ('optimizer', 'learning_rate', 'momentum', 'weight_decay')


def _hashable(x: Any) -> Any:
  """``x`` as a hashable cache key: mappings and sequences as sorted tuples, 0-d numpy
  and jax scalars (``jnp.float32(0.5)``) as the Python numbers they hold."""
  if isinstance(x, Mapping):
    x = robust_training.plain_hparams(x)
    return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
  if isinstance(x, (list, tuple)):
    return tuple(_hashable(v) for v in x)
  return x


def _optimizer_spec(config: ml_collections.ConfigDict) -> tuple:
  spec = {k: config.get(k) for k in _OPTIMIZER_FIELDS}
  dp = dp_sgd_settings(config)
  if dp['enabled']:  # DP-SGD's noise is seeded by the run's seed.
    spec.update(dp_sgd=dp, seed=config.seed)
  return _hashable(spec)


@functools.lru_cache(maxsize=16)
def _optimizer(spec: tuple) -> optax.GradientTransformation:
  """One optimiser object per setting, so that jitted functions taking it as a static
  argument (the state's initialisation) compile once."""
  fields = {k: (dict(v) if k == 'dp_sgd' else v) for k, v in spec if v is not None}
  return make_optimizer(ml_collections.ConfigDict(fields))


@functools.lru_cache(maxsize=16)
def _train_step(model, method: str, hparams: tuple, tx: optax.GradientTransformation,
                augment: bool, dynamic: tuple[str, ...], mixup: float = 0.0,
                num_classes: int | None = None, per_example: bool = False):
  """The jitted step of one training setup, built once per process: training several
  models alike (victims on clean and poisoned data, a resumed run) compiles once."""
  loss_fn = robust_training.get_loss(method, **dict(hparams))
  return make_train_step(loss_fn, models.make_train_apply_fn(model), tx, augment=augment,
                         dynamic_hparams=dynamic, donate=True, mixup_alpha=mixup,
                         num_classes=num_classes, per_example=per_example)


# ------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class TrainedModel:
  """A trained classifier: what certification and the protocol need."""
  model: Any
  variables: Any
  apply_fn: Callable[[Any, jax.Array], jax.Array]
  config: ml_collections.ConfigDict
  num_classes: int
  summary: dict[str, Any]


def _data_sharding():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  return (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')),
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


# The config fields a resumed run may change (dotted paths into settings.json): they do
# not alter the trained weights. The poison file's path may change because its content is
# fingerprinted (inputs.poison_file), and so may data_dir (inputs.train_data).
RESUMABLE_FIELDS = ('config.num_epochs', 'config.log_every_steps',
                    'config.eval_every_epochs', 'config.eval_batch_size',
                    'config.target_class', 'config.data_dir', 'config.poison_file',
                    'config.checkpoint_every_epochs')


def run_settings(config: ml_collections.ConfigDict,
                 train_ds: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """What a training workdir records in ``settings.json`` and a resumed run must match.

  ``{'config': recorded_config(config), 'inputs': {'poison_file': SHA-256 of the poison
  file (None without one), 'train_data': SHA-256 of the training images and labels
  handed to ``train`` (after poisoning and subsetting, before ``config.purify``)}}``.
  """
  poison_file = config.get('poison_file')
  return {'config': recorded_config(config),
          'inputs': {'poison_file': workdir_lib.file_digest(poison_file)
                                    if poison_file else None,
                     'train_data': workdir_lib.array_digest(train_ds['image'],
                                                            train_ds['label'])}}


def train(config: ml_collections.ConfigDict, splits: Mapping[str, Mapping[str, np.ndarray]],
          workdir: str) -> TrainedModel:
  """Trains the config's model and method on ``splits['train']``, resumably.

  Args:
    config: a training config (see ``rsp/configs/train_mnist.py``).
    splits: ``{'train': ds, 'test': ds}`` (``'val'`` unused); the train split may hold
      poisons.
    workdir: where config, settings, metrics, checkpoints and summary go. If it holds
      a checkpoint of the same run (same settings up to ``RESUMABLE_FIELDS``, same
      inputs), training resumes from the newest intact one.

  Returns:
    The trained model, its evaluation-mode ``apply_fn`` and the summary.

  Raises:
    ValueError: a bad config or split, or a workdir holding another run
      (``rsp.workdir.SettingsMismatchError``) or unusable (``rsp.workdir.WorkdirError``:
      a file where a directory belongs, read-only, a damaged record); raised before
      anything is written.
  """
  validate_config(config)
  info = data_lib.info(config.dataset)
  num_classes = info['num_classes']
  for name in ('train', 'test'):
    if name not in splits:
      raise ValueError(f'splits has no {name!r} split; it has {sorted(splits)}.')
    data_lib.validate(splits[name], name=f'splits[{name!r}]',
                      image_shape=info['shape'], num_classes=num_classes)
  train_ds = splits['train']
  n_train = len(train_ds['label'])
  if n_train < config.batch_size:
    raise ValueError(f'config.batch_size={config.batch_size} exceeds the {n_train} '
                     'training examples.')
  subset = config.get('train_subset', 0)
  if subset and subset > n_train:
    raise ValueError(f'config.train_subset={subset} exceeds the {n_train} training '
                     f'examples; accepted: 1 to {n_train}, or 0 for all of them.')
  settings = run_settings(config, train_ds)
  settings_path = os.path.join(workdir, 'settings.json')
  workdir_lib.check_settings(settings_path, settings, resumable=RESUMABLE_FIELDS,
                             what='training run')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  workdir_lib.ensure_directory(workdir, name='workdir')
  workdir_lib.ensure_directory(ckpt_dir, name='checkpoint directory')
  workdir_lib.write_json(os.path.join(workdir, 'config.json'), config.to_dict())
  workdir_lib.write_json(settings_path, settings)

  model = models.get_model(config.model, num_classes, **dict(config.get('model_kwargs', {})))
  dynamic = ('epsilon',) if config.method == 'smoothadv' else ()
  static_hparams = {k: v for k, v in dict(config.loss).items() if k not in dynamic}
  tx = _optimizer(_optimizer_spec(config))
  dp = dp_sgd_settings(config)
  step_fn = _train_step(model, config.method, _hashable(static_hparams), tx,
                        bool(config.get('augment', False)), dynamic, mixup_alpha(config),
                        num_classes, bool(dp['enabled']))
  if purify_settings(config)['kind'] != 'none':
    train_ds = dict(train_ds, image=purify_images(config, np.asarray(train_ds['image'])))

  root = jax.random.key(config.seed)
  init_key, data_key, noise_key = (jax.random.fold_in(root, i) for i in range(3))
  batch_sharding, replicated = _data_sharding()
  state = _init_state(init_key, model, tx, info['shape'], replicated)

  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  steps_per_epoch = data_lib.num_batches(n_train, config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  eval_every = config.get('eval_every_epochs', 0)
  log_every = max(1, config.get('log_every_steps', 50))
  checkpoint_every = config.get('checkpoint_every_epochs', 1)
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    state, meta = ckpt.restore_or_init(state, {'epoch': 0, 'train_seconds': 0.0})
    state = jax.device_put(state, replicated)
    start_epoch = int(meta['epoch'])
    train_seconds = float(meta['train_seconds'])
    step = int(state.step)  # Tracked on the host: reading state.step would sync.
    workdir_lib.trim_json_lines(metrics_path, step)
    if start_epoch:
      logging.info('Resuming from epoch %d (step %d) in %s.', start_epoch, step, workdir)
    if start_epoch > config.num_epochs:
      logging.warning('%s holds a run of %d epochs; config.num_epochs=%d trains no more.',
                      workdir, start_epoch, config.num_epochs)
    with workdir_lib.JsonLinesWriter(metrics_path) as writer:
      for epoch in range(start_epoch, config.num_epochs):
        t_epoch = t_log = time.time()
        step_log = step
        hparams = {}
        if config.method == 'smoothadv':
          hparams['epsilon'] = jnp.float32(robust_training.smoothadv_warmup_epsilon(
              epoch, config.loss.epsilon, config.get('smoothadv_warmup_epochs', 0)))
        for batch in data_lib.epoch_batches(jax.random.fold_in(data_key, epoch), train_ds,
                                            config.batch_size):
          batch = jax.device_put(batch, batch_sharding)
          state, m = step_fn(state, batch, jax.random.fold_in(noise_key, step), hparams)
          step += 1
          if step % log_every == 0 or step == total_steps:
            m = {k: float(v) for k, v in m.items()}  # Waits for the step.
            if not np.isfinite(m['loss']):
              raise FloatingPointError(f'loss is {m["loss"]} at step {step}; lower '
                                       'config.learning_rate or check the data.')
            now = time.time()
            # The rate of this logging window (the first one includes compiling).
            rate = (step - step_log) * config.batch_size / max(now - t_log, 1e-9)
            left = (total_steps - step) * config.batch_size / max(rate, 1e-9)
            t_log, step_log = now, step
            writer.write_scalars(step, dict(m, epoch=epoch, images_per_second=rate,
                                            seconds_left=left))
            logging.info('step %d/%d epoch %d loss %.4f acc %.3f | %.0f img/s | '
                         '%.0f s left', step, total_steps, epoch, m['loss'],
                         m['accuracy'], rate, left)
        jax.block_until_ready(state)
        train_seconds += time.time() - t_epoch
        last = epoch + 1 == config.num_epochs
        if eval_every and ((epoch + 1) % eval_every == 0) and not last:
          ev = evaluate(models.make_apply_fn(model),
                        models.merge_variables(state.params, state.model_state),
                        splits['test'], num_classes=num_classes,
                        batch_size=config.eval_batch_size)
          writer.write_scalars(step, {'epoch': epoch, 'test_accuracy': ev['accuracy']})
        if last or (epoch + 1) % checkpoint_every == 0:
          ckpt.save(step, state, {'epoch': epoch + 1, 'train_seconds': train_seconds})

  variables = jax.device_get(models.merge_variables(state.params, state.model_state))
  apply_fn = models.make_apply_fn(model)
  ev = evaluate(apply_fn, variables, splits['test'], num_classes=num_classes,
                batch_size=config.eval_batch_size)
  summary = {
      'test_accuracy': ev['accuracy'],
      'per_class_test_accuracy': ev['per_class_accuracy'],
      'num_train_examples': n_train,
      'num_params': models.count_params(state.params),
      'steps': step,
      'train_seconds': train_seconds,
      'images_per_second': step * config.batch_size / max(train_seconds, 1e-9),
      'devices': [str(d) for d in jax.devices()],
  }
  target = config.get('target_class', None)
  if target is not None:
    summary['target_class'] = int(target)
    summary['target_test_accuracy'] = ev['per_class_accuracy'][int(target)]
  workdir_lib.write_json(os.path.join(workdir, 'summary.json'), summary)
  logging.info('Done: test accuracy %.4f after %.0f s of training.', ev['accuracy'],
               train_seconds)
  return TrainedModel(model=model, variables=variables, apply_fn=apply_fn,
                      config=config, num_classes=num_classes, summary=summary)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainedModel:
  """Loads the config's data, trains, evaluates; see the module docstring."""
  validate_config(config)
  return train(config, data_lib.load_splits(config), workdir)


def load_trained(workdir: str) -> TrainedModel:
  """The model a finished (or interrupted) ``train`` run left in ``workdir``.

  Restores the newest intact checkpoint (see ``rsp.checkpointing``).

  Raises:
    ValueError: ``workdir`` holds no training run, a damaged ``config.json`` (named), or
      no checkpoint yet.
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'workdir={workdir!r} holds no config.json: not a training run.')
  config = ml_collections.ConfigDict(workdir_lib.read_json(path))
  info = data_lib.info(config.dataset)
  model = models.get_model(config.model, info['num_classes'],
                           **dict(config.get('model_kwargs', {})))
  like = _init_state(jax.random.key(0), model, _optimizer(_optimizer_spec(config)),
                     info['shape'])
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(ckpt_dir):
    raise ValueError(f'workdir={workdir!r} holds no checkpoint yet.')
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    if ckpt.latest_step() is None:
      raise ValueError(f'workdir={workdir!r} holds no checkpoint yet.')
    state, _ = ckpt.restore_or_init(like)
  summary_path = os.path.join(workdir, 'summary.json')
  summary = workdir_lib.read_json(summary_path) if os.path.isfile(summary_path) else {}
  variables = jax.device_get(models.merge_variables(state.params, state.model_state))
  return TrainedModel(model=model, variables=variables, apply_fn=models.make_apply_fn(model),
                      config=config, num_classes=info['num_classes'], summary=summary)
