"""tinyllm serve: the OpenAI API through the official client, continuous batching, bad requests, disconnects,
the API key, the page's files, and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import SERVE_LIMITS, RunningServer, wait_until
from conftest import SERVE_TIMEOUT_S as TIMEOUT_S
from tinyllm.checkpoint import load_model_and_tokenizer
from tinyllm.generate import generate
from tinyllm.serve import PAGE, listen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(story_model, small_tokenizer):
    with RunningServer(story_model, small_tokenizer) as running:
        yield running


@pytest.fixture(scope="module")
def story(story_model, small_tokenizer):
    """(model, tokenizer, greedy text of "Once upon a time" up to the story's end) as generate writes it."""
    model, tokenizer = load_model_and_tokenizer(story_model, small_tokenizer)
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(model, prompt, 200, temperature=0.0, eos_id=tokenizer.bos_id)[0]
    assert len(new) < 200, "the story model should end its story"
    text = tokenizer.decode(prompt + new)[len("Once upon a time") :]
    first_seven = tokenizer.decode(prompt + new[:7])[len("Once upon a time") :]
    return model, tokenizer, text, first_seven


def client(server, **options):
    from openai import OpenAI

    return OpenAI(
        base_url=server.url + "/v1", api_key=options.pop("api_key", "none"), max_retries=0, **options
    )


# --- the OpenAI client --------------------------------------------------------------------------------------


def test_the_openai_client_lists_the_model_and_completes_a_story(server, story):
    _, _, expected, _ = story
    openai = client(server)
    (model,) = openai.models.list().data
    assert model.id == "tinyllm-story_model0" and model.max_seq_len == 64  # named after its folder
    answer = openai.completions.create(
        model=model.id, prompt="Once upon a time", temperature=0, max_tokens=200
    )
    (choice,) = answer.choices
    assert choice.text == expected  # the server decodes what generate decodes, and ends at the story's end
    assert choice.finish_reason == "stop"
    assert answer.usage.prompt_tokens == 5 and answer.usage.completion_tokens > 3


def test_the_openai_client_streams(server, story):
    _, _, expected, _ = story
    stream = client(server).completions.create(
        model="any", prompt="Once upon a time", temperature=0, max_tokens=200, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 3 and "".join(texts) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # One chunk per token, and a last one that says the story ended (its end is no token of the text).
    assert chunks[-1].usage.completion_tokens == len(texts) - 1


def test_length_stop_sequences_n_seed_and_echo(server):
    openai = client(server)
    capped = openai.completions.create(model="m", prompt="Once upon a time", max_tokens=3, temperature=0)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    full = openai.completions.create(model="m", prompt="Once upon a time", max_tokens=200, temperature=0)
    stop = full.choices[0].text[8:12]
    cut = openai.completions.create(
        model="m", prompt="Once upon a time", max_tokens=200, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == full.choices[0].text[: full.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    kwargs = dict(model="m", prompt="One day", max_tokens=30, temperature=1.0, seed=3, n=3)
    first, again = openai.completions.create(**kwargs), openai.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]  # the seed reproduces
    assert len({c.text for c in first.choices}) > 1  # the n choices are separate draws
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    echoed = openai.completions.create(
        model="m", prompt="Once upon a time", max_tokens=3, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + capped.choices[0].text


def test_concurrent_streams_are_decoded_together_and_each_is_right(server, story, monkeypatch):
    """More requests than rows: they queue, join the batch as rows free up, and each gets its own answer."""
    _, _, expected, first_seven = story
    steps = []
    batch = server.service.engine.batch
    original = batch.decoder.step
    # 5 ms a step: the six requests overlap however slowly their threads start
    monkeypatch.setattr(
        batch.decoder, "step", lambda t, p: steps.append(len(p)) or time.sleep(0.005) or original(t, p)
    )
    results = [None] * 6

    def one(i):
        answer = client(server).completions.create(
            model="m", prompt="Once upon a time", temperature=0, max_tokens=200 if i % 2 else 7
        )
        results[i] = answer.choices[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert all(r is not None for r in results)
    wanted = [(expected, "stop") if i % 2 else (first_seven, "length") for i in range(6)]
    assert [(choice.text, choice.finish_reason) for choice in results] == wanted
    # Rows at different positions shared steps, up to every row.
    assert max(steps) == SERVE_LIMITS["max_batch"]


# --- limits and bad requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [({"prompt": 5}, "prompt"), ({"prompt": ["a", 3]}, "prompt"), ({}, "prompt"),
     ({"prompt": "x", "max_tokens": -1}, "max_tokens"), ({"prompt": "x", "max_tokens": 10**30}, "max_tokens"),
     ({"prompt": "x", "max_tokens": "12"}, "max_tokens"), ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
     ({"prompt": "x", "max_tokens": True}, "max_tokens"), ({"prompt": "x", "max_tokens": 301}, "max_tokens"),
     ({"prompt": "x", "temperature": -0.1}, "temperature"),
     ({"prompt": "x", "temperature": "hot"}, "temperature"), ({"prompt": "x", "top_p": 0}, "top_p"),
     ({"prompt": "x", "top_p": 1.5}, "top_p"), ({"prompt": "x", "top_k": 0}, "top_k"),
     ({"prompt": "x", "top_k": 2.5}, "top_k"), ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "n": 5}, "n"),
     ({"prompt": ["a", "b"], "n": 3}, "n"), ({"prompt": "x", "stop": 7}, "stop"),
     ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": "x", "stop": [""]}, "stop"),
     ({"prompt": "x", "seed": -1}, "seed"), ({"prompt": "x", "seed": 2**64}, "seed"),
     ({"prompt": "x", "stream": "yes"}, "stream"), ({"prompt": "x", "echo": 1}, "echo"),
     ({"prompt": "x", "stream_options": {"x": 1}}, "stream_options"), ({"prompt": "x", "model": 3}, "model"),
     ({"prompt": "x", "logprobs": 2}, "logprobs"),
     ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
     ({"prompt": "x", "best_of": 3}, "best_of"), ({"prompt": "x", "suffix": "y"}, "suffix"),
     ({"prompt": "x", "user": 5}, "user"), ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
     ({"prompt": "x " * 80}, "prompt")],
)  # fmt: skip
def test_a_bad_field_is_a_400_naming_it(server, body, param):
    status, answer = server.request("POST", "/v1/completions", body)
    assert status == 400, answer
    assert answer["error"]["param"] == param and param in answer["error"]["message"]
    assert answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "raw, words",
    [(b"{\"prompt\": \"x\"", "not valid JSON"), (b"\xff\xfe{}", "not UTF-8"), (b"[1, 2]", "JSON object"),
     (b"{\"prompt\": \"x\", \"temperature\": NaN}", "NaN"), (b"", "not valid JSON"),
     (b"{\"prompt\": \"x\", \"temperature\": 1e400}", "temperature must be a number")],
)  # fmt: skip
def test_a_malformed_body_is_a_400(server, raw, words):
    status, answer = server.request("POST", "/v1/completions", raw, {"Content-Type": "application/json"})
    assert status == 400 and words in answer["error"]["message"]


