"""The configuration reference, written from the settings dataclasses (never by hand).

``python -m ssl_derm.docs_reference DIR`` writes one Markdown page per command (``DIR/<command>.md``):
every key the command's config loader accepts, with its type, default, allowed values and one line of help.
Where each part comes from:

- keys, types and defaults: the command's top-level dataclass (:data:`COMMANDS`), walked as the loader
  walks it; a plug-in section (``method``, ``protocol``, ``segment``, ``augment``) gets the keys every
  plug-in of its kind shares, then one table per registered plug-in with the keys it adds;
- help: the comment on the field's line (or the comment block above it) in the source of the dataclass that
  declares the field;
- allowed values: what the loader itself says when given a value no key accepts (``'?'`` for text,
  ``-1e9`` and ``1e9`` for numbers), so the page states the checks the loader makes, no more.

The docs build runs it through ``docs/hooks.py``; ``tests/test_docs_reference.py`` compares its pages with
the loader.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import io
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ssl_derm.errors import ConfigError

# command -> (top-level config class, the function that loads and checks it)
COMMANDS: Dict[str, tuple] = {
    "pretrain": ("ssl_derm.config:PretrainConfig", "ssl_derm.config:load_config"),
    "finetune": ("ssl_derm.evaluate.config:FinetuneConfig", "ssl_derm.evaluate.config:load_finetune_config"),
    "segment": ("ssl_derm.segmenters.config:SegmentConfig", "ssl_derm.segmenters.config:check_segment_config"),
    "predict": ("ssl_derm.commands.predict:PredictConfig", "ssl_derm.config:load_config"),
    "robustness": ("ssl_derm.robustness.suite:RobustnessConfig", "ssl_derm.robustness.suite:check_robustness_config"),
}
_PROBES = {str: ["not-a-choice"], int: [-10**9, 10**9], float: [-1e9, 1e9]}


def _obj(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def loader(command: str) -> Callable[[list], object]:
    """``overrides -> checked config`` for ``command``, as the command itself loads it."""
    cls_spec, fn_spec = COMMANDS[command]
    cls, fn = _obj(cls_spec), _obj(fn_spec)
    from ssl_derm.config import load_config

    if fn is load_config:
        return lambda ov: load_config(cls, None, ov)
    if fn.__name__.startswith("load_"):
        return lambda ov: fn(None, ov)
    return lambda ov: fn(load_config(cls, None, ov))


@dataclasses.dataclass
class Row:
    key: str  # dotted, e.g. protocol.threshold
    type: str
    default: str
    allowed: str
    help: str


# ----------------------------------------------------------------------------- help from the source
@functools.lru_cache(maxsize=None)
def _comments(cls) -> Dict[str, str]:
    """Field name -> help text, from the comments in ``cls``'s own source."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    out, block, pending = {}, [], None
    lines = src.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if lines[tok.start[0] - 1].strip().startswith("#"):
                block.append(text)  # a comment line of its own: help for the field below it
            elif pending:  # the field's own comment wins over a block above it, unless that block leads into it
                lead = out.get(pending, "")
                out[pending] = f"{lead} {text}" if lead.endswith(":") else text
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
            line = lines[tok.start[0] - 1]
            m = re.match(r"\s{4}(\w+)\s*:", line)
            if m and m.group(1) == tok.string:
                pending = tok.string
                if block:
                    out[pending] = " ".join(block)
        elif tok.type == tokenize.NEWLINE:
            if pending:
                block = []
            pending = None
        elif tok.type == tokenize.NL and not lines[tok.start[0] - 1].strip():
            block = []  # a blank line ends a comment block
    return out


def _help(cls, name: str) -> str:
    """The help of field ``name``: the comments in the source of the class in ``cls``'s MRO that declares it."""
    for c in cls.__mro__:
        if name in c.__dict__.get("__annotations__", {}):
            return _comments(c).get(name, "")
    return ""


