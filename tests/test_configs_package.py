"""Configs ship inside the package: packaged names resolve from any folder, ``ssl-derm configs`` prints
them, and a wheel built from the tracked files holds them."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ssl_derm.cli import main
from ssl_derm.packaged import CONFIG_DIR, list_configs, packaged_config

ROOT = Path(__file__).resolve().parent.parent
WANTED = ("pretrain/simclr_resnet18.yaml", "finetune/linear.yaml", "segment/default.yaml")


def test_top_level_configs_is_the_packaged_folder():
    assert CONFIG_DIR == ROOT / "ssl_derm" / "configs"
    assert (ROOT / "configs").resolve() == CONFIG_DIR.resolve()  # one source of truth
    assert all((CONFIG_DIR / w).is_file() for w in WANTED)


def test_packaged_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("finetune/linear", "finetune/linear.yaml", "configs/finetune/linear.yaml"):
        assert packaged_config(name) == CONFIG_DIR / "finetune" / "linear.yaml"
    assert packaged_config("finetune/nope") is None and packaged_config("../setup.cfg") is None
    from ssl_derm.config import ConfigError, load_config
    from ssl_derm.evaluate.config import FinetuneConfig

    assert load_config(FinetuneConfig, "configs/finetune/knn.yaml").protocol.name == "knn"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(FinetuneConfig, "finetune/nope")


def test_configs_list_and_show(capsys):
    assert main(["configs", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert set(list_configs()) <= set(listed) and "pretrain/simclr_resnet18" in listed
    assert main(["configs", "show", "segment/selftrain"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "segment" / "selftrain.yaml").read_text()
    assert main(["configs", "show", "segment/selftrian"]) == 2  # a config error
    err = capsys.readouterr().err
    assert "no packaged config 'segment/selftrian'" in err and "segment/selftrain" in err


@pytest.mark.slow
def test_wheel_from_a_clean_export_holds_the_configs(tmp_path):
    """``pip wheel`` (no network: no deps, no build isolation) from the tracked files only."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    src = tmp_path / "src"
    for rel in filter(None, files.decode().split("\0")):
        p, dst = ROOT / rel, src / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():
            dst.symlink_to(p.readlink())
        elif p.is_file():
            dst.write_bytes(p.read_bytes())
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("ssl_derm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for w in WANTED:
        assert f"ssl_derm/configs/{w}" in names
    assert {"ssl_derm/commands/predict.py", "ssl_derm/runs/__init__.py", "ssl_derm/runs/diff.py"} <= names