def test_oversized_bodies_unknown_paths_and_methods_are_json_errors(server):
    status, answer = server.request("POST", "/v1/completions", b"{" + b" " * (300 * 1024) + b"}")
    assert status == 413 and "limit" in answer["error"]["message"]
    for path in ("/v1/chat/completions", "/static/../serve.py", "/static/%2e%2e/serve.py", "/etc/passwd",
                 "/static/", "/static/app.js/..", "//static/app.js", "/page/index.html"):  # fmt: skip
        status, answer = server.request("GET", path)
        assert status == 404 and answer["error"]["message"].startswith("not found"), path
    status, answer = server.request("GET", "/v1/completions")
    assert status == 405 and "GET is not allowed" in answer["error"]["message"]


def test_the_page_is_its_three_files_and_nothing_else(server):
    from importlib.resources import files

    for route, (name, media_type) in PAGE.items():
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
        connection.request("GET", route)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type") == media_type
        assert response.read() == (files("tinyllm") / "page" / name).read_bytes()
        assert response.getheader("content-security-policy") == "default-src 'self'"
    page = (files("tinyllm") / "page" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN: the page loads nothing from elsewhere


# --- many clients: the window, disconnects, the queue bound ------------------------------------------------


@pytest.fixture(scope="module")
def endless(small_tokenizer, tmp_path_factory):
    """A server of a random model whose greedy text from "Once upon a time" runs 300 tokens without ending
    (past its 64-token context, so rows slide), and that text as generate writes it."""
    from conftest import make_random_model
    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint

    model = make_random_model(seed=1, scale=3.0)
    path = tmp_path_factory.mktemp("endless") / "ckpt.pt"
    save_checkpoint(weights_checkpoint(model, None), path)
    _, tokenizer = load_model_and_tokenizer(path, small_tokenizer)
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(model, prompt, 300, temperature=0.0, eos_id=tokenizer.bos_id)[0]
    assert len(new) == 300, "this random model ends its text early: pick another seed"
    with RunningServer(path, small_tokenizer) as running:
        yield running, tokenizer.decode(prompt + new)[len("Once upon a time") :]


def open_stream(server, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}))
    return connection, connection.getresponse()


