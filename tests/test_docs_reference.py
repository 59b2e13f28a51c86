"""The generated configuration reference lists every key the config loader accepts, and the README stays short.

The keys are found here without the generator: by walking each command's top-level dataclass and, for a plug-in
section, the settings class of every registered plug-in of its kind (as ``ssl_derm.plugins.plugin_section``
picks it), and each is loaded through the command's own loader to prove it is accepted.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from ssl_derm import docs_reference, registry
from ssl_derm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `([^`]+)` \|(.*)\|$")
PLUGIN_HEADING = re.compile(r"^### `(\w+)\.(\w+): (\w+)`")


def _accepted(command: str) -> dict:
    """{plug-in section -> {plug-in name -> keys}} and the key ``None`` -> the plain keys, from the dataclasses."""
    top = docs_reference._obj(docs_reference.COMMANDS[command][0])
    out: dict = {None: set()}

    def walk(obj, prefix):
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if "plugin" in f.metadata:
                kind, base = f.metadata["plugin"], f.metadata.get("base") or hints[f.name]
                out[f.name] = {name: {f"{f.name}.{g.name}" for g in dataclasses.fields(
                    registry.settings_class(kind, name) or base)} for name in registry.names(kind)}
            elif dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[None].add(prefix + f.name)

    walk(top(), "")
    return out


def _documented(text: str) -> tuple:
    """(keys of the tables that hold for every plug-in, {(section, plug-in name) -> keys of its own table})."""
    shared, own, where = set(), {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            where = None
        m = PLUGIN_HEADING.match(line)
        if m:
            where = (m.group(1), m.group(3))
        row = ROW.match(line)
        if row:
            (own.setdefault(where, set()) if where else shared).add(row.group(1))
    return shared, own


@pytest.mark.parametrize("command", sorted(docs_reference.COMMANDS))
def test_reference_lists_every_key_the_loader_accepts(command, tmp_path):
    docs_reference.write(tmp_path)
    page = (tmp_path / f"{command}.md").read_text()
    shared, own = _documented(page)
    accepted = _accepted(command)
    load = docs_reference.loader(command)
    top = docs_reference._obj(docs_reference.COMMANDS[command][0])
    missing = sorted(accepted[None] - shared)
    assert not missing, f"ssl-derm {command}: keys the loader accepts but the reference lacks: {missing}"
    for section, plugins in accepted.items():
        if section is None:
            continue
        meta = top.__dataclass_fields__[section].metadata
        sel = f"{section}.{meta['key']}"
        for name, keys in plugins.items():
            listed = shared | own.get((section, name), set())
            missing = sorted(keys - listed)
            assert not missing, f"ssl-derm {command}, {sel}={name}: keys missing from the reference: {missing}"
            extra = sorted(own.get((section, name), set()) - keys)
            assert not extra, f"ssl-derm {command}, {sel}={name}: the reference lists keys it does not accept: {extra}"
            settings = registry.settings_class(meta["plugin"], name)
            for key in sorted(keys - {sel}):  # each key loads with the plug-in chosen: the loader accepts it
                load([f"{sel}={name}", f"{key}={_value_of(top, section, settings, key)}"])
    for key in sorted(accepted[None]):
        load([f"{key}={_value_of(top, None, None, key)}"])
    with pytest.raises(ConfigError):  # and the loader is not looser than the walk: a made-up key is refused
        load(["not_a_key=1"])


def _value_of(top, section, settings_cls, key):
    """The default of ``key`` as a YAML override value."""
    import json

    if section is None:
        obj = top()
        for part in key.split("."):
            obj = getattr(obj, part)
    else:
        meta = top.__dataclass_fields__[section].metadata
        obj = getattr((settings_cls or meta.get("base") or typing.get_type_hints(top)[section])(), key.split(".", 1)[1])
    return "null" if obj is None else json.dumps(obj)


@pytest.mark.parametrize("command", sorted(docs_reference.COMMANDS))
def test_every_key_has_help_and_a_type(command):
    missing = [m.group(1) for line in docs_reference.page(command).splitlines() if (m := ROW.match(line))
               and not m.group(2).split("|")[-1].strip()]
    assert not missing, (f"ssl-derm {command}: keys without help (add a comment on the field's line in its "
                         f"settings dataclass): {missing}")


def test_help_comes_from_the_field_comment_and_a_leading_block():
    @dataclasses.dataclass
    class Probe:
        plain: int = 1  # the field's own comment
        # a block that describes the field below
        blocked: int = 2
        # a section header that leads into:
        joined: int = 3  # the field's own part

    assert docs_reference._help(Probe, "plain") == "the field's own comment"
    assert docs_reference._help(Probe, "blocked") == "a block that describes the field below"
    assert docs_reference._help(Probe, "joined") == "a section header that leads into: the field's own part"


def test_allowed_values_come_from_the_loader():
    page = docs_reference.page("finetune")
    assert re.search(r"^\| `split.mode` \| str \| `draw` \| one of draw, given \|", page, re.M), \
        "split.mode's choices, as check_finetune_config states them"
    assert re.search(r"^\| `split.fraction` \| float \| `0.1` \| must be in \(0, 1\] \|", page, re.M)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; keep it a five-minute read (<= 220), move the rest to docs/"


def test_method_card_keys_are_the_methods_own():
    from ssl_derm.errors import UnknownNameError

    simclr = docs_reference.plugin_keys("method", "simclr")
    assert "`method.temperature`" in simclr and "`method.export`" not in simclr  # shared keys live on the reference page
    with pytest.raises(UnknownNameError):
        docs_reference.plugin_keys("method", "not_a_method")
