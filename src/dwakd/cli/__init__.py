"""The ``dwakd`` command line (one module per subcommand)."""
