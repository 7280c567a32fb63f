'use strict';
/**
 * A local stand-in for the Lambda Invoke API that runs a Node handler in this process, as
 * Lambda's Node runtime would: point `sssrd serve --invoker=lambda --endpoint-url=<url>` at it
 * to run a handler behind the real daemon on a workstation or in tests.
 *
 * It serves `POST /2015-03-31/functions/{name}/invocations` for Event invocations: answers 202
 * at once, then calls handler(event, context). It emits 'invoked' and 'settled' (with the
 * handler's result or error) per invocation. SigV4 signatures are not checked here (the Python
 * fake in sssrd.testing does that). As a command it prints those as JSON lines:
 *
 *   node invoke-target.js --handler dist/handler.mjs:handler [--listen 127.0.0.1:0]
 */

const http = require('node:http');
const path = require('node:path');
const { randomUUID } = require('node:crypto');
const { EventEmitter } = require('node:events');
const { pathToFileURL } = require('node:url');

const INVOKE_PATH = /^\/2015-03-31\/functions\/([^/]+)\/invocations$/;
const EVENT_PAYLOAD_LIMIT = 1024 * 1024; // Lambda's asynchronous invoke limit
const REGION = 'us-east-1';
const ACCOUNT_ID = '123456789012';

class InvokeTarget extends EventEmitter {
  #handler;
  #timeoutMs;
  #server;

  constructor(handler, { timeoutMs = 30_000 } = {}) {
    super();
    this.#handler = handler;
    this.#timeoutMs = timeoutMs;
    this.#server = http.createServer((request, response) => this.#serve(request, response));
  }

  /** Listens (port 0: any free port) and resolves to the endpoint URL for sssrd. */
  listen(port = 0, host = '127.0.0.1') {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => resolve(this.endpointUrl));
    });
  }

  get endpointUrl() {
    const { address, port } = this.#server.address();
    return `http://${address}:${port}`;
  }

  close() {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #serve(request, response) {
    const requestId = randomUUID();
    const answer = (status, errorType, message) => {
      const headers = { 'x-amzn-requestid': requestId, 'content-type': 'application/json' };
      if (errorType) headers['x-amzn-errortype'] = errorType;
      response.writeHead(status, headers).end(errorType ? JSON.stringify({ message }) : '');
    };
    const target = INVOKE_PATH.exec(request.url.split('?')[0]);
    if (request.method !== 'POST' || target === null) {
      request.resume();
      return answer(404, 'UnknownOperationException', `Unknown operation ${request.url}`);
    }
    if (request.headers['x-amz-invocation-type'] !== 'Event') {
      request.resume();
      return answer(400, 'InvalidParameterValueException', 'only Event invocations are served');
    }
    readBody(request, EVENT_PAYLOAD_LIMIT).then((body) => {
      if (body === null) {
        return answer(413, 'RequestTooLargeException', 'Request must be smaller than 1 MB');
      }
      let event;
      try {
        event = body.length ? JSON.parse(body) : {};
      } catch (error) {
        return answer(400, 'InvalidRequestContentException', `Could not parse JSON: ${error}`);
      }
      answer(202);
      this.#run(decodeURIComponent(target[1]), requestId, event);
    });
  }

  #run(functionName, requestId, event) {
    this.emit('invoked', { requestId, functionName, event });
    const context = lambdaContext(functionName, requestId, this.#timeoutMs);
    Promise.resolve()
      .then(() => this.#handler(event, context))
      .then(
        (result) => this.emit('settled', { requestId, result }),
        (error) => this.emit('settled', { requestId, error }),
      );
  }
}

/** The fields of Lambda's Node context object that handlers commonly read. */
function lambdaContext(functionName, requestId, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  return {
    awsRequestId: requestId,
    functionName,
    functionVersion: '$LATEST',
    invokedFunctionArn: `arn:aws:lambda:${REGION}:${ACCOUNT_ID}:function:${functionName}`,
    memoryLimitInMB: '128',
    logGroupName: `/aws/lambda/${functionName}`,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

/** The request body, or null once it is over `limit` bytes. */
function readBody(request, limit) {
  return new Promise((resolve) => {
    const pieces = [];
    let size = 0;
    request.on('data', (piece) => {
      size += piece.length;
      if (size <= limit) pieces.push(piece);
    });
    request.on('end', () => resolve(size > limit ? null : Buffer.concat(pieces)));
    request.on('error', () => resolve(null));
  });
}

/** "file.mjs:export" (or "file.js:export"), resolved against the working directory. */
async function loadHandler(reference) {
  const split = reference.lastIndexOf(':');
  if (split <= 0) throw new Error(`--handler must look like file.mjs:export, got ${reference}`);
  const module = await import(pathToFileURL(path.resolve(reference.slice(0, split))).href);
  const name = reference.slice(split + 1);
  const handler = module[name] ?? module.default?.[name];
  if (typeof handler !== 'function') throw new Error(`${reference} is not a function`);
  return handler;
}

function describeError(error) {
  return { name: error?.name ?? 'Error', message: String(error?.message ?? error) };
}

async function main(argv) {
  const options = { handler: null, listen: '127.0.0.1:0' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in options) || argv[i + 1] === undefined) {
      throw new Error('usage: invoke-target.js --handler FILE:EXPORT [--listen HOST:PORT]');
    }
    options[name] = argv[i + 1];
  }
  const handler = await loadHandler(options.handler ?? '');
  const split = options.listen.lastIndexOf(':');
  const target = new InvokeTarget(handler);
  const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
  target.on('invoked', ({ requestId, functionName, event }) => {
    print({ type: 'invoked', requestId, functionName, sssrdRequestId: event.requestContext?.requestId });
  });
  target.on('settled', ({ requestId, result, error }) => {
    print({ type: 'settled', requestId, result, error: error === undefined ? null : describeError(error) });
  });
  const endpointUrl = await target.listen(Number(options.listen.slice(split + 1)), options.listen.slice(0, split));
  print({ type: 'listening', endpointUrl });
  process.on('SIGTERM', () => target.close().then(() => process.exit(0)));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((error) => {
    process.stderr.write(`invoke-target: ${error.message}\n`);
    process.exit(2);
  });
}

exports.InvokeTarget = InvokeTarget;
exports.loadHandler = loadHandler;
