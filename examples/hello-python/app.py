"""A wasi:http component in Python, built with componentize-py.

GET /          -> 200 "hello from wa8s (python)" and which of its granted settings it sees
GET /env/NAME  -> the value of NAME as the component sees it, or "<unset>"
"""

import os

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        if path.startswith("/env/"):
            body = os.environ.get(path[len("/env/"):], "<unset>") + "\n"
        else:
            body = "hello from wa8s (python): CACHE_SIZE=%s\n" % os.environ.get("CACHE_SIZE", "<unset>")
        respond(response_out, 200, body.encode())


def respond(response_out: ResponseOutparam, status: int, body: bytes) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    # The stream must be dropped (the `with` block) before the body is finished.
    with out_body.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out_body, None)
