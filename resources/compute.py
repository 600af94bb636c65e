"""Where map-reduce over chunks runs: in this process, or on a Dask distributed cluster."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class ComputeBackendResource(dg.ConfigurableResource):
    """Per-chunk E-steps and statistics are mapped over chunks through this backend."""

    kind: str = Field(default="local", description="'local' or 'dask'")
    address: str = Field(default="", description="Dask scheduler address (tcp://host:8786); empty = a LocalCluster")

    def backend(self):
        from latent_atlas.backends import DaskBackend, LocalBackend

        if self.kind == "local":
            return LocalBackend()
        if self.kind == "dask":
            if self.address:
                return DaskBackend(self.address)
            from dask.distributed import Client, LocalCluster

            return DaskBackend(Client(LocalCluster(n_workers=2, threads_per_worker=1)))
        raise ValueError(f"compute backend kind must be 'local' or 'dask', got {self.kind!r}")
