"""The `tinyllm` command: `tinyllm bench` and `tinyllm sample`."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="measure pretokenization, training and sampling speed")
    bench.add_argument("groups", nargs="*", help="groups to run (pretokenize, train, sample); none = all")
    bench.add_argument("--threads", type=int, default=1, help="torch and tokenizer threads (default 1)")
    bench.add_argument("--json", action="store_true", help="print one JSON object of figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":
        from tinyllm import bench

        bench.main(args.groups, args.threads, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
