"""``tada-engine serve --workers 2``: two API processes on one port, job consumers once."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from PIL import Image

from tests.waiting import CEILING_S, polls

pytestmark = pytest.mark.slow(25)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(4):
            out = io.BytesIO()
            Image.new("RGB", (48, 48), (60 * i, 90, 200 - 40 * i)).save(out, format="PNG")
            zf.writestr(f"i{i}.png", out.getvalue())
    return buf.getvalue()


def test_two_api_processes_share_the_port_and_jobs_run_once(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[engine]
data_dir = "{tmp_path / "data"}"
[engine.jobs]
in_process_workers = 1
[engine.voice]
preload = false
[engine.limits]
exempt_clients = ["127.0.0.1"]
[engine.image.zip]
min_side = 32
[engine.image.training]
steps = 2
rank = 4
[engine.image.generation]
steps = 1
"""
    )
    argv = [sys.executable, "-m", "engine", "--config", str(config), "serve", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + CEILING_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("serve --workers 2 did not come up")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len([c for c in children if "multiprocessing" in " ".join(c.cmdline())]) >= 2
        with httpx.Client(base_url=base, timeout=60) as c:
            keys = [
                c.post("/api/users/register", params={"email": f"m{i}@example.com"}).json()
                for i in range(6)
            ]
            h = {"X-API-Key": keys[0]["api_key"]}
            target = c.post(
                "/api/loras/uploads/url",
                params={"name": "set", "trigger_word": "tadz", "file_name": "s.zip"},
                headers=h,
            ).json()
            parts = urlsplit(target["upload_url"])
            put = c.put(f"{parts.path}?{parts.query}", content=_zip(), headers=target["headers"])
            assert put.status_code == 200, put.text
            started = c.post(f"/api/loras/trainings/{target['id']}", headers=h)
            assert started.status_code == 202, started.text
            status = ""
            for _ in polls():
                status = c.get(f"/api/loras/trainings/{target['id']}", headers=h).json()["status"]
                if status in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.3)
            assert status == "succeeded"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=CEILING_S)
    assert out.count("serving with 2 API processes") == 1, out[-2000:]
