"""`multimae demo`: the engine (masks, pictures, refusals), the HTTP server, the Space export, and the page in a
real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; nothing downloaded)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from multimae_cli import ModelConfig, create_model, save_model
from multimae_cli.infer.demo.engine import PHOTO, Demo, DemoError
from multimae_cli.infer.demo.server import DemoServer
from multimae_cli.infer.predictor import Predictor

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny rgb+depth+semseg pretraining model at 32 px, patch 8 (16 tokens per input; random weights)."""
    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "depth", "semseg"), outputs=("rgb", "depth", "semseg"),
                         image_size=(32, 32), patch_size=8, dim=32, depth=2, num_heads=2, decoder_dim=32,
                         decoder_depth=1, decoder_num_heads=2, num_encoded_tokens=8)
    path = tmp_path_factory.mktemp("demo") / "model.safetensors"
    save_model(create_model(config), path)
    return path


@pytest.fixture(scope="module")
def demo(checkpoint) -> Demo:
    return Demo(Predictor.from_checkpoint(checkpoint, "cpu"), "tiny", max_upload_bytes=200_000)


@pytest.fixture()
def server(demo):
    with DemoServer(demo, "127.0.0.1", 0) as running:
        thread = threading.Thread(target=running.serve_forever, daemon=True)
        thread.start()
        yield running
        running.shutdown()


def _pictures(answer: dict) -> dict[str, str]:
    return {picture["title"]: picture["png"] for picture in answer["pictures"]}


def test_tokens_per_input_are_kept_exactly_and_change_the_outputs(demo):
    scene = demo.example("scene-0")
    assert set(scene) == {"rgb", "depth", "semseg"} and scene["rgb"]["tokens"] == 16
    images = {name: scene[name]["id"] for name in ("rgb", "depth")}
    few = demo.predict({"images": images, "visible": {"rgb": 2, "depth": 0}, "seed": 1})
    assert few["visible"] == {"rgb": 2, "depth": 0}
    groups = [(p["group"], p["title"]) for p in few["pictures"]]
    assert groups == [("input", "rgb"), ("input", "depth"), ("masked", "masked rgb"), ("masked", "masked depth"),
                      ("output", "predicted rgb"), ("output", "predicted depth"), ("output", "predicted semseg")]
    more = demo.predict({"images": images, "visible": {"rgb": 12, "depth": 5}, "seed": 1})
    assert more["visible"] == {"rgb": 12, "depth": 5}
    assert _pictures(more)["predicted semseg"] != _pictures(few)["predicted semseg"]
    again = demo.predict({"images": images, "visible": {"rgb": 12, "depth": 5}, "seed": 1})
    assert _pictures(again) == _pictures(more)  # the seed fixes the masks
    other = demo.predict({"images": images, "visible": {"rgb": 12, "depth": 5}, "seed": 2})
    assert _pictures(other)["masked rgb"] != _pictures(more)["masked rgb"]


def test_dirichlet_draw_spends_the_total_and_follows_the_seed(demo):
    scene = demo.example("scene-1")
    images = {name: entry["id"] for name, entry in scene.items()}
    draws = [demo.predict({"images": images, "dirichlet": {"total": 10, "alpha": 0.2}, "seed": seed})["visible"]
             for seed in range(6)]
    assert all(sum(draw.values()) == 10 for draw in draws)
    assert len({tuple(draw.values()) for draw in draws}) > 1  # a small alpha gives uneven, seed-dependent budgets
    again = demo.predict({"images": images, "dirichlet": {"total": 10, "alpha": 0.2}, "seed": 3})["visible"]
    assert again == draws[3]


def test_a_photo_of_any_aspect_gets_its_own_token_grid(demo):
    photo = demo.example("photo")["rgb"]
    assert (photo["width"], photo["height"]) == (480, 320) and photo["grid"] == [3, 5]
    answer = demo.predict({"images": {"rgb": photo["id"]}, "visible": {"rgb": 15}})
    assert answer["visible"] == {"rgb": 15} and "predicted depth" in _pictures(answer)


