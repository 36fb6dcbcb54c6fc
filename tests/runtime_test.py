"""Tests of rsp.runtime: the allocator setting and the persistent compilation cache.

Deterministic (failure odds 0): each checks a setting, not a speed (speed is measured in
benchmarks/certify_throughput.py and benchmarks/train_throughput.py).
"""

import os
import platform
import subprocess
import sys

import pytest

from rsp import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
  full = dict(os.environ, JAX_PLATFORMS='cpu', **env)
  full['PYTHONPATH'] = os.pathsep.join([ROOT, full.get('PYTHONPATH', '')])
  return subprocess.run([sys.executable, '-c', code], env=full, capture_output=True,
                        text=True, timeout=300, check=False)


def _is_glibc():
  return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


@pytest.mark.skipif(not _is_glibc(), reason='mallopt is a glibc setting')
def test_import_keeps_freed_memory_unless_turned_off():
  """``import rsp`` applies the setting; RSP_KEEP_FREED_MEMORY=0 leaves glibc alone."""
  code = 'import rsp.runtime as r; print(r.keeps_freed_memory())'
  assert _python(code).stdout.strip() == 'True'
  assert _python(code, RSP_KEEP_FREED_MEMORY='0').stdout.strip() == 'False'
  assert runtime.keep_freed_memory() is True and runtime.keep_freed_memory() is True


def test_bad_environment_value_is_refused_at_import():
  proc = _python('import rsp', RSP_KEEP_FREED_MEMORY='maybe')
  assert proc.returncode != 0
  assert "RSP_KEEP_FREED_MEMORY='maybe' is not accepted" in proc.stderr


def test_compilation_cache_stores_and_reuses_compiled_programs(tmp_path):
  """A second process finds the first one's program in the cache directory."""
  cache = tmp_path / 'cache'
  code = f'''
import jax, jax.numpy as jnp
from rsp import runtime
print(runtime.enable_compilation_cache({str(cache)!r}, min_compile_time_secs=0))
f = jax.jit(lambda x: jnp.sin(x) @ x.T + 3.0)
print(float(f(jnp.ones((8, 8)))[0, 0]))
'''
  first = _python(code)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stdout.split()[0] == str(cache)
  entries = set(os.listdir(cache))
  assert entries, 'the cache directory stayed empty'
  second = _python(code)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stdout.split()[1] == first.stdout.split()[1]
  assert set(os.listdir(cache)) == entries  # Loaded, not compiled and stored anew.


@pytest.mark.parametrize('directory, message', [('', 'non-empty path'),
                                                (None, 'non-empty path')])
def test_compilation_cache_refuses_bad_directory(directory, message):
  with pytest.raises(ValueError, match=message):
    runtime.enable_compilation_cache(directory)


def test_compilation_cache_refuses_negative_threshold(tmp_path):
  with pytest.raises(ValueError, match='min_compile_time_secs=-1'):
    runtime.enable_compilation_cache(tmp_path, min_compile_time_secs=-1)


def test_default_cache_dir_follows_environment(monkeypatch):
  monkeypatch.setenv('RSP_CACHE_DIR', '/x/y')
  assert runtime.default_cache_dir() == '/x/y/jax'
  monkeypatch.delenv('RSP_CACHE_DIR')
  monkeypatch.setenv('XDG_CACHE_HOME', '/c')
  assert runtime.default_cache_dir() == '/c/rsp/jax'
