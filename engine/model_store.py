"""Model weights an operator fetches once, by an explicit command, never at request time.

``tada-engine models pull <hub id | https URL>`` downloads into ``<data_dir>/models/``:

- a hub id (``org/name``, a diffusers repository, a LoRA repository...) through
  ``huggingface_hub`` (its endpoint setting, ``HF_ENDPOINT`` or ``--endpoint``, points it at
  a mirror); only the files a local load needs (safetensors over pickled weights), with
  progress bars, resuming a cut download, and every file's size and (for LFS files)
  SHA-256 checked against the hub's own metadata: a corrupted file is deleted and the pull
  fails saying so;
- an ``https://`` URL of one file (a single-file checkpoint or a LoRA ``.safetensors``),
  resumed with a Range request, checked against ``--sha256`` when given.

``models list`` shows what is there. A pulled hub id can then be named in config as it is
(``[engine.image] base_model = "org/name"``): settings resolve it to the pulled folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlsplit

MODELS_DIR = "models"
RECORD = ".tada-pull.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a local load uses; pickled and other frameworks' weights are left on the hub.
_SKIP_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data", ".ot")
_CHUNK = 1024 * 1024


class PullError(Exception):
    """A pull that cannot finish; the message says why and what to do."""


class UnsafeFileName(PullError):
    """A file name (listed by a hub, or ending a URL) that is not a plain relative path
    inside the model's folder: the pull stops before it downloads anything."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f"{name!r}: refused as a file name ({why}); the hub or mirror may be hostile, "
            "nothing was downloaded"
        )
        self.name = name


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_destination(folder: Path, name: str) -> Path:
    """``folder / name`` for a name that is a plain relative POSIX path and stays inside
    ``folder`` once resolved (links followed); :class:`UnsafeFileName` otherwise."""
    if not name:
        raise UnsafeFileName(name, "empty")
    if any(ord(c) < 32 for c in name) or "\\" in name:
        raise UnsafeFileName(name, "a control character or a backslash")
    if name.startswith("/"):
        raise UnsafeFileName(name, "an absolute path")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeFileName(name, "an empty, '.' or '..' part")
    if any(_DRIVE.match(part) for part in parts):
        raise UnsafeFileName(name, "a drive letter")
    dest = folder / PurePosixPath(*parts)
    if not dest.resolve().is_relative_to(folder.resolve()):
        raise UnsafeFileName(name, "it leads out of the model's folder")
    return dest


class HubUnreachable(PullError):
    """No answer from the hub at all (no network, a firewall, a wrong endpoint)."""


@dataclass(frozen=True)
class PulledModel:
    """One folder or file under the models directory."""

    name: str
    path: Path
    size_bytes: int
    source: str


def models_dir(data_dir: Path) -> Path:
    return data_dir / MODELS_DIR


def is_hub_id(value: str) -> bool:
    return bool(_HUB_ID.match(value)) and not value.startswith((".", "/"))


def local_name(repo_id: str) -> str:
    """The folder a hub id is pulled into: ``org/name`` -> ``org--name``."""
    return repo_id.replace("/", "--")


def resolve_pulled(data_dir: Path, value: str) -> Path | None:
    """The pulled folder for a hub id named in config, or None when it was not pulled."""
    if not is_hub_id(value):
        return None
    path = models_dir(data_dir) / local_name(value)
    return path if (path / RECORD).is_file() else None


