/**
 * Test harness for the Node helper: the real sssrd daemon (a subprocess, lambda invoker) pointed
 * at an in-process InvokeTarget, whose handler runs the function each test registered for its
 * path. `Gate`s let a test release a handler step by step, and `Viewer` reads the response the
 * way a browser receives it, chunk by chunk, telling a complete body from a truncated one.
 */

import { spawn } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { InvokeTarget } from '../invoke-target.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const WAIT_MS = 15_000; // upper bound on any single wait; the tests never sleep

/** A promise the test resolves: `await gate.passed` in a handler, `gate.open()` in the test. */
export class Gate {
  constructor() {
    this.passed = new Promise((resolve) => (this.open = resolve));
  }
}

/** Resolves with the promise's value, or fails the test after WAIT_MS. */
export function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** sssrd serve (lambda invoker, ephemeral ports) invoking handlers in this process. */
export class Sssrd {
  #handlers = new Map();
  #settled = new Map();

  static async start() {
    const sssrd = new Sssrd();
    await sssrd.#start();
    return sssrd;
  }

  /** Routes invocations for `rawPath` to `handler`; returns a promise of its settlement. */
  route(rawPath, handler) {
    this.#handlers.set(rawPath, handler);
    return new Promise((resolve) => this.#settled.set(rawPath, resolve));
  }

  async #start() {
    this.target = new InvokeTarget((event, context) => this.#handlers.get(event.rawPath)(event, context));
    this.target.on('settled', (outcome) => this.#settle(outcome));
    this.invocations = new Map(); // InvokeTarget request id -> rawPath
    this.target.on('invoked', ({ requestId, event }) => this.invocations.set(requestId, event.rawPath));
    const endpoint = await this.target.listen();
    const python = path.resolve(process.env.SSSRD_PYTHON ?? path.join(ROOT, '.venv', 'bin', 'python'));
    const environment = Object.fromEntries(
      Object.entries(process.env).filter(([name]) => !name.startsWith('SSSRD_')),
    );
    this.process = spawn(
      python,
      [
        '-m', 'sssrd.cli', 'serve',
        '--listen=127.0.0.1:0', '--callback-listen=127.0.0.1:0', '--admin-listen=off',
        '--invoker=lambda', '--function=render', `--endpoint-url=${endpoint}`,
        '--idle-timeout=10',
        // One process, as the Python harness runs it: with a worker per core, each worker has a
        // callback port of its own and a warm Lambda keeps one connection per port.
        '--workers=1',
      ],
      {
        cwd: ROOT,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...environment,
          PYTHONPATH: ROOT,
          AWS_ACCESS_KEY_ID: 'AKIDSSSRDTEST',
          AWS_SECRET_ACCESS_KEY: 'sssrd-test-secret',
          AWS_DEFAULT_REGION: 'us-east-1',
          AWS_EC2_METADATA_DISABLED: 'true',
        },
      },
    );
    this.stderr = '';
    this.process.stderr.on('data', (piece) => (this.stderr += piece));
    this.lines = createInterface({ input: this.process.stdout });
    const listening = new Promise((resolve, reject) => {
      this.lines.on('line', (text) => {
        const line = JSON.parse(text);
        if (line.message === 'sssrd listening') resolve(line);
      });
      this.process.once('exit', (code) => reject(new Error(`sssrd exited ${code}: ${this.stderr}`)));
      this.process.once('error', (error) => reject(new Error(`cannot start sssrd with ${python}: ${error.message}`)));
    });
    const line = await within(listening, 'sssrd to listen');
    const [host, port] = line.viewer.split(/:(?=\d+$)/);
    this.viewer = { host, port: Number(port) };
  }

  #settle({ requestId, result, error }) {
    const rawPath = this.invocations.get(requestId);
    this.#settled.get(rawPath)?.({ result, error });
  }

  async stop() {
    this.process.kill('SIGTERM');
    await once(this.process, 'exit');
    await this.target.close();
  }
}

/** One viewer request whose body pieces are read as they arrive. */
export class Viewer {
  #pieces = [];
  #waiters = [];
  #ended = null; // 'complete' | 'truncated'

  constructor(sssrd, target) {
    this.request = http.get({ ...sssrd.viewer, path: target, agent: false });
    this.head = within(once(this.request, 'response').then(([response]) => response), 'head');
    this.head.then((response) => {
      response.on('data', (piece) => this.#push(piece));
      response.on('end', () => this.#finish('complete'));
      response.on('close', () => this.#finish(response.complete ? 'complete' : 'truncated'));
      response.on('error', () => {});
    });
    this.request.on('error', () => this.#finish('truncated'));
  }

  /** The next body piece as it arrives; null once the body has ended. */
  next() {
    if (this.#pieces.length) return Promise.resolve(this.#pieces.shift());
    if (this.#ended) return Promise.resolve(null);
    return within(new Promise((resolve) => this.#waiters.push(resolve)), 'a body piece');
  }

  /** The rest of the body and how it ended. */
  async rest() {
    const pieces = [];
    for (let piece = await this.next(); piece !== null; piece = await this.next()) pieces.push(piece);
    return { body: Buffer.concat(pieces).toString(), ended: this.#ended };
  }

  close() {
    this.request.destroy();
  }

  #push(piece) {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(piece);
    else this.#pieces.push(piece);
  }

  #finish(how) {
    if (this.#ended) return;
    this.#ended = how;
    for (const waiter of this.#waiters.splice(0)) waiter(null);
  }
}
