'use strict';
/**
 * sssrd-callback: stream a Lambda's render back to sssrd over its callback URL (no dependencies).
 *
 * A stream is one POST to event.sssrd.callbackUrl with the bearer token, chunked, in AWS's prelude
 * format (JSON prelude, 8 NUL bytes, body). The POST starts with the first body write (the prelude
 * waits for it): a render that fails before then reports the error in a short POST of its own
 * (render-error), so the viewer gets 502 at once. Each write() is one HTTP chunk, sent at once (no
 * coalescing, TCP_NODELAY). sssrd says nothing until the body has ended unless it is ending the
 * stream, so any answer or close before then means the viewer left (410, or a bare close) or the
 * callback was refused: the stream is destroyed with ViewerGone or CallbackRejected and its
 * `signal` aborts, so a renderer given that signal stops at once.
 *
 * The `awslambda` shim maps Function URL streaming handlers (streamifyResponse,
 * HttpResponseStream.from) onto the same stream; require('sssrd-callback/awslambda') installs it.
 */

const http = require('node:http');
const https = require('node:https');
const { Writable, finished } = require('node:stream');

const PRELUDE_CONTENT_TYPE = 'application/vnd.awslambda.http-integration-response';
const PRELUDE_SEPARATOR = Buffer.alloc(8);
const RENDER_ERROR_CONTENT_TYPE = 'application/vnd.sssrd.render-error+json';
const MAX_ERROR_TYPE = 128;
const DEFAULT_TIMEOUT_MS = 30_000;
const ANSWER_LIMIT = 64 * 1024; // sssrd's answers are small JSON objects
const EXCERPT = 200;
const USER_AGENT = 'sssrd-callback/1';

// One keep-alive agent per scheme for every callback this process makes.
const agents = {
  'http:': new http.Agent({ keepAlive: true }),
  'https:': new https.Agent({ keepAlive: true }),
};

class CallbackError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** sssrd ended the stream (the viewer left, or the request is already over): stop rendering. */
class ViewerGone extends CallbackError {}

/** sssrd answered the callback with an error status (401 bad token, 409 taken, ...). */
class CallbackRejected extends CallbackError {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/**
 * A Writable whose bytes go, chunk by chunk, into one POST to sssrd's callback URL.
 * It opens on its first write (or end); 'finish' comes only after sssrd confirmed delivery,
 * and `summary` then holds sssrd's answer ({requestId, bytes}). destroy() before the end
 * cuts the body, so the viewer sees a truncated response, never a complete-looking one.
 */
class CallbackStream extends Writable {
  #target;
  #options;
  #contentType;
  #prelude = null; // sent just before the first body byte
  #request = null;
  #unflushed = 0; // chunks handed to the request that have not reached the socket yet
  #flushed = null; // called when #unflushed drops to 0
  #connected = false;
  #ended = false; // the final chunk was sent
  #delivered = null; // the _final callback, waiting for sssrd's answer
  #answerTimer = null;
  #abort = new AbortController();

  constructor(event, { contentType = 'application/octet-stream', ...options } = {}) {
    super({ decodeStrings: true });
    this.#target = callbackTarget(event);
    this.#options = { timeoutMs: DEFAULT_TIMEOUT_MS, ...options };
    this.#contentType = contentType;
    this.summary = null;
    // The viewer leaving is routine, not a crash: an 'error' nobody listens for would kill
    // the runtime process. The error still reaches signal, finished(), pipeline() and write
    // callbacks.
    this.on('error', () => {});
  }

  /** Aborts (with the ViewerGone or CallbackRejected error as its reason) when sssrd ends it. */
  get signal() {
    return this.#abort.signal;
  }

