"""The README's settings table says what settings.py does: every default it names is the code's."""

from __future__ import annotations

import re
from pathlib import Path

from colqwen_pipeline.settings import Settings
from colqwen_pipeline_tests.conftest import REPO

ROW = re.compile(r"^\| (`COLQWEN_[A-Z0-9_]+`(?:, `COLQWEN_[A-Z0-9_]+`)*) \| ([^|]*) \|")
UNITS = {"K": 1_000, "M": 1_000_000}


def settings_table() -> list[tuple[str, str]]:
    """(variable, default as written) for every row of the table, a row of several variables split."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Settings") :].split("\n## ", 1)[0]
    rows = []
    for line in table.splitlines():
        if match := ROW.match(line):
            names = [name.strip("` ") for name in match.group(1).split(",")]
            cell = match.group(2).strip()
            defaults = [value.strip() for value in cell.split(", ")] if len(names) > 1 else [cell]
            assert len(defaults) == len(names), f"{line}: {len(names)} variables, {len(defaults)} defaults"
            rows += list(zip(names, defaults, strict=True))
    return rows


def same_default(written: str, default: object) -> bool:
    text = written.strip("`").strip()
    if not text or text.startswith(("*(", "$")):  # "(no cache)", "$COLQWEN_HOME/...": nothing set, derived
        return default in ("", None)
    if isinstance(default, bool):
        return text.lower() == str(default).lower()
    if isinstance(default, Path):
        return Path(text) == default
    if isinstance(default, int | float):
        number, _, unit = text.partition(" ")
        return float(number) * UNITS.get(unit, 1) == default
    return text == str(default)


def test_every_default_in_the_readme_settings_table_is_the_codes():
    rows = settings_table()
    fields = Settings.model_fields

    assert len(rows) >= 30, "the settings table was not found in the README"
    unknown = [name for name, _ in rows if name.removeprefix("COLQWEN_").lower() not in fields]
    assert unknown == []
    wrong = {
        name: (written, fields[name.removeprefix("COLQWEN_").lower()].default)
        for name, written in rows
        if not same_default(written, fields[name.removeprefix("COLQWEN_").lower()].default)
    }
    assert wrong == {}, "README default vs settings.py"


def test_the_table_reader_sees_a_wrong_default():
    assert same_default("`20`", 20) and same_default("40 M", 40_000_000) and same_default("`./var`", Path("var"))
    assert not same_default("32", 20) and not same_default("`HNSW`", "IVF_FLAT") and not same_default("`true`", False)
