"""Every config file in rsp/configs, in every argument it accepts, passes the library's
own checks; bad arguments raise a ValueError naming them; the shared parser, tiny mode
and loss constants of rsp/configs/common.py. Loads configs only: nothing is trained."""

import importlib
import pkgutil
import re

import ml_collections
import pytest

from rsp import attack
from rsp import cells as cells_lib
from rsp import certification
from rsp import protocol
from rsp import robust_training
from rsp import train
import rsp.configs
from rsp.configs import common
from rsp.configs import poison_mnist

# Every config file: (the methods of its METHOD[,MODE] argument or None for a MODE
# argument, its modes, its default argument).
CONFIGS = {
    'certify': (None, common.MODES, 'paper'),
    'train_mnist': (common.TRAIN_METHODS, common.MODES, 'gaussian,paper'),
    'train_cifar10': (common.TRAIN_METHODS, common.MODES, 'gaussian,paper'),
    'poison_mnist': (common.ATTACK_METHODS, poison_mnist.MODES, 'gaussian,paper'),
    'poison_cifar10': (common.ATTACK_METHODS, common.MODES, 'gaussian,paper'),
    'protocol': (None, common.CPU_MODES, 'small'),
    'protocol_transfer': (None, common.CPU_MODES, 'small'),
    'protocol_sweep': (None, common.CPU_MODES, 'small'),
    'protocol_defenses': (None, common.CPU_MODES, 'small'),
    'protocol_methods': (None, common.CPU_MODES, 'small'),
    'protocol_mnist_paper': (None, ('paper',), 'paper'),
    'protocol_cifar10_paper': (None, ('paper',), 'paper'),
}


def _module(name):
  return importlib.import_module(f'rsp.configs.{name}')


def _args(name):
  methods, modes, _ = CONFIGS[name]
  if methods is None:
    return list(modes)
  return [f'{method},{mode}' for method in methods for mode in modes]


def _validate(name: str, config: ml_collections.ConfigDict) -> None:
  """The check the library runs on this kind of config before any work."""
  if name.startswith('train_'):
    train.validate_config(config)
  elif name.startswith('poison_'):
    attack.validate_config(config)
  elif name.startswith('protocol'):
    protocol.validate_config(config)  # Also checks every nested victim and attack.
  else:
    certification.validate_config(config)


def test_every_config_file_is_listed():
  found = {m.name for m in pkgutil.iter_modules(rsp.configs.__path__)} - {'common'}
  assert found == set(CONFIGS)


@pytest.mark.parametrize('name,arg', [(n, a) for n in CONFIGS for a in _args(n)])
def test_config_is_valid(name, arg):
  config = _module(name).get_config(arg)
  _validate(name, config)
  if CONFIGS[name][0] is not None:
    method = arg.split(',')[0]
    assert (config.method if name.startswith('train_') else config.attack.method) == method


@pytest.mark.parametrize('name', CONFIGS)
def test_default_argument(name):
  module = _module(name)
  default = module.get_config(CONFIGS[name][2]).to_dict()
  assert module.get_config(None).to_dict() == default
  assert module.get_config('').to_dict() == default


def _bad_args(name):
  methods, modes, _ = CONFIGS[name]
  if methods is None:
    return ['huge', 'gaussian', f'{modes[0]},{modes[0]}'] + [
        m for m in common.MODES if m not in modes]
  return ['huge', 'trades,small', 'macer,gaussian', 'small,tiny', f'{methods[0]},fast']


@pytest.mark.parametrize('name,arg', [(n, a) for n in CONFIGS for a in _bad_args(n)])
def test_bad_argument_raises_naming_it(name, arg):
  methods, modes, _ = CONFIGS[name]
  with pytest.raises(ValueError, match=re.escape(f'config argument {arg!r}')) as raised:
    _module(name).get_config(arg)
  message = str(raised.value)
  for choice in modes + (methods or ()):
    assert choice in message  # The accepted choices are listed.


