"""`multimae demo --export-space DIR`: a folder that runs the demo as a Hugging Face Space (Docker SDK).

The Space runs the same server as `multimae demo` (Docker Spaces serve any web app on `app_port`), so what a
lab publishes is what it tried locally. A checkpoint file is copied in; a registered weights name is written
as the name (the Space downloads it on first start).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..._version import __version__
from ...errors import InputError
from ...io import atomic_write_bytes, writing

PORT = 7860  # the port Hugging Face Spaces expect

README = """---
title: {title}
emoji: 🎭
colorFrom: indigo
colorTo: gray
sdk: docker
app_port: {port}
pinned: false
---

# {title}

A MultiMAE demo made with `multimae demo --export-space`: upload an image, choose how many tokens of each input
stay visible, and see every modality predicted. Checkpoint: `{checkpoint}`.

Run it locally first: `pip install -r requirements.txt && python app.py`, then open http://127.0.0.1:{port}/.
"""

APP = '''"""The Space's entry point: the multimae demo server (loopback here; the Dockerfile sets HOST=0.0.0.0 for the
Space's proxy)."""

import os
from pathlib import Path

from multimae_cli.infer.demo.engine import Demo
from multimae_cli.infer.demo.server import serve

HERE = Path(__file__).parent
CHECKPOINT = {checkpoint!r}

if __name__ == "__main__":
    source = HERE / CHECKPOINT if (HERE / CHECKPOINT).exists() else CHECKPOINT
    demo = Demo.from_checkpoint(source, device=os.environ.get("MULTIMAE_DEVICE", "auto"))
    serve(demo, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", {port})),
          ready=lambda url: print(f"serving {{CHECKPOINT}} on port {{os.environ.get('PORT', {port})}}", flush=True))
'''

DOCKERFILE = """FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
RUN useradd -m -u 1000 user
USER user
WORKDIR /home/user/app
COPY --chown=user requirements.txt .
RUN pip install --no-cache-dir --user -r requirements.txt
COPY --chown=user . .
ENV PORT={port} HOST=0.0.0.0
EXPOSE {port}
CMD ["python", "app.py"]
"""


def export_space(out: str | Path, checkpoint: str | Path, title: str = "MultiMAE demo",
                 requirement: str | None = None) -> dict[str, str]:
    """Write the Space folder `out` (which must not exist): README.md with the Space's front matter, app.py,
    requirements.txt, Dockerfile and the checkpoint (copied when it is a file). Returns what was written."""
    from ...formats.load import checkpoint_file
    from ...formats.weights import record_of

    out = Path(out)
    if out.exists():
        raise InputError(f"--export-space {out}: already exists; give a new folder")
    if not out.parent.is_dir():
        raise InputError(f"--export-space {out}: folder {out.parent} does not exist")
    named = record_of(checkpoint) is not None and not Path(checkpoint).exists()
    source = None if named else checkpoint_file(checkpoint)
    stored = str(checkpoint) if named else f"model{source.suffix}"
    lines = [requirement or f"multimae=={__version__}", *(_plugin_requirements(source) if source else [])]
    files = {
        "README.md": README.format(title=title, port=PORT, checkpoint=stored),
        "app.py": APP.format(checkpoint=stored, port=PORT),
        "requirements.txt": "".join(f"{line}\n" for line in lines),
        "Dockerfile": DOCKERFILE.format(port=PORT),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # renamed into place when whole
    try:
        for name, text in files.items():
            atomic_write_bytes(staging / name, text.encode())
        if source is not None:
            with writing(staging / stored):
                shutil.copyfile(source, staging / stored)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"folder": str(out), "checkpoint": stored, "files": sorted([*files, *([stored] if source else [])])}


def _plugin_requirements(checkpoint: Path) -> list[str]:
    """The third-party plugin distributions (name==version) the checkpoint records for its modalities and task:
    the Space must install them too."""
    import json

    from ...formats.load import PLUGINS_KEY
    from ...formats.native import is_safetensors, read_metadata

    if not is_safetensors(checkpoint):
        return []
    origins = json.loads(read_metadata(checkpoint).get(PLUGINS_KEY) or "{}")
    found = [origin for group in origins.values() if isinstance(group, dict) for origin in group.values()
             if isinstance(origin, dict) and origin.get("distribution") not in (None, "multimae")]
    return sorted({f"{o['distribution']}=={o['version']}" if o.get("version") else o["distribution"] for o in found})
