/** streamResponse() and respond() against the real daemon: framing, pace, and endings. */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { finished } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import {
  CallbackError,
  CallbackRejected,
  ViewerGone,
  respond,
  streamResponse,
} from '../index.js';
import { Gate, Sssrd, Viewer, within } from './harness.mjs';

let sssrd;
before(async () => (sssrd = await Sssrd.start()));
after(() => sssrd.stop());

test('each write reaches the viewer as its own chunk before the next is written', async () => {
  const steps = [new Gate(), new Gate(), new Gate()];
  const settled = sssrd.route('/paced', async (event) => {
    const out = streamResponse(event, {
      statusCode: 201,
      headers: { 'content-type': 'text/plain', 'x-rendered-by': ['node', 'test'] },
      cookies: ['session=abc; HttpOnly'],
    });
    for (const [number, step] of steps.entries()) {
      await step.passed;
      out.write(`chunk ${number}\n`); // a few bytes: Lambda's own streaming would hold these back
    }
    out.end();
    await finished(out);
    return out.summary;
  });
  const viewer = new Viewer(sssrd, '/paced');
  steps[0].open(); // the prelude travels with the first write
  const head = await viewer.head;
  assert.equal(head.statusCode, 201);
  assert.equal(head.headers['x-rendered-by'], 'node, test');
  assert.deepEqual(head.headers['set-cookie'], ['session=abc; HttpOnly']);
  for (const [number, step] of steps.entries()) {
    step.open();
    assert.equal((await viewer.next()).toString(), `chunk ${number}\n`);
  }
  assert.deepEqual(await viewer.rest(), { body: '', ended: 'complete' });
  const { result } = await within(settled, 'the handler');
  assert.deepEqual(result, { requestId: head.headers['x-request-id'], bytes: 24 });
});

test('the viewer leaving errors the stream with ViewerGone and aborts its signal at once', async () => {
  const settled = sssrd.route('/left', async (event) => {
    const out = streamResponse(event, { headers: { 'content-type': 'text/html' } });
    const failed = once(out, 'error').then(([error]) => error);
    out.write('<p>first screen');
    // No further write: sssrd closing the callback alone must wake the handler.
    await once(out.signal, 'abort');
    const error = await failed;
    const late = await new Promise((resolve) => out.write('more', resolve));
    return { reason: out.signal.reason, error, late };
  });
  const viewer = new Viewer(sssrd, '/left');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), '<p>first screen');
  viewer.close();
  const { result } = await within(settled, 'the handler to learn the viewer left');
  assert.ok(result.error instanceof ViewerGone, result.error);
  assert.ok(result.error instanceof CallbackError);
  assert.equal(result.error.name, 'ViewerGone');
  assert.equal(result.reason, result.error);
  assert.ok(result.late instanceof Error, 'a write after the end fails');
});

test('respond() sends a whole response with a Content-Length', async () => {
  const settled = sssrd.route('/once', (event) =>
    respond(event, '<p>hello</p>', { statusCode: 404, headers: { 'content-type': 'text/html' } }),
  );
  const viewer = new Viewer(sssrd, '/once');
  const head = await viewer.head;
  assert.equal(head.statusCode, 404);
  assert.equal(head.headers['content-length'], '12');
  assert.deepEqual(await viewer.rest(), { body: '<p>hello</p>', ended: 'complete' });
  const { result } = await within(settled, 'the handler');
  assert.deepEqual(result, { requestId: head.headers['x-request-id'], bytes: 12 });
});

test("a warm Lambda's callbacks reuse one kept-alive connection", async () => {
  // The helper's own kind of agent (keep-alive), counting the connections it opens.
  const agent = new http.Agent({ keepAlive: true });
  let opened = 0;
  const open = agent.createConnection.bind(agent);
  agent.createConnection = (...args) => {
    opened += 1;
    return open(...args);
  };
  for (const number of [1, 2, 3]) {
    const settled = sssrd.route(`/warm${number}`, (event) => respond(event, `render ${number}`, {}, { agent }));
    const viewer = new Viewer(sssrd, `/warm${number}`);
    assert.equal((await viewer.head).statusCode, 200);
    assert.deepEqual(await viewer.rest(), { body: `render ${number}`, ended: 'complete' });
    const { error } = await within(settled, 'the handler');
    assert.equal(error, undefined);
  }
  agent.destroy();
  assert.equal(opened, 1);
});

test('a refused callback is CallbackRejected with its status, and the real one still works', async () => {
  const settled = sssrd.route('/forged', async (event) => {
    const forged = { ...event, sssrd: { ...event.sssrd, token: 'not-the-token' } };
    const out = streamResponse(forged);
    out.write('first');
    const [streamError] = await once(out, 'error');
    const respondError = await respond(forged, 'x').catch((error) => error);
    await respond(event, 'real');
    return { streamError, respondError, aborted: out.signal.aborted };
  });
  const viewer = new Viewer(sssrd, '/forged');
  assert.equal((await viewer.head).statusCode, 200);
  assert.deepEqual(await viewer.rest(), { body: 'real', ended: 'complete' });
  const { result } = await within(settled, 'the handler');
  for (const error of [result.streamError, result.respondError]) {
    assert.ok(error instanceof CallbackRejected, error);
    assert.equal(error.status, 401);
    assert.ok(!error.message.includes('not-the-token'), 'the token is never in a message');
  }
  assert.equal(result.aborted, true);
});

test('destroying the stream mid-body gives the viewer a truncated response', async () => {
  const cut = new Gate();
  sssrd.route('/cut', async (event) => {
    const out = streamResponse(event);
    out.write('partial');
    await cut.passed;
    out.destroy();
  });
  const viewer = new Viewer(sssrd, '/cut');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), 'partial');
  cut.open();
  assert.deepEqual(await viewer.rest(), { body: '', ended: 'truncated' });
});

test('an unreachable sssrd is a CallbackError, not a viewer leaving', async () => {
  const closed = net.createServer();
  await new Promise((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const { port } = closed.address();
  await new Promise((resolve) => closed.close(resolve));
  const event = { sssrd: { callbackUrl: `http://127.0.0.1:${port}/v1/callback/x`, token: 't' } };
  const out = streamResponse(event);
  out.write('first');
  const [streamError] = await within(once(out, 'error'), 'the stream error');
  const respondError = await within(respond(event, 'x').catch((error) => error), 'respond');
  for (const error of [streamError, respondError]) {
    assert.equal(error.name, 'CallbackError');
    assert.match(error.message, /^cannot reach sssrd at 127\.0\.0\.1:\d+\/v1\/callback\/x: /);
  }
  assert.equal(out.signal.reason, streamError);
});

test('an event sssrd did not send is refused with a clear error', () => {
  assert.throws(() => streamResponse({ rawPath: '/' }), {
    name: 'CallbackError',
    message: /no usable sssrd.callbackUrl/,
  });
  assert.throws(
    () => streamResponse({ sssrd: { callbackUrl: 'ftp://x/y', token: 't' } }),
    /not an http\(s\) URL/,
  );
});

test('a viewer leaving does not crash a handler that listens for nothing', async () => {
  const settled = sssrd.route('/unheard', async (event) => {
    const out = streamResponse(event);
    out.write('first');
    await once(out.signal, 'abort'); // no 'error' listener: an unheard error must not crash
    return out.destroyed;
  });
  const viewer = new Viewer(sssrd, '/unheard');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), 'first');
  viewer.close();
  const { result, error } = await within(settled, 'the handler');
  assert.equal(error, undefined);
  assert.equal(result, true);
});
