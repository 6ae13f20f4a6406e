"""Building blocks of ``scripts/bench``: child processes, reports, and one module per subcommand."""
