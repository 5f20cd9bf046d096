"""What the server tells clients about its own file system: by default nothing absolute.

An absolute path (the model folder, a base model, a page image) tells a client the server's layout and
user names; unless COLQWEN_SERVER_EXPOSE_PATHS is set, a model path becomes its folder name and a page
image its path under the state directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/():,;]+/)*([^\s'\"/():,;]+)")


def public_model_info(info: dict[str, Any], expose_paths: bool) -> dict[str, Any]:
    """``info`` with every absolute path replaced by its last component (hub ids stay as they are)."""
    if expose_paths:
        return info
    return {key: _name_only(value) for key, value in info.items()}


def public_text(text: str, expose_paths: bool) -> str:
    """A message (an error of the model load) with each absolute path cut to its last component."""
    return text if expose_paths else ABSOLUTE_PATH.sub(r"\1", text)


def public_image_path(image_path: str, home: Path, expose_paths: bool) -> str:
    """A page image relative to the state directory (``pages/<key>/page-0001.png``)."""
    path = Path(image_path)
    if expose_paths or not path.is_absolute():
        return image_path
    try:
        return path.relative_to(home).as_posix()
    except ValueError:  # stored under another state directory: the file name still identifies the page
        return path.name


def _name_only(value: Any) -> Any:
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value
