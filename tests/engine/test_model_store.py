"""``tada-engine models pull``: a loopback server laid out like the hub serves a tiny
random-weight diffusers checkpoint; pull it, resume after a cut, reject a corrupted file,
then generate with what was pulled (named in config by its hub id)."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from engine import model_store
from engine.cli import main as engine_cli
from engine.image.tiny import build_tiny_pipeline
from tests.conftest import make_settings
from tests.waiting import polls

pytestmark = pytest.mark.no_database

REPO = "tiny-org/tiny-sd"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    """The files of one repository, and the faults to inject."""

    root: Path
    cuts: dict[str, int] = field(default_factory=dict)  # GETs left that send half, then close
    corrupt: set[str] = field(default_factory=set)  # served bytes differ from the metadata
    ranges: list[str] = field(default_factory=list)

    def files(self) -> list[Path]:
        return sorted(p for p in self.root.rglob("*") if p.is_file())

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/models/{org}/{name}/revision/{rev}")
        @app.get("/api/models/{org}/{name}")
        async def info(org: str, name: str, rev: str = "main") -> dict[str, object]:
            siblings = []
            for path in self.files():
                data = path.read_bytes()
                entry: dict[str, object] = {
                    "rfilename": path.relative_to(self.root).as_posix(),
                    "size": len(data),
                }
                if path.suffix == ".safetensors":
                    sha = hashlib.sha256(data).hexdigest()
                    entry["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 130}
                siblings.append(entry)
            # As the hub does: a revision that is a commit sha resolves to itself.
            sha = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else COMMIT
            return {"id": f"{org}/{name}", "sha": sha, "siblings": siblings}

        @app.get("/api/models/{org}/{name}/tree/{rev}")
        async def tree(org: str, name: str, rev: str) -> list[dict[str, object]]:
            entries: list[dict[str, object]] = []
            for path in self.files():
                data = path.read_bytes()
                entry: dict[str, object] = {
                    "type": "file",
                    "path": path.relative_to(self.root).as_posix(),
                    "size": len(data),
                    "oid": hashlib.sha1(data).hexdigest(),
                }
                if path.suffix == ".safetensors":
                    sha = hashlib.sha256(data).hexdigest()
                    entry["lfs"] = {"size": len(data), "oid": sha, "pointerSize": 130}
                entries.append(entry)
            return entries

        @app.api_route("/{org}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
        async def resolve(org: str, name: str, rev: str, path: str, request: Request) -> Response:
            data = (self.root / path).read_bytes()
            if path in self.corrupt:
                data = data[:-8] + b"\x00" * 8
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Length": str(len(data)),
                "Accept-Ranges": "bytes",
            }
            if request.method == "HEAD":
                return Response(status_code=200, headers=headers)
            start = 0
            if rng := request.headers.get("range"):
                self.ranges.append(f"{path} {rng}")
                start = int(rng.split("=", 1)[1].split("-", 1)[0])
            body = data[start:]
            if self.cuts.get(path, 0) > 0:
                self.cuts[path] -= 1

                async def half() -> Iterator[bytes]:  # type: ignore[misc]
                    yield body[: len(body) // 2]
                    raise ConnectionResetError("cut")

                from fastapi.responses import StreamingResponse

                headers["Content-Length"] = str(len(body))
                return StreamingResponse(
                    half(),  # type: ignore[arg-type]
                    status_code=206 if start else 200,
                    headers=headers,
                )
            headers["Content-Length"] = str(len(body))
            status = 206 if start else 200
            return Response(content=body, status_code=status, headers=headers)

        return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sd")
    build_tiny_pipeline(7, 32).save_pretrained(root, safe_serialization=True)
    return root


@pytest.fixture
def hub(checkpoint: Path) -> Iterator[tuple[Hub, str]]:
    yield from _serve(Hub(checkpoint))


@pytest.fixture(scope="module")
def flux_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_pipeline(7, 32, "flux").save_pretrained(root, safe_serialization=True)
    return root


@pytest.fixture(scope="module")
def sdxl_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_pipeline(7, 32, "sdxl").save_pretrained(root, safe_serialization=True)
    return root


def _serve(state: Hub) -> Iterator[tuple[Hub, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(state.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in polls():
        if server.started:
            break
        time.sleep(0.02)
    yield state, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_pull_then_generate_with_the_pulled_id(
    hub: tuple[Hub, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, endpoint = hub
    data = tmp_path / "data"
    config = tmp_path / "config.toml"
    config.write_text(f'[engine]\ndata_dir = "{data}"\n')
    assert (
        engine_cli(["--config", str(config), "models", "pull", REPO, "--endpoint", endpoint]) == 0
    )
    out = capsys.readouterr().out
    assert f'base_model = "{REPO}"' in out
    pulled = data / "models" / "tiny-org--tiny-sd"
    assert (pulled / "model_index.json").is_file()
    weights = {p.relative_to(state.root) for p in state.files() if p.suffix == ".safetensors"}
    assert weights and all((pulled / w).is_file() for w in weights)
    assert engine_cli(["--config", str(config), "models", "list"]) == 0
    assert REPO in capsys.readouterr().out


def test_the_pulled_model_trains_and_generates(hub: tuple[Hub, str], tmp_path: Path) -> None:
    from PIL import Image

    from engine.image.pipeline import ImageModel
    from engine.image.settings import image_settings
    from engine.image.types import TrainImage

    _, endpoint = hub
    data = tmp_path / "engine"
    model_store.pull(REPO, data, endpoint=endpoint)
    settings = make_settings(data, image={"base_model": REPO})  # named by its hub id
    pulled = data / "models" / "tiny-org--tiny-sd"
    assert settings.image["base_model"] == str(pulled)
    model = ImageModel.from_settings(image_settings(settings.image))
    assert model.label == str(pulled)
    original = build_tiny_pipeline(7, 32).unet.state_dict()
    for key, value in model.pipe.unet.state_dict().items():
        assert (value == original[key]).all(), key  # the pulled weights, not new ones
    examples = [
        TrainImage(Image.new("RGB", (32, 32), (40 * i, 90, 200 - 40 * i)), "tadz, a square")
        for i in range(4)
    ]
    fit = model.train_lora(
        examples, tmp_path / "lora.safetensors", rank=4, steps=2, learning_rate=1e-3
    )
    del fit
    image = model.generate("tadz", lora=tmp_path / "lora.safetensors", steps=1)
    assert image.shape == (32, 32, 3)


@pytest.mark.parametrize("arch", ["flux", "sdxl"])
def test_a_pulled_model_trains_a_lora_and_generates_with_it(
    arch: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The FLUX and SDXL paths as an operator runs them: pull, name it in config, train,
    generate."""
    import numpy as np
    from PIL import Image
    from safetensors import safe_open

    from engine.image.pipeline import ImageModel
    from engine.image.settings import image_settings
    from engine.image.types import TrainImage

    checkpoint: Path = request.getfixturevalue(f"{arch}_checkpoint")
    repo = f"tiny-org/tiny-{arch}"
    data = tmp_path / "engine"
    for _, endpoint in _serve(Hub(checkpoint)):
        model_store.pull(repo, data, endpoint=endpoint)
    settings = make_settings(data, image={"base_model": repo})
    model = ImageModel.from_settings(image_settings(settings.image))
    assert model.arch == arch and model.label == str(data / "models" / f"tiny-org--tiny-{arch}")
    examples = [
        TrainImage(Image.new("RGB", (32 + 8 * i, 32), (40 * i, 90, 200 - 40 * i)), "tadz, a box")
        for i in range(4)
    ]
    lora = tmp_path / f"{arch}-lora.safetensors"
    fit = model.train_lora(examples, lora, rank=4, steps=10, learning_rate=1e-2, batch_size=2)
    assert len(fit.losses) == 10
    if arch == "flux":  # diffusers' FLUX LoRA layout; SDXL LoRAs are kohya files
        with safe_open(str(lora), "pt") as fh:
            names = fh.keys()
        assert names and all(k.startswith("transformer.") for k in names)
    guidance = {"guidance_scale": 3.5} if arch == "flux" else {}
    base = model.generate("tadz", steps=2, **guidance)
    image = model.generate("tadz", lora=lora, steps=2, **guidance)
    assert image.shape[2] == 3 and np.abs(image - base).max() > 1e-4


