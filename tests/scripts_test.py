"""Tests of rsp.scripts, the experiments scripts' shared flags and start-up.

Deterministic. The flag tests run the real scripts in subprocesses, so absl's global
flags are not defined in the pytest process.
"""

import logging
import os
import subprocess
import sys

from absl import app
from absl import logging as absl_logging
import pytest

from rsp import checkpointing
from rsp import scripts

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_start_refuses_positional_arguments_and_quiets_orbax():
  with pytest.raises(app.UsageError, match=r"Unexpected arguments: \['extra'\]"):
    scripts.start(['prog', 'extra'])
  scripts.start(['prog'])
  assert checkpointing._not_orbax_info in absl_logging.get_absl_handler().filters
  record = logging.LogRecord('x', logging.INFO,
                             os.path.join(os.sep, 'x', 'orbax', 'checkpoint', 'y.py'),
                             1, 'message', None, None)
  assert not checkpointing._not_orbax_info(record)


@pytest.mark.parametrize('script', ['train.py', 'certify.py', 'poison.py', 'run.py'])
def test_every_script_requires_config_and_workdir(script):
  """Without --config and --workdir absl stops the script before any work (exit 1)."""
  out = subprocess.run([sys.executable, os.path.join(_ROOT, 'experiments', script)],
                       capture_output=True, text=True, timeout=120, cwd=_ROOT)
  assert out.returncode == 1
  assert '--config' in out.stderr and '--workdir' in out.stderr
  assert 'must have a value other than None' in out.stderr


def test_start_turns_on_the_compilation_cache_unless_empty(tmp_path):
  """Deterministic: --compilation_cache_dir=DIR points JAX's persistent cache at DIR
  (created); an empty value leaves the cache off."""
  code = '''
import sys
import jax
from absl import flags
from rsp import scripts
flags.FLAGS(['prog', '--compilation_cache_dir=' + sys.argv[1]])
scripts.start(['prog'])
print(repr(jax.config.jax_compilation_cache_dir))
'''
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join([_ROOT, env.get('PYTHONPATH', '')])
  cache = str(tmp_path / 'cache')
  for value, expected in ((cache, repr(cache)), ('', 'None')):
    out = subprocess.run([sys.executable, '-c', code, value], capture_output=True,
                         text=True, timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected
  assert os.path.isdir(cache)
