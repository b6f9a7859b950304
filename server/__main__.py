"""`python -m server` is the `learnloop` command."""

from server.entry import main

# Guarded: worker processes started with "spawn" import the parent's main module again.
if __name__ == "__main__":
    main()
