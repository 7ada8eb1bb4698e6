"""The image path's stages: ingest bands, build the pyramid, write the output file.

ingest   image row bands -> ``input``                  (1 CPU each)
pyramid  one block of a pyramid level from the level below (1 CPU)
write    the output file's pixels (TIFF, PNG/JPEG, OME-Zarr blocks) (1 CPU)
"""

from __future__ import annotations

from pipeline.runner.stage import Stage

INGEST = Stage("ingest", "pipeline.image.ingest:ingest_rows_task", cpus=1, priority=1)
PYRAMID = Stage("pyramid", "pipeline.image.publish:downsample_task", cpus=1, priority=4)
WRITE_TIFF = Stage("write", "pipeline.image.publish:write_tiff_task", cpus=1, priority=4)
WRITE_SMALL = Stage("write", "pipeline.image.publish:write_small_task", cpus=1, priority=4)
WRITE_OME = Stage("write", "pipeline.image.publish:copy_to_ome_task", cpus=1, priority=4)
