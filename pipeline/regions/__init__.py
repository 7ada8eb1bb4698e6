"""What every job's graph builds on: the base graph (store, progress, estimate and upscale
over frames and regions), the region stages and their worker pool, the conditioning, and
the planned job a graph is built from."""
