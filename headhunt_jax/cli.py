"""The ``headhunt-jax`` command line: convert, extract, hunt, fit, detect, evaluate, demo.

Errors are one line on stderr naming the file and the problem, with exit status 1; no traceback.
"""

import argparse
import sys
from pathlib import Path


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _convert(args):
    from headhunt_jax import backbone

    bb = backbone.load_backbone(args.hf_dir, dtype=args.dtype)
    out = backbone.save_converted(bb, args.out)
    print(f"converted {bb.name} ({args.dtype}) -> {out}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="headhunt-jax",
        description="Video anomaly detection from single attention heads of a frozen MLLM.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a Hugging Face checkpoint to an orbax checkpoint")
    p.add_argument("hf_dir", type=Path, help="HF checkpoint directory (config.json + safetensors)")
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.set_defaults(func=_convert)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("headhunt-jax: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError) as e:
        print(f"headhunt-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
