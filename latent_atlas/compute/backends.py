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
    `close()` (or leaving a `with` block) closes what this backend opened itself (the client made
    from an address, the cluster made by `local()`); a client passed in belongs to the caller.
    """

    def __init__(self, client: Any):
        from dask.distributed import Client  # optional dependency: only needed for this backend

        self._owns_client = isinstance(client, str)
        self.client = Client(client) if self._owns_client else client
        self.cluster: Any = None  # a LocalCluster this backend started and must close

    @classmethod
    def local(cls, n_workers: int = 2, threads_per_worker: int = 1) -> "DaskBackend":
        """A backend on a LocalCluster of its own, closed with the backend."""
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker)
        backend = cls(Client(cluster))
        backend._owns_client, backend.cluster = True, cluster
        return backend

    def close(self) -> None:
        """Close the client and cluster this backend started (worker processes and ports included)."""
        if self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> "DaskBackend":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

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