def test_parse_arg():
  parse = lambda arg: common.parse_arg(arg, methods=common.TRAIN_METHODS)
  assert parse('macer,small') == ('macer', 'small')
  assert parse(' macer , tiny ') == ('macer', 'tiny')
  assert parse('tiny,smoothadv') == ('smoothadv', 'tiny')
  assert parse('standard') == ('standard', 'paper')
  assert parse('tiny') == ('gaussian', 'tiny')
  assert parse(None) == parse('') == ('gaussian', 'paper')
  assert common.parse_arg(None, methods=('a', 'b'), modes=('x', 'y'), default_method='b',
                          default_mode='y') == ('b', 'y')
  with pytest.raises(ValueError, match="'fast', neither a method nor a mode"):
    parse('macer,fast')
  with pytest.raises(ValueError, match='second method'):
    parse('macer,gaussian')
  with pytest.raises(ValueError, match='second mode'):
    parse('small,tiny')


def test_parse_mode():
  assert common.parse_mode('tiny') == 'tiny'
  assert common.parse_mode(None) == common.parse_mode(' ') == 'paper'
  assert common.parse_mode(None, modes=common.CPU_MODES, default='small') == 'small'
  with pytest.raises(ValueError, match="config argument 'paper' is not a mode; "
                                       'accepted: small, tiny'):
    common.parse_mode('paper', modes=common.CPU_MODES, default='small')


def test_method_names():
  assert common.TRAIN_METHODS == robust_training.METHODS
  assert common.ATTACK_METHODS == attack.INNER_METHODS


_SIZES = ('num_epochs', 'batch_size', 'clean_batch_size', 'poison_batch_size',
          'val_batch_size', 'outer_num_noise', 'inner_steps', 'solver_steps', 'n0', 'n',
          'num_points')


def _sizes(config):
  flat = dict(config.get('attack', config))
  return {k: flat[k] for k in _SIZES if k in flat}


@pytest.mark.parametrize('name,method', [
    (n, m) for n in ('train_mnist', 'train_cifar10', 'poison_mnist', 'poison_cifar10')
    for m in CONFIGS[n][0]] + [('certify', None)])
def test_tiny_mode_shrinks_sizes_and_keeps_the_method(name, method):
  module = _module(name)
  prefix = f'{method},' if method else ''
  paper, tiny = (module.get_config(prefix + mode) for mode in ('paper', 'tiny'))
  big, small = _sizes(paper), _sizes(tiny)
  assert set(big) == set(small) and all(small[k] <= big[k] for k in big), (big, small)
  assert any(small[k] < big[k] for k in big)
  # The hyperparameters of the method are not shrunk, except MACER's noise draws.
  hparams = lambda c: dict(c.loss) if 'loss' in c else dict(c.get('attack', {}).get(
      'inner', {}))
  untouched = lambda c: {k: v for k, v in hparams(c).items() if k != 'num_noise'}
  assert untouched(tiny) == untouched(paper)
  if 'attack' in paper:
    assert tiny.attack.sigma == paper.attack.sigma and tiny.eps == paper.eps
    # SmoothAdv's single inner step (the reference's niter1) stays one.
    assert tiny.attack.inner_steps == min(paper.attack.inner_steps, 2 if
                                          name == 'poison_mnist' else 1)


def test_shrink_to_tiny_refuses_other_configs():
  with pytest.raises(ValueError, match="fields \\['lr'\\] is not a training, attack"):
    common.shrink_to_tiny(ml_collections.ConfigDict({'lr': 0.1}))


def test_shrink_to_tiny_of_a_protocol_shrinks_every_victim():
  config = _module('protocol_transfer').get_config('small')
  common.shrink_to_tiny(config)
  for victim in config.victims.values():
    assert (victim.train_subset, victim.batch_size, victim.num_epochs) == (800, 100, 1)
  dpa = config.dpa_victim  # DPA's base classifiers too, checkpointed at the end only.
  assert (dpa.train_subset, dpa.batch_size, dpa.num_epochs, dpa.method) == (
      800, 100, 1, 'standard')
  assert dpa.checkpoint_every_epochs == 1
  assert config.num_figure_images == 4


