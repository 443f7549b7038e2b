"""tinyllm.generate and tinyllm.sample: sampling knobs, the KV-cached decoder against the no-cache reference,
rows at their own positions (continuous batching), int8 weights, samples files."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conftest import TINY_MODEL as TINY
from conftest import make_random_model as random_model
from tinyllm import generate as gen
from tinyllm import sample as sample_module
from tinyllm.checkpoint import save_checkpoint as save_weights
from tinyllm.checkpoint import weights_checkpoint
from tinyllm.errors import CheckpointError
from tinyllm.generate import Decoder, generate, sample_next_token
from tinyllm.model import ModelArgs, Transformer
from tinyllm.sample import sample_texts, write_samples
from tinyllm.shards import load_stories
from tinyllm.tokenizer import Tokenizer

# Small tensors: a second thread gains nothing and stalls badly when the other cores are busy.
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def save_checkpoint(model: Transformer, path, iter_num: int = 7) -> None:
    save_weights(weights_checkpoint(model, {"model": model.args.to_dict()}, iter_num), path)


@pytest.fixture(scope="module")
def trained(shards_dir, small_tokenizer) -> tuple[Transformer, Tokenizer]:
    """A tiny model trained for 200 steps on real stories, so greedy text is not one repeated token."""
    tokenizer = Tokenizer(small_tokenizer)
    stories = load_stories(shards_dir / "data01.json")[:300]
    # The pipeline's layout: BOS before each story, no EOS.
    ids = torch.tensor([t for s in stories for t in tokenizer.encode(s, bos=True, eos=False)])
    torch.manual_seed(0)
    model = Transformer(ModelArgs(**TINY))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = TINY["max_seq_len"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        starts = torch.randint(0, len(ids) - seq - 1, (16,), generator=generator)
        x = torch.stack([ids[s : s + seq] for s in starts.tolist()])
        y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts.tolist()])
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 4.0, f"tiny model did not learn (loss {loss.item():.2f})"
    return model.eval(), tokenizer


def greedy_reference_with_window(model: Transformer, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens under the cached path's sliding-window policy, each from a full forward of its context.

    The context starts at 0; when it holds max_seq_len tokens and another is needed, it restarts at the
    newest max_seq_len // 2 tokens.
    """
    max_len, keep = model.args.max_seq_len, model.args.max_seq_len // 2
    seq = list(prompt)
    start = max(0, len(seq) - max_len)
    with torch.no_grad():
        for _ in range(new_tokens):
            if len(seq) - start > max_len:
                start = len(seq) - keep
            logits, _ = model(torch.tensor([seq[start:]]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt) :]


# --- sample_next_token -------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert sample_next_token(logits, temperature=0.0).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_the_candidates():
    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, -1)
    drawn = set(sample_next_token(logits, 1.0, top_k=2, generator=generator).tolist())
    assert drawn == {1, 3}
    # Mass before each candidate (sorted): 0, 0.5, 0.8, 0.95 -> top_p 0.7 keeps the first two.
    drawn = set(sample_next_token(logits, 1.0, top_p=0.7, generator=generator).tolist())
    assert drawn == {1, 3}
    assert set(sample_next_token(logits, 1.0, top_p=0.5, generator=generator).tolist()) == {1}
    assert set(sample_next_token(logits, 1.0, top_k=3, top_p=0.85, generator=generator).tolist()) == {1, 2, 3}


def test_draws_follow_the_tempered_distribution():
    generator = torch.Generator().manual_seed(1)
    logits = torch.tensor([1.0, 2.0, 0.0, 1.5])
    for temperature in (1.0, 0.5):
        drawn = sample_next_token(logits.expand(40000, -1), temperature, generator=generator)
        frequencies = torch.bincount(drawn, minlength=4).float() / len(drawn)
        expected = torch.softmax(logits / temperature, dim=-1)
        assert torch.allclose(frequencies, expected, atol=0.01), (frequencies, expected)


# --- the cached decoder against the model ------------------------------------------------------------------


def random_tokens(batch: int, length: int = TINY["max_seq_len"], seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)


