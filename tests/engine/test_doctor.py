"""``tada-engine doctor``: all ok on a good installation; on a broken one, one PROBLEM line
per broken part with the exact fix, and exit status 1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.cli import main


def doctor_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str
) -> tuple[int, list[str]]:
    path = tmp_path / "config.toml"
    path.write_text(config)
    capsys.readouterr()
    code = main(["--config", str(path), "doctor", "--min-free-gb", "0"])
    return code, capsys.readouterr().out.splitlines()


def problems(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.startswith("PROBLEM") and line.split()[1] == name]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_good_installation_is_all_ok(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
    (tmp_path / "config.toml").write_text(config)
    assert main(["--config", str(tmp_path / "config.toml"), "migrate"]) == 0
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 0, "\n".join(lines)
    names = {line.split()[1] for line in lines if line.startswith("ok")}
    assert {"ffmpeg", "disk", "models", "torch", "database", "queue", "storage"} <= names
    assert not [line for line in lines if line.startswith("PROBLEM")]
    assert lines[-1].startswith("all ")


def test_an_unmigrated_database_says_to_migrate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, lines = doctor_lines(capsys, tmp_path, f'[general]\ndata_dir = "{tmp_path / "d"}"\n')
    assert code == 1
    (line,) = problems(lines, "database")
    assert line.endswith("Fix: tada-engine migrate (the engine also creates it on its first start)")


def test_an_unwritable_data_dir_names_the_folder_and_the_fix(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # A data directory under a regular file cannot be made, whoever runs it (root too).
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    data = blocker / "data"
    code, lines = doctor_lines(capsys, tmp_path, f'[general]\ndata_dir = "{data}"\n')
    assert code == 1
    (disk,) = problems(lines, "disk")
    assert f"the data directory {data} is not writable" in disk
    assert (
        f"Fix: mkdir -p {data} && chown $(id -un) {data}, or set [general] data_dir "
        "(or TADA_DATA_DIR) to a writable folder"
    ) in disk
    assert problems(lines, "storage") and problems(lines, "queue")
    assert not blocker.is_dir()  # doctor changes nothing


def test_an_unreachable_redis_names_the_url_without_its_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    config = (
        f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[engine.jobs]\nbackend = "redis"\nredis_url = "redis://:hunter2secret@127.0.0.1:{port}/0"\n'
    )
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 1
    (queue,) = problems(lines, "queue")
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in queue
    assert (
        f"Fix: start Redis there (e.g. `redis-server --port {port}`), or correct "
        "[engine.jobs] redis_url"
    ) in queue
    assert "hunter2secret" not in "\n".join(lines)


def test_missing_models_say_where_and_how_to_get_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "models" / "sdxl"
    config = (
        f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[engine.voice]\nbackend = "neural"\nneural_model = "someone/not-pulled"\n'
        f'[engine.image]\nbase_model = "{missing}"\n'
    )
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 1
    voice, image = problems(lines, "models")
    assert "[engine.voice] neural_model = 'someone/not-pulled' is not pulled" in voice
    assert voice.endswith("Fix: tada-engine models pull someone/not-pulled")
    assert f"[engine.image] base_model = '{missing}': no such file or folder" in image
    assert "Fix: put the model there, or set [engine.image] base_model to where it is" in image


def test_an_unpulled_pocket_model_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = f'[general]\ndata_dir = "{tmp_path / "data"}"\n[engine.voice]\nbackend = "pocket"\n'
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 1
    (voice,) = problems(lines, "models")
    assert "never pulled" in voice and "the CPU reference serves" in voice
    assert voice.endswith("Fix: tada-engine models pull")


def test_an_unpulled_qwen3_model_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = f'[general]\ndata_dir = "{tmp_path / "data"}"\n[engine.voice]\nbackend = "qwen3"\n'
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 1
    (voice,) = problems(lines, "models")
    assert "qwen3_model = 'Qwen/Qwen3-TTS-12Hz-1.7B-Base' is not pulled" in voice
    assert voice.endswith("Fix: tada-engine models pull")


def test_the_default_backend_unpulled_is_a_note_not_a_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # backend = "auto" (the default): the CPU reference serves by design until the pull.
    config = f'[general]\ndata_dir = "{tmp_path / "data"}"\n'
    (tmp_path / "config.toml").write_text(config)
    assert main(["--config", str(tmp_path / "config.toml"), "migrate"]) == 0
    code, lines = doctor_lines(capsys, tmp_path, config)
    assert code == 0, "\n".join(lines)
    (note,) = [line for line in lines if line.startswith("NOTE")]
    assert note.split()[1] == "models" and "never pulled" in note
    assert "not a neural clone" in note and note.endswith("To do: tada-engine models pull")
    assert lines[-1].startswith("all ") and lines[-1].endswith("(1 note(s): see NOTE above)")
