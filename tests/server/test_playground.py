"""The playground at `/`, driven in a real headless Chromium (Debian's, through Playwright).

`vssm serve` runs as a user runs it, on real Redis, with tiny models of the shapes the page knows:
a 28x28 binary image VSSM (with a measured block curve), an image AR-SSM, a byte-level text VSSM.
Every test compares what the page shows with what the HTTP API returns for the request the page
sent (randomness is keyed by seed and position, so the same request gives the same tokens).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from tests.server.conftest import RedisServer, ServerProcess
from vssm import model

pytestmark = pytest.mark.slow  # a browser and a server per module: about 30 s under load

IMAGE = {"vocab_size": 2, "max_position": 784, "width": 16, "state_size": 8}
MODELS = {
    "digits-vssm": ("vssm", "mnist", {**IMAGE, "enc_layers": 1, "dec_layers": 1, "par_layers": 1, "n_latents": 2}),
    "digits-ar-ssm": ("ar-ssm", "mnist", {**IMAGE, "layers": 1}),
    "text-vssm": ("vssm", "shakespeare", {"vocab_size": 256, "width": 16, "state_size": 8, "n_latents": 2}),
}
CURVE = [(7, 95.0, 0.4), (28, 90.0, 0.1), (784, 120.0, 0.01)]  # block size, nats, seconds per image
WAIT = 60_000  # ms: generous, the machine may be busy


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium not found: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("playground-models")
    for i, (name, (family, dataset, cfg)) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        m = model.build_model(family, cfg)
        if name == "digits-vssm":
            m.default_block_size = 28
        model.save_checkpoint(m, d / f"{name}.safetensors", extra={"dataset": dataset})
        if name == "digits-vssm":
            rows = [
                {
                    "block_size": c,
                    "nll": {"bound": "iw", "nats_per_sequence": nats, "bits_per_token": nats / 784 / 0.693},
                    "generation_seconds": {"length": 784, "batch_1": s, "batch_32": s * 8},
                }
                for c, nats, s in CURVE
            ]
            (d / f"{name}.json").write_text(json.dumps({"fingerprint": m.fingerprint, "block_curve": rows}))
    return d


def start_server(models_dir: Path, tmp_path_factory, **env: str) -> Iterator[ServerProcess]:
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    srv = ServerProcess(models_dir, redis.url, **env).start()
    try:
        yield srv
    finally:
        srv.stop()
        redis.stop()


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    yield from start_server(models_dir, tmp_path_factory, VSSM_MAX_TOKENS="1024")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), headless=True)
        yield b
        b.close()


class Watched:
    """A page with every console error, page error, request body and foreign request recorded."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page, self.origin = page, origin
        self.errors: list[str] = []
        self.bodies: list[dict] = []
        self.foreign: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("request", self._request)

    def _request(self, r: Request) -> None:
        if not r.url.startswith(self.origin) and not r.url.startswith("data:"):
            self.foreign.append(r.url)
        if r.method == "POST" and r.post_data:
            self.bodies.append({"url": r.url[len(self.origin) :], **json.loads(r.post_data)})

    def sent(self, path: str) -> list[dict]:
        return [b for b in self.bodies if b["url"] == path]


@pytest.fixture
def page(browser, server) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    watched = Watched(context.new_page(), server.url)
    yield watched
    context.close()


def open_page(w: Watched, url: str, model: str) -> Page:
    page = w.page
    page.goto(url)
    expect(page.locator("#model option")).not_to_have_count(0, timeout=WAIT)
    page.select_option("#model", model)
    return page


def fixed_seed(page: Page, seed: int) -> None:
    page.uncheck("#seed-random")
    page.fill("#seed", str(seed))


def api_tokens(server: ServerProcess, sent: dict) -> list[int]:
    """The tokens the API returns for the request the page sent, asked again without streaming."""
    body = {k: v for k, v in sent.items() if k not in ("url", "stream", "chunk_size")}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["tokens"]


def canvas_pixels(page: Page, selector: str) -> list[list[int]]:
    """RGB of every pixel of a canvas, in raster order."""
    return page.evaluate(
        """(selector) => {
            const c = document.querySelector(selector);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            const out = [];
            for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
            return out;
        }""",
        selector,
    )