def read_events(response, count: int | None = None) -> list[str]:
    """The data of up to count events of an SSE response (all, to [DONE], without count)."""
    events = []
    while count is None or len(events) < count:
        line = response.readline()
        if not line or line == b"data: [DONE]\n":
            break
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    return events


def test_past_the_context_each_row_slides_as_generate_does(endless):
    server, expected = endless
    answer = client(server).completions.create(
        model="m", prompt="Once upon a time", temperature=0, max_tokens=300
    )
    assert answer.choices[0].text == expected and answer.choices[0].finish_reason == "length"


def test_a_client_that_disconnects_mid_stream_frees_its_row_at_once(endless):
    server, _ = endless
    engine = server.service.engine
    streams = [open_stream(server, {"prompt": "Once upon a time", "max_tokens": 300, "temperature": 0})
               for _ in range(3)]  # fmt: skip
    for _, response in streams:
        assert len(read_events(response, 5)) == 5
    assert engine.load()[0] == 3
    streams[1][0].sock.shutdown(2)  # the client goes away mid-story
    streams[1][0].close()
    wait_until(lambda: engine.load()[0] == 2, "the row freed", timeout=2.0)
    for connection, response in (streams[0], streams[2]):  # the others go on to the end, untouched
        events = read_events(response)
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        connection.close()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT_S)
    connection.request("POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 300}))
    time.sleep(0.2)
    connection.close()  # gone before the answer: a whole (not streamed) answer is dropped too
    wait_until(lambda: engine.load() == (0, 0), "the unread answer dropped", timeout=2.0)


def test_a_burst_past_the_queue_bound_is_refused_with_429_and_the_rest_served(endless):
    server, expected = endless
    statuses, texts = [], []

    def one():
        connection, response = open_stream(
            server, {"prompt": "Once upon a time", "max_tokens": 300, "temperature": 0}
        )
        statuses.append(response.status)
        if response.status == 200:
            texts.append("".join(e["choices"][0]["text"] for e in read_events(response)))
        else:
            error = json.loads(response.read())["error"]
            assert error["type"] == "rate_limit_error" and "queue bound 6" in error["message"]
        connection.close()

    threads = [threading.Thread(target=one) for _ in range(16)]  # 4 rows + 6 waiting: 6 too many
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert len(statuses) == 16 and statuses.count(429) >= 6 and statuses.count(200) >= 4
    assert texts == [expected] * statuses.count(200)
    wait_until(lambda: server.service.engine.load() == (0, 0), "every row freed")


# --- the API key, int8, and stopping -----------------------------------------------------------------------


def test_with_an_api_key_every_api_request_must_carry_it(story_model, small_tokenizer):
    with RunningServer(story_model, small_tokenizer, api_key="s3cret") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cre"}):
            for method, path, body in (
                ("GET", "/v1/models", None),
                ("POST", "/v1/completions", {"prompt": "x"}),
            ):
                status, answer = server.request(method, path, body, headers)
                assert status == 401 and "API key" in answer["error"]["message"]
        good = {"Authorization": "Bearer s3cret"}
        assert server.request("GET", "/v1/models", None, good)[0] == 200
        assert server.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, good)[0] == 200
        assert (
            server.request("GET", "/")[0] == 200
        )  # the page itself holds nothing secret; it asks for the key
        text = client(server, api_key="s3cret").completions.create(model="m", prompt="Once", max_tokens=3)
        assert text.choices[0].text


