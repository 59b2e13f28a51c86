"""mkdocs hooks: pages written by code at build time, so they cannot drift from what they describe.

- ``reference/<command>.md``: the configuration reference of each command (``ssl_derm.docs_reference``);
- ``results.md``: ``benchmarks/RESULTS.md``, the recorded results by topic;
- ``<!-- keys: KIND NAME -->`` in a page (a method card): the table of that plug-in's own keys.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

from ssl_derm import docs_reference

ROOT = Path(__file__).resolve().parents[1]
KEYS = re.compile(r"<!-- keys: (\w+) (\w+) -->")


def on_files(files, config):
    for command in docs_reference.COMMANDS:
        files.append(File.generated(config, f"reference/{command}.md", content=docs_reference.page(command)))
    files.append(File.generated(config, "results.md", content=(ROOT / "benchmarks" / "RESULTS.md").read_text()))
    return files


def on_page_markdown(markdown, page, config, files):
    return KEYS.sub(lambda m: docs_reference.plugin_keys(m.group(1), m.group(2)), markdown)
