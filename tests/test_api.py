"""The Python API as the README shows it: the README's notebook block runs as written (synthetic set,
tiny settings), and ``import ssl_derm`` does not import torch."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert found, "README.md lost its <!-- api-example --> python block"
    return found.group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_DERM_CACHE", str(tmp_path / "cache"))
    scope: dict = {}
    exec(compile(readme_example(), "README.md:api-example", "exec"), scope)
    assert len(scope["masks"]) == 4 and scope["masks"][0].shape == (64, 64)
    probs = scope["clf"].predict(scope["images"])
    assert probs.shape == (4, len(scope["clf"].classes)) and abs(probs.sum(1) - 1).max() < 1e-5
    assert scope["s"]["n_images"] == 20 and (tmp_path / "runs" / "nb_pred" / "predictions.csv").is_file()
    assert "balanced accuracy" in capsys.readouterr().out


def test_import_is_lazy():
    code = ("import sys, ssl_derm; assert 'torch' not in sys.modules; assert callable(ssl_derm.load_config)\n"
            # the families and commands are plain modules whose names do not clash with the API functions
            "import ssl_derm.segmenters, ssl_derm.commands.pretrain; assert callable(ssl_derm.segment) and "
            "callable(ssl_derm.pretrain)\n"
            "assert type(ssl_derm.segmenters).__name__ == 'module' and hasattr(ssl_derm.commands.pretrain, 'run_pretrain')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})


def test_load_config_takes_paths_names_dicts_and_dataclasses():
    import ssl_derm
    from ssl_derm.config import ConfigError

    a = ssl_derm.load_config(ROOT / "configs" / "finetune" / "knn.yaml", ["seed=2"])
    b = ssl_derm.load_config("finetune/knn", {"seed": 2, "protocol.knn_k": 7})
    assert type(a).__name__ == "FinetuneConfig" and a.protocol.name == b.protocol.name == "knn" and a.seed == b.seed == 2
    assert b.protocol.knn_k == 7
    c = ssl_derm.load_config(b, {"split.fraction": 0.25})
    assert c.split.fraction == 0.25 and c.protocol.name == "knn"
    assert ssl_derm.load_config({"segment": {"method": "otsu_blue"}}, kind="segment").segment.method == "otsu_blue"
    with pytest.raises(ConfigError, match="unknown config key 'bogus'"):
        ssl_derm.load_config("segment/default", {"bogus": 1})
