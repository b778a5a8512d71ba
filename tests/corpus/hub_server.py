"""A local HTTP server answering the Hugging Face Hub endpoints that `huggingface_hub` calls to create a
dataset repo, a branch, and commit files: enough to test `skd push` for real without the Hub."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeHub:
    def __init__(self, fail_first: int = 0):
        self.repos: dict[str, dict[str, Any]] = {}  # repo_id -> {"private", "branches", "commits"}
        self.fail_first = fail_first  # answer this many requests with 503 first (tests retries)
        self.requests: list[str] = []
        self.auth: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(self.path)
                hub.auth.add(self.headers.get("Authorization", ""))
                if hub.fail_first > 0:
                    hub.fail_first -= 1
                    return self._reply(503, {"error": "try again"})
                self._reply(*hub.handle(self.path, body))

            def do_GET(self) -> None:
                hub.requests.append(self.path)
                self._reply(*hub.read(self.path))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        path = path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"}
            self.repos[repo_id] = {"private": req.get("visibility") == "private" or req.get("private"),
                                   "type": req.get("type"), "branches": {"main"}, "commits": [], "files": {}}
            return 200, {"url": f"{self.url}/datasets/{repo_id}"}
        if path == "/api/validate-yaml":
            return 200, {}
        parts = path.split("/")  # /api/datasets/{org}/{name}/{action}/{rev}
        repo_id, action, rev = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        if action == "branch":
            repo["branches"].add(rev)
            return 200, {}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files]}
        if action == "commit":
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            deleted = [x["value"]["path"] for x in lines if x["key"] == "deletedFile"]
            tree = repo["files"].setdefault(rev, {})
            for path_ in deleted:
                tree.pop(path_, None)
            tree.update(files)
            repo["commits"].append({"revision": rev, "summary": header["summary"], "deleted": deleted,
                                    "description": header.get("description", ""), "files": files})
            oid = f"{len(repo['commits']):040x}"
            return 200, {"commitUrl": f"{self.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid}
        return 404, {"error": f"no route {path}"}

    def read(self, path: str) -> tuple[int, Any]:
        """GET: a dataset's info (its visibility) and its files at a revision (`/tree/{rev}`)."""
        parts = path.split("?")[0].split("/")  # /api/datasets/{org}/{name}[/tree/{rev}]
        repo = self.repos.get(f"{parts[3]}/{parts[4]}") if len(parts) > 4 else None
        if repo is None:
            return 404, {"error": "Repository not found"}
        if len(parts) > 5 and parts[5] == "tree":
            tree = repo["files"].get("/".join(parts[6:]) or "main", {})
            return 200, [{"type": "file", "path": p, "oid": f"{0:040x}", "size": len(b)} for p, b in tree.items()]
        return 200, {"id": f"{parts[3]}/{parts[4]}", "private": bool(repo["private"]), "sha": f"{0:040x}"}

    def close(self) -> None:
        self.server.shutdown()
