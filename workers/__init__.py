"""Code that runs inside Ray tasks and actors: upscalers and the region worker."""