def test_a_cut_download_resumes(hub: tuple[Hub, str], tmp_path: Path) -> None:
    state, endpoint = hub
    big = max(
        (p for p in state.files() if p.suffix == ".safetensors"), key=lambda p: p.stat().st_size
    )
    name = big.relative_to(state.root).as_posix()
    state.cuts[name] = 1  # dropped once half-way: the same pull goes on
    model = model_store.pull(REPO, tmp_path / "a", endpoint=endpoint)
    assert (model.path / name).read_bytes() == big.read_bytes()
    state.cuts[name] = 100  # every try dropped: the pull fails, keeping what it has
    with pytest.raises(model_store.PullError, match="again"):
        model_store.pull(REPO, tmp_path, endpoint=endpoint)
    state.cuts[name] = 0
    model = model_store.pull(REPO, tmp_path, endpoint=endpoint)
    assert (model.path / name).read_bytes() == big.read_bytes()
    assert any(r.startswith(name) for r in state.ranges), state.ranges  # resumed, not restarted


def test_a_corrupted_file_is_deleted_and_the_pull_fails(
    hub: tuple[Hub, str], tmp_path: Path
) -> None:
    state, endpoint = hub
    victim = next(p for p in state.files() if p.suffix == ".safetensors")
    name = victim.relative_to(state.root).as_posix()
    state.corrupt.add(name)
    with pytest.raises(model_store.PullError, match="sha256"):
        model_store.pull(REPO, tmp_path, endpoint=endpoint)
    assert not (tmp_path / "models" / "tiny-org--tiny-sd" / name).exists()
    assert model_store.resolve_pulled(tmp_path, REPO) is None  # not usable until pulled whole