def assert_painted(pixels: list[list[int]], prompt: list[int], tokens: list[int]) -> None:
    """The prompt in its two blues, every generated token black (0) or white (1), at its position."""
    assert len(pixels) == len(prompt) + len(tokens) == 784
    blues = {0: [16, 35, 63], 1: [127, 178, 255]}
    assert [blues[t] for t in prompt] == pixels[: len(prompt)]
    assert [[255 * t] * 3 for t in tokens] == pixels[len(prompt) :]


# ----- the tests -------------------------------------------------------------------------------------------------
def test_the_page_loads_offline_with_no_console_errors(page, server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "default-src 'self'" in r.headers["content-security-policy"]  # nothing from elsewhere may load
    p = open_page(page, server.url + "/", "digits-vssm")
    expect(p.locator("#card")).to_contain_text("vssm")
    expect(p.locator("#card")).to_contain_text("784")
    expect(p.locator("#digits button")).to_have_count(10)
    # the model's measured curve beside the block-size slider, its default selected
    expect(p.locator("#curve circle")).to_have_count(len(CURVE))
    expect(p.locator("#curve circle.on")).to_have_count(1)
    expect(p.locator("#block-out")).to_contain_text("28")
    expect(p.locator("#curve .note")).to_contain_text("block 28: 90.0 nats")
    # the model card's prose, folded away until asked for
    card = httpx.get(server.url + "/v1/models/digits-vssm").json()["card"]
    p.click("#card-details summary")
    expect(p.locator("#card-details details")).to_contain_text(card["data"])
    # an autoregressive model has no block size to choose
    p.select_option("#model", "digits-ar-ssm")
    expect(p.locator("#block")).to_be_disabled()
    p.select_option("#model", "text-vssm")
    expect(p.locator("#text")).to_be_visible()
    assert page.errors == [] and page.foreign == []


def test_drawing_then_generating_paints_the_tokens_the_api_returned(page, server):
    p = open_page(page, server.url + "/", "digits-vssm")
    p.click("#clear")
    box = p.locator("#draw").bounding_box()
    assert box is not None
    # a diagonal stroke through the top half (the prompt: 12 of 28 rows)
    p.fill("#rows", "12")
    p.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.05)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.4, steps=12)
    p.mouse.up()
    fixed_seed(p, 5)
    p.click("#generate")
    expect(p.locator("#output")).to_have_attribute("data-state", "done", timeout=WAIT)
    (sent,) = page.sent("/v1/completions")
    assert sent["stream"] is True and sent["seed"] == 5 and sent["block_size"] == 28
    assert "observation_temperature" not in sent  # the model's own setting
    assert len(sent["prompt"]) == 12 * 28 and sum(sent["prompt"]) >= 12  # the stroke is in the prompt
    assert sent["max_tokens"] == 784 - 12 * 28
    assert_painted(canvas_pixels(p, "#output canvas"), sent["prompt"], api_tokens(server, sent))
    expect(p.locator("#output .stats")).to_contain_text("first chunk")
    expect(p.locator("#output .stats")).to_contain_text("total")
    assert page.errors == []


def test_the_page_names_an_observation_temperature_and_paints_what_it_returns(page, server):
    p = open_page(page, server.url + "/", "digits-vssm")
    expect(p.locator("#observation option").first).to_have_text("the model's (1)")
    p.select_option("#observation", "0")
    fixed_seed(p, 7)
    p.click("#generate")
    expect(p.locator("#output")).to_have_attribute("data-state", "done", timeout=WAIT)
    (sent,) = page.sent("/v1/completions")
    assert sent["observation_temperature"] == 0
    assert_painted(canvas_pixels(p, "#output canvas"), sent["prompt"], api_tokens(server, sent))
    assert page.errors == []


