"""The configs that ship inside the package (``ssl_derm/configs``; the checkout's top-level ``configs/``
is a link to it): list them, print them, and resolve a packaged name such as ``finetune/linear``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ssl_derm.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_configs() -> List[str]:
    """Names like ``pretrain/simclr_resnet18`` of every packaged YAML file, sorted."""
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))


def packaged_config(name) -> Optional[Path]:
    """The packaged file for ``name`` (``finetune/linear``, ``finetune/linear.yaml`` or
    ``configs/finetune/linear.yaml``), or None when there is none."""
    rel = str(name).replace("\\", "/")
    if rel.startswith("configs/"):
        rel = rel[len("configs/"):]
    if not rel or rel.startswith("/") or ".." in Path(rel).parts:
        return None
    path = CONFIG_DIR / (rel if rel.endswith((".yaml", ".yml")) else rel + ".yaml")
    return path if path.is_file() else None


def is_packaged(path) -> bool:
    """True when ``path`` names (or resolves to) a config shipped inside the package."""
    p = resolve_config(path)
    try:
        return p.resolve().is_relative_to(CONFIG_DIR.resolve())
    except OSError:
        return False


def resolve_config(path) -> Path:
    """An existing file as given, else the packaged config of that name, else the path unchanged (so the
    loader's 'does not exist' message names what the user typed)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    return packaged_config(path) or p


def show_config(name) -> str:
    """The text of a packaged config; an unknown name is a ValueError listing the close ones."""
    path = packaged_config(name)
    if path is None:
        import difflib

        close = difflib.get_close_matches(str(name).replace(".yaml", ""), list_configs(), n=5, cutoff=0.5)
        raise ConfigError(f"no packaged config '{name}'; `ssl-derm configs list` prints them all"
                         + (f" (close: {', '.join(close)})" if close else ""))
    return path.read_text()
