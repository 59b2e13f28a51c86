"""``ssl-derm sweep``: a grid over config keys times seeds, resumable, with tables, plots and hparams.

A sweep file (``configs/sweeps/*.yaml``)::

    out: runs/sweeps/label_efficiency
    seeds: [0, 1, 2]
    pretrain_per_seed: false          # one pretraining per pretrain setting (seed 0), shared by all seeds
    exclude_test: true                # pretraining leaves out the test side that the finetune cells score
    downstream: finetune              # or: segment
    metrics: [balanced_accuracy, accuracy]
    common: {data.image_size: 64}     # keys for both stages
    pretrain: {config: configs/pretrain/simclr_resnet18.yaml, set: {train.max_steps: 500}}
    # or, instead of a pretrain stage, the encoder file that the pretrained cells start from:
    # checkpoint: runs/simclr/encoder.safetensors
    finetune: {config: configs/finetune/linear.yaml, set: {},
               per_protocol: {fixmatch: {train.max_steps: 200}}}   # keys for one protocol's cells only
    grid:
      init: [pretrained, random]      # special: random = no pretraining, encoder.checkpoint=none
      pretrain.method.name: [simclr, byol]
      finetune.split.fraction: [0.01, 0.1, 1.0]
      encoder.name: [resnet18]        # a bare key goes to both stages
    select:                           # optional: tune keys chosen on validation, reported on test
      by: val.balanced_accuracy       # (selected.md / selected.csv; see ssl_derm.select)
      tune: [finetune.train.lr]
      paired: init                    # optional: each init at its own choice, pretrained - random by seed

A key of a plug-in section (``method.*``, ``protocol.*``, ``segment.*``) that is set for the whole sweep
goes to the cells whose plug-in has it (``protocol.linear_C`` reaches the linear cells, not the kNN ones);
a key that no plug-in of that kind has is still an error.

With an ``init`` axis the sweep also writes the pretrained-vs-random report, ``label_efficiency.md`` / ``.csv``
(:mod:`ssl_derm.commands.sweep.paired`); ``configs/sweeps/label_efficiency.yaml`` is that study for one encoder
file, and ``ssl-derm label-efficiency`` its front. The tables cover every finished cell of this call's grid and
of an earlier call's into the same folder when the two specs differ only in grid values and seeds.

Every pretraining is run once (``pretrain/<hash>/``) and reused by every cell that needs it; every
cell writes ``cells/<id>/metrics.json`` last, so a killed sweep skips what finished and resumes the
rest (an unfinished pretraining resumes from its checkpoint).
"""
from ssl_derm.commands.sweep.run import run_sweep
from ssl_derm.commands.sweep.spec import load_sweep, plan_cells
from ssl_derm.commands.sweep.tables import metric_ci, metric_value, write_tables

__all__ = ["load_sweep", "metric_ci", "metric_value", "plan_cells", "run_sweep", "write_tables"]
