'use strict';
/**
 * A Function URL streaming handler that never imports sssrd-callback: the shim comes from
 * NODE_OPTIONS=--require (tests/test_runtime_clients.py), before aws-lambda-ric assigns its own
 * globalThis.awslambda. Without the shim taking effect, the runtime would stream this to the
 * Runtime API instead of to sssrd, and the viewer would wait for callback_timeout.
 */

exports.handler = awslambda.streamifyResponse(async (_event, responseStream) => {
  responseStream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 200,
    headers: { 'content-type': 'text/plain' },
  });
  responseStream.write('preloaded shim');
  responseStream.end();
});
