/**
 * How the awslambda shim lands on the global, in fresh Node processes: it augments an object
 * the runtime planted first (aws-lambda-ric 4.x keeps InvokeStore there), and preloaded with
 * NODE_OPTIONS=--require it survives the runtime assigning its own object afterwards.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { ROOT } from './harness.mjs';

const SHIM = path.join(ROOT, 'node', 'awslambda.js');

/** Runs `script` in a new Node process (after `preload`, if given); returns its JSON output. */
function inFreshNode(script, preload) {
  const options = preload ? ['--require', preload] : [];
  return JSON.parse(execFileSync(process.execPath, [...options, '-e', script], { encoding: 'utf8' }));
}

const REPORT = `
  process.stdout.write(JSON.stringify({
    store: globalThis.awslambda.InvokeStore,
    sameObject: globalThis.awslambda === runtimeObject,
    shim: typeof globalThis.awslambda.streamifyResponse === 'function'
      && globalThis.awslambda.streamifyResponse !== runtimeStreamify,
    runtimeKept: globalThis.awslambda.runtime.streamifyResponse === runtimeStreamify,
  }));`;

const PLANT = `
  const runtimeStreamify = () => 'runtime';
  const runtimeObject = { InvokeStore: { ids: 'kept' }, streamifyResponse: runtimeStreamify };
  globalThis.awslambda = runtimeObject;`;

test("the shim augments the runtime's awslambda object instead of replacing it", () => {
  const shown = inFreshNode(`${PLANT} require(${JSON.stringify(SHIM)}); ${REPORT}`);
  assert.deepEqual(shown, { store: { ids: 'kept' }, sameObject: true, shim: true, runtimeKept: true });
});

test('preloaded with --require, the shim augments the object the runtime assigns later', () => {
  const shown = inFreshNode(`${PLANT} ${REPORT}`, SHIM);
  assert.deepEqual(shown, { store: { ids: 'kept' }, sameObject: true, shim: true, runtimeKept: true });
});
