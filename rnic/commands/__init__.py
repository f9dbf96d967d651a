"""rnic's commands: `rnic COMMAND ARGS...` (also `python -m rnic COMMAND ...`) runs one of them, as do the
console scripts `rnic-train`, `rnic-attack`, `rnic-ranges`, `rnic-report`, `rnic-data` and the scripts
train.py, attack.py, ranges.py and report.py of a checkout."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# command -> (module, what it does)
COMMANDS = {
    "train": ("rnic.commands.train", "train or finetune a codec (Hydra: rnic/conf/train.yaml)"),
    "attack": (
        "rnic.commands.attack",
        "attack a codec, measured on real bitstreams (Hydra: rnic/conf/attack.yaml)",
    ),
    "ranges": ("rnic.commands.ranges", "measure latent_clamp's ranges of y (Hydra: rnic/conf/attack.yaml)"),
    "report": ("rnic.commands.report", "gather runs and sweeps into a report, check model cards"),
    "data": ("rnic.download", "download Kodak, CLIC, DIV2K or Tecnick into $RNIC_DATA_DIR"),
}
# Lightning starts DDP's other ranks by re-running this process's command line without the command's
# name (Hydra has consumed it): they find it here.
COMMAND_VARIABLE = "RNIC_COMMAND"


def usage(prog: str) -> str:
    lines = [f"usage: {prog} COMMAND [ARGS...]   ({prog} COMMAND --help for a command's options)", ""]
    lines += [f"  {name:<8} {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    prog = "python -m rnic" if Path(sys.argv[0]).name == "__main__.py" else Path(sys.argv[0]).name
    if args and args[0] in COMMANDS:
        name, args = args[0], args[1:]
    elif os.environ.get("LOCAL_RANK") and os.environ.get(COMMAND_VARIABLE) in COMMANDS:
        name = os.environ[COMMAND_VARIABLE]
    elif args and args[0] in ("-h", "--help"):
        print(usage(prog))
        sys.exit(0)
    else:
        what = f"unknown command {args[0]!r}" if args else "no command given"
        sys.exit(f"error: {what}; choose one of {', '.join(COMMANDS)}\n{usage(prog)}")
    os.environ[COMMAND_VARIABLE] = name
    sys.argv = [f"{prog} {name}", *args]
    importlib.import_module(COMMANDS[name][0]).main()
