"""The upscale every job shares: the base graph (store, progress, estimate and upscale over
frames and regions), the region stages and their worker pool, the conditioning."""