@pytest.mark.parametrize("batch", [1, 3])
def test_decoder_logits_match_the_full_forward(batch):
    model = random_model(seed=batch, scale=3.0)
    tokens = random_tokens(batch)
    with torch.no_grad():
        reference, _ = model(tokens)
    decoder = Decoder(model, batch)
    logits = [decoder.prefill(tokens[:, :5])]
    logits += [decoder.step(tokens[:, pos], [pos] * batch) for pos in range(5, tokens.shape[1])]
    error = (torch.stack(logits, dim=1) - reference[:, 4:]).abs().max().item()
    assert error < 1e-4, error
    assert (decoder.prefill(tokens, all_positions=True) - reference).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="past max_seq_len"):
        decoder.step(tokens[:, 0], [TINY["max_seq_len"]] * batch)


def test_rows_at_their_own_positions_join_leave_and_move():
    """Continuous batching: rows prefilled at different times step together, each at its own position,
    and a row moved into a freed slot carries its cache with it."""
    model = random_model(seed=4, scale=3.0)
    tokens = random_tokens(3)
    with torch.no_grad():
        reference, _ = model(tokens)
    decoder = Decoder(model, 4)
    lengths = [10, 3, 7]
    for row, length in enumerate(lengths):
        decoder.prefill(tokens[row : row + 1, :length], first_row=row)
    for k in range(20):
        positions = [length + k for length in lengths]
        logits = decoder.step(tokens[torch.arange(3), positions], positions)
        expected = reference[torch.arange(3), positions]
        assert (logits - expected).abs().max().item() < 1e-4, k
    decoder.move(2, 0)  # row 0 left; row 2 takes its place
    position = lengths[2] + 20
    logits = decoder.step(tokens[2:3, position], [position])
    assert (logits[0] - reference[2, position]).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="the cache holds 4x64"):
        decoder.prefill(tokens[:2, :5], first_row=3)


def test_greedy_with_cache_equals_reference_on_a_trained_model(trained):
    model, tokenizer = trained
    prompt = tokenizer.encode("Once upon a time, there was a little", bos=True, eos=False)
    new_tokens = TINY["max_seq_len"] - len(prompt)
    cached = generate(model, prompt, new_tokens, temperature=0.0)
    reference = generate(model, prompt, new_tokens, temperature=0.0, use_cache=False)
    assert cached == reference
    assert len(set(cached[0])) > 10, tokenizer.decode(cached[0])  # real text, not a loop of one token


def test_greedy_with_cache_equals_reference_on_random_weights_in_a_batch():
    model = random_model(seed=5, scale=4.0, dim=96, n_heads=6, n_kv_heads=3, vocab_size=300, max_seq_len=48)
    prompt = [1, 17, 42]
    cached = generate(model, prompt, 45, num_samples=3, temperature=0.0)
    reference = generate(model, prompt, 45, num_samples=1, temperature=0.0, use_cache=False)
    assert cached == reference * 3
    assert len(set(cached[0])) > 3


def test_sampling_draws_the_same_tokens_with_and_without_cache(trained):
    model, _ = trained
    kwargs = dict(num_samples=2, temperature=0.9, top_k=40, top_p=0.95, seed=11)
    cached = generate(model, [1, 100, 200], 40, **kwargs)
    assert cached == generate(model, [1, 100, 200], 40, use_cache=False, **kwargs)
    assert cached[0] != cached[1]  # the batch's samples are independent draws
    assert cached == generate(model, [1, 100, 200], 40, **kwargs)  # the seed makes them reproducible
    assert cached != generate(model, [1, 100, 200], 40, **{**kwargs, "seed": 12})


def test_past_max_seq_len_the_cache_slides_by_half_a_window(trained):
    model, tokenizer = trained
    prompt = tokenizer.encode("One day, a girl named Lily went to the park.", bos=True, eos=False)
    new_tokens = 2 * TINY["max_seq_len"] + 10  # two window slides
    cached = generate(model, prompt, new_tokens, temperature=0.0)[0]
    assert cached == greedy_reference_with_window(model, prompt, new_tokens)
    # The reference crops to the last max_seq_len tokens at every step: equal until the first slide.
    reference = generate(model, prompt, new_tokens, temperature=0.0, use_cache=False)[0]
    assert len(reference) == new_tokens
    first_slide = TINY["max_seq_len"] - len(prompt) + 1
    assert cached[:first_slide] == reference[:first_slide]


