"""The video path: probe, decode, encode, assemble, their stages and graph."""
