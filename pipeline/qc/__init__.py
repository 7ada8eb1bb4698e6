"""``run_pipeline.py qc SOURCE OUTPUT``: flicker, seams and fidelity of an upscale.

``measure`` walks the two files frame by frame through the ``meters``; ``metrics`` holds
the pure figures, ``media`` the readers, ``report`` the table and plots, ``command`` the
subcommand."""
