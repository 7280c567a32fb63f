/**
 * The page: a shell that paints at once (header, an explanation, a skeleton in place of the
 * slow part), and a <Suspense> boundary whose content React streams in when its data resolves.
 * Colours are distinct on purpose: the browser test reads them off screenshots.
 */

import { Suspense, use } from 'react';

const STYLE = `
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: #212529; background: #fff; }
header { background: #1c7ed6; color: #fff; padding: 1.5rem; }
header h1 { margin: 0; font-size: 1.6rem; }
main { max-width: 46rem; margin: 0 auto; padding: 1.5rem; }
.skeleton { height: 6rem; border-radius: .5rem; background: #adb5bd; }
.featured { padding: 1rem 1.25rem; border-radius: .5rem; background: #2f9e44; color: #fff; }
.featured h2 { margin: 0 0 .25rem; }
footer { color: #868e96; font-size: .9em; margin-top: 2rem; }
`;

export function Page({ path, featured }) {
  return (
    <html lang="en">
      <head>
        <meta charSet="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <title>{`React streaming SSR through sssrd: ${path}`}</title>
        <style>{STYLE}</style>
      </head>
      <body>
        <header>
          <h1>React streaming SSR through sssrd</h1>
        </header>
        <main>
          <p id="intro">
            This shell was sent as soon as React had it. The block below is rendered on the Lambda
            once its data arrives, and streamed into this same response.
          </p>
          <Suspense fallback={<div className="skeleton" id="skeleton" aria-busy="true" />}>
            <Featured featured={featured} />
          </Suspense>
          <footer>Rendered by react-dom/server renderToPipeableStream.</footer>
        </main>
      </body>
    </html>
  );
}

function Featured({ featured }) {
  const { title, text } = use(featured);
  return (
    <section className="featured" id="featured">
      <h2>{title}</h2>
      <p>{text}</p>
    </section>
  );
}
