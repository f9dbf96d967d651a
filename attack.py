"""`python attack.py ARGS`: the same as `rnic-attack ARGS` (rnic/commands/attack.py), from a checkout."""

from rnic.commands.attack import main

if __name__ == "__main__":
    main()
