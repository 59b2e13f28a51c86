"""A sweep file read and planned: its keys checked, command-line overrides applied, every cell laid out."""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path

import yaml

from ssl_derm.config import ConfigError, read_yaml, set_nested
from ssl_derm.runs import flatten
from ssl_derm.select import check_select


_TOP_KEYS = {"out", "seeds", "pretrain_per_seed", "exclude_test", "downstream", "metrics", "common", "pretrain",
             "checkpoint", "finetune", "segment", "grid", "select"}
_STAGE_KEYS = {"pretrain": {"config", "set"}, "finetune": {"config", "set", "base", "per_protocol"},
               "segment": {"config", "set"}}


def _overrides(flat: dict) -> list:
    """Sweep values as command-line overrides, so they win over the stage's YAML file."""
    return [f"{k}={json.dumps(v)}" for k, v in flat.items()]


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _set_override(spec: dict, key: str, value) -> None:
    """``common.K``, ``grid.K`` and ``<stage>.set.K`` name one config key ``K`` of that section (its keys are
    dotted: ``grid.finetune.train.lr=[1e-3]`` replaces that axis); any other key is a path into the file."""
    parts = key.split(".")
    if parts[0] in ("common", "grid") and len(parts) > 1:
        spec.setdefault(parts[0], {})[".".join(parts[1:])] = value
    elif parts[0] in ("pretrain", "finetune", "segment") and len(parts) > 2 and parts[1] == "set":
        spec.setdefault(parts[0], {}).setdefault("set", {})[".".join(parts[2:])] = value
    else:
        set_nested(spec, parts, value)


def load_sweep(path, overrides=()) -> dict:
    """A sweep file (or a spec already read, as a dict) with ``key=value`` overrides, checked."""
    spec = copy.deepcopy(path) if isinstance(path, dict) else read_yaml(path)
    path = "<given spec>" if isinstance(path, dict) else path
    for text in overrides:
        key, _, raw = text.partition("=")
        _set_override(spec, key, yaml.safe_load(raw))
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"sweep file '{path}': unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    spec.setdefault("seeds", [0])
    spec.setdefault("downstream", "finetune")
    if spec["downstream"] not in ("finetune", "segment"):
        raise ConfigError(f"sweep file '{path}': downstream must be finetune or segment, not {spec['downstream']!r}")
    if not isinstance(spec.get("grid", {}), dict):
        raise ConfigError(f"sweep file '{path}': grid must map config keys to lists of values")
    for k, v in spec.get("grid", {}).items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"sweep file '{path}': grid key '{k}' needs a non-empty list of values, got {v!r}")
    inits = spec.get("grid", {}).get("init", [])
    bad = [v for v in inits if v not in ("pretrained", "random")]
    if bad:
        raise ConfigError(f"sweep file '{path}': grid key 'init' takes pretrained and random, not {bad}")
    for stage, allowed in _STAGE_KEYS.items():
        sec = spec.get(stage)
        if sec is not None and (not isinstance(sec, dict) or set(sec) - allowed):
            raise ConfigError(f"sweep file '{path}': {stage} takes the keys {sorted(allowed)}, got {sec!r}")
    _check_per_protocol(path, spec.get("finetune", {}).get("per_protocol"))
    if spec.get("checkpoint") is not None:
        if "pretrain" in spec:
            raise ConfigError(f"sweep file '{path}': give a pretrain stage or a checkpoint (an encoder.safetensors "
                              "that the pretrained cells start from), not both")
        if not Path(str(spec["checkpoint"])).is_file():
            raise ConfigError(f"sweep file '{path}': checkpoint '{spec['checkpoint']}' does not exist; give the "
                              "encoder.safetensors of `ssl-derm pretrain`")
    if "pretrained" in inits and "pretrain" not in spec and spec.get("checkpoint") is None:
        # its cells would silently start from random weights
        raise ConfigError(f"sweep file '{path}': grid init lists 'pretrained' but the sweep has no pretrain stage; "
                          "add a pretrain: section (config, set), a checkpoint: (an encoder.safetensors), or leave "
                          "'pretrained' out")
    check_select(path, spec)
    return spec


def _check_per_protocol(path, per: object) -> None:
    """``finetune.per_protocol``: {protocol name: {key: value}}, keys set for that protocol's cells only."""
    if per is None:
        return
    from ssl_derm.registry import names

    known = names("protocol")
    if not isinstance(per, dict) or not all(isinstance(v, dict) for v in per.values()):
        raise ConfigError(f"sweep file '{path}': finetune.per_protocol maps a protocol name to its keys "
                          f"({{fixmatch: {{train.max_steps: 200}}}}), got {per!r}")
    bad = [p for p in per if p not in known]
    if bad:
        raise ConfigError(f"sweep file '{path}': finetune.per_protocol names unknown protocol(s) {bad}; "
                          f"available: {', '.join(known)}")


def merge_grids(spec: dict, earlier: dict) -> dict:
    """The spec whose tables cover this call's grid and an earlier call's in the same folder: the union of
    each axis's values and of the seeds (this call's first), when everything else is the same; otherwise
    this call's spec alone (the earlier cells were made for another setting)."""
    rest = {k: v for k, v in spec.items() if k not in ("grid", "seeds")}
    if not earlier or {k: v for k, v in earlier.items() if k not in ("grid", "seeds")} != rest \
            or set(earlier.get("grid", {})) != set(spec.get("grid", {})):
        return spec
    grid = {k: _union(v, earlier["grid"][k]) for k, v in spec.get("grid", {}).items()}
    return dict(spec, grid=grid, seeds=_union(spec["seeds"], earlier.get("seeds", [])))


def _union(a: list, b: list) -> list:
    return a + [v for v in b if v not in a]


def plan_cells(spec: dict) -> list:
    """Every (grid point, seed) as a dict: id, values, seed, pretrain overrides (or None), downstream overrides."""
    grid = spec.get("grid", {})
    keys = list(grid)
    down = spec["downstream"]
    cells = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        pre = flatten(spec.get("common", {}))
        pre.update(flatten(spec.get("pretrain", {}).get("set", {})))
        dst = flatten(spec.get("common", {}))
        dst.update(flatten(spec.get(down, {}).get("set", {})))
        for k, v in values.items():
            if k == "init":
                continue
            stage, _, rest = k.partition(".")
            if stage == "pretrain":
                pre[rest] = v
            elif stage == down:
                dst[rest] = v
            else:
                pre[k] = v
                dst[k] = v
        needs_pretrain = values.get("init", "pretrained") != "random" and "pretrain" in spec
        for seed in spec["seeds"]:
            p = dict(pre, seed=0 if not spec.get("pretrain_per_seed") else seed) if needs_pretrain else None
            d = dict(dst, seed=seed)
            cid = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in values.items()) + f"_seed-{seed}"
            cells.append({"id": cid.replace("/", "-"), "values": values, "seed": seed, "pretrain": p, "downstream": d})
    return cells
