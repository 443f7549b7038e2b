"""A tiny HTTP file server on 127.0.0.1 for download tests: Range requests and scripted failures.

Use it as a context manager, FileServer({"/a.tar.gz": data}), and fetch server.url("/a.tar.gz"). Set
cut_first = 1 to make the first answer stop after half its body and drop the connection; every request is
recorded in server.requests as (path, Range header or None).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/TinyStories_all_data.tar.gz"  # where conftest's `server` fixture serves the test archive
FAST = {"retries": 2, "backoff": 0.01, "timeout": 10.0, "progress": False}  # download_archive, for tests


class FileServer:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []
        self.cut_first = 0  # this many answers send only half their body and drop the connection
        self.ignore_range = False  # answer 200 with the whole body even to a Range request
        self.omit_length = False  # send no Content-Length: the body ends when the connection closes
        self.fail_statuses: list[int] = []  # answer these statuses, one per request, before serving
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                if server.fail_statuses:
                    self._empty(server.fail_statuses.pop(0))
                    return
                body = server.files.get(self.path)
                if body is None:
                    self._empty(404)
                    return
                first = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and not server.ignore_range:
                    first = int(match.group(1))
                    if first >= len(body):
                        self._empty(416, {"Content-Range": f"bytes */{len(body)}"})
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[first:]
                self.send_header("Content-Type", "application/octet-stream")
                if server.omit_length:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if server.cut_first > 0:
                    server.cut_first -= 1
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def _empty(self, status: int, headers: dict[str, str] | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