@pytest.mark.parametrize(("request_", "message"), [
    ({}, "choose or upload an image first"),
    ({"images": {"rgb": "0123"}}, "no longer kept by the server"),
    ({"images": "x"}, "choose or upload an image first"),
    ({"images": {"rgb": "ID"}, "visible": {"rgb": 0}}, "no token left visible"),
    ({"images": {"rgb": "ID"}, "visible": {"rgb": 17}}, "rgb: 17 visible tokens asked, but it has 16"),
    ({"images": {"rgb": "ID"}, "visible": {"rgb": 1.5}}, "visible rgb must be a whole number"),
    ({"images": {"rgb": "ID"}, "dirichlet": {"total": 0}}, "dirichlet total must lie in [1, 16]"),
    ({"images": {"rgb": "ID"}, "dirichlet": {"total": 4, "alpha": -1}}, "alpha must be a positive number"),
    ({"images": {"rgb": "ID"}, "seed": "x"}, "seed must be a whole number"),
    ({"images": {"rgb": "ID"}, "seed": float("inf")}, "seed must be a whole number, got inf"),
    ({"images": {"rgb": "ID"}, "seed": 2**70}, "seed must lie in"),
    ({"images": {"rgb": "ID"}, "dirichlet": {"total": 4, "alpha": "x"}}, "alpha must be a positive number"),
    ({"images": {"rgb": "ID"}, "dirichlet": {"total": 4, "alpha": float("nan")}}, "alpha must be a positive"),
])
def test_bad_requests_are_one_line(demo, request_, message):
    rgb = demo.example("scene-0")["rgb"]["id"]
    request_ = json.loads(json.dumps(request_).replace('"ID"', json.dumps(rgb)))
    with pytest.raises(DemoError, match=message.replace("[", r"\[").replace("]", r"\]")):
        demo.predict(request_)


