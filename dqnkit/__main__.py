"""``python -m dqnkit``: the same command line as the ``dqnkit`` script."""

from dqnkit.cli import entry

entry()
