"""Training a (robust) classifier: state, step, evaluation and the resumable loop.

``train_and_evaluate(config, workdir)`` loads the data the config names (optionally with a
poison file applied), trains with the config's method and writes everything to
``workdir``:

* ``config.json``: the resolved config, written first;
* ``metrics.jsonl``: one JSON line per logged step (loss, accuracy, images/s) and per
  evaluation (clean accuracy overall and per class);
* ``checkpoints/``: orbax checkpoints at epoch ends; a run restarted with the same
  workdir resumes from the last one and ends with exactly the weights of an
  uninterrupted run (batches and noise come from ``fold_in(key, epoch | step)``);
* ``summary.json``: final clean test accuracy overall, per class and on
  ``config.target_class``; training time and images/s; number of parameters.

A workdir holds one run: restarting with a config that differs in anything but
``num_epochs`` and the logging/evaluation fields raises ``ValueError``. Runs alike in one
process (victims on clean and poisoned data) share one compiled step.

The step is data parallel over all local devices: the batch is sharded along a
``'data'`` mesh axis and the state replicated (``jax.sharding``); XLA inserts the
gradient all-reduce. BatchNorm statistics are computed over the global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
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
from rsp import metrics as metrics_lib
from rsp import models
from rsp import robust_training
from rsp import validation


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
  robust_training.get_loss(config.method, **dict(config.loss))
  validation.check_ints('config.', config, ('batch_size', 'num_epochs', 'eval_batch_size'))
  if config.learning_rate <= 0:
    raise ValueError(f'config.learning_rate={config.learning_rate} must be > 0.')
  validation.check_choice('config.optimizer', config.optimizer, _OPTIMIZERS)
  subset = config.get('train_subset', 0)
  validation.check_int('config.train_subset', subset, 0,
                       meaning='0: the whole training split')
  if subset and subset < config.batch_size:
    raise ValueError(f'config.train_subset={subset} is smaller than config.batch_size='
                     f'{config.batch_size}: not one batch.')
  n_dev = jax.local_device_count()
  if config.batch_size % n_dev:
    raise ValueError(f'config.batch_size={config.batch_size} must be divisible by the '
                     f'number of local devices ({n_dev}) for data-parallel training.')


_OPTIMIZERS = {
    'adam': lambda c: optax.adam(c.learning_rate),
    'sgd': lambda c: optax.sgd(c.learning_rate, momentum=c.get('momentum', 0.9),
                               nesterov=False),
}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The config's optimiser (constant learning rate, as in the paper's code)."""
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


