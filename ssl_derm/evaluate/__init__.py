"""Downstream evaluation: frozen-feature kNN and linear probes, label spreading, full finetuning, FixMatch, mean
teacher, self-distillation and few-mask segmentation, each a registered protocol (``register("protocol", name)``),
run by :func:`ssl_derm.commands.finetune.run_finetune`; plus metrics and the label-efficiency table.

Importing this package registers the protocols: knn, linear, labelprop, finetune, fixmatch,
meanteacher, distill, fewmask_seg.
"""
from ssl_derm.evaluate import distill, fewmask_seg, finetune, fixmatch, knn, labelprop, linear, meanteacher  # noqa: F401  (registration)
