"""The `tinyllm` command: `tinyllm bench`, `tinyllm sample` and `tinyllm import`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinyllm import paths
from tinyllm.errors import DataError, TinyllmError

DEFAULT_CHECKPOINT = paths.CKPT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="measure pretokenization, training and sampling speed")
    bench.add_argument("groups", nargs="*", help="groups to run (pretokenize, train, sample); none = all")
    bench.add_argument(
        "--threads", type=_positive_int, default=1, help="torch and tokenizer threads (default 1)"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object of figures")

    sample = sub.add_parser(
        "sample",
        help="continue a prompt with the trained model",
        description="Continue a prompt with a trained checkpoint (after the pipeline ran: results/).",
    )
    sample.add_argument(
        "--prompt", default="", help='text to continue, or FILE:path to read it from a file ("" = from BOS)'
    )
    sample.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}")
    sample.add_argument(
        "--tokenizer",
        help=f"SentencePiece model (default: {paths.tokenizer_model('{V}')}, V = the checkpoint's vocab)",
    )
    sample.add_argument("--num-samples", type=_positive_int, default=1, help="continuations (default 1)")
    sample.add_argument("--max-new-tokens", type=_positive_int, default=256, help="default 256")
    sample.add_argument("--temperature", type=_non_negative_float, default=1.0, help="0 = greedy (default 1)")
    sample.add_argument(
        "--top-k", type=_non_negative_int, default=300, help="keep the k likeliest; 0 = all (default 300)"
    )
    sample.add_argument("--top-p", type=_probability, default=1.0, help="nucleus mass; 1.0 = off (default)")
    sample.add_argument(
        "--seed", type=_non_negative_int, default=None, help="random seed (default: a fresh one each run)"
    )
    sample.add_argument("--device", default="auto", help="auto (cuda if there, else cpu), cpu, cuda[:N], mps")
    sample.add_argument("--no-stop", action="store_true", help="go on past the story's end (BOS)")

    imports = sub.add_parser(
        "import",
        help="convert a llama2.c, run.c or Hugging Face Llama model into a tinyllm checkpoint",
        description="Convert a model into a tinyllm checkpoint, which `tinyllm sample`, the exports and "
        "train.init_from read. SOURCE: a tinyllm or llama2.c train.py checkpoint (.pt), a llama2.c run.c "
        "model.bin (legacy format), or a Hugging Face Llama folder.",
    )
    imports.add_argument("source", help="checkpoint file or Hugging Face folder")
    imports.add_argument("dest", help="the tinyllm checkpoint to write (.pt)")
    return parser


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = _number(text, float)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def read_prompt(prompt: str) -> str:
    """The prompt text; FILE:path reads it from a file (a trailing newline is dropped)."""
    if not prompt.startswith("FILE:"):
        return prompt
    path = Path(prompt.removeprefix("FILE:"))
    if not path.is_file():
        raise DataError(f"prompt file {path} not found")
    return path.read_text(encoding="utf-8").rstrip("\n")


def run_sample(args: argparse.Namespace) -> int:
    from tinyllm.devices import resolve_device
    from tinyllm.generate import checkpoint_info, default_tokenizer_path, load_tokenizer, sample_texts
    from tinyllm.model import load_model

    device = resolve_device(args.device)
    prompt = read_prompt(args.prompt)
    info = checkpoint_info(args.checkpoint)
    vocab_size = info["model_args"]["vocab_size"]
    tokenizer_path = args.tokenizer or default_tokenizer_path(args.checkpoint, vocab_size)
    tokenizer = load_tokenizer(tokenizer_path, vocab_size, args.checkpoint)
    model = load_model(args.checkpoint, device)
    settings = {
        "num_samples": args.num_samples,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k if args.top_k > 0 else None,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    texts = sample_texts(model, tokenizer, prompt, settings, stop_at_story_end=not args.no_stop)
    print("\n---\n".join(texts))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from tinyllm.foreign import import_checkpoint

    imported = import_checkpoint(args.source, args.dest)
    a = imported.model_args
    print(
        f"tinyllm import: {args.source} ({imported.format}: dim {a.dim}, {a.n_layers} layers, "
        f"{a.n_heads}/{a.n_kv_heads} heads, vocab {a.vocab_size}) -> {args.dest}"
    )
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from tinyllm import bench

    bench.main(args.groups, args.threads, args.json)
    return 0


COMMANDS = {"bench": run_bench, "sample": run_sample, "import": run_import}


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected failure (TinyllmError) is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TinyllmError as err:
        print(f"tinyllm {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
