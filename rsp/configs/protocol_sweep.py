r"""How the damage scales: PACD against Gaussian augmentation along four sweep axes.

Argument: MODE in small (default) | tiny.

The protocol of ``protocol.py`` (embedded MNIST, LeNet surrogate and victims trained
with Gaussian augmentation, clean / PACD / random +-eps training sets, Cohen's CERTIFY
on 100 test points of the target class, N = 10,000), run at a base point, eps 0.1,
every image of the class poisoned, victim sigma 0.5, target class 8, and then along
each sweep axis, one at a time, the others held at the base point:

* ``eps``: 0.025, 0.05, 0.1, 0.2 (one attack and one random baseline per eps);
* ``poison_fraction``: 0.25, 0.5, 1.0 of the class's 350 training images poisoned
  (88, 175, 350 images, drawn by ``config.poison_subset_seed``; the smaller sets lie
  in the larger ones; the rest of the class stays clean);
* ``victim_sigma``: 0.25, 0.5, 1.0: the victims train AND are certified at that sigma,
  on the poisons made against sigma 0.5 (the attack's sigma stays fixed);
* ``target_class``: 0, 3, 8 (attack, baseline, clean victims and certified points of
  that class);
* ``victim_epochs``: 40, 60, 100 epochs of victim training on the same poisons (does
  the drop survive a victim trained longer?). A longer victim starts from the
  checkpoint of the shorter one of its cell (``rsp.protocol.warm_start``: the same
  victim as one trained from scratch, for the cost of the missing epochs).

Two victim seeds (0, 1): every ACR drop has a 95% confidence interval (Student t over
the seeds, 1 degree of freedom: wide). Work is shared where the numbers are: a clean
victim is trained once per (method, arch, victim sigma, seed), whatever the eps,
fraction or target class (a clean victim of another class copies the base class's
training run and is only certified on its own class's points), and an attack is run
once per (method, eps, fraction, target class); the random baseline of the same budget (eps, fraction) is beside each PACD
cell. ``--config.sweep.axes=eps`` (or ``eps,victim_sigma``, ...) runs some axes only;
the value lists are ``--config.sweep.eps=0.05,0.1`` etc.

* small: measured on a 2-core AMD EPYC (2026-12-02 and 12-03; an attack 3-4.5 min, a
  victim about 1.5 min of training plus 1 min of certification; the 12-03 runs shared
  the CPU with a low-priority job), each axis in one workdir after the others:

  | axes | attacks | victims | measured |
  | --- | --- | --- | --- |
  | base point only (``--config.sweep.axes=``) | 1 | 6 | about 20 min (estimate) |
  | ``eps`` | 4 | 18 | 51 min |
  | ``poison_fraction`` | 3 | 14 | 41 min (the base point included) |
  | ``target_class`` | 3 | 18 | 33 min for the 2 attacks and 12 victims beyond the base point (its 4 clean victims still trained anew) |
  | ``victim_sigma`` | 1 | 18 | 30 min for the 12 victims beyond the base point |
  | ``victim_epochs`` | 1 | 18 | 18 min for the 12 victims beyond the base point (the 60- and 100-epoch victims train 20 and 40 more epochs) |
  | all five (the default) | 8 | 62 | about 3 h |

  The clean victims of the target-class axis copy the base class's training run, so
  they cost a certification only. With K workers (``--workers=K``) the victims share out
  K ways; the attacks come first and share out too.
* tiny: two values per axis, one seed, seconds per stage, for tests.

Command::

    python experiments/run.py --config=rsp/configs/protocol_sweep.py \
        --workdir=/tmp/rsp/protocol_sweep

writes ``results.md`` with a table per axis (the value, the PACD drop and the random
drop with their intervals) and ``figures/sweep_<axis>.png`` (the ACR drop against the
axis, 95% bands over the seeds, random baseline beside). Fan it out over processes or
machines with ``--workers=K`` or ``--shard=i/N`` (docs/cluster.md).

Certification settings that change the numbers, on a finished workdir
``W=/tmp/rsp/protocol_sweep``:

* how many points are certified: the ACR (and drop) of seeded subsets of m = 50, 100
  and all of the certified points, with its spread over 20 subset seeds::

      python experiments/certification_settings.py --workdir=$W --sizes=50,100,0

* how many noise samples: one victim pair (clean and PACD, seed 0, base point)
  certified again at N = 1,000, 10,000 and 100,000 on the same points with the same
  noise (``rsp/configs/certify.py:small`` draws the protocol's 100 points; the N =
  10,000 run reproduces the cells' own certificates), then tabulated by the same
  script (it reads ``$W/certify_n<N>/<cell>/``)::

      for N in 1000 10000 100000; do
        for CELL in gaussian-lenet-none-seed0 gaussian-lenet-pacd_gaussian-seed0; do
          python experiments/certify.py --config=rsp/configs/certify.py:small \
              --config.n=$N --config.checkpoint_dir=$W/cells/$CELL/train \
              --workdir=$W/certify_n$N/$CELL
        done
      done
      python experiments/certification_settings.py --workdir=$W

  N = 100,000 takes about 10 min per victim on 2 CPU cores (100 points at about
  18,000 LeNet samples/s); a victim certified at another class takes
  ``--config.target_class=3``.
"""

from rsp.configs import common
from rsp.configs import poison_mnist
from rsp.configs import protocol
from rsp.configs import train_mnist

# The value lists of the sweep axes, per mode.
_SWEEPS = {
    'small': dict(eps=(0.025, 0.05, 0.1, 0.2), poison_fraction=(0.25, 0.5, 1.0),
                  victim_sigma=(0.25, 0.5, 1.0), target_class=(0, 3, 8),
                  victim_epochs=(40, 60, 100)),
    'tiny': dict(eps=(0.05, 0.1), poison_fraction=(0.5, 1.0), victim_sigma=(0.25, 0.5),
                 target_class=(3, 8), victim_epochs=(1, 2)),
}


def get_config(arg: str | None = None):
  mode = common.parse_mode(arg, modes=common.CPU_MODES, default='small')
  c = protocol.build_config(
      name=f'mnist_sweep_{mode}', dataset='mnist_embedded', target_class=8, eps=0.1,
      attacks={'gaussian': poison_mnist.get_config(f'gaussian,{mode}')},
      victims={'gaussian': train_mnist.get_config(f'gaussian,{mode}')},
      certify=protocol.certify_settings(mode),
      poison_kinds=('none', 'pacd', 'random'),
      seeds=(0, 1) if mode == 'small' else (0,))
  c.sweep.axes = ('eps', 'poison_fraction', 'victim_sigma', 'target_class', 'victim_epochs')
  c.sweep.update(_SWEEPS[mode])
  if mode == 'small':
    # Pinned to what this protocol's README tables were measured with: 40-epoch victims,
    # the small default until 2026-12-04 (today's: 100, rsp/configs/train_mnist.py).
    c.victims.gaussian.num_epochs = 40
  if mode == 'tiny':
    common.shrink_to_tiny(c)
  return c
