"""`python -m server` is the `learnloop` command."""

from server.entry import main

main()