def test_a_prompt_longer_than_max_seq_len_keeps_its_end(trained):
    model, _ = trained
    prompt = [1] + list(range(300, 300 + TINY["max_seq_len"] + 20))
    cached = generate(model, prompt, 5, temperature=0.0)[0]
    # Both start from the prompt's last max_seq_len tokens; then the cache, full, slides by half a window.
    assert cached[0] == generate(model, prompt, 1, temperature=0.0, use_cache=False)[0][0]
    assert cached == greedy_reference_with_window(model, prompt, 5)


def test_each_sample_stops_at_its_own_eos():
    model = random_model(seed=6, scale=3.0)
    kwargs = dict(num_samples=4, temperature=1.0, seed=3)
    free = generate(model, [1], 30, **kwargs)
    # An "EOS" that the samples reach at different steps (or never), so stopping must be per sequence.
    eos = next(t for t in free[0] if len({row.index(t) if t in row else None for row in free}) > 1)
    stopped = generate(model, [1], 30, eos_id=eos, **kwargs)
    assert stopped == [row[: row.index(eos)] if eos in row else row for row in free]
    assert len({len(row) for row in stopped}) > 1


def test_samples_end_where_the_model_starts_the_next_story(trained):
    """Shards hold BOS before each story and no EOS: a story ends with a predicted BOS (as in run.c)."""
    model, tokenizer = trained
    settings = dict(num_samples=2, max_new_tokens=40, temperature=1.0, top_k=None, top_p=1.0, seed=5)
    free = generate(model, tokenizer.encode("Once", True, False), 40, num_samples=2, seed=5)
    with mock.patch.object(sample_module, "generate", side_effect=gen.generate) as spy:
        texts = sample_texts(model, tokenizer, "Once", settings)
    assert spy.call_args.kwargs["eos_id"] == tokenizer.bos_id != tokenizer.eos_id
    prompt, bos = tokenizer.encode("Once", True, False), tokenizer.bos_id
    assert texts == [tokenizer.decode(prompt + (r[: r.index(bos)] if bos in r else r)) for r in free]
    assert sample_texts(model, tokenizer, "Once", settings, stop_at_story_end=False) == [
        tokenizer.decode(tokenizer.encode("Once", True, False) + r) for r in free
    ]


def test_decoding_stops_once_every_sample_ended():
    model = random_model(seed=7, scale=3.0)
    first = generate(model, [1, 5], 1, num_samples=2, temperature=0.0)[0][0]
    with mock.patch.object(gen.Decoder, "step", autospec=True, side_effect=gen.Decoder.step) as step:
        assert generate(model, [1, 5], 50, num_samples=2, temperature=0.0, eos_id=first) == [[], []]
    assert step.call_count == 0


def test_generate_sees_weights_changed_since_the_last_call():
    model = random_model(seed=8, scale=3.0)
    first = generate(model, [1, 9], 20, temperature=0.0)
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight.mul_(-1.0)  # in place: same tensor
    changed = generate(model, [1, 9], 20, temperature=0.0)
    assert changed == generate(model, [1, 9], 20, temperature=0.0, use_cache=False)
    assert changed != first


def test_generate_leaves_the_model_mode_and_rejects_an_empty_prompt():
    model = random_model().train()
    generate(model, [1], 3)
    assert model.training
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [], 3)


# --- the samples file --------------------------------------------------------------------------------------


