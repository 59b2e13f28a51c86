"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node 2`` (gloo, CPU): per-rank RNG states in
checkpoints, and a non-finite loss on one rank stopping every rank with the same message.
Writes ``<out>/rank<k>.json`` with what it saw."""
import json
import sys
from pathlib import Path

import torch
from torch import nn

from ssl_derm.config import TrainConfig
from ssl_derm.engine import Engine, TrainingError, load_checkpoint
from ssl_derm.engine import distributed as D


def main(out: Path) -> None:
    D.init_distributed(torch.device("cpu"), timeout_min=2)
    r = D.rank()
    torch.manual_seed(100 + r)  # each rank its own random stream (augmentations)
    cfg = TrainConfig(max_steps=2, batch_size=4, lr=0.1, warmup_steps=0, ckpt_every=1, log_every=1)
    model = nn.Linear(3, 1)

    def step_fn(module, step, micro):
        return module(torch.randn(4, 3)).pow(2).mean(), {}

    Engine(model, cfg, "cpu", ckpt_dir=out / "ckpt", progress=False).fit(step_fn)
    expected = torch.get_rng_state()
    torch.manual_seed(999)  # forget: the resume must bring this rank's own state back
    Engine(nn.Linear(3, 1), cfg, "cpu", ckpt_dir=out / "ckpt", progress=False).resume()
    report = {"restored_own_rng": bool(torch.equal(torch.get_rng_state(), expected))}
    ranks = load_checkpoint(out / "ckpt" / "last.pt")["ranks"]
    report["n_rank_states"] = len(ranks)
    report["rank_states_differ"] = not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])

    def nan_on_rank1(module, step, micro):
        loss = module(torch.randn(4, 3)).pow(2).mean()
        return (loss * float("nan") if r == 1 and step >= 1 else loss), {}

    try:
        Engine(nn.Linear(3, 1), TrainConfig(max_steps=4, batch_size=4, ckpt_every=0), "cpu",
               progress=False).fit(nan_on_rank1)
        report["nan_error"] = None
    except TrainingError as e:
        report["nan_error"] = str(e)
    (out / f"rank{r}.json").write_text(json.dumps(report))
    D.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
