"""Where map-reduce over chunks runs: in this process, or on a Dask distributed cluster."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr


class ComputeBackendResource(dg.ConfigurableResource):
    """Per-chunk E-steps and statistics are mapped over chunks through this backend.

    The Dask backend is started on first use and closed when the resource's execution context
    ends (its LocalCluster's worker processes with it); outside Dagster, call `close()`.
    """

    kind: str = Field(default="local", description="'local' or 'dask'")
    address: str = Field(default="", description="Dask scheduler address (tcp://host:8786); empty = a LocalCluster")

    _backend: object = PrivateAttr(default=None)

    def backend(self):
        from latent_atlas.compute.backends import DaskBackend, LocalBackend

        if self.kind == "local":
            return LocalBackend()
        if self.kind != "dask":
            raise ValueError(f"compute backend kind must be 'local' or 'dask', got {self.kind!r}")
        # One cluster per execution context, however many assets of the step map through it.
        if self._backend is None:
            self._backend = DaskBackend(self.address) if self.address else DaskBackend.local(n_workers=2, threads_per_worker=1)
        return self._backend

    def close(self) -> None:
        """Close the Dask client and LocalCluster this resource started, if any."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
