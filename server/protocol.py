"""uvicorn's HTTP protocol, with the error envelope on the 400 that uvicorn sends by itself.

A request the HTTP parser refuses (a request line or headers past its limits, as a 200,000-character
session id is; a malformed request line) is answered before any ASGI app runs, in plain text.
These subclasses answer it in the one error envelope instead.  ``vssm serve`` selects
``server.protocol:HTTPProtocol`` (httptools when installed, as uvicorn's "auto" would, else h11).
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import envelope

__all__ = ["EnvelopeH11Protocol", "HTTPProtocol"]

MESSAGE = "malformed HTTP request, or its request line or headers are too long"


def _body() -> bytes:
    return json.dumps(envelope(400, "http_error", MESSAGE)).encode()


class EnvelopeH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = _body()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError:  # httptools is optional: uvicorn falls back to h11 as well
    HTTPProtocol: type = EnvelopeH11Protocol
else:

    class EnvelopeHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = _body()
            content = [STATUS_LINE[400]]
            for name, value in self.server_state.default_headers:
                content += [name, b": ", value, b"\r\n"]
            content += [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
            self.transport.write(b"".join(content))
            self.transport.close()

    HTTPProtocol = EnvelopeHttpToolsProtocol
