import type { awslambda as shim } from './index.js';

declare const installed: typeof shim & { runtime: unknown };
export = installed;

declare global {
  /** Installed by `import 'sssrd-callback/awslambda'`: Lambda's streaming API, through sssrd. */
  var awslambda: typeof shim & { runtime: unknown };
}
