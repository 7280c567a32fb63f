'use strict';
/**
 * Installs the sssrd `awslambda` shim as the global Lambda's runtime provides, so a handler
 * written for Function URL streaming (`awslambda.streamifyResponse`, `awslambda.HttpResponseStream`)
 * streams through sssrd unchanged. Import it before the handler's module, e.g. from the entry
 * file the build bundles: `import 'sssrd-callback/awslambda'; export { handler } from './handler.mjs';`
 * The runtime's own `awslambda` is kept as `awslambda.runtime`.
 */

const { awslambda } = require('./index.js');

const runtime = globalThis.awslambda;
globalThis.awslambda = { ...awslambda, runtime };

module.exports = globalThis.awslambda;
