"""The ``switchkd`` command line: each subcommand builds a config and calls one library function."""