def test_write_samples_writes_a_header_and_every_sample(trained, small_tokenizer, tmp_path):
    model, tokenizer = trained
    checkpoint = tmp_path / "train" / "ckpt.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(model, checkpoint, iter_num=250)
    settings = dict(
        prompts=["Once upon a time", ""],
        num_samples=2,
        max_new_tokens=20,
        temperature=0.8,
        top_k=50,
        top_p=0.9,
        seed=5,
    )
    output = write_samples(checkpoint, small_tokenizer, tmp_path / "out" / "samples.txt", settings, "cpu")
    text = output.read_text()
    assert text.startswith(f"# checkpoint: {checkpoint} (iteration 250)\n")
    header = text.splitlines()[1]
    for knob in ("temperature: 0.8", "top_k: 50", "top_p: 0.9", "seed: 5", "max_new_tokens: 20"):
        assert knob in header
    sections = text.split("\n## ")[1:]
    assert [s.splitlines()[0] for s in sections] == [
        "prompt 1, sample 1",
        "prompt 1, sample 2",
        "prompt 2, sample 1",
        "prompt 2, sample 2",
    ]
    assert all(s.splitlines()[1].startswith("Once upon a time") for s in sections[:2])
    assert sorted(p.name for p in output.parent.iterdir()) == ["samples.txt"]  # no temporary files left
    # Same settings, same file.
    again = write_samples(checkpoint, small_tokenizer, tmp_path / "again.txt", settings, "cpu")
    assert again.read_text() == text


def test_write_samples_refuses_a_mismatched_tokenizer_or_missing_checkpoint(small_tokenizer, tmp_path):
    model = random_model(vocab_size=600)
    save_checkpoint(model, tmp_path / "ckpt.pt")
    settings = dict(
        prompts=["x"], num_samples=1, max_new_tokens=2, temperature=0.0, top_k=None, top_p=1.0, seed=0
    )
    with pytest.raises(CheckpointError, match="has 512 tokens but checkpoint .* has vocab_size 600"):
        write_samples(tmp_path / "ckpt.pt", small_tokenizer, tmp_path / "s.txt", settings)
    with pytest.raises(CheckpointError, match="no checkpoint at .*missing.pt.*snakemake"):
        write_samples(tmp_path / "missing.pt", small_tokenizer, tmp_path / "s.txt", settings)
    assert not (tmp_path / "s.txt").exists()


# --- int8 weights ------------------------------------------------------------------------------------------


def test_int8_rows_are_within_half_a_step_and_the_int8_decoder_follows_the_float_one():
    from tinyllm.quantize import quantize_rows

    weight = torch.randn(48, 64) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different scales
    q, scale = quantize_rows(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-7).all()
    model = random_model(seed=3, scale=3.0)
    tokens = random_tokens(2)
    exact = Decoder(model, 2).prefill(tokens, all_positions=True)
    int8 = Decoder(model, 2, int8=True).prefill(tokens, all_positions=True)
    relative = ((int8 - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.03, relative


def test_int8_keeps_val_bits_per_byte_within_one_percent(trained, shards_dir, small_tokenizer, tmp_path):
    from tinyllm.quantize import int8_quality

    model, tokenizer = trained
    stories = load_stories(shards_dir / "data00.json")[:200]
    tokenizer.encode_concat(stories, bos=True, eos=False).astype("<u2").tofile(tmp_path / "data00.bin")
    save_checkpoint(model, tmp_path / "ckpt.pt")
    figures = int8_quality(tmp_path / "ckpt.pt", tmp_path / "data00.bin", small_tokenizer, windows=64)
    assert 1.0 < figures["float32_bpb"] < 3.0, figures  # a model that learned something
    assert abs(figures["int8_bpb_change"]) < 0.01, figures
    assert figures["int8_bpb"] != figures["float32_bpb"]  # int8 did run


def test_a_reused_decoder_draws_what_a_fresh_one_draws(trained):
    model, _ = trained
    kwargs = dict(num_samples=2, temperature=0.9, top_k=40, seed=11)
    fresh = [generate(model, prompt, 30, **kwargs) for prompt in ([1, 100, 200], [1, 7])]
    decoder = Decoder(model, 2)
    reused = [generate(model, prompt, 30, decoder=decoder, **kwargs) for prompt in ([1, 100, 200], [1, 7])]
    assert reused == fresh  # what the first call left in the cache does not leak into the second
