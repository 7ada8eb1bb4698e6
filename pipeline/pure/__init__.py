"""Pure helpers (numpy only, no I/O): tiling geometry, value ranges, shot cuts."""