def test_a_test_digit_races_two_models_side_by_side(page, server):
    p = open_page(page, server.url + "/", "digits-vssm")
    p.click("#digits button[data-digit='7']")
    fixed_seed(p, 9)
    p.click("#tab-race")
    p.select_option("#race-b", "digits-ar-ssm")
    p.select_option("#race-mode", "concurrent")
    p.click("#race")
    for lane in ("#lane-a", "#lane-b"):
        expect(p.locator(lane)).to_have_attribute("data-state", "done", timeout=WAIT)
    sent = {b["model"]: b for b in page.sent("/v1/completions")}
    assert set(sent) == {"digits-vssm", "digits-ar-ssm"}
    assert sent["digits-vssm"]["prompt"] == sent["digits-ar-ssm"]["prompt"]  # the same prompt ...
    digit = json.loads((Path(__file__).parents[2] / "server/static/digits.json").read_text())["digits"][7]
    assert sent["digits-vssm"]["prompt"] == [int(c) for c in digit["pixels"][: 14 * 28]]  # ... the 7's top half
    for lane, name in (("#lane-a", "digits-vssm"), ("#lane-b", "digits-ar-ssm")):
        expect(p.locator(f"{lane} h3")).to_contain_text(name)
        assert_painted(canvas_pixels(p, f"{lane} canvas"), sent[name]["prompt"], api_tokens(server, sent[name]))
        expect(p.locator(f"{lane} .stats")).to_contain_text("total")
    expect(p.locator(".lane .badge")).to_have_count(1)  # the faster one
    assert page.errors == []


def test_a_text_stream_grows_chunk_by_chunk(page, server):
    p = open_page(page, server.url + "/", "text-vssm")
    p.fill("#text", "ROMEO:\n")
    p.fill("#max-tokens", "120")
    p.select_option("#chunk", "4")
    fixed_seed(p, 3)
    # record every piece of text the page appends while the stream runs
    p.evaluate(
        """() => {
            window.pieces = [];
            new MutationObserver((records) => {
                for (const r of records) {
                    if (!r.target.classList.contains("generated")) continue;
                    for (const n of r.addedNodes) window.pieces.push(n.textContent);
                }
            }).observe(document.querySelector("#output"), {childList: true, subtree: true});
        }"""
    )
    p.click("#generate")
    expect(p.locator("#output")).to_have_attribute("data-state", "done", timeout=WAIT)
    (sent,) = page.sent("/v1/completions")
    tokens = api_tokens(server, sent)
    text = bytes(tokens).decode("utf-8", errors="replace")
    assert p.locator("#output .generated").text_content() == text
    pieces = [t for t in p.evaluate("() => window.pieces") if t]
    assert len(pieces) >= 10  # 120 tokens in chunks of 4: the text grew event by event
    assert "".join(pieces) == text
    expect(p.locator("#output .stats")).to_contain_text("tokens/s")
    # a stop sequence typed with an escape, as in JSON: the output ends before it
    i = next(i for i in range(5, len(tokens)) if 32 <= tokens[i] < 127 and tokens[i] != ord("\\"))
    p.fill("#stop", chr(tokens[i]) + "\\n" if tokens[i + 1 : i + 2] == [10] else chr(tokens[i]))
    p.click("#generate")
    expect(p.locator("#output .stats")).to_contain_text("stop", timeout=WAIT)
    sent = page.sent("/v1/completions")[-1]
    assert sent["stop"] in (chr(tokens[i]), chr(tokens[i]) + "\n")
    cut = bytes(tokens).find(sent["stop"].encode())
    assert p.locator("#output .generated").text_content() == bytes(tokens[:cut]).decode("utf-8", errors="replace")
    assert page.errors == []


