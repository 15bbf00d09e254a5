"""The playground in a real browser: headless Chromium (Debian's ``chromium``) driven by playwright.

Against a live ``scratchllm serve`` on a run trained in the test: the page loads without console
errors, a prompt streams tokens, hovering a token shows its alternatives, the temperature slider
moves the sampling-pipeline bars, attention (256+ tokens) and the logit lens render, the stop
button ends a generation, and the views work by keyboard and at phone width. A screenshot of every
view is saved (``$SCRATCHLLM_ARTIFACTS/playground`` or a pytest temp directory).
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("SCRATCHLLM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, play_server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    # Generous waits: on a loaded 2-core CI machine a step of the tiny model can take seconds.
    pg.set_default_timeout(120_000)
    problems: list[str] = []
    pg.on(
        "console",
        lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None,
    )
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(play_server.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=120_000)
    pg.problems = problems
    yield pg
    context.close()


def tab(page, name: str) -> None:
    page.click(f"#tab-{name}")
    page.wait_for_selector(f"#view-{name}:not([hidden])")


def test_generate_stream_hover_and_stop(page, artifacts):
    assert "gpt" in page.inner_text("#model-card")
    page.fill("#prompt", "User: hello\nAssistant:")
    page.fill("#g-max", "60")
    page.fill("#g-seed", "1")
    page.click("#generate")
    page.wait_for_selector("#output[data-done='1']", timeout=60_000)
    toks = page.query_selector_all("#output .tok")
    assert len(toks) == 60
    assert "tokens/s" in page.inner_text("#speed")
    toks[3].hover()
    page.wait_for_selector("#alts:not([hidden])")
    rows = page.query_selector_all("#alts tr")
    assert len(rows) == 10  # the top 10 alternatives, with their probabilities
    assert "%" in rows[0].inner_text()
    page.screenshot(path=str(artifacts / "generate.png"), full_page=True)

    page.select_option("#mode", "chat")
    page.fill("#g-max", "20")
    page.click("#generate")
    page.wait_for_selector("#output[data-done='1']", timeout=60_000)
    page.query_selector_all("#output .tok")[0].hover()
    page.wait_for_selector("#alts:not([hidden])")
    assert len(page.query_selector_all("#alts tr")) == 10

    # Stop: a long generation, cut short; the server frees the slot (no request left running).
    page.select_option("#mode", "completion")
    page.fill("#g-max", "260")
    page.fill("#g-temperature", "1")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok').length >= 3", timeout=60_000)
    page.click("#stop")
    page.wait_for_selector("#output[data-done='1']", timeout=60_000)
    assert "stopped" in page.inner_text("#speed")
    assert len(page.query_selector_all("#output .tok")) < 260
    assert page.is_enabled("#generate") and not page.is_enabled("#stop")
    assert not page.problems, page.problems


def test_sampling_pipeline_follows_the_temperature_slider(page, artifacts):
    page.fill("#prompt", "User: hello")
    tab(page, "pipeline")
    page.wait_for_selector("#pipeline .stage")
    bar = "document.querySelector('[data-stage=\"1\"] .fill').style.width"
    num = "document.querySelector('[data-stage=\"1\"] .num').textContent"
    first_bar, first_num = page.evaluate(bar), page.evaluate(num)
    model_bar = page.evaluate("document.querySelector('[data-stage=\"0\"] .fill').style.width")
    assert first_bar == model_bar  # temperature 1 is the model's own distribution
    slider = page.locator("#p-temperature")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")  # keyboard: 1.0 -> 0.5
    page.wait_for_function(f"{num} !== {first_num!r}", timeout=60_000)
    assert page.input_value("#p-temperature") == "0.5"
    assert "temperature 0.5" in page.inner_text("#pipeline")
    sharper = page.evaluate(bar)
    assert float(sharper.rstrip("%")) > float(first_bar.rstrip("%"))  # colder: the favourite grows
    assert len(page.query_selector_all("#pipeline .stage")) == 5  # model, T, top-k, top-p, sampled
    page.screenshot(path=str(artifacts / "sampling.png"), full_page=True)
    assert not page.problems, page.problems


def test_attention_256_tokens_and_logit_lens(page, artifacts):
    long_text = ("User: where does the river run?\nAssistant: The river runs to the sea. " * 5)[:280]
    page.fill("#prompt", long_text)
    tab(page, "attention")
    page.wait_for_function(
        "document.querySelector('#a-status').textContent.includes('tokens')", timeout=120_000
    )
    assert "280 tokens" in page.inner_text("#a-status")
    assert len(page.query_selector_all("#a-gallery canvas")) == 2
    # the heatmap is painted (not blank): some pixel of the lower triangle is not white
    painted = page.evaluate(
        "(() => { const c = document.querySelector('#a-map'); const d = c.getContext('2d')"
        ".getImageData(0, c.height - 3, 40, 1).data; return [...d].some((v, i) => i % 4 < 3 && v < 250); })()"
    )
    assert painted
    page.click("#a-gallery figure:nth-child(2)")
    assert page.input_value("#a-head") == "1"
    page.click("#a-map", position={"x": 50, "y": 500})
    assert "attends to" in page.inner_text("#a-lines")
    page.screenshot(path=str(artifacts / "attention.png"), full_page=True)

    tab(page, "lens")
    page.wait_for_selector("#lens tr td", timeout=120_000)
    rows = page.query_selector_all("#lens tr")
    assert len(rows) == 1 + 3  # header + embedding + 2 layers
    page.screenshot(path=str(artifacts / "logit-lens.png"), full_page=True)
    assert not page.problems, page.problems


def test_tokenizer_embeddings_training_and_phone_width(page, artifacts):
    tab(page, "tokenizer")
    page.wait_for_selector("#t-tokens .chip")
    assert "char tokenizer" in page.inner_text("#t-status")
    page.screenshot(path=str(artifacts / "tokenizer.png"), full_page=True)

    tab(page, "embeddings")
    page.wait_for_selector("#e-early-fig:not([hidden])", timeout=120_000)
    page.fill("#e-search", "e")
    page.press("#e-search", "Enter")
    page.wait_for_selector("#e-neighbours li")
    assert len(page.query_selector_all("#e-neighbours li")) == 10
    page.screenshot(path=str(artifacts / "embeddings.png"), full_page=True)

    tab(page, "training")
    page.wait_for_function("document.querySelector('#r-status').textContent.includes('checkpoints kept')")
    page.click("#r-run")
    page.wait_for_selector("#r-list li", timeout=60_000)
    assert len(page.query_selector_all("#r-list li")) == 3
    page.screenshot(path=str(artifacts / "training.png"), full_page=True)

    # keyboard: arrows move between tabs
    page.focus("#tab-training")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-generate"
    assert page.is_visible("#view-generate")
    # phone width: nothing wider than the screen except the scrollable tab strip and lens table
    page.set_viewport_size({"width": 390, "height": 800})
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 390, overflow
    page.screenshot(path=str(artifacts / "phone.png"), full_page=True)
    assert not page.problems, page.problems


def test_no_layout_jump_while_streaming(page):
    """The controls above the output keep their place while tokens stream in."""
    page.fill("#g-max", "80")
    before = page.evaluate("document.querySelector('#output').getBoundingClientRect().top")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output .tok').length >= 10", timeout=60_000)
    during = page.evaluate("document.querySelector('#output').getBoundingClientRect().top")
    page.wait_for_selector("#output[data-done='1']", timeout=60_000)
    after = page.evaluate("document.querySelector('#output').getBoundingClientRect().top")
    assert before == during == after
