"""The `loom` command; one module per subcommand, main.py only dispatches."""
