"""Self-distillation (protocol ``distill``): the loss against a KL written out, the student's restart from
the run's initial weights, the teacher's figures in metrics.json, the export, and kill/resume in either phase."""
import json

import numpy as np
import pytest
import torch

from ssl_derm.config import ConfigError
from ssl_derm.engine import Engine, load_checkpoint
from ssl_derm.evaluate.config import load_finetune_config
from ssl_derm.evaluate.distill import DistillTrainer, distillation_loss, soften
from ssl_derm.commands.finetune import run_finetune
from test_protocols import _cfg, _ctx, data  # noqa: F401  (data is a fixture)
from test_resume import Kill, kill_engine_at, same_weights, strip


def test_distillation_loss_is_the_kl_to_the_teacher():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    teacher = torch.tensor(rng.dirichlet(np.ones(4), size=5), dtype=torch.float32)
    for t in (1.0, 2.0):
        q = (logits / t).softmax(1)
        kl = (teacher * (teacher.log() - q.log())).sum(1).mean() * t * t
        assert torch.isclose(distillation_loss(logits, teacher, t), kl, atol=1e-6)
    # a student that already predicts the teacher's probabilities has nothing left to learn
    assert abs(float(distillation_loss(teacher.log(), teacher, 1.0))) < 1e-6
    # soften: T = 1 keeps the probabilities, T > 1 flattens them in the order they had
    p = teacher.numpy()
    assert np.allclose(soften(p, 1.0), p, atol=1e-6)
    flat = soften(p, 4.0)
    assert np.allclose(flat.sum(1), 1.0) and (flat.max(1) < p.max(1)).all()
    assert (flat.argmax(1) == p.argmax(1)).all()


def test_student_restarts_from_the_initial_weights_and_learns_from_the_teacher(data, tmp_path, monkeypatch):
    ctx = _ctx(data, "distill", tmp_path, **{"protocol.teacher_steps": 3, "train.max_steps": 2})
    trainer = DistillTrainer(ctx)
    start = {k: v.clone() for k, v in trainer.start_state.items()}
    seen = {}
    orig = Engine.__init__

    def init(self, model, *a, **kw):
        orig(self, model, *a, **kw)
        seen[self.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(Engine, "__init__", init)
    info = trainer.fit()
    assert set(seen) == {"distill teacher", "distill student"}
    for k, v in start.items():
        assert torch.equal(seen["distill student"][k], v), k  # not the trained teacher
        assert torch.equal(seen["distill teacher"][k], v), k  # both phases start from the run's weights
    # the targets are the trained teacher's probabilities on every cache row, not the start's
    rows = np.arange(len(ctx.dataset.labels))
    assert tuple(trainer.targets.shape) == (len(rows), ctx.n_classes)
    assert torch.allclose(trainer.targets.sum(1), torch.ones(len(rows)))
    trainer.model.load_state_dict(start)
    assert not np.allclose(trainer.predict(rows), trainer.targets.numpy(), atol=1e-3)
    assert info["teacher"]["steps"] == 3 and 0.0 <= info["teacher"]["val_balanced_accuracy"] <= 1.0
    loss, logs = trainer.loss(0)
    assert logs["loss_u"] > 0 and logs["batch_size"] == 2 * ctx.cfg.train.batch_size  # mu = 1
    with pytest.raises(ConfigError, match="protocol.temperature"):
        load_finetune_config(None, ["protocol.name=distill", "protocol.temperature=0"])


def test_distill_end_to_end_keeps_the_teacher_and_exports_the_student(data, tmp_path):
    from ssl_derm.serve.loaders import load_model

    ds, split = data
    out = tmp_path / "d"
    m = run_finetune(_cfg("distill", **{"protocol.teacher_steps": 3}), out, dataset=ds, split=split, quiet=True)
    saved = json.loads((out / "metrics.json").read_text())
    teacher = saved["info"]["teacher"]
    # the teacher's val figure is its selected state's
    assert teacher["val_balanced_accuracy"] == pytest.approx(max(h["val_balanced_accuracy"] for h in teacher["val_history"]))
    assert 0.0 <= teacher["test_balanced_accuracy"] <= 1.0
    assert saved["protocol"] == "distill" and saved["info"]["n_unlabeled"] > 0
    # the run folder serves the student: ssl-derm predict gives what the run scored on the test side
    ids = json.loads((out / "test_ids.json").read_text())
    rows = [ds.ids.index(i) for i in ids]
    np.testing.assert_allclose(load_model(out).predict(ds.images[rows]), np.load(out / "test_probs.npy"), atol=1e-4)
    assert m["balanced_accuracy"] == saved["balanced_accuracy"]


@pytest.mark.parametrize("phase,at", [("teacher", 3), ("student", 3)])
def test_distill_killed_in_either_phase_resumes_to_the_same_result(phase, at, data, tmp_path, monkeypatch):
    ds, split = data
    over = {"train.max_steps": 4, "protocol.teacher_steps": 4, "train.ckpt_every": 2, "protocol.eval_every": 2}
    full = run_finetune(_cfg("distill", **over), tmp_path / "full", dataset=ds, split=split, quiet=True)
    with monkeypatch.context() as m:
        kill_engine_at(m, at, name=phase)
        with pytest.raises(Kill):
            run_finetune(_cfg("distill", **over), tmp_path / "killed", dataset=ds, split=split, quiet=True)
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / phase / "last.pt")["step"] == 2
    torch.manual_seed(1234)
    np.random.seed(1234)
    resumed = run_finetune(_cfg("distill", **over), tmp_path / "killed", dataset=ds, split=split, quiet=True)
    for p in ("teacher", "student"):
        same_weights(tmp_path / "full" / "checkpoints" / p / "last.pt", tmp_path / "killed" / "checkpoints" / p / "last.pt")
    assert strip(resumed) == strip(full)


def test_linear_probe_teacher_is_the_probe_itself(data, tmp_path, monkeypatch):
    """teacher_steps=0 with head_init=linear_probe: the targets are the probe's probabilities (the start model's),
    no teacher phase runs, and the student trains from the probe."""
    from ssl_derm.evaluate.linear import fit_probe, predict_probs

    ctx = _ctx(data, "distill", tmp_path, **{"protocol.teacher_steps": 0, "protocol.head_init": "linear_probe",
                                              "protocol.linear_C": "[0.1,1.0]", "train.max_steps": 2})
    feats = {side: ctx.features(side, l2=False).numpy() for side in ("labelled", "val")}
    _, _, scaler, clf = fit_probe(ctx, feats)
    trainer = DistillTrainer(ctx)
    rows = np.arange(len(ctx.dataset.labels))
    start_probs = trainer.predict(rows)
    np.testing.assert_allclose(start_probs[ctx.rows["val"]], predict_probs(scaler, clf, feats["val"], ctx.n_classes),
                               atol=1e-4)
    names = []
    orig = Engine.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        names.append(self.name)

    monkeypatch.setattr(Engine, "__init__", init)
    info = trainer.fit()
    assert names == ["distill student"]
    np.testing.assert_allclose(trainer.targets.numpy(), start_probs, atol=1e-5)
    assert info["teacher"]["steps"] == 0 and info["val_history"][0]["step"] == 0  # the probe is a candidate
    with pytest.raises(ConfigError, match="protocol.teacher_steps.*head_init"):
        load_finetune_config(None, ["protocol.name=distill", "protocol.teacher_steps=0"])
