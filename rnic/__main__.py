"""`python -m rnic COMMAND ...`: see rnic.commands."""

from rnic.commands import main

if __name__ == "__main__":
    main()