def random_crop_flip(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Pad-``pad`` random crop and random horizontal flip, independently per image.

  (The reference code draws one crop offset for the whole batch, SPEC.md G.2; per-image
  offsets are the standard augmentation of the papers it follows.)
  """
  b, h, w, _ = images.shape
  k_off, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b,))
  return jnp.where(flip[:, None, None, None], cropped[:, :, ::-1], cropped)


def smoothadv_epsilon(epoch: int, epsilon: float, warmup_epochs: int) -> float:
  """SmoothAdv's linear warm-up: ``eps * min(1, epoch / warmup)`` (epoch 0 is clean)."""
  if warmup_epochs <= 0:
    return float(epsilon)
  return float(epsilon) * min(1.0, epoch / warmup_epochs)


def make_train_step(loss_fn: Callable[..., Any], train_apply_fn,
                    tx: optax.GradientTransformation, *, augment: bool = False,
                    dynamic_hparams: tuple[str, ...] = (), donate: bool = False):
  """A jitted ``step(state, batch, key, hparams) -> (state, metrics)``.

  ``hparams`` is a dict of traced scalars named in ``dynamic_hparams`` (e.g. SmoothAdv's
  warm-up epsilon) so that changing them does not recompile. With ``donate`` the input
  state's buffers are reused for the output (the caller must not touch the old state).
  """

  @functools.partial(jax.jit, donate_argnums=(0,) if donate else ())
  def step(state: TrainState, batch, key, hparams):
    k_aug, k_loss = jax.random.split(key)
    images = batch['image']
    if augment:
      images = random_crop_flip(k_aug, images)
    batch = {'image': images, 'label': batch['label']}
    kwargs = {k: hparams[k] for k in dynamic_hparams}

    def objective(params):
      return loss_fn(params, state.model_state, batch, k_loss, apply_fn=train_apply_fn,
                     **kwargs)

    (loss, (model_state, metrics)), grads = jax.value_and_grad(
        objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=_global_norm(grads))
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
  if isinstance(x, Mapping):
    return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
  if isinstance(x, (list, tuple)):
    return tuple(_hashable(v) for v in x)
  return x


def _optimizer_spec(config: ml_collections.ConfigDict) -> tuple:
  return _hashable({k: config.get(k) for k in _OPTIMIZER_FIELDS})


@functools.lru_cache(maxsize=16)
def _optimizer(spec: tuple) -> optax.GradientTransformation:
  """One optimiser object per setting, so that jitted functions taking it as a static
  argument (the state's initialisation) compile once."""
  return make_optimizer(ml_collections.ConfigDict({k: v for k, v in spec if v is not None}))


@functools.lru_cache(maxsize=16)
def _train_step(model, method: str, hparams: tuple, tx: optax.GradientTransformation,
                augment: bool, dynamic: tuple[str, ...]):
  """The jitted step of one training setup, built once per process: training several
  models alike (victims on clean and poisoned data, a resumed run) compiles once."""
  loss_fn = robust_training.get_loss(method, **dict(hparams))
  return make_train_step(loss_fn, models.make_train_apply_fn(model), tx, augment=augment,
                         dynamic_hparams=dynamic, donate=True)


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


def _trim_metrics(path: str, last_step: int) -> None:
  """Drops metric lines logged after the checkpoint a resumed run restarts from (and a
  line cut short by a kill), so that the resumed run logs every step exactly once."""
  if not os.path.exists(path):
    return
  records = metrics_lib.read_json_lines(path)
  keep = [r for r in records if r.get('step', 0) <= last_step]
  with open(path) as f:
    unchanged = len(keep) == len(records) and f.read().endswith('\n')
  if not unchanged or os.path.getsize(path) == 0:
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r, sort_keys=True) + '\n' for r in keep)
    os.replace(tmp, path)


# Config fields a resumed run may change: they do not alter the trained weights.
_RESUMABLE_CHANGES = ('num_epochs', 'log_every_steps', 'eval_every_epochs',
                      'eval_batch_size', 'target_class', 'data_dir')


def _check_same_run(config: ml_collections.ConfigDict, path: str) -> None:
  """Raises ValueError if ``path`` records a run with other training settings."""
  if not os.path.isfile(path):
    return
  old = metrics_lib.read_json(path)
  new = json.loads(json.dumps(config.to_dict(), default=metrics_lib._jsonable))  # pylint: disable=protected-access
  differ = sorted(k for k in set(old) | set(new)
                  if k not in _RESUMABLE_CHANGES and old.get(k) != new.get(k))
  if differ:
    raise ValueError(
        f'{path} records a run with other settings ({", ".join(differ)}: '
        f'{[old.get(k) for k in differ]} there, {[new.get(k) for k in differ]} now); '
        'resuming would mix two runs. Use another workdir.')