def test_uploads_refused_with_the_file_named(demo, tmp_path):
    import cv2

    with pytest.raises(DemoError, match=r"notes.txt: not an image rgb reads \(it reads .png, .jpg"):
        demo.upload("rgb", b"just some text", "notes.txt")
    with pytest.raises(DemoError, match=r"big.png: 0.3 MB is over the upload limit of 0.2 MB"):
        demo.upload("rgb", b"\x89PNG\r\n\x1a\n" + bytes(300_000), "big.png")
    with pytest.raises(DemoError, match=r"cut.png: not a readable image \(corrupt, truncated"):
        demo.upload("rgb", PHOTO.read_bytes()[:2000].replace(b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", 1), "cut.png")
    with pytest.raises(DemoError, match="'thermal' is not an input of this checkpoint"):
        demo.upload("thermal", PHOTO.read_bytes(), "t.jpg")
    _, wide = cv2.imencode(".png", np.zeros((16, 64), np.uint16))
    depth = demo.upload("depth", wide.tobytes(), "wide.png")
    rgb = demo.example("scene-0")["rgb"]["id"]
    with pytest.raises(DemoError, match="the depth image is 64x16, but the rgb image is 32x32"):
        demo.predict({"images": {"rgb": rgb, "depth": depth["id"]}})
    with pytest.raises(DemoError, match="no example named 'scene-9'"):
        demo.example("scene-9")
    with pytest.raises(DemoError, match="no example named 'scene-²'"):
        demo.example("scene-²")
    bomb = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    bomb[16:24] = (60_000).to_bytes(4, "big") * 2  # a header declaring 60000 x 60000 pixels: refused unread
    with pytest.raises(DemoError, match=r"bomb.png: 60000x60000 pixels is over the limit of 40 megapixels"):
        demo.upload("rgb", bytes(bomb), "bomb.png")
    with pytest.raises(DemoError, match=r"thin.png: 340x20 is narrower than 1:16"):
        demo.upload("rgb", cv2.imencode(".png", np.zeros((20, 340, 3), np.uint8))[1].tobytes(), "thin.png")
    big = demo.upload("rgb", cv2.imencode(".png", np.zeros((400, 600, 3), np.uint8))[1].tobytes(), "big.png")
    assert (big["width"], big["height"]) == (600, 400)  # as uploaded; kept smaller (4x the model's pixels)
    assert demo._arrays[big["id"]][1].shape[:2] == (52, 78)


def test_fine_tuned_checkpoints_show_their_task(tmp_path):
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.plugin.registry import get_registry

    config = ModelConfig(inputs=("rgb",), outputs=(), image_size=(32, 32), patch_size=8, dim=32, depth=4,
                         num_heads=2, num_encoded_tokens=4)
    registry = get_registry()
    for task, head, outputs, options in (("semseg", "linear", 5, {}), ("classification", "linear", 3, {})):
        torch.manual_seed(0)
        model = build_task_model(create_model(config), registry.task(task), head, outputs, options)
        model.task_info = {"task": task, "head": head, "head_options": options, "num_outputs": outputs,
                           "classes": ["cat", "dog", "owl"] if task == "classification" else None,
                           "reduce_zero_label": False}
        save_model(model, tmp_path / f"{task}.safetensors")
    demo = Demo.from_checkpoint(tmp_path / "semseg.safetensors", "cpu")
    assert demo.info()["kind"] == "finetuned" and demo.info()["task"] == "semseg"
    answer = demo.predict({"images": {"rgb": demo.example("photo")["rgb"]["id"]}})
    assert [(p["group"], p["title"]) for p in answer["pictures"]] == [("input", "rgb"), ("output", "predicted semseg")]
    classifier = Demo.from_checkpoint(tmp_path / "classification.safetensors", "cpu")
    answer = classifier.predict({"images": {"rgb": classifier.example("scene-0")["rgb"]["id"]}})
    assert {entry["class"] for entry in answer["classes"]} == {"cat", "dog", "owl"}


def _post(url: str, data: bytes, content_type: str = "application/octet-stream") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_answers_json_and_refuses_large_bodies_unread(server):
    with urllib.request.urlopen(server.url, timeout=30) as response:
        page = response.read().decode()
    assert "<title>MultiMAE demo</title>" in page and "http" not in page.split("<script>")[1]  # nothing external
    with urllib.request.urlopen(server.url + "api/info", timeout=30) as response:
        assert json.loads(response.read())["inputs"][0]["name"] == "rgb"
    status, answer = _post(server.url + "api/upload?modality=rgb&name=huge.jpg", bytes(1_000_000))
    assert status == 413 and answer["error"] == "huge.jpg: 1.0 MB is over the upload limit of 0.2 MB"
    status, answer = _post(server.url + "api/upload?modality=rgb&name=coffee.jpg", PHOTO.read_bytes())
    assert status == 200 and answer["grid"] == [3, 5]
    status, answer = _post(server.url + "api/predict", b"{not json", "application/json")
    assert status == 422 and answer["error"].startswith("the request is not JSON")
    status, answer = _post(server.url + "api/predict", json.dumps({"images": {"rgb": answer.get("id", "x")}}).encode())
    assert status == 422 and "no longer kept" in answer["error"]
    status, answer = _post(server.url + "api/nothing", b"")
    assert status == 404 and answer["error"] == "no endpoint /api/nothing"
    status, answer = _post(server.url + "api/predict", b"{}", "text/plain")  # what another site's form may send
    assert status == 415 and answer["error"].startswith("requests of type text/plain are not accepted")
    request = urllib.request.Request(server.url + "api/info", headers={"Host": "rebound.example:7860"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403


def test_a_failure_inside_the_server_is_one_line_and_the_server_goes_on(server, monkeypatch):
    monkeypatch.setattr(server.demo, "predict", lambda request: 1 / 0)
    status, answer = _post(server.url + "api/predict", b"{}", "application/json")
    assert status == 500 and answer["error"] == "ZeroDivisionError: division by zero"
    monkeypatch.undo()
    with urllib.request.urlopen(server.url + "api/info", timeout=30) as response:
        assert response.status == 200


def test_cli_refuses_a_busy_port_in_one_line(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("demo", "--checkpoint", str(checkpoint), "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there")
    assert len(result.stderr.strip().splitlines()) == 1


def test_exported_space_runs_the_demo(tmp_path, checkpoint):
    space = tmp_path / "space"
    result = run_cli("demo", "--checkpoint", str(checkpoint), "--export-space", str(space), "--json")
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout)["files"]) == ["Dockerfile", "README.md", "app.py", "model.safetensors",
                                                          "requirements.txt"]
    front = (space / "README.md").read_text().split("---")[1]
    assert "sdk: docker" in front and "app_port: 7860" in front
    assert "ENV PORT=7860 HOST=0.0.0.0" in (space / "Dockerfile").read_text()  # all interfaces in the Space only
    assert (space / "model.safetensors").read_bytes() == checkpoint.read_bytes()
    again = run_cli("demo", "--checkpoint", str(checkpoint), "--export-space", str(space))
    assert again.returncode == 2 and "already exists" in again.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if key != "HOST"}  # loopback unless HOST says
    env |= {"PORT": str(port), "MULTIMAE_DEVICE": "cpu"}
    app = subprocess.Popen([sys.executable, str(space / "app.py")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           text=True)  # run from elsewhere: the app finds its checkpoint beside itself
    try:
        assert "serving model.safetensors" in app.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as response:
            assert json.loads(response.read())["outputs"] == ["rgb", "depth", "semseg"]
    finally:
        app.terminate()
        app.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="no system Chromium: apt-get install chromium chromium-driver (.ci/run does)")
def test_page_in_a_real_browser(server, tmp_path):
    """Load, upload a photo, move a slider: the outputs change, errors show in the page, the console is clean."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    wait = WebDriverWait(driver, 60)

    def output(title: str) -> str:
        return driver.find_element(By.CSS_SELECTOR, f'#gallery-output img[data-title="predicted {title}"]'
                                   ).get_attribute("src")

    try:
        driver.get(server.url)
        wait.until(lambda d: d.find_elements(By.ID, "example-scene-0"))
        driver.find_element(By.ID, "file-rgb").send_keys(str(PHOTO))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#gallery-output img[data-title="predicted depth"]'))
        assert "coffee.jpg (480x320, 15 tokens)" in driver.find_element(By.ID, "status-rgb").text
        before = output("depth")
        slider = driver.find_element(By.ID, "tokens-rgb")
        start = int(slider.get_attribute("value"))
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        assert int(slider.get_attribute("value")) == start + 4
        wait.until(lambda d: output("depth") != before)
        wait.until(lambda d: d.find_element(By.ID, "visible-rgb").text == f"{start + 4} / 15 visible")
        driver.find_element(By.ID, "example-scene-2").click()
        wait.until(lambda d: "scene-2" in d.find_element(By.ID, "status-depth").text)
        driver.find_element(By.ID, "mode-dirichlet").click()  # budgets drawn for the total, shown on the sliders
        total = driver.find_element(By.ID, "total")
        total.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)

        def spent(d) -> int:
            texts = [d.find_element(By.ID, f"visible-{name}").text for name in ("rgb", "depth", "semseg")]
            return sum(int(text.split(" / ")[0]) for text in texts if text)

        wait.until(lambda d: spent(d) == int(total.get_attribute("value")) == 6)
        driver.save_screenshot(str(tmp_path / "demo.png"))
        console = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert console == []
        (tmp_path / "notes.txt").write_text("not a picture")
        driver.find_element(By.ID, "file-rgb").send_keys(str(tmp_path / "notes.txt"))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "notes.txt: not an image rgb reads" in driver.find_element(By.ID, "error").text
        large = tmp_path / "large.png"
        large.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300_000))
        driver.find_element(By.ID, "file-rgb").send_keys(str(large))
        refused = "large.png: 0.3 MB is over the upload limit of 0.2 MB"
        wait.until(lambda d: refused in d.find_element(By.ID, "error").text)
        assert output("depth")  # the last good prediction stays on the page
    finally:
        driver.quit()


def test_exported_space_installs_the_plugins_its_checkpoint_needs(tmp_path):
    """A checkpoint with a third-party modality (the example thermal plugin) asks for its distribution."""
    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "thermal"), outputs=("rgb",), image_size=(32, 32), patch_size=8, dim=32,
                         depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=8)
    save_model(create_model(config), tmp_path / "thermal.safetensors")
    from multimae_cli.infer.demo.space import export_space

    export_space(tmp_path / "space", tmp_path / "thermal.safetensors", requirement="multimae @ git+https://x/y")
    assert (tmp_path / "space" / "requirements.txt").read_text().splitlines() == [
        "multimae @ git+https://x/y", "multimae-plugin-thermal==0.1.0"]
