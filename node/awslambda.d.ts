import type { awslambda as shim } from './index.js';

/** The runtime's own streamifyResponse and HttpResponseStream, kept beside the shim's. */
interface RuntimeOriginals {
  streamifyResponse: unknown;
  HttpResponseStream: unknown;
}

declare const installed: typeof shim & { runtime: RuntimeOriginals; [runtimeKey: string]: unknown };
export = installed;

declare global {
  /** Installed by `import 'sssrd-callback/awslambda'`: Lambda's streaming API, through sssrd. */
  var awslambda: typeof shim & { runtime: RuntimeOriginals; [runtimeKey: string]: unknown };
}
