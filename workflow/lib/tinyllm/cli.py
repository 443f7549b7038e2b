"""The `tinyllm` command: `tinyllm bench`, `sample`, `serve`, `import` and `config`."""

from __future__ import annotations

import argparse
import os
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

    add_serve_parser(sub)

    imports = sub.add_parser(
        "import",
        help="convert a llama2.c, run.c or Hugging Face Llama model into a tinyllm checkpoint",
        description="Convert a model into a tinyllm checkpoint, which `tinyllm sample`, the exports and "
        "train.init_from read. SOURCE: a tinyllm or llama2.c train.py checkpoint (.pt), a llama2.c run.c "
        "model.bin (legacy format), or a Hugging Face Llama folder.",
    )
    imports.add_argument("source", help="checkpoint file or Hugging Face folder")
    imports.add_argument("dest", help="the tinyllm checkpoint to write (.pt)")

    configs = sub.add_parser(
        "config",
        help="check config files as the pipeline reads them (file, line and key of the first fault)",
        description="Read the repository's config.yaml, then each FILE on top as `snakemake --configfile` "
        "merges them, strictly (a tab, a syntax error, a key given twice), and validate the result. "
        "Snakemake reads --configfile files before the workflow starts, naming no file or line for a "
        "syntax error.",
    )
    configs.add_argument("files", nargs="*", metavar="FILE", help="override files, in --configfile order")
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


def add_serve_parser(sub) -> None:
    from tinyllm.completions_api import Limits

    serve = sub.add_parser(
        "serve",
        help="serve a model: an OpenAI-compatible API and a page to play with it",
        description="Serve a checkpoint (the main run's, an experiment's or an imported model) over HTTP: "
        "POST /v1/completions and GET /v1/models as OpenAI's API has them, and at / a page that writes "
        "stories as you watch. Concurrent requests are decoded together (continuous batching).",
    )
    serve.add_argument(
        "checkpoint", nargs="?", default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}"
    )
    serve.add_argument(
        "--tokenizer", help="SentencePiece model (default: the pipeline's, found as for sample)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 = any free one)")
    serve.add_argument(
        "--api-key",
        default=os.environ.get("TINYLLM_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every API request (default: $TINYLLM_API_KEY, else off)",
    )
    serve.add_argument("--int8", action="store_true", help="decode with int8 weights (CPU only)")
    serve.add_argument("--device", default="auto", help="auto (cuda if there, else cpu), cpu, cuda[:N], mps")
    serve.add_argument("--threads", type=_positive_int, help="torch threads for decoding (default: torch's)")
    limits = Limits()
    for flag, meaning in (
        ("--max-batch", "completions decoded together"),
        ("--max-queue", "completions waiting for a free slot; past it requests get 429"),
        ("--max-tokens", "tokens one completion may ask for"),
        ("--max-prompt-tokens", "prompt tokens (BOS included), at most the model's context"),
        ("--max-choices", "choices one request may ask for (prompts x n)"),
    ):
        default = getattr(limits, flag.removeprefix("--").replace("-", "_"))
        shown = "the model's context" if default is None else default
        serve.add_argument(flag, type=_positive_int, default=default, help=f"{meaning} (default {shown})")


def _port(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


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


def run_serve(args: argparse.Namespace) -> int:
    from tinyllm.completions_api import Limits
    from tinyllm.serve import load_service, serve

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = Limits(
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        max_choices=args.max_choices,
    )
    service = load_service(
        args.checkpoint, SAMPLE_DEFAULTS, args.tokenizer, args.device, args.int8, limits, args.api_key
    )
    serve(service, args.host, args.port, say=lambda line: print(line, file=sys.stderr, flush=True))
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


def run_config(args: argparse.Namespace) -> int:
    from tinyllm.config import REPOSITORY_CONFIG, check_config

    check_config(args.files)
    files = [*([REPOSITORY_CONFIG] if REPOSITORY_CONFIG.is_file() else []), *args.files]
    print(f"tinyllm config: {' + '.join(map(str, files))}: valid")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from tinyllm import bench

    bench.main(args.groups, args.threads, args.json)
    return 0


COMMANDS = {
    "bench": run_bench,
    "sample": run_sample,
    "serve": run_serve,
    "import": run_import,
    "config": run_config,
}


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
