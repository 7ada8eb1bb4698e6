"""The command line: parsing, the subcommands, the progress bars."""
