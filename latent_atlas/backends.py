"""Compute backends: where the per-chunk E-step of the clustering runs.

A backend maps a function over items and returns the results in item order. The caller reduces
them itself in that order, so the numbers never depend on which backend ran the map.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence


class Backend(Protocol):
    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list:
        """[fn(item, **shared) for item in items], in item order."""


class LocalBackend:
    """Runs every item in this process, one after the other (the default)."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list:
        return [fn(item, **shared) for item in items]


class DaskBackend:
    """Runs items as tasks on a dask.distributed cluster.

    `client` is a `dask.distributed.Client` or a scheduler address ("tcp://host:8786").
    Shared arguments (e.g. the current centroids) are scattered once per map, not once per item.
    """

    def __init__(self, client: Any):
        from dask.distributed import Client  # optional dependency: only needed for this backend

        self.client = Client(client) if isinstance(client, str) else client

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list:
        scattered = {name: self.client.scatter(value, broadcast=True, hash=False) for name, value in shared.items()}
        futures = self.client.map(fn, list(items), pure=False, **scattered)
        try:
            return self.client.gather(futures)
        finally:
            for future in futures:
                future.release()
            for future in scattered.values():
                future.release()