def test_fork_shows_two_branches_and_a_reload_resumes_them(page, server):
    p = open_page(page, server.url + "/", "digits-vssm")
    p.click("#digits button[data-digit='3']")
    fixed_seed(p, 4)
    p.click("#tab-sessions")
    p.fill("#session-step", "56")
    p.click("#session-new")
    a = p.locator(".branch").nth(0)
    expect(a).to_have_attribute("data-position", str(14 * 28), timeout=WAIT)
    a.locator("[data-action=continue]").click()
    expect(a).to_have_attribute("data-position", str(14 * 28 + 56), timeout=WAIT)
    a.locator("[data-action=fork]").click()
    expect(p.locator(".branch")).to_have_count(2, timeout=WAIT)
    b = p.locator(".branch").nth(1)
    expect(b).to_have_attribute("data-position", str(14 * 28 + 56))
    for branch in (a, b):
        branch.locator("[data-action=continue]").click()
        expect(branch).to_have_attribute("data-position", str(14 * 28 + 112), timeout=WAIT)
    ids = [a.get_attribute("data-session"), b.get_attribute("data-session")]
    # both are real sessions at that position, and the fork drew its own tokens after the fork
    for sid in ids:
        assert httpx.get(f"{server.url}/v1/sessions/{sid}").json()["position"] == 14 * 28 + 112
    pixels = [canvas_pixels(p, f".branch[data-session='{sid}'] canvas") for sid in ids]
    cut = 14 * 28 + 56
    assert pixels[0][:cut] == pixels[1][:cut] and pixels[0][cut : cut + 56] != pixels[1][cut : cut + 56]
    assert f"session={ids[0]}%2C{ids[1]}" in p.url or f"session={ids[0]},{ids[1]}" in p.url

    # a reload (the ids are in the address) shows both again at the same position, and continues them
    p.reload()
    expect(p.locator(".branch")).to_have_count(2, timeout=WAIT)
    expect(p.locator("#pane-sessions")).to_be_visible()
    for sid in ids:
        branch = p.locator(f".branch[data-session='{sid}']")
        expect(branch).to_have_attribute("data-position", str(14 * 28 + 112))
        expect(branch).to_contain_text("resumed")
    assert canvas_pixels(p, f".branch[data-session='{ids[0]}'] canvas") == pixels[0]  # remembered here
    p.fill("#session-step", "56")
    a = p.locator(f".branch[data-session='{ids[0]}']")
    a.locator("[data-action=continue]").click()
    expect(a).to_have_attribute("data-position", str(14 * 28 + 168), timeout=WAIT)
    last = page.sent(f"/v1/sessions/{ids[0]}/generate")[-1]
    assert last["expected_position"] == 14 * 28 + 112  # it resumed where the session was
    assert page.errors == []


def test_errors_come_from_the_envelope(page, server):
    p = open_page(page, server.url + "/", "text-vssm")
    p.fill("#max-tokens", "2000")  # above this server's limit (1024)
    p.click("#generate")
    expect(p.locator("#error")).to_be_visible(timeout=WAIT)
    expect(p.locator("#error")).to_contain_text("400 max_tokens_exceeded")
    expect(p.locator("#error")).to_contain_text("field: max_tokens")
    p.click("#error-close")
    expect(p.locator("#error")).to_be_hidden()
    # a session id that is not there (expired, or another key's) says so, and the page still works
    p.goto(server.url + "/?session=sess_" + "0" * 32)
    expect(p.locator("#error")).to_contain_text("404 session_not_found", timeout=WAIT)
    expect(p.locator("#model option")).not_to_have_count(0)


@pytest.fixture(scope="module")
def keyed(models_dir, tmp_path_factory) -> Iterator[ServerProcess]:
    yield from start_server(models_dir, tmp_path_factory, VSSM_API_KEYS="playground-key")


def test_a_server_with_keys_asks_for_one(browser, keyed):
    context = browser.new_context()
    w = Watched(context.new_page(), keyed.url)
    p = w.page
    p.goto(keyed.url + "/")  # the page itself needs no key
    expect(p.locator("#error")).to_contain_text("401 invalid_api_key", timeout=WAIT)
    expect(p.locator("#key-label")).to_have_class("key needed")
    p.fill("#api-key", "playground-key")
    p.press("#api-key", "Enter")
    p.locator("#api-key").blur()
    expect(p.locator("#model option")).to_have_count(len(MODELS), timeout=WAIT)
    expect(p.locator("#error")).to_be_hidden()
    p.select_option("#model", "text-vssm")
    p.fill("#max-tokens", "8")
    p.click("#generate")
    expect(p.locator("#output")).to_have_attribute("data-state", "done", timeout=WAIT)
    # remembered in this browser: a reload does not ask again
    p.reload()
    expect(p.locator("#model option")).to_have_count(len(MODELS), timeout=WAIT)
    expect(p.locator("#error")).to_be_hidden()
    context.close()
