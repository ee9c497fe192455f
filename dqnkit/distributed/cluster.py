"""Joining a Ray cluster, or starting a local one, with failures that say what to do.

``ray.init(address=...)`` on its own retries for about 20 s, printing a warning every second,
then raises a ``ConnectionError`` that does not say why. Here the wait is bounded, Ray's
retry chatter is kept off the terminal, and the three failures a user meets become one line
each (exit 2): nothing listens at the address, the cluster refuses this machine's token, or
its Ray/Python versions differ from this machine's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from dqnkit.errors import DqnkitError, first_line

AUTH_HINT = (
    "it uses token authentication: give this machine the cluster's token (copy ~/.ray/auth_token "
    "from the head, or set RAY_AUTH_TOKEN) and set RAY_AUTH_MODE=token (README: Ape-X on a cluster)"
)


def connect(ray: Any, address: str | None, local_cpus: int, timeout_s: float = 10.0) -> None:
    """``ray.init`` a local cluster (``address`` None, ``local_cpus`` logical CPUs) or join the
    one at ``address`` (``auto`` or host:port), giving up after about ``timeout_s`` seconds."""
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if not address:
        # "local": a Ray of this run's own. Without it ray.init joins whatever cluster
        # /tmp/ray/ray_current_cluster or RAY_ADDRESS names, and then refuses num_cpus.
        ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, **quiet)
        return
    if address != "auto":
        _probe(address, timeout_s)
    captured = _Captured()
    try:
        with _ray_env(RAY_gcs_server_port_wait_time_s=str(max(1, round(timeout_s)))), _stderr_captured() as captured:
            ray.init(address=address, **quiet)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or its own types here
        raise DqnkitError(_explain(address, exc, captured.text)) from None


def _probe(address: str, timeout_s: float) -> None:
    """Refuse an address where nothing listens, before Ray's own long retry loop."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DqnkitError(f"--ray-address {address!r} is not host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise DqnkitError(
            f"nothing answers at Ray address {address} ({exc.strerror or exc}): start the head there with "
            f"`ray start --head --port={port}`, or check the host and port"
        ) from None


def _explain(address: str, exc: BaseException, stderr: str) -> str:
    """The one line for a failed join, from the exception chain and what Ray printed."""
    chain, cause = [], exc
    while cause is not None:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    said = "\n".join(chain) + "\n" + stderr
    if "InvalidAuthToken" in said or "Unauthenticated" in said or "AuthenticationError" in said:
        return f"the Ray cluster at {address} refused this machine: {AUTH_HINT}"
    if "Version mismatch" in said or "version mismatch" in said:
        line = next(line for line in said.splitlines() if "ersion mismatch" in line)
        return f"cannot join the Ray cluster at {address}: {line.strip()}; install the cluster's Ray and Python here"
    return f"could not join the Ray cluster at {address} ({first_line(exc)}); is it running? (`ray status` there)"


@contextlib.contextmanager
def _ray_env(**values: str) -> Iterator[None]:
    """Set Ray's environment knobs for the join only (the user's own settings win)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class _Captured:
    text = ""


@contextlib.contextmanager
def _stderr_captured() -> Iterator[_Captured]:
    """Capture file descriptor 2 (Ray's C++ client writes its retry warnings there, a line a
    second): read for the error if the join fails, passed on if it succeeds with something else."""
    captured = _Captured()
    with tempfile.TemporaryFile() as kept:
        saved = os.dup(2)
        os.dup2(kept.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            captured.text = kept.read().decode(errors="replace")
    if captured.text and "Failed to get cluster ID" not in captured.text:
        sys.stderr.write(captured.text)
