/**
 * How a failing render ends: the error callback before the first write (exact bytes, against a
 * raw recording server), a cut after it that keeps every byte written before the cut, and
 * withStream(), which owns the ending so a throw can never leave the viewer waiting.
 */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { awslambda, RENDER_ERROR_CONTENT_TYPE, streamResponse, withStream } from '../index.js';
import { Gate, Sssrd, Viewer, within } from './harness.mjs';

const TOKEN = 'node-s3cret';
const REPORTED = '{"requestId":"req-1","reported":true}';

/** Accepts one connection, keeps every byte it sends, and answers a Content-Length request. */
class Recorder {
  constructor() {
    this.server = net.createServer((socket) => this.#serve(socket));
    this.raw = Buffer.alloc(0);
    this.ended = new Promise((resolve) => (this.sawEnd = resolve));
    this.answered = new Promise((resolve) => (this.sawRequest = resolve));
  }

  async listen() {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    const { port } = this.server.address();
    return { sssrd: { callbackUrl: `http://127.0.0.1:${port}/v1/callback/req-1`, token: TOKEN } };
  }

  #serve(socket) {
    socket.on('data', (piece) => {
      this.raw = Buffer.concat([this.raw, piece]);
      const text = this.raw.toString('latin1');
      const length = /content-length: (\d+)/i.exec(text);
      const headEnd = text.indexOf('\r\n\r\n');
      if (length && headEnd >= 0 && this.raw.length >= headEnd + 4 + Number(length[1])) {
        socket.end(
          `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${REPORTED.length}\r\n` +
            `connection: close\r\n\r\n${REPORTED}`,
        );
        this.sawRequest(text);
      }
    });
    socket.on('end', () => {
      socket.end();
      this.sawEnd(this.raw.toString('latin1'));
    });
    socket.on('error', () => this.sawEnd(this.raw.toString('latin1')));
  }

  close() {
    this.server.close();
  }
}

function expectErrorCallback(raw, errorType) {
  const [head, body] = raw.split('\r\n\r\n');
  const lines = head.split('\r\n');
  assert.equal(lines[0], 'POST /v1/callback/req-1 HTTP/1.1');
  const headers = Object.fromEntries(
    lines.slice(1).map((line) => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 2)]),
  );
  assert.equal(headers.authorization, `Bearer ${TOKEN}`);
  assert.equal(headers['content-type'], RENDER_ERROR_CONTENT_TYPE);
  assert.equal(headers['content-length'], String(Buffer.byteLength(body)));
  assert.equal(headers['transfer-encoding'], undefined);
  assert.equal(body, JSON.stringify({ errorType })); // the name only, never the message
}

test('destroy(error) before the first write sends the error callback, then closes', async () => {
  const recorder = new Recorder();
  const out = streamResponse(await recorder.listen(), { headers: { 'content-type': 'text/html' } });
  out.destroy(new TypeError('secret detail'));
  await within(new Promise((resolve) => out.once('close', resolve)), 'close after the report');
  expectErrorCallback(await within(recorder.ended, 'the report'), 'TypeError');
  recorder.close();
});

test('destroy() without an error before the first write reports one too', async () => {
  const recorder = new Recorder();
  const out = streamResponse(await recorder.listen());
  out.destroy();
  expectErrorCallback(await within(recorder.ended, 'the report'), 'Error');
  recorder.close();
});

test('withStream: a throw before the first write is reported before the rejection', async () => {
  const recorder = new Recorder();
  const event = await recorder.listen();
  let reported = false;
  recorder.answered.then(() => (reported = true));
  await assert.rejects(
    withStream(event, {}, async () => {
      throw new RangeError('secret detail');
    }),
    (error) => error instanceof RangeError && reported,
  );
  expectErrorCallback(await recorder.ended, 'RangeError');
  recorder.close();
});

test('the shim reports a handler that rejects before its first write', async () => {
  const recorder = new Recorder();
  const event = await recorder.listen();
  const handler = awslambda.streamifyResponse(async (_event, responseStream) => {
    awslambda.HttpResponseStream.from(responseStream, { statusCode: 200 });
    throw new SyntaxError('secret detail');
  });
  let reported = false;
  recorder.answered.then(() => (reported = true));
  await assert.rejects(handler(event, {}), (error) => error instanceof SyntaxError && reported);
  expectErrorCallback(await recorder.ended, 'SyntaxError');
  recorder.close();
});

test('write() then destroy() in one tick: the last write still reaches sssrd before the cut', async () => {
  const recorder = new Recorder();
  const out = streamResponse(await recorder.listen());
  out.write('first');
  await new Promise((resolve) => out.write('second', resolve));
  out.write('last');
  out.destroy();
  const raw = await within(recorder.ended, 'the cut');
  const body = raw.slice(raw.indexOf('\r\n\r\n') + 4);
  assert.ok(body.endsWith('5\r\nfirst\r\n6\r\nsecond\r\n4\r\nlast\r\n'), JSON.stringify(body));
  recorder.close();
});

let sssrd;
before(async () => (sssrd = await Sssrd.start()));
after(() => sssrd.stop());

test('withStream: a throw mid-render cuts the stream before the rejection (no idle wait)', async () => {
  const fail = new Gate();
  let out;
  const settled = sssrd.route('/with-stream-throws', (event) =>
    withStream(event, { headers: { 'content-type': 'text/html' } }, async (stream) => {
      out = stream;
      stream.write('partial');
      await fail.passed;
      throw new Error('render failed');
    }).catch((error) => ({ error, closedFirst: out.closed })),
  );
  const viewer = new Viewer(sssrd, '/with-stream-throws');
  await viewer.head;
  assert.equal((await viewer.next()).toString(), 'partial');
  fail.open();
  const { result } = await within(settled, 'the handler');
  assert.equal(result.error.message, 'render failed');
  assert.equal(result.closedFirst, true); // the callback was closed before the throw came out
  assert.deepEqual(await viewer.rest(), { body: '', ended: 'truncated' });
});

test('withStream: a normal render ends the body and resolves to the summary', async () => {
  const settled = sssrd.route('/with-stream', (event) =>
    withStream(event, { statusCode: 203 }, async (out) => out.write('whole')),
  );
  const viewer = new Viewer(sssrd, '/with-stream');
  assert.equal((await viewer.head).statusCode, 203);
  assert.deepEqual(await viewer.rest(), { body: 'whole', ended: 'complete' });
  const { result } = await within(settled, 'the handler');
  assert.equal(result.bytes, 5);
});

test('through sssrd: a render failing before its first write gives the viewer 502 at once', async () => {
  const fail = async () => {
    throw new TypeError('secret detail');
  };
  sssrd.route('/fails-early', (event) => withStream(event, {}, fail).catch(() => null));
  sssrd.route(
    '/shim-fails-early',
    awslambda.streamifyResponse(async (_event, stream) => {
      awslambda.HttpResponseStream.from(stream, { statusCode: 200 });
      await fail();
    }),
  );
  for (const target of ['/fails-early', '/shim-fails-early']) {
    const viewer = new Viewer(sssrd, target);
    assert.equal((await viewer.head).statusCode, 502);
    const { body } = await viewer.rest();
    assert.ok(!body.includes('TypeError') && !body.includes('secret'), body);
  }
});
