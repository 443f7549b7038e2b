"""tinyllm serve's page in a real headless browser: Debian's chromium, driven by Playwright.

Type a prompt, press Write, watch the story arrive in pieces and stop at the story's end; press Stop on a
text that does not end. TINYLLM_SCREENSHOT=docs/serve.png keeps the screenshot the README shows.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import SERVE_TIMEOUT_S as TIMEOUT_S
from conftest import RunningServer, wait_until
from tinyllm.checkpoint import load_model_and_tokenizer
from tinyllm.completions_api import Limits
from tinyllm.generate import generate

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; .ci/run installs it
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium (apt-get install chromium)"),
]


@pytest.fixture
def browser(tmp_path):
    """A page of a fresh headless chromium (its own user-data-dir), loopback only."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 900, "height": 640},
        )  # fmt: skip
        context.set_default_timeout(TIMEOUT_S * 1000)
        try:
            yield context.new_page()
        finally:
            context.close()


# The lengths of the story as the page showed it, at each change the browser rendered.
RECORD_LENGTHS = """() => {
    window.storyLengths = [];
    new MutationObserver(() => window.storyLengths.push(document.getElementById("story").textContent.length))
        .observe(document.getElementById("story"), {subtree: true, childList: true, characterData: true});
}"""


def set_knobs(page, prompt: str, temperature: str, max_tokens: str) -> None:
    page.fill("#prompt", prompt)
    page.eval_on_selector(
        "#temperature", f"e => {{ e.value = '{temperature}'; e.dispatchEvent(new Event('input')); }}"
    )
    page.fill("#max-tokens", max_tokens)


def test_the_page_streams_a_story_until_its_end(browser, story_model, small_tokenizer, tmp_path):
    model, tokenizer = load_model_and_tokenizer(story_model, small_tokenizer)
    prompt = tokenizer.encode("Once upon a time", bos=True, eos=False)
    new = generate(model, prompt, 200, temperature=0.0, eos_id=tokenizer.bos_id)[0]
    with RunningServer(story_model, small_tokenizer) as server:
        # The tiny model writes its story in milliseconds; at 50 tokens/s the page sees it come.
        decoder = server.service.engine.batch.decoder
        step = decoder.step
        decoder.step = lambda tokens, positions: time.sleep(0.02) or step(tokens, positions)
        page = browser
        page.goto(server.url + "/")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('story_model0')")
        set_knobs(page, "Once upon a time", "0", "200")
        assert page.text_content("#temperature-value") == "0.00"
        page.evaluate(RECORD_LENGTHS)
        page.click("#write")
        page.wait_for_selector("#status[data-state=done]")
        assert page.get_attribute("#status", "data-finish") == "stop"  # the model ended its story
        assert page.text_content("#story") == tokenizer.decode(prompt + new)
        assert page.text_content(".prompt") == "Once upon a time"
        status = page.text_content("#status")
        assert status.startswith(f"the story ended: {len(new)} tokens") and "tokens/s" in status
        lengths = page.evaluate("window.storyLengths")
        partial = {n for n in lengths if len("Once upon a time") < n < len(page.text_content("#story"))}
        assert len(partial) >= 3, lengths  # the story appeared piece by piece, not at once at the end
        page.screenshot(path=tmp_path / "page.png")
    if os.environ.get("TINYLLM_SCREENSHOT"):
        shutil.copyfile(tmp_path / "page.png", os.environ["TINYLLM_SCREENSHOT"])


def test_stop_ends_the_answer_and_frees_the_row(browser, small_tokenizer, tmp_path):
    from conftest import make_random_model
    from tinyllm.checkpoint import save_checkpoint, weights_checkpoint

    # The random model of test_serve's endless server: greedy, it writes on for a minute without ending.
    save_checkpoint(weights_checkpoint(make_random_model(seed=1, scale=3.0), None), tmp_path / "ckpt.pt")
    limits = Limits(max_batch=2, max_queue=2, max_tokens=50_000)
    with RunningServer(tmp_path / "ckpt.pt", small_tokenizer, limits=limits) as server:
        page = browser
        page.goto(server.url + "/")
        set_knobs(page, "Once upon a time", "0", "50000")
        page.click("#write")
        page.wait_for_function("() => document.getElementById('written')?.textContent.length > 20")
        page.click("#stop")
        page.wait_for_selector("#status[data-state=done]")
        assert page.text_content("#status").startswith("stopped: ")
        assert page.is_enabled("#write") and not page.is_enabled("#stop")
        wait_until(lambda: server.service.engine.load() == (0, 0), "the stopped answer's row freed", 5.0)


def test_the_page_asks_for_the_api_key_and_uses_it(browser, story_model, small_tokenizer):
    with RunningServer(story_model, small_tokenizer, api_key="s3cret") as server:
        page = browser
        page.goto(server.url + "/")
        page.wait_for_selector("#key-label:not([hidden])")  # /v1/models said 401: the page shows the field
        assert "API key" in page.text_content("#model")
        page.fill("#api-key", "s3cret")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('parameters')")
        set_knobs(page, "Once upon a time", "0", "10")
        page.click("#write")
        page.wait_for_selector("#status[data-state=done]")
        assert len(page.text_content("#written")) > 5