def train(config: ml_collections.ConfigDict, splits: Mapping[str, Mapping[str, np.ndarray]],
          workdir: str) -> TrainedModel:
  """Trains the config's model and method on ``splits['train']``, resumably.

  Args:
    config: a training config (see ``rsp/configs/train_mnist.py``).
    splits: ``{'train': ds, 'test': ds}`` (``'val'`` unused); the train split may hold
      poisons.
    workdir: where config, metrics, checkpoints and summary go. If it holds a
      checkpoint of the same run (same config up to ``num_epochs`` and logging), training
      resumes from it.

  Returns:
    The trained model, its evaluation-mode ``apply_fn`` and the summary.

  Raises:
    ValueError: a bad config or split, or a workdir holding another run; raised before
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
  config_path = os.path.join(workdir, 'config.json')
  _check_same_run(config, config_path)
  os.makedirs(workdir, exist_ok=True)
  metrics_lib.write_json_atomic(config_path, config.to_dict())

  model = models.get_model(config.model, num_classes, **dict(config.get('model_kwargs', {})))
  dynamic = ('epsilon',) if config.method == 'smoothadv' else ()
  static_hparams = {k: v for k, v in dict(config.loss).items() if k not in dynamic}
  tx = _optimizer(_optimizer_spec(config))
  step_fn = _train_step(model, config.method, _hashable(static_hparams), tx,
                        bool(config.get('augment', False)), dynamic)

  root = jax.random.key(config.seed)
  init_key, data_key, noise_key = (jax.random.fold_in(root, i) for i in range(3))
  batch_sharding, replicated = _data_sharding()
  state = _init_state(init_key, model, tx, info['shape'], replicated)

  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  steps_per_epoch = data_lib.num_batches(n_train, config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs
  eval_every = config.get('eval_every_epochs', 0)
  log_every = max(1, config.get('log_every_steps', 50))
  with checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    state, meta = ckpt.restore_or_init(state, {'epoch': 0, 'train_seconds': 0.0})
    state = jax.device_put(state, replicated)
    start_epoch = int(meta['epoch'])
    train_seconds = float(meta['train_seconds'])
    step = int(state.step)  # Tracked on the host: reading state.step would sync.
    _trim_metrics(metrics_path, step)
    if start_epoch:
      logging.info('Resuming from epoch %d (step %d) in %s.', start_epoch, step, workdir)
    if start_epoch > config.num_epochs:
      logging.warning('%s holds a run of %d epochs; config.num_epochs=%d trains no more.',
                      workdir, start_epoch, config.num_epochs)
    with metrics_lib.MetricWriter(metrics_path) as writer:
      for epoch in range(start_epoch, config.num_epochs):
        t_epoch = t_log = time.time()
        step_log = step
        hparams = {}
        if config.method == 'smoothadv':
          hparams['epsilon'] = jnp.float32(smoothadv_epsilon(
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
  metrics_lib.write_json_atomic(os.path.join(workdir, 'summary.json'), summary)
  logging.info('Done: test accuracy %.4f after %.0f s of training.', ev['accuracy'],
               train_seconds)
  return TrainedModel(model=model, variables=variables, apply_fn=apply_fn,
                      config=config, num_classes=num_classes, summary=summary)


def load_splits(config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
  """The config's data set, with ``config.poison_file`` applied to train if set, then
  ``config.train_subset`` training points kept (drawn by ``config.data_seed``) if > 0."""
  kwargs = {}
  if config.get('data_dir'):
    kwargs['data_dir'] = config.data_dir
  splits = data_lib.load(config.dataset, seed=config.get('data_seed', 0), **kwargs)
  if config.get('poison_file'):
    poison = data_lib.load_poisons(config.poison_file, train=splits['train'])
    splits['train'] = data_lib.apply_poison(splits['train'], poison['indices'],
                                            poison['poisons'])
  if config.get('train_subset', 0):  # After poisoning: indices refer to the full split.
    idx = data_lib.seeded_subset_indices(len(splits['train']['label']),
                                         config.train_subset, config.get('data_seed', 0))
    splits['train'] = data_lib.subset(splits['train'], idx)
  return splits


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainedModel:
  """Loads the config's data, trains, evaluates; see the module docstring."""
  validate_config(config)
  return train(config, load_splits(config), workdir)


def load_trained(workdir: str) -> TrainedModel:
  """The model a finished (or interrupted) ``train`` run left in ``workdir``."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ValueError(f'workdir={workdir!r} holds no config.json: not a training run.')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  info = data_lib.info(config.dataset)
  model = models.get_model(config.model, info['num_classes'],
                           **dict(config.get('model_kwargs', {})))
  like = _init_state(jax.random.key(0), model, _optimizer(_optimizer_spec(config)),
                     info['shape'])
  with checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints')) as ckpt:
    if ckpt.latest_step() is None:
      raise ValueError(f'workdir={workdir!r} holds no checkpoint yet.')
    state, _ = ckpt.restore(ckpt.latest_step(), like)
  summary = {}
  if os.path.isfile(os.path.join(workdir, 'summary.json')):
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
  variables = jax.device_get(models.merge_variables(state.params, state.model_state))
  return TrainedModel(model=model, variables=variables, apply_fn=models.make_apply_fn(model),
                      config=config, num_classes=info['num_classes'], summary=summary)
