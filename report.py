"""`python report.py ARGS`: the same as `rnic-report ARGS` (rnic/commands/report.py), from a checkout."""

from rnic.commands.report import main

if __name__ == "__main__":
    main()