def test_protocol_methods_grid_is_the_transfer_diagonal():
  """Deterministic (failure odds 0). Each method's victims train on the clean set, the
  PACD set crafted against that method and the random baseline, 3 seeds: 27 cells,
  the transfer grid's cells whose PACD set matches the victim's method."""
  config = _module('protocol_methods').get_config('small')
  cells = protocol.resolve_cells(config)
  assert len(cells) == 3 * 3 * 3
  assert {(c.train_method, c.crafted_against) for c in cells if c.poison == 'pacd'} == {
      (m, m) for m in common.ATTACK_METHODS}
  assert {c.seed for c in cells} == {0, 1, 2} and {c.arch for c in cells} == {'lenet'}
  transfer = _module('protocol_transfer').get_config('small')
  transfer.archs = ('lenet',)
  transfer.seeds = (0, 1, 2)
  diagonal = [c for c in protocol.resolve_cells(transfer)
              if c.poison != 'pacd' or c.crafted_against == c.train_method]
  assert cells == diagonal
  assert len(cells_lib.poison_keys(config, cells)) == 3 + 1  # 3 attacks, 1 random set.


def test_protocol_defenses_grids():
  """small: 8 smoothing defenses on the clean and the PACD set (16 victims) and DPA on
  each; tiny also the oracle. Training-time defenses set rsp.train's fields."""
  for mode, num_defenses in (('small', 9), ('tiny', 10)):
    config = _module('protocol_defenses').get_config(mode)
    cells = protocol.resolve_cells(config)
    assert len(cells) == 2 * num_defenses, mode
    assert [c.defense for c in cells].count('dpa') == 2
    assert {c.poison for c in cells} == {'none', 'pacd'}
  small = _module('protocol_defenses').get_config('small')
  assert (small.certify.n, small.certify.num_points, small.dpa_partitions) == (
      2_000, 100, 20)
  assert small.victims.gaussian.num_epochs == 40 and small.defense_budget == -1
  victim = cells_lib.victim_config(small, cells_lib.Cell('gaussian', 'lenet', 'pacd',
                                                         'gaussian', 0, defense='dp_sgd'))
  assert victim.dp_sgd.enabled and victim.optimizer == 'sgd' and victim.num_epochs == 5
  victim = cells_lib.victim_config(small, cells_lib.Cell('gaussian', 'lenet', 'none', '',
                                                         0, defense='purify_bit_depth'))
  assert (victim.purify.kind, victim.purify.bits) == ('bit_depth', 3)
  assert small.victims.gaussian.purify.kind == 'none'  # The undefended one untouched.


def test_macer_constants_are_the_loss_defaults():
  defaults = robust_training.loss_defaults('macer')
  # CIFAR-10's victims: the reference's constants are the loss's defaults, all of them.
  assert dict(_module('train_cifar10').get_config('macer').loss) == defaults
  # MNIST's victims differ in sigma and lambda only; small mode draws k = 4, not 16.
  mnist = dict(_module('train_mnist').get_config('macer').loss)
  assert {k for k in defaults if mnist[k] != defaults[k]} == {'sigma', 'lbd'}
  assert _module('train_mnist').get_config('macer,small').loss.num_noise == 4
  # The attacks' inner MACER: its own k_in and lambda, the loss's gamma, beta, alpha.
  for name in ('poison_mnist', 'poison_cifar10'):
    inner = dict(_module(name).get_config('macer').attack.inner)
    assert {k: inner[k] for k in ('gamma', 'beta', 'alpha')} == \
        robust_training.loss_defaults('macer', 'gamma', 'beta', 'alpha')
    assert (inner['num_noise'], inner['lbd']) != (defaults['num_noise'], defaults['lbd'])


def test_renamed_fields():
  a = _module('poison_mnist').get_config('macer').attack
  assert (a.poison_learning_rate, a.inner_learning_rate, a.solver_learning_rate) == (
      0.1, 1e-3, 1e-4)
  config = _module('poison_mnist').get_config('gaussian,tiny')
  config.attack.lr_u = 0.1
  with pytest.raises(ValueError, match='config.attack.lr_u is now called '
                                       'config.attack.poison_learning_rate'):
    attack.validate_config(config)
  config = _module('protocol').get_config('small')
  assert config.crafted_against == ('gaussian',)
  assert config.poison_kinds == ('none', 'pacd', 'random')
  for old in ('lr_u', 'lr_v', 'lr_p', 'attack_methods', 'poisons'):
    assert f"'{old}'" not in str(config.to_dict())


def test_config_docstrings_hold_their_command():
  for name in CONFIGS:
    doc = _module(name).__doc__
    assert 'python experiments/' in doc and f'rsp/configs/{name}.py' in doc, name
