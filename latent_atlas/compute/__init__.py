"""What the heavy kernels run on: the CPU's features (`cpu`), the torch device and a forward batch that
fits a memory budget (`device`), the map-reduce backend (`backends`: local or Dask) and returning freed
heap to the system (`memory`). The lowest room: it imports nothing else of latent_atlas.
"""