def _wanted(files: Iterable[str]) -> list[str]:
    names = list(files)
    keep = [f for f in names if not f.endswith(_SKIP_SUFFIXES) and not f.startswith(".")]
    weights = [f for f in keep if f.endswith(".safetensors")]
    if not weights:  # a repository with only pickled weights: take them rather than nothing
        keep = [f for f in names if not f.startswith(".")]
    return sorted(keep)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pull_hub(
    repo_id: str,
    data_dir: Path,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    include: Iterable[str] | None = None,
) -> PulledModel:
    """Download a hub repository's loadable files (or only those named in ``include``);
    resume, then verify each one. A folder pulled before keeps the files it had."""
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    # The operator's hub token (HF_TOKEN or `hf auth login`) for gated repositories.
    token = token or get_token()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except HfHubHTTPError as exc:
        raise PullError(f"{repo_id}: the hub refused the look-up ({exc})") from exc
    except Exception as exc:  # no answer: the hub client's own transport errors (httpx2...)
        raise HubUnreachable(
            f"{repo_id}: the hub cannot be reached ({type(exc).__name__}; no network?)"
        ) from exc
    siblings = {s.rfilename: s for s in info.siblings or []}
    target = models_dir(data_dir) / local_name(repo_id)
    # Every name the hub lists, kept or not, before anything is written: a listing with
    # one name that leaves the folder is not to be trusted with the others.
    dests = {name: safe_destination(target, name) for name in siblings}
    if include is None:
        files = _wanted(siblings)
    else:
        files = sorted(set(include))
        missing = [f for f in files if f not in siblings]
        if missing:
            raise PullError(f"{repo_id}: no such file(s) in the repository: {', '.join(missing)}")
    if not files:
        raise PullError(f"{repo_id}: the repository has no files to pull")
    kept: list[str] = []
    if include is not None and (target / RECORD).is_file():
        earlier = json.loads((target / RECORD).read_text()).get("files", [])
        kept = [
            f
            for f in earlier
            if isinstance(f, str) and f in dests and (target / f).is_file() and f not in files
        ]
    base = (endpoint or constants.ENDPOINT).rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    (target / RECORD).unlink(missing_ok=True)  # not usable until whole again
    for name in files:
        dest = dests[name]
        meta = siblings[name]
        expected = meta.lfs.size if meta.lfs else meta.size
        if dest.is_file() and expected is not None and dest.stat().st_size == expected:
            continue  # pulled before; verified below
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(f"{base}/{repo_id}/resolve/{info.sha}/{quote(name)}", dest, headers)
        except PullError as exc:
            raise PullError(f"{repo_id}: {exc}") from exc
    bad: list[str] = []
    for name in files:
        path = dests[name]
        meta = siblings[name]
        expected = meta.lfs.size if meta.lfs else meta.size
        problem = None
        if not path.is_file() or (expected is not None and path.stat().st_size != expected):
            problem = "size"
        elif meta.lfs and _sha256(path) != meta.lfs.sha256:
            problem = "sha256"
        if problem is not None:
            bad.append(f"{name} ({problem})")
            path.unlink(missing_ok=True)
    if bad:
        raise PullError(
            f"{repo_id}: {len(bad)} file(s) did not match the hub's metadata and were deleted: "
            f"{', '.join(bad)}; run the same pull again"
        )
    files = sorted([*files, *kept])
    size = sum(dests[f].stat().st_size for f in files)
    record = {"source": repo_id, "revision": info.sha, "files": files, "size_bytes": size}
    (target / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return PulledModel(repo_id, target, size, repo_id)


def pull_url(
    url: str, data_dir: Path, *, sha256: str | None = None, timeout: float = 60.0
) -> PulledModel:
    """Download one file over HTTPS (or loopback HTTP), resuming a ``.part`` left behind."""
    parts = urlsplit(url)
    name = Path(parts.path).name
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not name or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise PullError(f"{url}: give an https:// URL of one file")
    folder = models_dir(data_dir) / "files"
    dest = safe_destination(folder, name)
    folder.mkdir(parents=True, exist_ok=True)
    _download(url, dest, {}, timeout=timeout)
    if sha256 is not None and _sha256(dest) != sha256.lower():
        dest.unlink()
        raise PullError(f"{url}: the file's SHA-256 is not {sha256}; it was deleted")
    record = folder / f"{name}{RECORD}"
    record.write_text(json.dumps({"source": url, "sha256": _sha256(dest)}) + "\n")
    return PulledModel(name, dest, dest.stat().st_size, url)


def _download(
    url: str, dest: Path, headers: dict[str, str], timeout: float = 60.0, attempts: int = 3
) -> None:
    """Stream ``url`` to ``dest``; a cut connection is resumed, ``attempts`` times in all
    (and again by the next pull: the ``.part`` file stays)."""
    for attempt in range(1, attempts + 1):
        try:
            _download_once(url, dest, headers, timeout)
            return
        except PullError:
            if attempt == attempts:
                raise
            print(f"{dest.name}: cut; resuming ({attempt}/{attempts - 1})", flush=True)


def _download_once(url: str, dest: Path, headers: dict[str, str], timeout: float) -> None:
    import httpx

    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    ask = {**headers, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with httpx.stream("GET", url, headers=ask, follow_redirects=True, timeout=timeout) as resp:
            if resp.status_code == 416 and have:  # the part is already whole
                part.replace(dest)
                return
            if resp.status_code not in (200, 206):
                raise PullError(f"{url} answered {resp.status_code}")
            resumed = resp.status_code == 206
            done = have if resumed else 0
            total = int(resp.headers.get("content-length", 0)) + done
            with part.open("ab" if resumed else "wb") as fh:
                for chunk in resp.iter_bytes(_CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if total:
                        print(
                            f"\r{dest.name}: {done * 100 // total:3d}% of {total / 1e6:.1f} MB",
                            end="",
                            flush=True,
                        )
            print(flush=True)
    except httpx.HTTPError as exc:
        raise PullError(
            f"the download of {dest.name} stopped ({type(exc).__name__}); run the same pull "
            "again to resume"
        ) from exc
    part.replace(dest)


def pull(source: str, data_dir: Path, **options: str | None) -> PulledModel:
    """A hub id or a URL, see the module docstring."""
    if source.startswith(("https://", "http://")):
        return pull_url(source, data_dir, sha256=options.get("sha256"))
    if not is_hub_id(source):
        raise PullError(f"{source!r}: give a hub id (org/name) or an https:// URL")
    return pull_hub(
        source,
        data_dir,
        revision=options.get("revision"),
        endpoint=options.get("endpoint"),
        token=options.get("token"),
    )


def list_models(data_dir: Path) -> list[PulledModel]:
    """What was pulled, folders and single files."""
    root = models_dir(data_dir)
    found: list[PulledModel] = []
    if not root.is_dir():
        return found
    for record in sorted(root.rglob(f"*{RECORD}")):
        data = json.loads(record.read_text())
        if record.name == RECORD:  # a repository folder
            found.append(
                PulledModel(data["source"], record.parent, int(data["size_bytes"]), data["source"])
            )
        else:
            path = record.with_name(record.name.removesuffix(RECORD))
            if path.is_file():
                found.append(PulledModel(path.name, path, path.stat().st_size, data["source"]))
    return found
