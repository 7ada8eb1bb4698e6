"""The image path: probe, metadata, ingest, publish writers, their stages and graph."""
