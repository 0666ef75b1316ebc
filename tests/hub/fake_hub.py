"""A loopback stand-in for the Hub API routes that publishing uses; it records every request it receives.

``repos[repo_id] = {path: bytes}`` gives a repository existing files: its info lists them and ``resolve`` serves
them (what refreshing an existing repository's code reads); a commit applies its additions and deletions to them.

It answers the calls huggingface_hub makes for ``create_repo``, ``create_branch`` and ``create_commit`` (metadata
validation, preupload, commit) with the payloads the real Hub sends, tells the client to send every file inline
("regular" upload mode), and decodes the NDJSON commit so a test can read back exactly what was committed.
``fail[route] = status`` makes a route answer that HTTP status; ``fail[route] = "drop"`` closes the connection
without answering.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (name, method, path pattern)
    ("create_repo", "POST", re.compile(r"/api/repos/create")),
    ("validate_yaml", "POST", re.compile(r"/api/validate-yaml")),
    ("branch", "POST", re.compile(rf"/api/models/{REPO}/branch/(?P<revision>[^/]+)")),
    ("preupload", "POST", re.compile(rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)")),
    ("commit", "POST", re.compile(rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)")),
    ("repo_info", "GET", re.compile(rf"/api/models/{REPO}(/revision/.*)?")),
    ("resolve", "GET", re.compile(rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)")),
    ("resolve", "HEAD", re.compile(rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)")),
    # huggingface_hub fetches this list for its user-agent string; it is not part of publishing.
    ("agent_harnesses", "GET", re.compile(r"/api/agent-harnesses")),
]


@dataclass
class Request:
    route: str
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.commits: list[Commit] = []
        self.fail: dict[str, int | str] = {}
        self.repos: dict[str, dict[str, bytes]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def routes(self) -> list[str]:
        """The routes publishing called, in order."""
        return [request.route for request in self.requests if request.route != "agent_harnesses"]

    def request(self, route: str) -> Request:
        """The first request made to ``route``."""
        return next(request for request in self.requests if request.route == route)

    def answer(self, route: str, match: re.Match, body: bytes) -> tuple[int, dict, dict[str, str]]:
        if route in self.fail:
            status = self.fail[route]
            headers = {"X-Error-Code": "RepoNotFound"} if status == 404 else {}
            return status, {"error": f"fake hub: {route} answers {status}"}, headers
        if route == "create_repo":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            self.repos.setdefault(repo_id, {})  # (a new repository: its info lists no files)
            return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": "fake"}, {}
        if route == "validate_yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if route == "branch":
            return 200, {}, {}
        if route == "preupload":
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
            return 200, {"files": answer, "commitOid": "0" * 40}, {}
        if route == "commit":
            commit = self._decode_commit(match["repo"], match["revision"], body)
            self.commits.append(commit)
            files = self.repos.setdefault(commit.repo_id, {})
            for path in commit.deleted:
                files.pop(path, None)
            files.update(commit.files)
            oid = hashlib.sha1(body).hexdigest()
            return 200, {"commitUrl": f"{self.endpoint}/{commit.repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}, {}
        if route == "repo_info" and match["repo"] in self.repos:
            siblings = [{"rfilename": path} for path in sorted(self.repos[match["repo"]])]
            return 200, {"id": match["repo"], "sha": self._sha(match["repo"]), "siblings": siblings}, {}
        if route == "resolve" and match["path"] in self.repos.get(match["repo"], {}):
            data = self.repos[match["repo"]][match["path"]]
            return 200, data, {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": self._sha(match["repo"])}
        if route == "resolve":
            return 404, {"error": "fake hub: entry not found"}, {"X-Error-Code": "EntryNotFound"}
        return 404, {"error": "fake hub: repository not found"}, {"X-Error-Code": "RepoNotFound"}

    def _sha(self, repo_id: str) -> str:
        files = self.repos.get(repo_id, {})
        return hashlib.sha1(b"".join(path.encode() + data for path, data in sorted(files.items()))).hexdigest()

    @staticmethod
    def _decode_commit(repo_id: str, revision: str, body: bytes) -> Commit:
        commit = Commit(repo_id, revision, "")
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                commit.summary = item["value"]["summary"]
            elif item["key"] == "file":
                value = item["value"]
                assert value["encoding"] == "base64", value
                commit.files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                commit.deleted.append(item["value"]["path"])
            else:
                raise AssertionError(f"fake hub: unexpected commit operation {item['key']!r}")
        return commit

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def _serve(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                route, match = next(((name, m) for name, verb, pattern in ROUTES
                                     if verb == method and (m := pattern.fullmatch(path))), ("unknown", None))
                headers = {key.lower(): value for key, value in self.headers.items()}
                hub.requests.append(Request(route, method, self.path, headers, body))
                if hub.fail.get(route) == "drop":
                    self.close_connection = True  # the socket closes with no response: a dropped connection
                    return
                status, payload, headers = hub.answer(route, match, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output clean; requests are recorded instead

        return Handler
