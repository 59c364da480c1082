"""Named weights, downloaded from a loopback HTTP server: verified, cached, atomic, offline, mirrored, by plugin."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, run_cli

from multimae_cli import CheckpointError, Weights, hookimpl, load_model
from multimae_cli.plugin import registry as registry_module
from multimae_cli.plugin.registry import Registry

FIXTURE = FIXTURES / "tiny_multivit.pth"
SHA256 = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; `cut/NAME` sends the full length header and then half the file."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path.removeprefix("/cut/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(FIXTURE, served / f"tiny-{SHA256[:8]}.pth")
    (served / "corrupt-00000000.pth").write_bytes(FIXTURE.read_bytes()[:-10] + b"0123456789")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Handler(*a, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def names(server, tmp_path, monkeypatch):
    """The process registry with the built-ins plus test names pointing at the server; the cache in tmp_path."""
    records = [Weights("tiny", f"{server}/tiny-{SHA256[:8]}.pth", SHA256[:8], overrides={"image_size": (32, 32)}),
               Weights("tiny-full-hash", f"{server}/tiny-{SHA256[:8]}.pth", SHA256),
               Weights("corrupt", f"{server}/corrupt-00000000.pth", "00000000"),
               Weights("cut", f"{server}/cut/tiny-{SHA256[:8]}.pth", SHA256[:8]),
               Weights("licensed", f"{server}/tiny-{SHA256[:8]}.pth", SHA256[:8], licence="CC-BY 4.0",
                       licence_id="cc-by-4.0", description="a licensed tiny model"),
               Weights("elsewhere", f"http://127.0.0.1:9/nothing/tiny-{SHA256[:8]}.pth", SHA256[:8])]

    class Published:
        @hookimpl
        def register_weights(self, register):
            for record in records:
                register(record)

    registry = Registry()
    registry.load_entry_points()
    registry.register(Published(), name="published")
    monkeypatch.setattr(registry_module, "_registry", registry)
    monkeypatch.setenv("MULTIMAE_HOME", str(tmp_path / "home"))
    for key in ("MULTIMAE_OFFLINE", "HF_HUB_OFFLINE", "MULTIMAE_WEIGHTS_URL"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "home" / "weights"


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_download_is_verified_cached_and_used_offline(names, monkeypatch):
    model = load_model("tiny")
    assert model.config.image_size == (32, 32)  # the record's overrides apply, by name and by cached path
    assert load_model(names / "tiny" / f"tiny-{SHA256[:8]}.pth").config.image_size == (32, 32)
    assert same_weights(model.state_dict(), load_model(FIXTURE, image_size=(32, 32)).state_dict())
    assert sorted(str(p.relative_to(names)) for p in names.rglob("*")) == ["tiny", f"tiny/tiny-{SHA256[:8]}.pth"]
    full = load_model("tiny-full-hash")  # the full hash is checked as well; no overrides: the file's own size
    assert full.config.image_size == (64, 64) and same_weights(full.state_dict(), load_model(FIXTURE).state_dict())
    monkeypatch.setenv("MULTIMAE_OFFLINE", "1")
    assert same_weights(load_model("tiny").state_dict(), model.state_dict())  # from the cache, no network


def test_a_wrong_hash_is_refused_and_nothing_is_cached(names):
    with pytest.raises(CheckpointError, match=r"^corrupt: the download from http://127\.0\.0\.1:\d+/corrupt-00000000"
                                              r"\.pth does not match the registered sha256 .*nothing was cached$"):
        load_model("corrupt")
    assert not names.exists() or [p for p in names.rglob("*") if p.is_file()] == []


def test_a_download_cut_half_way_leaves_nothing(names):
    with pytest.raises(CheckpointError, match=r"^cut: (cannot download|the download from) http://127\.0\.0\.1:\d+/cut/"):
        load_model("cut")
    assert not names.exists() or [p for p in names.rglob("*") if p.is_file()] == []


def test_no_server_and_offline_are_one_line_naming_the_url_and_the_path(names, monkeypatch):
    with pytest.raises(CheckpointError, match=r"^elsewhere: cannot download http://127\.0\.0\.1:9/nothing/tiny-\w+"
                                              r"\.pth \(URLError: .*\); download it and put it at .*/home/weights/"):
        load_model("elsewhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"^tiny: not in the cache and downloads are off .*; download "
                                              r"http://127\.0\.0\.1:\d+/tiny-\w+\.pth and put it at .*/home/weights/"):
        load_model("tiny")


def test_mirror_url_replaces_the_base(names, server, monkeypatch):
    monkeypatch.setenv("MULTIMAE_WEIGHTS_URL", server)  # "elsewhere" has no server; the mirror has its file
    assert load_model("elsewhere").config.dim == 96


def test_runs_from_named_weights_carry_their_licence(names):
    """A model card names the weights a run started from and the licence it inherits from their record."""
    from multimae_cli.train.card import _origin

    assert _origin("licensed") == ("`licensed` (a licensed tiny model; CC-BY 4.0)", "cc-by-4.0", "CC-BY 4.0")
    assert _origin(str(FIXTURE)) == (f"`{FIXTURE}`", "other", "")
    assert _origin(None) == ("random initialisation", "other", "")


def test_unknown_name_lists_the_names(names):
    with pytest.raises(CheckpointError, match=r"^nope: no such file or folder, and not a weights name \(names: "
                                              r"corrupt, cut, elsewhere, licensed, mae-b, mae-b-timm, multimae-b, "):
        load_model("nope")


def test_hook_register_weights_a_plugin_published_name_predicts_like_the_file(server, tmp_path):
    """Through the CLI, as a lab publishing weights would ship them: a plugin registers the name; `multimae models`
    lists it; `predict --checkpoint NAME` downloads it and writes what the file itself gives."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "lab_weights.py").write_text(textwrap.dedent(f"""
        from multimae_cli import Weights, hookimpl

        @hookimpl
        def register_weights(register):
            register(Weights("lab-tiny", "{server}/tiny-{SHA256[:8]}.pth", "{SHA256[:8]}", overrides={{"num_heads": 3}},
                             licence="CC-BY 4.0", description="a lab's tiny model"))
    """))
    info = site / "lab_weights-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-weights\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[multimae]\nlab = lab_weights\n")
    env = {"PYTHONPATH": str(site), "MULTIMAE_HOME": str(tmp_path / "home")}
    listed = {row["name"]: row for row in json.loads(run_cli("models", "--json", env=env).stdout)}
    assert listed["lab-tiny"]["plugin"] == "lab" and not listed["lab-tiny"]["cached"]
    assert listed["multimae-b"]["size"] == 394_406_915
    from multimae_cli.io import write_image

    image = (torch.rand(64, 64, 3) * 255).byte().numpy()
    write_image(tmp_path / "scene.png", image)
    by_name = run_cli("predict", str(tmp_path / "scene.png"), "--out", str(tmp_path / "a"), "--checkpoint",
                      "lab-tiny", "--task", "depth", env=env)
    assert by_name.returncode == 0, by_name.stderr
    assert "note: lab-tiny is licensed CC-BY 4.0; downloading" in by_name.stderr
    by_file = run_cli("predict", str(tmp_path / "scene.png"), "--out", str(tmp_path / "b"), "--checkpoint",
                      str(FIXTURE), "--task", "depth", env=env)
    assert by_file.returncode == 0, by_file.stderr
    written = [(tmp_path / run / "depth" / "scene.png").read_bytes() for run in ("a", "b")]
    assert written[0] == written[1]
    assert {row["name"]: row for row in json.loads(run_cli("models", "--json", env=env).stdout)}["lab-tiny"]["cached"]
