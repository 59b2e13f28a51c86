"""Full finetuning: the whole encoder plus a linear head, AdamW + cosine schedule, optional
layer-wise LR decay (``protocol.llrd``), weak augmentation, model selection on val."""
from __future__ import annotations

from dataclasses import dataclass

from ssl_derm.evaluate.config import Balanced, LinearProbe, ProtocolSettings, Trained
from ssl_derm.evaluate.train import ClassifierTrainer
from ssl_derm.models.trained import TimmClassifier
from ssl_derm.registry import register


@dataclass
class FinetuneSettings(Trained, Balanced, LinearProbe, ProtocolSettings):
    name: str = "finetune"



@register("protocol", "finetune", settings=FinetuneSettings)
def run_finetune_protocol(ctx) -> dict:
    trainer = ClassifierTrainer(ctx)
    out = trainer.run()
    ctx.trained = TimmClassifier(trainer.eval_model())  # the selected state
    return out