def test_int8_serves_what_the_int8_decoder_writes(story_model, small_tokenizer):
    model, tokenizer = load_model_and_tokenizer(story_model, small_tokenizer)
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(model, prompt, 40, temperature=0.0, eos_id=tokenizer.bos_id, int8=True)[0]
    with RunningServer(story_model, small_tokenizer, int8=True) as server:
        (info,) = client(server).models.list().data
        assert info.weights == "int8"
        answer = client(server).completions.create(
            model="m", prompt="Once upon a time", temperature=0, max_tokens=40
        )
    assert answer.choices[0].text == tokenizer.decode(prompt + new)[len("Once upon a time") :]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_command_logs_what_it_serves_and_stops_cleanly_on_a_signal(
    stop_signal, story_model, small_tokenizer
):
    command = [sys.executable, "-m", "tinyllm.cli", "serve", str(story_model),
               "--tokenizer", str(small_tokenizer), "--port", "0", "--threads", "1"]  # fmt: skip
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        lines = []
        while not any("http://127.0.0.1:" in line for line in lines):
            line = process.stderr.readline()
            assert line, f"the server exited: {''.join(lines)}"
            lines.append(line)
        log = "".join(lines)
        assert "tinyllm-story_model0" in log and "M parameters" in log and "float32 weights" in log
        assert "on cpu" in log and "API key off" in log
        port = int(log.split("http://127.0.0.1:")[1].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        connection.request(
            "POST", "/v1/completions", json.dumps({"prompt": "Once", "max_tokens": 40, "stream": True})
        )
        response = connection.getresponse()
        assert len(read_events(response, 1)) == 1
        process.send_signal(stop_signal)
        read_events(response)  # the open stream ends (finished, or closed), it does not hang
        assert process.wait(TIMEOUT_S) == 0
        rest = process.stderr.read()
        assert "tinyllm serve: stopped" in rest and "Traceback" not in rest, rest
    finally:
        process.kill()
        process.wait()


def test_the_load_test_counts_every_outcome(endless):
    from tinyllm.loadtest import run_clients, summary

    server, _ = endless
    body = {"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0}
    outcomes, seconds = run_clients(server.port, 6, 2, body, hang_up_every=3, hang_up_after=5)
    figures = summary(outcomes, seconds, "t")
    assert figures["t_dropped"] == 4  # clients 0 and 3, twice each
    assert figures["t_complete"] == 8 and figures["t_refused"] == figures["t_failed"] == 0
    assert sum(o.tokens for o in outcomes) == 4 * 5 + 8 * 40
    assert 0 < figures["t_ttft_p50_ms"] <= figures["t_ttft_p99_ms"] < 10_000 and figures["t_tokens_per_s"] > 0
    wait_until(lambda: server.service.engine.load() == (0, 0), "every row freed")


def test_a_failing_step_answers_500_and_the_server_goes_on(server, monkeypatch):
    decoder = server.service.engine.batch.decoder
    original = decoder.step
    calls = []

    def broken_once(tokens, positions):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated kernel failure")
        return original(tokens, positions)

    monkeypatch.setattr(decoder, "step", broken_once)
    status, answer = server.request("POST", "/v1/completions", {"prompt": "Once", "max_tokens": 5})
    assert status == 500 and "simulated kernel failure" in answer["error"]["message"]
    connection, response = open_stream(server, {"prompt": "Once", "max_tokens": 5})
    events = read_events(response)
    connection.close()
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # the next request is served as usual


def test_a_seeded_completion_draws_what_generate_draws_whatever_shares_its_batch(server, story):
    model, tokenizer, _, _ = story
    prompt = tokenizer.encode("One day", bos=True, eos=False)
    new = generate(model, prompt, 60, temperature=1.0, top_k=300, seed=7, eos_id=tokenizer.bos_id)[0]
    expected = tokenizer.decode(prompt + new)[len("One day") :]
    noise = [open_stream(server, {"prompt": "Once", "max_tokens": 60, "temperature": 1.0}) for _ in range(2)]
    answer = client(server).completions.create(model="m", prompt="One day", max_tokens=60, seed=7)
    for connection, response in noise:
        read_events(response)
        connection.close()
    assert answer.choices[0].text == expected


def test_serve_refuses_in_one_line_what_it_cannot_serve(story_model, small_tokenizer, tmp_path, capsys):
    from tinyllm import cli

    assert cli.main(["serve", str(tmp_path / "missing.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    argv = ["serve", str(story_model), "--tokenizer", str(small_tokenizer)]
    assert cli.main([*argv, "--max-prompt-tokens", "65"]) == 2
    assert "--max-prompt-tokens 65 exceeds the model's context of 64 tokens" in capsys.readouterr().err
    taken = listen("127.0.0.1", 0)
    try:
        assert cli.main([*argv, "--port", str(taken.getsockname()[1])]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
        assert line.startswith("tinyllm serve: cannot listen on 127.0.0.1:") and "--port" in line
    finally:
        taken.close()
