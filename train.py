"""`python train.py ARGS`: the same as `rnic-train ARGS` (rnic/commands/train.py), from a checkout."""

from rnic.commands.train import main

if __name__ == "__main__":
    main()
