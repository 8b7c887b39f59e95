"""An HTTPS server for MTA-STS policies (RFC 8461 3.3) on a loopback address, port 443, with a
certificate of the tests' CA: `GET /.well-known/mta-sts.txt` answers the policy the test set."""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HTTPS_PORT = 443
POLICY_PATH = "/.well-known/mta-sts.txt"


def policy_text(mode: str, mx: list[str], max_age_s: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + [f"max_age: {max_age_s}"]
    return "\r\n".join(lines) + "\r\n"


class PolicyServer:
    """Serves `self.body` (text/plain) at the well-known path; `hang_s` delays every answer."""

    def __init__(self, address: str, cert: Path, key: Path) -> None:
        self.address = address
        self.body = ""
        self.hang_s = 0.0
        self.requests: list[str] = []  # the Host header of each policy request
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append(self.headers.get("Host", ""))
                    body, hang_s = server.body.encode(), server.hang_s
                if hang_s:
                    time.sleep(hang_s)
                if self.path != POLICY_PATH or not body:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer((address, HTTPS_PORT), Handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> "PolicyServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def policy(self, mode: str, mx: list[str], max_age_s: int = 86400) -> None:
        with self.lock:
            self.body = policy_text(mode, mx, max_age_s)

    def fetches(self) -> list[str]:
        with self.lock:
            return list(self.requests)
