// Compiled (never run) by types.test.mjs: the documented uses must type-check against index.d.ts.
import { finished } from 'node:stream/promises';
import {
  CallbackRejected,
  type SssrdEvent,
  type Summary,
  ViewerGone,
  reportError,
  respond,
  streamResponse,
  withStream,
} from 'sssrd-callback';
import 'sssrd-callback/awslambda';
import { InvokeTarget } from 'sssrd-callback/invoke-target';

export async function handler(event: SssrdEvent): Promise<Summary | null> {
  const out = streamResponse(event, {
    statusCode: 200,
    headers: { 'content-type': 'text/html', vary: ['accept', 'cookie'] },
    cookies: ['a=b'],
  });
  out.signal.addEventListener('abort', () => out.signal.reason instanceof ViewerGone);
  out.write('<p>first');
  out.end();
  try {
    await finished(out);
  } catch (error) {
    if (error instanceof CallbackRejected) return { requestId: '', bytes: error.status };
    throw error;
  }
  await respond(event, new Uint8Array(1), { statusCode: 404 }, { timeoutMs: 1000 });
  return out.summary;
}

export const streaming = awslambda.streamifyResponse(async (event, responseStream, _context) => {
  responseStream = awslambda.HttpResponseStream.from(responseStream, { statusCode: 201 });
  responseStream.setContentType; // exists on the shim's stream, as on Lambda's
  responseStream.write(`${event.sssrd.callbackUrl}`);
  responseStream.end();
});

const target = new InvokeTarget(handler, { timeoutMs: 5000 });
target.on('settled', ({ requestId }) => requestId.length);
void target.listen(0).then((url: string) => url.length);

// withStream owns the ending; reportError for a render that builds its body itself.
export async function withStreamHandler(event: SssrdEvent): Promise<Summary | null> {
  return withStream(event, { statusCode: 200 }, async (out) => {
    out.write('<p>first</p>');
  });
}

export async function reportingHandler(event: SssrdEvent): Promise<Summary> {
  let page: string;
  try {
    page = renderWholePage();
  } catch (error) {
    const answer: { reported: true } = await reportError(event, error);
    console.log(answer.reported);
    throw error;
  }
  return respond(event, page);
}

function renderWholePage(): string {
  return '<p>whole</p>';
}
