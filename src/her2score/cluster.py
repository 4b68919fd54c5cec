"""Batch work on a Dask distributed cluster (``--scheduler tcp://host:port``), results back as they finish.

Only the client (the ``her2score`` command) writes: the workers compute a unit of work and return its
rows; the command journals them, so resume files and failure lists are the same as in a local run.
Workers need her2score installed (``pip install 'her2score[distributed]'``, the same version) and must
see the slides, the model and any output folder at the same paths as the client (a shared file system).

Dask is an optional dependency (the ``distributed`` extra), imported only when a scheduler is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

#: Seconds to wait for the scheduler before saying it cannot be reached.
CONNECT_TIMEOUT = 10


@contextmanager
def dask_client(address: str) -> Iterator[Any]:
    """A ``distributed.Client`` connected to the scheduler at ``address``, closed at the end (the cluster
    itself stays up). A clear :class:`~her2score.errors.ConfigError` when Dask is not installed or the
    scheduler does not answer within :data:`CONNECT_TIMEOUT` seconds."""
    from her2score.errors import ConfigError

    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            "--scheduler runs on Dask distributed, which is not installed; "
            "pip install 'her2score[distributed]' (on the workers too)"
        ) from None
    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: {exc}); "
            "start one with 'dask scheduler' and workers with 'dask worker ADDRESS', or leave out --scheduler"
        ) from None
    try:
        yield client
    finally:
        client.close()


def map_as_completed(
    client: Any, function: Callable[..., Any], units: Sequence[Any], *args: Any
) -> Iterator[tuple[int, Any, BaseException | None]]:
    """Run ``function(unit, *args)`` for each unit on the cluster; yield ``(position, result, error)``
    in the order they finish. A unit that raises on its worker, or whose worker dies, gives its error
    (the others go on); interrupting the loop cancels the units not yet done."""
    from distributed import as_completed

    futures = {client.submit(function, unit, *args, pure=False): i for i, unit in enumerate(units)}
    try:
        for future in as_completed(futures, loop=client.loop):
            position = futures[future]
            try:
                yield position, future.result(), None
            except Exception as exc:  # the unit's own failure, or its worker's (KilledWorker)
                yield position, None, exc
            future.release()
    finally:
        client.cancel([f for f in futures if not f.done()])
