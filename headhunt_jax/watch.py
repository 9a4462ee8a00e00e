"""The ``headhunt-jax watch`` command: live streams scored segment by segment as they arrive
(``stream.watch_streams``), a JSON line on stdout for each segment, event and drop.

Apart from ``stream`` so that building the CLI's parser imports no JAX: ``cli.build_parser``
registers the command with its own ``backbone_args`` and the loaders ``detect`` uses.
"""

import functools
import json
import logging
import sys

from headhunt_jax.errors import InputError


def add_watch_command(subparsers, backbone_args, load_detector, load_backbone) -> None:
    """The ``watch`` subcommand; ``load_detector(args)`` (``--detector``, ``--sigma``, ``--tau``;
    it sets ``args.model`` when not given) and ``load_backbone(args)`` are the CLI's."""
    p = subparsers.add_parser(
        "watch",
        help="score live streams as they arrive: a JSON line a segment, events as they happen",
    )
    backbone_args(p, required=False)
    p.add_argument("--detector", required=True)
    p.add_argument("--sigma", type=float, help="override the detector's smoothing sigma")
    p.add_argument("--tau", type=float, help="override the detector's threshold tau")
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a video file: a finished one (any file detect reads) is read whole; one still "
        "being written is followed as it grows, until it stops growing, if its container can "
        "be read so (MPEG-TS, Matroska/WebM, fragmented MP4), and otherwise (an ordinary MP4/MOV, "
        "whose index is written last) read once finished, with a warning; anything PyAV opens "
        "as a live input (rtsp://, http(s)://, udp://, srt://, tcp://, a V4L2 device such as "
        "/dev/video0); or - for a container on standard input (e.g. MPEG-TS from ffmpeg)",
    )
    p.add_argument(
        "--lookahead",
        type=int,
        metavar="K",
        help="segments a smoothed score waits for (default: the kernel's half width, which gives "
        "detect's smoothed scores and events; 0: causal, no delay)",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        help="segments that may wait for the scorer; one more drops the oldest (default: "
        "--batch-size plus one a source)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="seconds a file may go without growing before it counts as finished: a file not "
        "modified for that long is read whole, a followed one ends (default 10)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=10.0,
        help="seconds a live input may give nothing before it is reopened (default 10)",
    )
    p.add_argument(
        "--retries",
        type=int,
        help="reopen a live input at most this many times in a row (default: forever)",
    )
    p.add_argument(
        "--input-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an FFmpeg option for the live inputs (repeatable), e.g. rtsp_transport=tcp",
    )
    p.set_defaults(
        func=functools.partial(watch, load_detector=load_detector, load_backbone=load_backbone)
    )


def _options(items) -> dict[str, str]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--input-option {item!r}: expected KEY=VALUE")
        options[key] = value
    return options


def _print_line(line: dict) -> None:
    print(json.dumps(line), flush=True)


def watch(args, load_detector, load_backbone) -> int:
    """Runs ``watch``: the sources are checked, the backbone loaded and compiled, then the
    streams read until they all end (or Ctrl-C, which closes every open event first). Exit
    status 1 when a source ended on an error."""
    from headhunt_jax import stream

    logging.basicConfig(format="headhunt-jax watch: %(message)s", stream=sys.stderr)
    logging.getLogger(stream.__name__).setLevel(logging.WARNING if args.quiet else logging.INFO)
    options = _options(args.input_option)
    detector = load_detector(args)
    sources = [
        stream.parse_source(
            s, idle_s=args.idle_timeout, timeout_s=args.read_timeout, options=options
        )
        for s in args.sources
    ]
    scorer = stream.SegmentScorer(load_backbone(args), detector, args.batch_size)
    summary = stream.watch_streams(
        scorer,
        sources,
        _print_line,
        lookahead=args.lookahead,
        max_pending=args.max_pending,
        reconnect=stream.Reconnect(retries=args.retries),
    )
    failed = {name: s["error"] for name, s in summary.items() if s["error"]}
    for name, error in failed.items():
        print(f"headhunt-jax watch: {name}: {error}", file=sys.stderr)
    return 1 if failed else 0
