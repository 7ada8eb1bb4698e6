"""Job graphs: what a job's stages are and how their calls depend on each other.

``job`` holds what every job shares (the store, progress, the estimate and upscale
stages over frames and regions); ``image`` and ``video`` add their ingest and publish
stages; ``sequence`` is the video graph writing frame files instead of encoding. The
runner's loop (``pipeline.runner.loop``) runs them, one or many at once.
"""
