'use strict';
/**
 * Render handlers run by AWS's real Node runtime client (aws-lambda-ric) in
 * tests/test_runtime_clients.py: `handler` dispatches on ?scenario= to the helper's
 * streamResponse/withStream, `shimmed` is a Function URL streaming handler run through the
 * awslambda shim. Each reports to the test's Conductor (SCENARIO_CONDUCTOR) and waits on it.
 * The raw_* scenarios fail without the helper (no error report, no cut of their own), so only
 * the runtime's own report of the failure (RequestResponse) can tell sssrd.
 */

require('../../awslambda.js'); // the runtime defined globalThis.awslambda before loading us
const http = require('node:http');
const net = require('node:net');
const { once } = require('node:events');
const { withStream } = require('../../index.js');

/** The Conductor protocol of tests/harness.py: JSON lines out, "go\n" back per wait. */
class Conductor {
  constructor(tag) {
    const [host, port] = process.env.SCENARIO_CONDUCTOR.split(':');
    this.tag = tag;
    this.socket = net.connect(Number(port), host);
    this.socket.setEncoding('utf8');
    this.buffered = '';
    this.waiters = [];
    this.socket.on('data', (text) => {
      this.buffered += text;
      while (this.buffered.includes('go\n') && this.waiters.length) {
        this.buffered = this.buffered.replace('go\n', '');
        this.waiters.shift()();
      }
    });
  }

  report(kind, data = {}) {
    this.socket.write(`${JSON.stringify({ tag: this.tag, kind, ...data })}\n`);
  }

  wait(key) {
    const released = new Promise((resolve) => this.waiters.push(resolve));
    this.socket.write(`${JSON.stringify({ wait: `${this.tag}:${key}` })}\n`);
    return released;
  }

  close() {
    this.socket.end();
  }
}

const TEXT = { headers: { 'content-type': 'text/plain' } };

// Callbacks a failing raw render leaves open, as a Lambda sandbox's would stay open.
const leftOpen = [];

const scenarios = {
  stepped: (event, conductor) =>
    withStream(event, TEXT, async (out) => {
      for (const step of [0, 1]) {
        await conductor.wait(`step${step}`);
        out.write(`chunk ${step}\n`);
      }
    }),
  leaves: (event, conductor) =>
    withStream(event, TEXT, async (out) => {
      out.write('first\n');
      await once(out.signal, 'abort'); // no write needed: sssrd closing the callback wakes us
      conductor.report('viewer_gone', { name: out.signal.reason.name });
      throw out.signal.reason;
    }),
  fails_early: (event) =>
    withStream(event, TEXT, async () => {
      throw new TypeError('secret detail');
    }),
  raw_raises_early: async () => {
    throw new TypeError('secret detail');
  },
  raw_raises_mid_stream: async (event, conductor) => {
    const callback = http.request(event.sssrd.callbackUrl, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${event.sssrd.token}`,
        'content-type': 'text/plain',
        'transfer-encoding': 'chunked',
      },
    });
    callback.on('error', () => {}); // sssrd closes it once the runtime reported the error
    callback.write('first\n');
    leftOpen.push(callback);
    await conductor.wait('raise');
    throw new TypeError('secret detail');
  },
  fails_late: (event, conductor) =>
    withStream(event, TEXT, async (out) => {
      out.write('partial');
      await conductor.wait('fail');
      throw new TypeError('secret detail');
    }),
};

async function withConductor(event, run) {
  const query = event.queryStringParameters ?? {};
  const conductor = new Conductor(query.tag);
  try {
    conductor.report('invoked', {
      pid: process.pid,
      runtimeKept: typeof globalThis.awslambda.runtime?.streamifyResponse === 'function',
    });
    return await run(conductor, query);
  } finally {
    conductor.close();
  }
}

exports.handler = (event) =>
  withConductor(event, (conductor, query) => scenarios[query.scenario](event, conductor));

exports.shimmed = awslambda.streamifyResponse((event, responseStream) =>
  withConductor(event, async (conductor, query) => {
    responseStream = awslambda.HttpResponseStream.from(responseStream, {
      statusCode: 201,
      headers: { 'content-type': 'text/html' },
    });
    if (query.fail === 'early') throw new RangeError('secret detail');
    responseStream.write('<p>one</p>');
    await conductor.wait('second');
    if (query.fail === 'late') throw new RangeError('secret detail');
    responseStream.write('<p>two</p>');
    responseStream.end();
  }),
);
