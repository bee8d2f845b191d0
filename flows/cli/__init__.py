"""`seke`, the command-line tool: thin Typer commands that parse arguments and call library
functions in `tasks/` (the workflows live there, not here).

- `common`: the Typer app, consoles, params with `-S` overrides, errors, progress, running DVC;
- `main`: run, init, status, estimate, models ...;
- `feab`: split, bench, quality, compare;
- `publish`: export, report;
- `review`: review export / import.

The entry point is `flows.cli.main:app` (`python -m flows.cli` runs it too).
"""
