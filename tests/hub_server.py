"""A small Hugging Face hub for tests: serves local files in the hub's URL layout.

It answers what ``huggingface_hub``'s ``snapshot_download`` and ``hf_hub_download`` ask
(the real client, pointed here with ``HF_ENDPOINT``): repository info
(``/api/models/{repo}/revision/{rev}``), the file tree (``/api/models/{repo}/tree/{rev}``)
and the files (``/{repo}/resolve/{rev}/{path}``, GET and HEAD, with ETag, X-Repo-Commit
and byte ranges, so resumed downloads work). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def repo_files(folder: Path) -> dict[str, Path]:
    """Every file under ``folder`` by its repository path (links followed)."""
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


class _Repo:
    def __init__(self, repo_id: str, files: dict[str, Path]) -> None:
        self.repo_id = repo_id
        self.files = files
        self.commit = hashlib.sha1(repo_id.encode()).hexdigest()  # 40 hex, fixed
        self.sha256 = {p: hashlib.sha256(f.read_bytes()).hexdigest() for p, f in files.items()}


@contextmanager
def serve_hub(repos: dict[str, dict[str, Path]]) -> Iterator[tuple[str, list[str]]]:
    """(endpoint URL, request log) of a hub serving ``repos`` (repo id -> files)."""
    served = {repo_id: _Repo(repo_id, files) for repo_id, files in repos.items()}
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _json(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _missing(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _route(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            requests.append(f"{self.command} {path}")
            for repo in served.values():
                api = f"/api/models/{repo.repo_id}/"
                if path.startswith(api + "revision/"):
                    return self._json(
                        {
                            "id": repo.repo_id,
                            "sha": repo.commit,
                            "siblings": [{"rfilename": p} for p in repo.files],
                        }
                    )
                if path.startswith(api + "tree/"):
                    return self._json(
                        [
                            {
                                "type": "file",
                                "oid": repo.sha256[p][:40],
                                "size": f.stat().st_size,
                                "path": p,
                            }
                            for p, f in repo.files.items()
                        ]
                    )
                prefix = f"/{repo.repo_id}/resolve/"
                if path.startswith(prefix):
                    _, _, name = path[len(prefix) :].partition("/")
                    if name not in repo.files:
                        return self._missing()
                    return self._file(repo, name, head)
            self._missing()

        def _file(self, repo: _Repo, name: str, head: bool) -> None:
            data = repo.files[name].read_bytes()
            start = 0
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and ranged[6:].split("-")[0].isdigit():
                start = int(ranged[6:].split("-")[0])
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{repo.sha256[name]}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
