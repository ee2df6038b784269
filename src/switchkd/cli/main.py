"""Entry point of the ``switchkd`` command.

Usage:

    switchkd --help
    switchkd build --config configs/model.yaml model.projector=ldpv2 --out runs/vlm
"""

from __future__ import annotations

import argparse
import logging
import sys

from switchkd import __version__
from switchkd.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchkd",
        description="Switch-KD: visual-switch knowledge distillation for vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"switchkd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in commands.COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "deepspeed", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = int(commands.COMMANDS[args.command].run(args) or 0)
        _leave_process_group()
        return code
    except (ValueError, OSError) as exc:
        # Configuration, input and file-system errors (a missing file, a full disk) are the user's to
        # fix: one clear line, no traceback.
        # One write with its newline: under several processes sharing one stderr (torchrun), print's
        # separate writes of text and newline let two ranks' errors run together on one line.
        sys.stderr.write(f"switchkd {args.command}: error: {exc}\n")
        sys.stderr.flush()
        return 2


def _leave_process_group() -> None:
    """Under torchrun/accelerate launch, tear the process group down before the interpreter exits: left
    to exit-time destructors, gloo's threads can abort a finished run ("terminate called without an
    active exception", SIGABRT) after every process has written its results."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
