/** index.d.ts, awslambda.d.ts and invoke-target.d.ts accept the documented uses (usage.ts). */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('the type declarations accept the documented uses, strictly', async () => {
  // usage.ts imports 'sssrd-callback' by name: TypeScript resolves a package's own name
  // through its "exports", as a consumer's would. skipLibCheck spares checking all of
  // @types/node (15 s here); usage.ts itself is checked against the declarations.
  const tsc = path.join(PACKAGE, 'node_modules', 'typescript', 'bin', 'tsc');
  const args = [
    tsc, '--noEmit', '--strict', '--skipLibCheck', '--module', 'nodenext',
    '--moduleResolution', 'nodenext', '--types', 'node', path.join('test', 'usage.ts'),
  ];
  const result = await new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: PACKAGE }, (error, stdout, stderr) =>
      resolve({ code: error?.code ?? 0, output: stdout + stderr }),
    );
  });
  assert.equal(result.code, 0, result.output);
});
