"""Samples from a checkpoint: what rule sample writes into samples.txt and `tinyllm sample` prints."""

from __future__ import annotations

import os
from pathlib import Path

from tinyllm.checkpoint import checkpoint_info, load_model_and_tokenizer
from tinyllm.devices import resolve_device
from tinyllm.files import atomic_output
from tinyllm.generate import Decoder, generate
from tinyllm.model import Transformer

SETTINGS = ("temperature", "top_k", "top_p", "seed", "max_new_tokens", "num_samples")  # the sample section


def sample_texts(
    model: Transformer,
    tokenizer,
    prompt: str,
    settings: dict,
    stop_at_story_end: bool = True,
    int8: bool = False,
    decoder: Decoder | None = None,
) -> list[str]:
    """settings["num_samples"] continuations of prompt (text including the prompt), decoded as one batch.

    settings holds the sample section's knobs (SETTINGS). A sample ends where the model starts the next
    story: the pretokenized shards put BOS before every story and no EOS after it (llama2.c's layout), so a
    trained model ends a story by predicting BOS, and run.c stops there too. decoder: one to reuse (see
    generate).
    """
    prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
    samples = generate(
        model,
        prompt_ids,
        settings["max_new_tokens"],
        num_samples=settings["num_samples"],
        temperature=settings["temperature"],
        top_k=settings.get("top_k"),
        top_p=settings.get("top_p", 1.0),
        seed=settings.get("seed"),
        eos_id=tokenizer.bos_id if stop_at_story_end else None,
        int8=int8,
        decoder=decoder,
    )
    return [tokenizer.decode(prompt_ids + new_ids) for new_ids in samples]


def settings_header(checkpoint: str | os.PathLike, info: dict, settings: dict) -> str:
    knobs = "  ".join(f"{k}: {settings.get(k)}" for k in SETTINGS)
    return f"# checkpoint: {checkpoint} (iteration {info['iter_num']})\n# {knobs}\n"


def write_samples(
    checkpoint: str | os.PathLike,
    tokenizer_path: str | os.PathLike,
    output: str | os.PathLike,
    settings: dict,
    device: str = "auto",
) -> Path:
    """Rule sample: for each of settings["prompts"], num_samples continuations, into output (atomically).

    The file opens with a header of the settings, then per prompt and sample a "## prompt i, sample j"
    line followed by the text.
    """
    info = checkpoint_info(checkpoint)
    model, tokenizer = load_model_and_tokenizer(checkpoint, tokenizer_path, resolve_device(device))
    parts = [settings_header(checkpoint, info, settings)]
    decoder = Decoder(model, settings["num_samples"])  # built once, for every prompt
    for p, prompt in enumerate(settings["prompts"], start=1):
        for s, text in enumerate(sample_texts(model, tokenizer, prompt, settings, decoder=decoder), start=1):
            parts.append(f"\n## prompt {p}, sample {s}\n{text}\n")
    output = Path(output)
    with atomic_output(output, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(parts))
    return output
