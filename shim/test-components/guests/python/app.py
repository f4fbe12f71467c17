"""wasi:http test guest built with componentize-py.

  /              -> 200 "hello from python"
  /env/NAME      -> the value of NAME as the guest sees it, or "<unset>"
  /fetch/HOST:PORT/PATH -> GET http://HOST:PORT/PATH from inside the guest; 200 with the
                    upstream status and body, or 502 naming the host's refusal
  /write/N/PATH    -> writes N bytes to /PATH (appending); 200 "wrote N", or 500 "errno NAME"
  /read/PATH       -> 200 with the file's contents, or 500 "errno NAME"
  /log/TEXT        -> prints TEXT on stdout (the container's log); 200
"""

import errno
import os

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or "/"
        status, body = 200, b"hello from python\n"
        if path.startswith("/env/"):
            body = (os.environ.get(path[len("/env/"):], "<unset>") + "\n").encode()
        elif path.startswith("/fetch/"):
            status, body = fetch(path[len("/fetch/"):])
        elif path.startswith("/write/"):
            count, _, name = path[len("/write/"):].partition("/")
            status, body = write("/" + name, int(count))
        elif path.startswith("/read/"):
            status, body = read("/" + path[len("/read/"):])
        elif path.startswith("/log/"):
            print(path[len("/log/"):], flush=True)
        respond(response_out, status, body)


def fetch(rest: str):
    authority, _, path = rest.partition("/")
    req = OutgoingRequest(Fields())
    req.set_scheme(Scheme_Http())
    req.set_authority(authority)
    req.set_path_with_query("/" + path)
    try:
        future = outgoing_handler.handle(req, None)
    except Err as e:
        return 502, f"refused: {type(e.value).__name__}\n".encode()
    # Child resources (pollable, body, stream) must be dropped before their parents: the
    # `with` blocks do that.
    with future:
        with future.subscribe() as pollable:
            pollable.block()
        outcome = future.get()
        if outcome is None:
            return 502, b"refused: no response\n"
        if isinstance(outcome, Err):
            return 502, b"refused: response already taken\n"
        result = outcome.value
        if isinstance(result, Err):
            return 502, f"refused: {type(result.value).__name__}\n".encode()
        response = result.value
        status = response.status()
        data = b""
        with response.consume() as body:
            with body.stream() as stream:
                while True:
                    try:
                        data += stream.blocking_read(65536)
                    except Err:
                        break
    return 200, f"upstream {status}: ".encode() + data


def write(name: str, count: int):
    try:
        with open(name, "ab") as f:
            f.write(b"x" * count)
            f.flush()
    except OSError as e:
        return 500, f"errno {errno.errorcode.get(e.errno, e.errno)}\n".encode()
    return 200, f"wrote {count}\n".encode()


def read(name: str):
    try:
        with open(name, "rb") as f:
            return 200, f.read()
    except OSError as e:
        return 500, f"errno {errno.errorcode.get(e.errno, e.errno)}\n".encode()


def respond(response_out: ResponseOutparam, status: int, body: bytes) -> None:
    response = OutgoingResponse(Fields.from_list([("content-type", b"text/plain")]))
    response.set_status_code(status)
    out_body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    # The stream must be dropped (the `with` block) before the body is finished.
    with out_body.write() as stream:
        stream.blocking_write_and_flush(body)
    OutgoingBody.finish(out_body, None)