  /** The callback's Content-Type; only before the first write, like Lambda's own stream. */
  setContentType(contentType) {
    if (this.#request !== null) throw new CallbackError('setContentType() after the first write');
    this.#contentType = contentType;
  }

  /** The response's status, headers and cookies, sent in AWS's prelude format with the first
   * body write (or the end); only before the first write. */
  setPrelude(init) {
    this.setContentType(PRELUDE_CONTENT_TYPE);
    this.#prelude = prelude(init);
  }

  /** Whether any of the response has been sent (after that, an error can only cut it). */
  get started() {
    return this.#request !== null;
  }

  /** Opens the callback now (sending its head) so sssrd can answer the viewer's head at once. */
  open() {
    if (this.#request !== null || this.destroyed) return this;
    const { url, token } = this.#target;
    const request = post(url, token, this.#options, {
      'content-type': this.#contentType,
      'transfer-encoding': 'chunked',
    });
    this.#request = request;
    const connectTimer = setTimeout(() => {
      if (!this.#connected) {
        this.#fail(new CallbackError(`timed out connecting to sssrd at ${this.#target.where}`));
      }
    }, this.#options.timeoutMs);
    connectTimer.unref();
    whenConnected(request, () => {
      this.#connected = true;
      clearTimeout(connectTimer);
    });
    request.on('response', (response) => this.#answered(response));
    request.on('error', (error) => this.#lost(error));
    request.flushHeaders();
    return this;
  }

  _write(chunk, _encoding, callback) {
    if (chunk.length === 0) return callback(); // an empty chunk would end the body
    this.#openWithPrelude();
    // Called back once the request took the chunk, not once it reached the socket: a chunk
    // still waiting in this Writable would be dropped by a destroy() in the same tick, while
    // one the request holds is flushed before the cut (see _destroy).
    if (this.#send(chunk)) callback();
    else this.#request.once('drain', () => callback());
  }

  #send(chunk) {
    this.#unflushed += 1;
    return this.#request.write(chunk, (error) => {
      this.#unflushed -= 1;
      if (error) this.#lost(error); // destroys this stream with ViewerGone (or what else)
      if (this.#unflushed === 0) this.#flushed?.();
    });
  }

  #openWithPrelude() {
    if (this.#request !== null) return;
    this.open();
    if (this.#prelude !== null) this.#send(this.#prelude);
  }

  _final(callback) {
    this.#openWithPrelude();
    this.#ended = true;
    this.#delivered = callback;
    this.#answerTimer = setTimeout(() => {
      const where = this.#target.where;
      this.#fail(new CallbackError(`timed out waiting for the answer of sssrd at ${where}`));
    }, this.#options.timeoutMs);
    this.#answerTimer.unref();
    this.#request.end();
  }

  _destroy(error, callback) {
    clearTimeout(this.#answerTimer);
    if (this.#request === null) {
      // Nothing was sent: a render error is reported (502 at once); 'close' waits for it, so a
      // handler that awaits the stream is not frozen by the runtime before the report is out.
      // destroy() without an error is a cut, and there is nothing to cut yet: report it too.
      if (!(error instanceof CallbackError)) {
        const reported = error ?? new Error('stream destroyed before its first write');
        sendErrorReport(this.#target, reported, this.#options).then(
          () => callback(error),
          () => callback(error),
        );
      } else callback(error);
      return;
    }
    if (this.summary !== null) return callback(error);
    // Drop the connection without the final chunk (a truncated body), once what was written
    // before the cut has reached the socket: those bytes are the viewer's.
    const cut = () => {
      this.#request.destroy();
      callback(error);
    };
    if (this.#unflushed === 0 || this.#request.destroyed) return cut();
    const timer = setTimeout(cut, this.#options.timeoutMs);
    timer.unref();
    this.#flushed = () => {
      clearTimeout(timer);
      cut();
    };
  }

  #answered(response) {
    readAnswer(response, this.#target.where).then(
      ({ status, body }) => {
        if (status === 200 && this.#ended) {
          clearTimeout(this.#answerTimer);
          this.summary = parseSummary(body);
          const delivered = this.#delivered;
          this.#delivered = null;
          delivered?.();
          return;
        }
        this.#fail(answerError(status, body, this.#target.where, this.#ended));
      },
      (error) => this.#lost(error),
    );
  }

  #lost(error) {
    if (this.summary !== null || this.destroyed) return;
    this.#fail(networkFailure(error, this.#connected, this.#target.where));
  }

  #fail(error) {
    if (this.destroyed) return;
    // Destroyed first, so what abort listeners still write (React's abort does) is dropped.
    this.destroy(error);
    this.#abort.abort(error);
  }
}

/**
 * A streamed response: the body's Writable; the prelude goes out with the first write (or end).
 * destroy(error) before the first write reports the error to sssrd (the viewer gets 502 at once).
 * @param event the event sssrd invoked the function with
 * @param init {statusCode, headers, cookies} of the viewer's response
 * @param options {timeoutMs}: the limit for connecting and for sssrd's final answer
 */
function streamResponse(event, init = {}, options = {}) {
  const stream = new CallbackStream(event, options);
  stream.setPrelude(init);
  return stream;
}

/**
 * Runs `render(out)` on a streamed response and owns its ending, so no error path can leave the
 * viewer waiting: a normal return ends the body (if render did not) and waits for sssrd's
 * summary; a throw before the first write reports the error (502 at once), after it cuts the
 * stream, and is rethrown either way, unless it was only the viewer leaving (ViewerGone), which
 * resolves to null.
 */
async function withStream(event, init, render, options = {}) {
  const out = streamResponse(event, init, options);
  try {
    await render(out);
    if (!out.writableEnded && !out.destroyed) out.end();
    await settled(out);
  } catch (error) {
    if (!out.destroyed) out.destroy(error);
    await closed(out);
    if (error instanceof ViewerGone) return null;
    throw error;
  }
  return out.summary;
}

/** Resolves when the stream finished; rejects with its error. */
function settled(stream) {
  return new Promise((resolve, reject) => {
    finished(stream, (error) => (error ? reject(stream.errored ?? error) : resolve()));
  });
}

/** Resolves once the stream is closed (its error report or cut done), whatever its fate. */
function closed(stream) {
  return stream.closed ? Promise.resolve() : new Promise((resolve) => stream.once('close', resolve));
}

/** Tells sssrd the render failed before it sent anything; resolves to sssrd's answer
 * ({requestId, reported: true}). Only the error's name is sent, never its message. */
function reportError(event, error, options = {}) {
  return sendErrorReport(callbackTarget(event), error, options);
}

function sendErrorReport(target, error, options) {
  const { url, token, where } = target;
  const name = String(error?.name ?? error?.constructor?.name ?? 'Error').slice(0, MAX_ERROR_TYPE);
  const payload = Buffer.from(JSON.stringify({ errorType: name }));
  return postWhole(url, token, where, { timeoutMs: DEFAULT_TIMEOUT_MS, ...options }, {
    'content-type': RENDER_ERROR_CONTENT_TYPE,
    payload,
  });
}

/** Sends a whole response in one request (Content-Length); resolves to sssrd's summary. */
function respond(event, body, init = {}, options = {}) {
  const { url, token, where } = callbackTarget(event);
  const payload = Buffer.concat([prelude(init), Buffer.from(body ?? '')]);
  const settings = { timeoutMs: DEFAULT_TIMEOUT_MS, ...options };
  return postWhole(url, token, where, settings, { 'content-type': PRELUDE_CONTENT_TYPE, payload });
}

/** One Content-Length callback; resolves to sssrd's JSON answer, rejects with what it means. */
function postWhole(url, token, where, settings, { 'content-type': contentType, payload }) {
  return new Promise((resolve, reject) => {
    const request = post(url, token, settings, {
      'content-type': contentType,
      'content-length': String(payload.length),
    });
    let connected = false;
    whenConnected(request, () => (connected = true));
    const timer = setTimeout(() => {
      request.destroy(new CallbackError(`timed out waiting for the answer of sssrd at ${where}`));
    }, settings.timeoutMs);
    request.on('response', (response) => {
      readAnswer(response, where).then(({ status, body: answer }) => {
        clearTimeout(timer);
        if (status === 200) resolve(parseSummary(answer));
        else reject(answerError(status, answer, where, true));
      }, reject);
    });
    request.on('error', (error) => {
      clearTimeout(timer);
      reject(networkFailure(error, connected, where));
    });
    request.end(payload);
  });
}

function post(url, token, options, framing) {
  const transport = url.protocol === 'https:' ? https : http;
  return transport.request(url, {
    method: 'POST',
    agent: options.agent ?? agents[url.protocol],
    headers: { authorization: `Bearer ${token}`, 'user-agent': USER_AGENT, ...framing },
  });
}

/** Sets TCP_NODELAY on the request's socket and calls back once it is connected. */
function whenConnected(request, callback) {
  request.on('socket', (socket) => {
    // Each write must leave at once, not wait for Nagle to batch it with the next one.
    socket.setNoDelay(true);
    if (socket.connecting) socket.once('connect', callback);
    else callback(); // a kept-alive socket
  });
}

/** The CallbackError a network failure means: before connecting, unreachable; after, gone. */
function networkFailure(error, connected, where) {
  if (error instanceof CallbackError) return error;
  if (!connected) {
    return new CallbackError(`cannot reach sssrd at ${where}: ${error.message}`, { cause: error });
  }
  return new ViewerGone(`sssrd at ${where} closed the callback stream (the viewer left)`, {
    cause: error,
  });
}

function callbackTarget(event) {
  const meta = event?.sssrd;
  if (typeof meta?.callbackUrl !== 'string' || typeof meta?.token !== 'string') {
    throw new CallbackError(
      'event has no usable sssrd.callbackUrl and sssrd.token: was this invoked by sssrd?',
    );
  }
  let url;
  try {
    url = new URL(meta.callbackUrl);
  } catch {
    throw new CallbackError('sssrd.callbackUrl is not a URL');
  }
  if (!(url.protocol in agents)) {
    throw new CallbackError(`sssrd.callbackUrl is not an http(s) URL: ${url.protocol}//${url.host}`);
  }
  if (/[\0-\x1f\x7f]/.test(meta.token)) {
    // Node's own message would quote the header value, that is, the secret.
    throw new CallbackError('sssrd.token in the event is not a valid header value');
  }
  // Host and path for messages: the id may be logged, the token never is.
  return { url, token: meta.token, where: `${url.host}${url.pathname}` };
}

function prelude({ statusCode = 200, headers = {}, cookies } = {}) {
  const fields = { statusCode, headers };
  if (cookies?.length) fields.cookies = cookies;
  return Buffer.concat([Buffer.from(JSON.stringify(fields)), PRELUDE_SEPARATOR]);
}

/** sssrd's answer, its body bounded: it never needs more than a few hundred bytes. */
function readAnswer(response, where) {
  return new Promise((resolve, reject) => {
    const pieces = [];
    let size = 0;
    response.on('data', (piece) => {
      size += piece.length;
      if (size <= ANSWER_LIMIT) pieces.push(piece);
    });
    response.on('end', () => resolve({ status: response.statusCode, body: Buffer.concat(pieces) }));
    response.on('close', () => {
      if (!response.complete) {
        reject(new ViewerGone(`sssrd at ${where} closed the callback stream mid-answer`));
      }
    });
    response.on('error', () => {}); // 'close' follows and tells
  });
}

function answerError(status, body, where, ended) {
  const excerpt = body.subarray(0, EXCERPT).toString('utf8');
  if (status === 410) return new ViewerGone(`sssrd at ${where} ended the callback stream: 410 ${excerpt}`);
  if (status < 400) {
    const when = ended ? '' : ' before the body ended';
    return new CallbackError(`sssrd at ${where} answered ${status}${when}: ${excerpt}`);
  }
  return new CallbackRejected(`sssrd at ${where} refused the callback: ${status} ${excerpt}`, status, body);
}

function parseSummary(body) {
  try {
    const summary = JSON.parse(body.toString('utf8'));
    return summary !== null && typeof summary === 'object' ? summary : {};
  } catch {
    return {};
  }
}

// -- the awslambda shim --------------------------------------------------------------------------

/**
 * Lambda's own HttpResponseStream: sets the prelude content type and writes the prelude, so the
 * rest of the stream is the body. Works on a CallbackStream as on the runtime's stream.
 */
class HttpResponseStream {
  static from(responseStream, init) {
    if (responseStream instanceof CallbackStream) {
      responseStream.setPrelude(init); // sent with the first body byte: an early throw is reported
      return responseStream;
    }
    responseStream.setContentType(PRELUDE_CONTENT_TYPE);
    responseStream.write(prelude(init));
    return responseStream;
  }
}

/**
 * Turns a Function URL streaming handler `(event, responseStream, context)` into the plain
 * async handler sssrd invokes. The stream opens on the first write, with whatever content type
 * setContentType() or HttpResponseStream.from() set by then. The handler's promise (and an end
 * it forgot) ends the stream; the viewer leaving is not the function's failure, so it resolves.
 * A handler that rejects before its first write has its error reported (the viewer gets 502 at
 * once); after it, the stream is cut at once. Either is done before the rejection propagates.
 */
function streamifyResponse(handler) {
  return async function sssrdStreamingHandler(event, context) {
    const responseStream = new CallbackStream(event);
    const done = new Promise((resolve) => finished(responseStream, resolve));
    try {
      await handler(event, responseStream, context);
    } catch (error) {
      if (!responseStream.destroyed) responseStream.destroy(error);
      await closed(responseStream);
      throw error;
    }
    if (!responseStream.writableEnded && !responseStream.destroyed) responseStream.end();
    const failure = await done;
    if (failure && !(failure instanceof ViewerGone)) throw failure;
    return responseStream.summary;
  };
}

const awslambda = { streamifyResponse, HttpResponseStream };

exports.PRELUDE_CONTENT_TYPE = PRELUDE_CONTENT_TYPE;
exports.RENDER_ERROR_CONTENT_TYPE = RENDER_ERROR_CONTENT_TYPE;
exports.CallbackError = CallbackError;
exports.ViewerGone = ViewerGone;
exports.CallbackRejected = CallbackRejected;
exports.CallbackStream = CallbackStream;
exports.streamResponse = streamResponse;
exports.withStream = withStream;
exports.reportError = reportError;
exports.respond = respond;
exports.HttpResponseStream = HttpResponseStream;
exports.streamifyResponse = streamifyResponse;
exports.awslambda = awslambda;
