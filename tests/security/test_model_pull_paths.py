"""``tada-engine models pull`` writes only inside the models folder (issue 24, item 7).

A mirror (or ``--endpoint``) lists the files of a repository; a listing with
``weights/../../../../x`` wrote outside the models folder. Every name a hub lists must be
a plain relative path (no ``..``, no absolute path, no backslash, no drive letter, no empty
or ``.`` part) and land inside the model's folder once resolved, or the pull stops with a
typed error before it downloads anything.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Response

from engine import model_store
from engine.cli import main as engine_cli

pytestmark = pytest.mark.no_database

REPO = "evil-org/model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = b"written by a hostile hub\n"

HOSTILE_NAMES = [
    "weights/../../../../x",
    "weights/../../escaped",
    "../x",
    "..",
    "/tmp/tada-pull-absolute",
    "weights\\..\\..\\x",
    "..\\x",
    "C:/x",
    "C:x",
    "c:\\windows\\x",
    "weights/C:/x",
    "weights//x",
    "weights/./x",
    "weights/x/",
    "./x",
    "",
    "weights/\x00x",
    "weights/..",
]


class HostileHub:
    """A hub whose one repository lists the given names; any file it serves is PAYLOAD."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.downloads: list[str] = []

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/models/{org}/{name}/revision/{rev}")
        @app.get("/api/models/{org}/{name}")
        async def info(org: str, name: str, rev: str = "main") -> dict[str, object]:
            siblings = [{"rfilename": n, "size": len(PAYLOAD)} for n in self.names]
            siblings.append({"rfilename": "model.safetensors", "size": len(PAYLOAD)})
            return {"id": f"{org}/{name}", "sha": COMMIT, "siblings": siblings}

        @app.api_route("/{rest:path}", methods=["GET", "HEAD"])
        async def anything(rest: str) -> Response:
            self.downloads.append(rest)
            return Response(content=PAYLOAD, headers={"Content-Length": str(len(PAYLOAD))})

        return app


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[HostileHub, str]]:
    state = HostileHub()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(state.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield state, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def written(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_every_unsafe_name_a_hub_lists_stops_the_pull_before_any_download(
    hub: tuple[HostileHub, str], tmp_path: Path
) -> None:
    state, endpoint = hub
    tried = held = 0
    failures: list[str] = []
    absolute = Path("/tmp/tada-pull-absolute")
    for name in HOSTILE_NAMES:
        case = tmp_path / f"case{tried}"
        data = case / "deep" / "er" / "data"  # room for ../ to land inside tmp_path
        data.mkdir(parents=True)
        absolute.unlink(missing_ok=True)
        state.names, state.downloads = [name], []
        tried += 1
        try:
            model_store.pull(REPO, data, endpoint=endpoint)
        except model_store.UnsafeFileName as exc:
            outside = written(case) - written(data / "models")
            if outside or absolute.exists() or state.downloads or exc.name != name:
                failures.append(f"{name!r}: refused, but {outside} {state.downloads} {exc}")
            else:
                held += 1
        except Exception as exc:  # any other outcome is reported
            failures.append(f"{name!r}: {type(exc).__name__}: {exc}")
        else:
            outside = written(case) - written(data / "models")
            failures.append(f"{name!r}: pulled; outside the models folder: {sorted(outside)}")
        absolute.unlink(missing_ok=True)
    print(f"unsafe hub file names: {tried} tried, {held} held")
    assert not failures, "\n".join(failures)


def test_a_name_through_a_link_out_of_the_folder_is_refused(
    hub: tuple[HostileHub, str], tmp_path: Path
) -> None:
    """The resolved destination must be inside the folder, links followed."""
    state, endpoint = hub
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = model_store.models_dir(data) / model_store.local_name(REPO)
    folder.mkdir(parents=True)
    (folder / "weights").symlink_to(elsewhere, target_is_directory=True)
    state.names, state.downloads = ["weights/x.safetensors"], []
    with pytest.raises(model_store.UnsafeFileName):
        model_store.pull(REPO, data, endpoint=endpoint)
    assert not list(elsewhere.iterdir()) and not state.downloads


def test_the_cli_says_why_and_fails(
    hub: tuple[HostileHub, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, endpoint = hub
    state.names = ["weights/../../../../x"]
    config = tmp_path / "config.toml"
    config.write_text(f'[engine]\ndata_dir = "{tmp_path / "a" / "b" / "data"}"\n')
    code = engine_cli(["--config", str(config), "models", "pull", REPO, "--endpoint", endpoint])
    assert code != 0
    assert "weights/../../../../x" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_safe_nested_name_still_pulls(hub: tuple[HostileHub, str], tmp_path: Path) -> None:
    state, endpoint = hub
    state.names = ["unet/diffusion_pytorch_model.safetensors", "model_index.json"]
    pulled = model_store.pull(REPO, tmp_path / "data", endpoint=endpoint)
    assert (pulled.path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == PAYLOAD
    assert (pulled.path / "model_index.json").is_file()


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/..", "https://example.com/a/.."])
def test_a_url_whose_file_name_is_a_dot_part_is_refused(url: str, tmp_path: Path) -> None:
    with pytest.raises(model_store.PullError):
        model_store.pull(url, tmp_path / "data")
    assert not written(tmp_path)
