"""The ``her2score`` command line: one Typer group, one module per subcommand."""
