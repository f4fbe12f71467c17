// wasi:http test guest built with componentize-js: answers every request with
// 200 "hello from javascript".
import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.10';

const body = new TextEncoder().encode('hello from javascript\n');

export const incomingHandler = {
  handle(_request, responseOut) {
    const response = new OutgoingResponse(new Fields());
    response.setStatusCode(200);
    const outgoingBody = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = outgoingBody.write();
    stream.blockingWriteAndFlush(body);
    // The stream must be dropped before the body is finished.
    stream[Symbol.dispose]();
    OutgoingBody.finish(outgoingBody, undefined);
  },
};
