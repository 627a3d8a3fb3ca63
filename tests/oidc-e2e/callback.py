"""The relying party's own endpoints, where the provider sends the browser
back: a server on a free loopback port (over TLS with the test certificate
when the provider is) that keeps each URL the browser asked for and shows a
plain page."""

import os
import queue
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Callback:
    def __init__(self, tls: bool):
        received: queue.Queue[str] = queue.Queue()
        self._received = received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/favicon.ico":
                    self.send_error(404)
                    return
                received.put(self.path)
                body = b"<!doctype html><title>Back at the application</title><p>Welcome back."
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(os.environ["OIDC_E2E_CERT"], os.environ["OIDC_E2E_KEY"])
            # The handshake happens in each request's thread, so a
            # connection the browser opens ahead and leaves idle blocks
            # nothing.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def next(self, timeout: float = 10) -> str:
        """The next URL the browser asked for, whole."""
        try:
            return self.url(self._received.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError("the browser did not come back to the application") from None

    def nothing_received(self) -> bool:
        return self._received.empty()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
