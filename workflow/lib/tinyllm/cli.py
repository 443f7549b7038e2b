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
    sample.add_argument(
        "--num-samples", type=sample_knob("num_samples"), default=1, help="continuations (default 1)"
    )
    for flag, key, meaning in SAMPLE_FLAGS:  # the config's sample section: its defaults, its values
        default = "null" if SAMPLE_DEFAULTS[key] is None else SAMPLE_DEFAULTS[key]
        sample.add_argument(
            flag, type=sample_knob(key), default=default, help=f"{meaning} (default: {default})"
        )
    sample.add_argument("--device", default="auto", help="auto (cuda if there, else cpu), cpu, cuda[:N], mps")
    sample.add_argument("--no-stop", action="store_true", help="go on past the story's end (BOS)")
    sample.add_argument("--int8", action="store_true", help="decode with int8 weights (CPU only)")

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


def _sample_schema() -> dict:
    from tinyllm.config import load_schema

    return load_schema()["properties"]["sample"]["properties"]


# `tinyllm sample` takes the config's sample section: its defaults, and values as the schema allows them
# (a YAML scalar: `--top-k null` keeps every token, as `top_k: null` does in config.yaml).
SAMPLE_DEFAULTS = {key: spec.get("default") for key, spec in _sample_schema().items()}
SAMPLE_FLAGS = (
    ("--max-new-tokens", "max_new_tokens", "tokens to generate"),
    ("--temperature", "temperature", "softmax temperature; 0 = greedy"),
    ("--top-k", "top_k", "keep the k likeliest tokens; null = all"),
    ("--top-p", "top_p", "nucleus sampling mass; 1.0 = off"),
    ("--seed", "seed", "random seed; the same seed draws the same text"),
)


def sample_knob(key: str):
    """An argparse type: text read as a YAML scalar and checked against the schema's sample.<key>."""

    def parse(text: str):
        import jsonschema
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        spec = _sample_schema()[key]
        try:
            jsonschema.validate(value, spec)
        except jsonschema.ValidationError as err:
            raise argparse.ArgumentTypeError(f"{err.message} (sample.{key}: {spec['description']})") from None
        return value

    parse.__name__ = key  # argparse names the type in its messages
    return parse


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


def read_prompt(prompt: str) -> str:
    """The prompt text; FILE:path reads it from a file (a trailing newline is dropped)."""
    if not prompt.startswith("FILE:"):
        return prompt
    path = Path(prompt.removeprefix("FILE:"))
    if not path.is_file():
        raise DataError(f"prompt file {path} not found")
    return path.read_text(encoding="utf-8").rstrip("\n")


def run_sample(args: argparse.Namespace) -> int:
    from tinyllm.checkpoint import load_model_and_tokenizer
    from tinyllm.devices import resolve_device
    from tinyllm.sample import SETTINGS, sample_texts

    device = resolve_device(args.device)
    prompt = read_prompt(args.prompt)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint, args.tokenizer, device)
    settings = {key: getattr(args, key) for key in SETTINGS}
    stop = not args.no_stop
    texts = sample_texts(model, tokenizer, prompt, settings, stop_at_story_end=stop, int8=args.int8)
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
