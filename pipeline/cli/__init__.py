"""The command line: parsing, the subcommands (run, batch, status, submit, qc, weights,
sample)."""
