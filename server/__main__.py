"""`python -m server` is the `learnloop` command."""

from server.cli import main

main()
