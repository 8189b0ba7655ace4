"""The configuration docs cannot drift from the schema: docs/config.md is generated from it, and the section and
preset tables of docs/training.md name exactly the schema's sections and the presets."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

from diffusekit.config import PRESETS, Config

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_column(markdown: str, header: str) -> list[str]:
    """The backticked names in the first column of the table whose header row starts with ``header``."""
    lines = markdown[markdown.index(header):].splitlines()[2:]
    names = []
    for line in lines:
        if not line.startswith("|"):
            break
        names.append(re.match(r"\|\s*`([^`]+)`", line).group(1))
    return names


def test_config_reference_is_generated_from_the_schema():
    generator = _load_generator()
    assert (ROOT / "docs" / "config.md").read_text() == generator.render(), "run tools/config_reference.py"


def test_config_reference_has_one_row_per_key():
    text = (ROOT / "docs" / "config.md").read_text()
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.M)
    expected = [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
                for f in dataclasses.fields(getattr(Config(), section.name))]
    assert rows == expected


def test_field_comments_are_read_from_beside_and_above():
    comments = _load_generator().field_comments(type(Config().data))
    assert comments["limit"].startswith("use only the first N examples")
    assert comments["captions"].startswith("text-conditioned on captions")  # a comment on the lines above


def test_training_doc_sections_and_presets_match_the_schema():
    text = (ROOT / "docs" / "training.md").read_text()
    assert _first_column(text, "| section | holds |") == [f.name for f in dataclasses.fields(Config)]
    assert _first_column(text, "| preset | for |") == list(PRESETS)
