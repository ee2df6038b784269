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
    """Run one command. Called with ``argv=None`` (the ``switchkd`` program, ``python -m switchkd``) in a
    distributed process, it ends the process itself once the command has succeeded: see `_end_process`."""
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
        launched = _leave_process_group()
    except (ValueError, OSError) as exc:
        # Configuration, input and file-system errors (a missing file, a full disk) are the user's to
        # fix: one clear line, no traceback.
        # One write with its newline: under several processes sharing one stderr (torchrun), print's
        # separate writes of text and newline let two ranks' errors run together on one line.
        # The process then exits the ordinary way: ended at once, it could be the first of a failing
        # run's processes to go, and torchrun would stop the others before they wrote their own line.
        sys.stderr.write(f"switchkd {args.command}: error: {exc}\n")
        sys.stderr.flush()
        return 2
    if launched and argv is None:
        _end_process(code)
    return code


def _leave_process_group() -> bool:
    """Under torchrun/accelerate launch, wait for every process and tear the process group down; says
    whether there was one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def _end_process(code: int) -> None:
    """End a distributed process without the interpreter's finalisation, once its work is written.

    Gloo's worker threads free each finished collective themselves, and a collective's tensors belong to
    Python: the worker takes the GIL to release them. When that happens after the main thread has begun
    finalising the interpreter, the worker cannot take the GIL and the process aborts ("terminate called
    without an active exception", SIGABRT) with its results already on disk, and torchrun reports the
    run failed (1 run in about 30 of the FSDP SFT test here; pytorch/pytorch#190489 describes the same
    stack). `destroy_process_group` does not stop those threads: once FSDP2 is imported, the process
    group outlives it (held on the C++ side), so its threads run until finalisation. Ending the process
    here, after the barrier, the flushes and logging's own shutdown, leaves no finalisation to race.
    """
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
