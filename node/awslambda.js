'use strict';
/**
 * Installs the sssrd `awslambda` shim on the global Lambda's runtime provides, so a handler
 * written for Function URL streaming (`awslambda.streamifyResponse`, `awslambda.HttpResponseStream`)
 * streams through sssrd unchanged. Import it before the handler's module, e.g. from the entry
 * file the build bundles: `import 'sssrd-callback/awslambda'; export { handler } from './handler.mjs';`
 *
 * The runtime's own object is augmented, never replaced: what the runtime keeps there
 * (aws-lambda-ric 4.x's `InvokeStore`, which carries request and trace ids) stays; its own
 * streamifyResponse and HttpResponseStream stay reachable as `awslambda.runtime`. Preloaded with
 * `NODE_OPTIONS=--require sssrd-callback/awslambda`, the shim runs before the runtime defines
 * the global: it then also augments the object the runtime assigns later.
 */

const { awslambda: shim } = require('./index.js');

function augment(target) {
  if (target === null || typeof target !== 'object') return target;
  if (target.streamifyResponse === shim.streamifyResponse) return target; // already done
  const runtime = {
    streamifyResponse: target.streamifyResponse,
    HttpResponseStream: target.HttpResponseStream,
  };
  return Object.assign(target, shim, { runtime });
}

let installed = augment(globalThis.awslambda ?? {});
// The runtime assigns `globalThis.awslambda = {...}` just before loading the handler; an
// accessor lets that assignment through and augments what it assigns.
Object.defineProperty(globalThis, 'awslambda', {
  configurable: true,
  enumerable: true,
  get: () => installed,
  set: (value) => {
    installed = augment(value);
  },
});

module.exports = installed;
