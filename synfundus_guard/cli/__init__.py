"""Command-line interface: thin Typer wrappers over library functions; the only place with exit codes."""
