/**
 * Builds the Lambda zip: esbuild bundles the handler, React and sssrd-callback into one
 * CommonJS file (JSX compiled, React's production build, no node_modules to ship or resolve
 * at cold start), then Python's stdlib zip tool packs it. Deploy dist/render.zip with the
 * handler `index.handler` on a Node.js 20 (or later) runtime.
 */

import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { build } from 'esbuild';

rmSync('dist', { recursive: true, force: true });
await build({
  entryPoints: ['src/handler.jsx'],
  outfile: 'dist/index.js',
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  minify: true,
  legalComments: 'linked',
  logLevel: 'warning',
});
execFileSync('python3', ['-m', 'zipfile', '-c', 'render.zip', 'index.js', 'index.js.LEGAL.txt'], {
  cwd: 'dist',
  stdio: 'inherit',
});
console.log('built dist/render.zip (handler index.handler)');
