"""The ``duplex`` command: a table from subcommand to one function whose docstring is its help.

    duplex presets                     list the model presets with their parameter counts
    duplex info PATH                   describe a model directory (ours or Hugging Face)
    duplex convert --to-hf SRC DST     duplexlm directory → Hugging Face directory
    duplex convert --from-hf SRC DST   Hugging Face directory → duplexlm directory
    duplex demo [--quick]              the main job: a tour of the model zoo on real weights
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _param_count(name: str) -> int:
    from .models import build_model, count_parameters
    from .presets import get_preset

    with torch.device("meta"):  # count without allocating: the large presets need gigabytes
        return count_parameters(build_model(get_preset(name)))


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(int(n))


def cmd_presets(args: argparse.Namespace) -> int:
    """List the model presets with their family, shape and parameter count."""
    from .presets import PRESETS

    print(f"{'preset':<20}{'family':<10}{'layers':>7}{'width':>7}{'heads':>7}{'params':>10}")
    for name, fn in PRESETS.items():
        c = fn()
        heads = getattr(c, "n_head", "-")
        width = getattr(c, "d_model", getattr(c, "d_hidden", "-"))
        print(f"{name:<20}{c.family:<10}{c.n_layer:>7}{width:>7}{heads!s:>7}{_human(_param_count(name)):>10}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model directory: family, config and parameter count."""
    from .io import load
    from .models import count_parameters

    model, tok = load(args.path)
    c = model.config
    print(f"{args.path}: {c.family} ({type(model).__name__}), {_human(count_parameters(model))} parameters, "
          f"tokenizer: {'yes, vocab ' + str(tok.vocab_size) if tok else 'none'}")
    for k, v in c.to_dict().items():
        print(f"  {k:<24}{v}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert between duplexlm and Hugging Face model directories (weights and tokenizer)."""
    from .io import convert_from_hf, convert_to_hf

    if args.to_hf:
        hf = convert_to_hf(args.src, args.dst)
        print(f"wrote {args.dst}: Hugging Face {hf['architectures'][0]} (model_type {hf['model_type']})")
    else:
        cfg = convert_from_hf(args.src, args.dst)
        print(f"wrote {args.dst}: duplexlm {cfg.family} (head {cfg.head})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: build every family from scratch, check what makes each one what it is, and run
    real pretrained weights (all-MiniLM-L6-v2) through our own encoder."""
    from .demo import run_demo

    return run_demo(quick=args.quick, out_dir=Path(args.out))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duplex", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None]]] = {
        "presets": (cmd_presets, lambda p: None),
        "info": (cmd_info, lambda p: p.add_argument("path", help="model directory")),
        "convert": (cmd_convert, _convert_args),
        "demo": (cmd_demo, _demo_args),
    }
    for name, (fn, add_args) in commands.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").splitlines()[0], description=fn.__doc__)
        add_args(p)
        p.set_defaults(func=fn)
    return parser


def _convert_args(p: argparse.ArgumentParser) -> None:
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to-hf", action="store_true", help="SRC is a duplexlm directory")
    way.add_argument("--from-hf", action="store_true", help="SRC is a Hugging Face directory")
    p.add_argument("src", help="source model directory")
    p.add_argument("dst", help="destination directory (replaced atomically)")


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller and faster (for tests)")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its model directories")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # User errors get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"duplex {args.command}: error: {msg}", file=sys.stderr)
        return 2
    if args.command == "demo":
        print(f"done in {time.perf_counter() - start:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