# ----------------------------------------------------------------------------- values
def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) + " or null"
    if origin in (list, List):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin in (dict, Dict):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _show(value) -> str:
    import json

    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def _allowed(load, key: str, tp, base: list) -> str:
    """What the loader says about a value that no key accepts: its choices or its range."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        tp = [a for a in args if a is not type(None)][0]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    probes = [[p] for p in _PROBES.get(args[0], [])] if origin in (list, List) and args else _PROBES.get(tp, [])
    said = []
    for value in probes:
        try:
            load(base + [f"{key}={_show(value)}"])
        except ConfigError as e:
            m = re.search(rf"config keys? '{re.escape(key)}'[:;]? (.*)$", str(e))
            if not m:  # a message about another key, or this one only in passing
                continue
            msg = re.sub(r",? got .*$", "", m.group(1)).strip()
            msg = re.sub(r"^(.* is not|must be) one of", "one of", msg)
            if msg and msg not in said:
                said.append(msg)
    return "; ".join(said)


def rows(cls, load, prefix: str = "", base: Optional[list] = None, skip=()) -> List[Row]:
    """One row per key of dataclass ``cls`` (an instance gives the defaults) below ``prefix``; plug-in
    sections are left to :func:`plugin_tables`."""
    obj = cls() if isinstance(cls, type) else cls
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or "plugin" in f.metadata:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += rows(value, load, f"{prefix}{f.name}.", base)
            continue
        key = prefix + f.name
        out.append(Row(key, _type_name(hints[f.name]), _show(value), _allowed(load, key, hints[f.name], base or []),
                       _help(cls, f.name)))
    return out


def plugin_tables(top, load) -> List[tuple]:
    """``(Markdown heading, rows)`` per plug-in section of ``top``: the keys shared by its kind, then each plug-in's own."""
    from ssl_derm import registry

    tables = []
    for f in dataclasses.fields(top):
        if "plugin" not in f.metadata:
            continue
        meta, section = f.metadata, f.name
        kind, sel = meta["plugin"], meta["key"]
        current = getattr(top(), section)
        shared = meta.get("base") or typing.get_type_hints(top)[section]  # what every plug-in of the kind holds
        names = registry.names(kind)
        aliases = "".join(f"; {a} = {t}" for a, t in meta.get("aliases", {}).items())
        empty = "; empty: the method's own preset" if meta.get("optional") else ""
        sel_row = Row(f"{section}.{sel}", "str", _show(getattr(current, sel)), "one of " + ", ".join(names) + aliases
                      + empty, _help(shared, sel) or f"the {kind} whose settings this section holds")
        shared_keys = {g.name for g in dataclasses.fields(shared)}
        tables.append((f"## `{section}.*`: every {kind}", [sel_row] + rows(shared(), load, section + ".", skip={sel})))
        for name in names:
            cls = registry.settings_class(kind, name) or shared
            own = {g.name for g in dataclasses.fields(cls)} - shared_keys
            if not own:
                continue
            obj = cls()
            setattr(obj, sel, name)
            tables.append((f"### `{section}.{sel}: {name}`", rows(obj, load, section + ".", [f"{section}.{sel}={name}"],
                                                              skip=shared_keys)))
    return tables


# ----------------------------------------------------------------------------- Markdown
def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell (``<id>.png`` is no HTML tag, ``a | b`` no column)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("\n", " ")


def table(rs: List[Row]) -> str:
    lines = ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    for r in rs:
        default = f"`{_cell(r.default)}`" if r.default else ""
        lines.append(f"| `{r.key}` | {r.type} | {default} | {_cell(r.allowed)} | {_cell(r.help)} |")
    return "\n".join(lines)


def page(command: str) -> str:
    """The reference page of ``command``: every key its loader accepts."""
    top, load = _obj(COMMANDS[command][0]), loader(command)
    doc = (inspect.getdoc(top) or "").split("\n")[0]
    parts = [f"# `ssl-derm {command}`", "",
             "<!-- written by ssl_derm/docs_reference.py from the settings dataclasses; do not edit -->", "",
             f"{doc} Set any key " + ("" if command == "predict" else "in the YAML file given with `--config` or ")
             + "on the command line as `key.sub=value` (values are read as YAML). An unknown key or a value "
             "outside *allowed* is an error that names the key.", "", "## Sections", "", table(rows(top, load))]
    for title, rs in plugin_tables(top, load):
        parts += ["", title, "", table(rs)]
    return "\n".join(parts) + "\n"


def plugin_keys(kind: str, name: str) -> str:
    """The table of the keys that plug-in ``name`` of ``kind`` adds to its section (for a method card)."""
    from ssl_derm import registry

    command = {"method": "pretrain", "protocol": "finetune", "segmenter": "segment"}[kind]
    top, load = _obj(COMMANDS[command][0]), loader(command)
    for title, rs in plugin_tables(top, load):
        if title.endswith(f": {name}`"):
            return table(rs)
    registry.get(kind, name)  # an unknown name is an error naming it
    return "No keys of its own beyond those every " + kind + " shares."


def write(out_dir) -> List[Path]:
    """Write ``<out_dir>/<command>.md`` for every command; a page whose text is unchanged is not rewritten
    (so a docs server watching the folder does not rebuild for nothing)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for command in COMMANDS:
        path, text = out_dir / f"{command}.md", page(command)
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(sys.argv[1] if len(sys.argv) > 1 else "docs/reference"):
        print(p)
