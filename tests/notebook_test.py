"""colab/rsp_protocol.ipynb runs from top to bottom in its tiny mode (so it cannot rot).

Deterministic: no test can fail by chance."""

import os

import nbclient
import nbformat
from ipykernel import kernelspec

from rsp import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'colab', 'rsp_protocol.ipynb')


def test_protocol_notebook_runs_in_tiny_mode(tmp_path, monkeypatch):
  # A kernel spec running this very interpreter, found first on JUPYTER_PATH: the test
  # works in a fresh virtual environment whatever kernels the machine has.
  kernelspec.write_kernel_spec(path=str(tmp_path / 'jupyter' / 'kernels' / 'python3'))
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  workdir = str(tmp_path / 'protocol')
  monkeypatch.setenv('RSP_NOTEBOOK_MODE', 'tiny')
  monkeypatch.setenv('RSP_NOTEBOOK_WORKDIR', workdir)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  assert not any(c.get('outputs') for c in notebook.cells if c.cell_type == 'code'), (
      'commit the notebook without outputs')
  client = nbclient.NotebookClient(
      notebook, kernel_name='python3', timeout=600, startup_timeout=120,
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}})
  client.execute()  # Raises CellExecutionError on any failing cell.

  text = []
  images = 0
  for cell in notebook.cells:
    for output in cell.get('outputs', []):
      text.append(output.get('text', ''))
      text.append(output.get('data', {}).get('text/markdown', ''))
      images += 'image/png' in output.get('data', {})
  text = '\n'.join(text)
  assert 'mode tiny' in text  # The first cell read the environment.
  assert '| gaussian | lenet | PACD (vs gaussian) |' in text
  results = workdir_lib.read_json(os.path.join(workdir, 'results.json'))
  assert images == len(results['figures']) == 4