def test_a_url_file_resumes_and_checks_its_sha256(hub: tuple[Hub, str], tmp_path: Path) -> None:
    state, endpoint = hub
    victim = next(p for p in state.files() if p.suffix == ".safetensors")
    name = victim.relative_to(state.root).as_posix()
    url = f"{endpoint}/{REPO}/resolve/main/{name}"
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    with pytest.raises(model_store.PullError, match="SHA-256"):
        model_store.pull(url, tmp_path, sha256="0" * 64)
    model = model_store.pull(url, tmp_path, sha256=digest)
    assert model.path.read_bytes() == victim.read_bytes()
    with pytest.raises(model_store.PullError, match="https"):
        model_store.pull("http://example.com/x.safetensors", tmp_path)


@pytest.fixture(scope="module")
def pocket_hub_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Pocket TTS as the hub holds it (both repositories' files in one tree,
    which the loopback hub serves for any repository), plus another language's weights
    that a pull of this language must leave on the hub; and the config naming them."""
    import shutil

    from engine.voice.random_pocket import build_random_pocket

    built = tmp_path_factory.mktemp("pocket-built")
    config = build_random_pocket(built, "tiny")
    served = tmp_path_factory.mktemp("pocket-hub")
    for folder in ("kyutai--pocket-tts", "kyutai--pocket-tts-without-voice-cloning"):
        shutil.copytree(built / folder / "languages", served / "languages", dirs_exist_ok=True)
    other = served / "languages" / "other" / "model.safetensors"
    other.parent.mkdir(parents=True)
    shutil.copy(served / "languages" / "tiny" / "model.safetensors", other)
    return served, config


def _pocket_config(tmp_path: Path, data: Path, pocket_yaml: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[engine]\ndata_dir = "{data}"\n[engine.voice]\nbackend = "pocket"\n'
        f'pocket_config = "{pocket_yaml}"\n'
    )
    return config


def test_models_pull_with_no_source_fetches_the_pocket_files_the_config_names(
    pocket_hub_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.settings import load_engine_settings
    from engine.voice.neural import Placement
    from engine.voice.pocket import PocketModel
    from engine.voice.settings import voice_settings

    served, pocket_yaml = pocket_hub_files
    data = tmp_path / "data"
    config = _pocket_config(tmp_path, data, pocket_yaml)
    for state, endpoint in _serve(Hub(served)):
        state.cuts["languages/tiny/model.safetensors"] = 1  # cut once: the pull goes on
        assert engine_cli(["--config", str(config), "models", "pull", "--endpoint", endpoint]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors: cut; resuming" in out
    assert "pulled kyutai/pocket-tts:" in out and "pulled kyutai/pocket-tts-without" in out
    model_dir = data / "models" / "kyutai--pocket-tts"
    weights = model_dir / "languages" / "tiny" / "model.safetensors"
    assert weights.read_bytes() == (served / "languages/tiny/model.safetensors").read_bytes()
    assert not (model_dir / "languages" / "other").exists()  # only this language's files
    assert not (model_dir / "languages" / "tiny" / "tokenizer.json").exists()
    tokenizer_dir = data / "models" / "kyutai--pocket-tts-without-voice-cloning"
    assert (tokenizer_dir / "languages" / "tiny" / "tokenizer.json").is_file()
    assert not (tokenizer_dir / "languages" / "tiny" / "model.safetensors").exists()
    # The config names the default hub ids: they resolve to the pulled folders, which load.
    voice = voice_settings(load_engine_settings(config).voice)
    assert voice.pocket_model == str(model_dir)
    model = PocketModel(voice, Placement("cpu", "float32"))
    clip = (np.random.default_rng(0).standard_normal(3 * 24000) * 0.1).astype(np.float32)
    assert model.generate(clip, "Hi.").size > 0
    assert engine_cli(["--config", str(config), "models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "kyutai/pocket-tts\t" in listed and "<- [engine.voice] pocket_model" in listed
    # Pulled: a later start needs no network (an endpoint nothing answers on).
    dead = "http://127.0.0.1:9"
    assert engine_cli(["--config", str(config), "models", "pull", "--endpoint", dead]) == 0


def test_with_no_network_the_first_start_says_so_in_one_line(
    pocket_hub_files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pocket_yaml = pocket_hub_files
    config = _pocket_config(tmp_path, tmp_path / "data", pocket_yaml)
    dead = "http://127.0.0.1:9"
    pull = ["--config", str(config), "models", "pull", "--endpoint", dead]
    assert engine_cli([*pull, "--offline-ok"]) == 0  # `make run` goes on
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "cannot be reached" in err[0] and "CPU reference" in err[0]
    assert engine_cli(pull) == 1  # asked for by hand: a failure
    assert not (tmp_path / "data" / "models" / "kyutai--pocket-tts" / model_store.RECORD).exists()
