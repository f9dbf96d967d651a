"""`python ranges.py ARGS`: the same as `rnic-ranges ARGS` (rnic/commands/ranges.py), from a checkout."""

from rnic.commands.ranges import main

if __name__ == "__main__":
    main()
