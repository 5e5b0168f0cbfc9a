"""`python -m semwatch` is the `semwatch` command."""

from semwatch.cli import main

main()
