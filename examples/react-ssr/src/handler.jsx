/**
 * The Lambda handler: renderToPipeableStream piped into sssrd's callback stream.
 *
 * Only / is a page (anything else is a 404, e.g. the browser's /favicon.ico). The shell (with the skeleton) goes out the moment React has it; the featured block follows
 * in the same response when its data resolves (after ~1 s, or from DATA_URL when set). If the
 * viewer leaves, sssrd closes the callback: the stream's signal aborts, which aborts React's
 * render and the data request, and the handler returns at once instead of rendering on.
 */

import { setTimeout as delay } from 'node:timers/promises';
import { renderToPipeableStream } from 'react-dom/server';
import { ViewerGone, respond, streamResponse } from 'sssrd-callback';
import { Page } from './Page.jsx';

const HEADERS = { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' };
const SIMULATED_DATA_MS = 1000;

/** The slow data: DATA_URL's JSON when set (a real backend), else a simulated 1 s wait. */
async function loadFeatured(signal) {
  if (process.env.DATA_URL) {
    const response = await fetch(process.env.DATA_URL, { signal });
    return response.json();
  }
  await delay(SIMULATED_DATA_MS, undefined, { signal });
  return { title: 'Featured', text: 'This block waited a second for its data.' };
}

export async function handler(event) {
  if (event.rawPath !== '/') {
    await respond(event, 'not found', { statusCode: 404, headers: { 'content-type': 'text/plain' } });
    return { viewerGone: false, notFound: true };
  }
  const data = new AbortController();
  const featured = loadFeatured(data.signal);
  featured.catch(() => {}); // an abort reaches React through abort() below
  return new Promise((resolve) => {
    const { pipe, abort } = renderToPipeableStream(
      <Page path={event.rawPath} featured={featured} />,
      {
        onShellReady() {
          const out = streamResponse(event, { statusCode: 200, headers: HEADERS });
          out.signal.addEventListener('abort', () => {
            data.abort(out.signal.reason);
            abort(out.signal.reason);
          });
          out.on('finish', () => resolve({ viewerGone: false, bytes: out.summary.bytes }));
          out.on('error', (error) => {
            if (!(error instanceof ViewerGone)) console.error('callback failed:', error);
            resolve({ viewerGone: error instanceof ViewerGone });
          });
          pipe(out);
        },
        onShellError(error) {
          console.error('shell failed:', error);
          const page = '<!doctype html><title>Error</title><p>Something went wrong.</p>';
          respond(event, page, { statusCode: 500, headers: HEADERS }).then(
            () => resolve({ viewerGone: false, error: String(error) }),
            () => resolve({ viewerGone: true, error: String(error) }),
          );
        },
        onError(error) {
          if (!(error instanceof ViewerGone)) console.error('render error:', error);
        },
      },
    );
  });
}
