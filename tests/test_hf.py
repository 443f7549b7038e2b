"""The Hugging Face export as transformers users meet it: AutoTokenizer and pipeline("text-generation").

transformers runs in a child process where sentencepiece and protobuf cannot be imported, so these tests
prove that the folder works with nothing installed beyond transformers and tokenizers (which our pipeline
install brings). The weights themselves are checked against our logits in test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_MODEL
from tinyllm import cli, paths
from tinyllm.export_hf import export_hf
from tinyllm.generate import generate
from tinyllm.model import load_model
from tinyllm.shards import load_stories
from tinyllm.tokenizer import Tokenizer

pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Run first in the child: the modules transformers would otherwise reach for cannot be imported.
WITHOUT_SENTENCEPIECE = """
import sys
for name in ("sentencepiece", "google.protobuf"):
    sys.modules[name] = None  # import raises ImportError, importlib.util.find_spec says absent
"""


def run_without_sentencepiece(code: str, *args: str) -> dict:
    """Run code in a child Python with sentencepiece and protobuf blocked; it prints one JSON object."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    program = WITHOUT_SENTENCEPIECE + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def hf_folder(story_model, small_tokenizer, tmp_path_factory) -> Path:
    return export_hf(story_model, small_tokenizer, tmp_path_factory.mktemp("export") / "hf")


def test_the_folder_describes_the_tokenizer_and_where_generation_stops(hf_folder):
    assert sorted(p.name for p in hf_folder.iterdir()) == sorted(paths.HF_EXPORT_FILES)
    tokenizer_config = json.loads((hf_folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "LlamaTokenizerFast"
    assert (tokenizer_config["add_bos_token"], tokenizer_config["add_eos_token"]) == (True, False)
    context = TINY_MODEL["max_seq_len"]
    assert tokenizer_config["model_max_length"] == context  # the model's max_seq_len
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert json.loads((hf_folder / "special_tokens_map.json").read_text()) == special
    assert {k: tokenizer_config[k] for k in special} == special
    generation = json.loads((hf_folder / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 1, "max_length": context}  # stop at BOS
    fast = json.loads((hf_folder / "tokenizer.json").read_text())
    assert fast["model"]["type"] == "BPE" and fast["model"]["byte_fallback"] is True
    assert len(fast["model"]["vocab"]) == 512


AUTOTOKENIZER = """
import json, sys
for name in ("sentencepiece", "google.protobuf"):
    try:
        __import__(name)
        raise SystemExit(f"{name} is importable: the test proves nothing")
    except ImportError:
        pass
from transformers import AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(open(sys.argv[2]))
ids = [tokenizer(text).input_ids for text in texts]
decoded = [tokenizer.decode(i, skip_special_tokens=True) for i in ids]
print(json.dumps({"class": type(tokenizer).__name__, "max_length": tokenizer.model_max_length,
                  "ids": ids, "decoded": decoded}))
"""


@pytest.mark.slow  # transformers in a child process: about 4 s
def test_autotokenizer_gives_our_ids_on_every_validation_story(
    hf_folder, shards_dir, small_tokenizer, tmp_path
):
    ours = Tokenizer(small_tokenizer)
    stories = load_stories(shards_dir / "data00.json")
    # Beyond the stories: runs of spaces, a newline, bytes the vocabulary lacks (byte fallback), a "▁".
    extra = ["Tom  saw\ntwo  cats.", "A dragon 🐉 said: ¡hola!", "x \u2581 y", "3.14 + 2 = 5.14"]
    texts = stories + extra
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    theirs = run_without_sentencepiece(AUTOTOKENIZER, str(hf_folder), str(tmp_path / "texts.json"))
    assert theirs["class"] in ("LlamaTokenizerFast", "LlamaTokenizer")  # transformers 5 merged the two
    assert theirs["max_length"] == TINY_MODEL["max_seq_len"]
    assert len(stories) > 100
    for text, ids, decoded in zip(texts, theirs["ids"], theirs["decoded"], strict=True):
        expected = ours.encode(text, bos=True, eos=False)
        assert ids == expected, f"ids differ for {text[:80]!r}"
        assert decoded == ours.decode(expected), f"decode differs for {text[:80]!r}"
    assert theirs["decoded"][: len(stories)] == stories  # the round trip


PIPELINE = """
import json, sys
from transformers import pipeline

generator = pipeline("text-generation", model=sys.argv[1], device="cpu")
prompt, max_new_tokens = sys.argv[2], int(sys.argv[3])
text = generator(prompt, do_sample=False, max_new_tokens=max_new_tokens)[0]["generated_text"]
tokens = generator(prompt, do_sample=False, max_new_tokens=max_new_tokens, return_tensors=True)
print(json.dumps({"text": text, "ids": [int(t) for t in tokens[0]["generated_token_ids"]]}))
"""


@pytest.mark.slow  # transformers in a child process: about 4 s
def test_pipeline_greedy_writes_what_tinyllm_sample_writes_and_stops_at_the_story_end(
    hf_folder, story_model, small_tokenizer, capsys
):
    prompt, max_new_tokens = "Once upon a time", 50
    theirs = run_without_sentencepiece(PIPELINE, str(hf_folder), prompt, str(max_new_tokens))

    tokenizer = Tokenizer(small_tokenizer)
    prompt_ids = tokenizer.encode(prompt, bos=True, eos=False)
    new_ids = generate(load_model(story_model), prompt_ids, max_new_tokens, temperature=0.0, eos_id=1)[0]
    assert 10 < len(new_ids) < max_new_tokens - 1  # a story, ended by the model well before the limit
    assert theirs["ids"] == prompt_ids + new_ids + [tokenizer.bos_id]  # transformers keeps the stop token

    argv = ["sample", "--checkpoint", str(story_model), "--tokenizer", str(small_tokenizer)]
    argv += [
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        str(max_new_tokens),
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    assert theirs["text"] == capsys.readouterr().out.rstrip("\n")
