"""Job stores: the Zarr store of a job (``jobstore``), its lock, the URLs of stores,
inputs and outputs (``urls``), and outputs staged under temporary names (``outputs``)."""
