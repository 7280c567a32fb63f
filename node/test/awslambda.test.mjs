/** The awslambda shim: Function URL streaming handlers, unchanged, behind the real daemon. */

import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import '../awslambda.js';
import { Gate, Sssrd, Viewer, within } from './harness.mjs';

let sssrd;
before(async () => (sssrd = await Sssrd.start()));
after(() => sssrd.stop());

test('the shim is installed as the global awslambda', () => {
  assert.equal(typeof globalThis.awslambda.streamifyResponse, 'function');
  assert.equal(typeof globalThis.awslambda.HttpResponseStream.from, 'function');
});

test('HttpResponseStream.from sets status and headers; writes stream as they happen', async () => {
  const second = new Gate();
  // Written as for a Function URL: only the global awslambda, no import of sssrd-callback.
  const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
    responseStream = awslambda.HttpResponseStream.from(responseStream, {
      statusCode: 202,
      headers: { 'Content-Type': 'text/html', 'X-Function': context.functionName },
    });
    responseStream.write('<p>one</p>');
    await second.passed;
    responseStream.write('<p>two</p>');
    responseStream.end();
  });
  const settled = sssrd.route('/from', handler);
  const viewer = new Viewer(sssrd, '/from');
  const head = await viewer.head;
  assert.equal(head.statusCode, 202);
  assert.equal(head.headers['content-type'], 'text/html');
  assert.equal(head.headers['x-function'], 'render');
  assert.equal((await viewer.next()).toString(), '<p>one</p>');
  second.open();
  assert.deepEqual(await viewer.rest(), { body: '<p>two</p>', ended: 'complete' });
  const { result, error } = await within(settled, 'the handler');
  assert.equal(error, undefined);
  assert.equal(result.bytes, 20);
});

test('setContentType without a prelude, and pipeline() into the stream', async () => {
  const handler = awslambda.streamifyResponse(async (_event, responseStream) => {
    responseStream.setContentType('text/plain');
    await pipeline(Readable.from(['a', 'b', 'c']), responseStream);
  });
  sssrd.route('/plain', handler);
  const viewer = new Viewer(sssrd, '/plain');
  const head = await viewer.head;
  assert.equal(head.statusCode, 200);
  assert.equal(head.headers['content-type'], 'text/plain');
  assert.deepEqual(await viewer.rest(), { body: 'abc', ended: 'complete' });
});

test('a handler that forgets end() still completes the response', async () => {
  sssrd.route('/no-end', awslambda.streamifyResponse(async (_event, stream) => stream.write('x')));
  const viewer = new Viewer(sssrd, '/no-end');
  await viewer.head;
  assert.deepEqual(await viewer.rest(), { body: 'x', ended: 'complete' });
});

test('a handler that throws leaves the viewer a truncated response and rejects', async () => {
  const fail = new Gate();
  const settled = sssrd.route(
    '/throws',
    awslambda.streamifyResponse(async (_event, stream) => {
      stream.write('partial');
      await fail.passed;
      throw new Error('render failed');
    }),
  );
  const viewer = new Viewer(sssrd, '/throws');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), 'partial');
  fail.open();
  assert.deepEqual(await viewer.rest(), { body: '', ended: 'truncated' });
  assert.equal((await within(settled, 'the handler')).error.message, 'render failed');
});

test('the viewer leaving fails the next write, and the handler resolves', async () => {
  let lateWrite;
  const settled = sssrd.route(
    '/gone',
    awslambda.streamifyResponse(async (_event, stream) => {
      stream.write('first');
      await new Promise((resolve) => stream.once('error', resolve));
      // A Function URL handler knows nothing of ViewerGone: it just sees its writes fail.
      lateWrite = new Promise((resolve) => stream.write('more', resolve));
    }),
  );
  const viewer = new Viewer(sssrd, '/gone');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), 'first');
  viewer.close();
  const { result, error } = await within(settled, 'the handler');
  assert.equal(error, undefined);
  assert.equal(result, null);
  assert.ok((await within(lateWrite, 'the late write')) instanceof Error);
});
