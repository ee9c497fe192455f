"""MkDocs hook: the site's title carries the package version, read from dqnkit/__init__.py
(the one place it is written), so the docs cannot name another version than the package."""

import re
from pathlib import Path


def package_version() -> str:
    """``__version__`` from dqnkit/__init__.py, read as text (no import, no torch)."""
    text = (Path(__file__).parent.parent / "dqnkit" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if match is None:
        raise RuntimeError("dqnkit/__init__.py has no __version__ line")
    return match.group(1)


def on_config(config, **kwargs):
    """Set the site name to ``dqnkit <version>`` and ``extra.version`` for the pages."""
    version = package_version()
    config["site_name"] = f"dqnkit {version}"
    config["extra"]["version"] = version
    return config
