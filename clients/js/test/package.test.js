import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';

const root = new URL('../', import.meta.url);
const read = (path) => readFile(new URL(path, root), 'utf8');

test('package.json: ESM, exports, optional React peer, no runtime dependencies', async () => {
  const pkg = JSON.parse(await read('package.json'));
  assert.equal(pkg.name, 'herald-client');
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.license, 'Apache-2.0');
  assert.deepEqual(pkg.exports['.'], { types: './index.d.ts', default: './src/index.js' });
  assert.deepEqual(pkg.exports['./react'], { types: './react.d.ts', default: './src/react.js' });
  assert.deepEqual(pkg.peerDependencies, { react: '>=18' });
  assert.deepEqual(pkg.peerDependenciesMeta, { react: { optional: true } });
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.scripts.test, 'node --test test/*.test.js');
  assert.equal(pkg.scripts.typecheck, 'tsc --noEmit -p .');
  assert.equal(pkg.engines.node, '>=20');
  assert.equal(pkg.repository.directory, 'clients/js');
  assert.match(pkg.repository.url, /^https:\/\/github\.com\/.+\.git$/);
  assert.match(pkg.homepage, /docs\/client\.md$/);
  assert.match(pkg.bugs, /\/issues$/);
  // Test-only dependencies, pinned exactly (package-lock.json holds the rest).
  for (const [name, version] of Object.entries(pkg.devDependencies ?? {})) {
    assert.match(version, /^\d+\.\d+\.\d+$/, `devDependency ${name} is pinned`);
  }
});

test('the package resolves by its own name and exports what index.d.ts declares', async () => {
  const mod = await import('herald-client');
  const dts = await read('index.d.ts');
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...declared].sort(), Object.keys(mod).sort());
  assert.equal(typeof mod.createClient, 'function');
  // The parser, the backoff and the clock are the client's internals, not its API.
  for (const internal of ['createParser', 'Backoff', 'systemClock', 'backoffCeiling', 'fullJitter']) {
    assert.equal(mod[internal], undefined, `${internal} is not exported`);
  }
});

test('the React entry is a client module: "use client" comes first', async () => {
  const src = await read('src/react.js');
  assert.match(src, /^'use client';\n/);
});

test('react.d.ts declares what src/react.js exports', async () => {
  const src = await read('src/react.js');
  const exported = [
    ...[...src.matchAll(/^export const (\w+)/gm)].map((m) => m[1]),
    ...[...src.matchAll(/^export \{ (\w+) \}/gm)].map((m) => m[1]),
  ];
  const dts = await read('react.d.ts');
  const declared = [...dts.matchAll(/^export declare (?:const|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...declared].sort(), [...exported].sort());
});

test('the core loads in a browser as-is: only relative .js imports, no Node built-ins', async () => {
  const files = (await readdir(new URL('src/', root))).filter((f) => f.endsWith('.js') && f !== 'react.js');
  assert.ok(files.includes('client.js') && files.includes('parser.js') && files.includes('backoff.js'));
  for (const file of files) {
    const text = await read(`src/${file}`);
    const specifiers = [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]/gm)].map((m) => m[1]);
    for (const s of specifiers) {
      assert.match(s, /^\.\.?\/[\w./-]+\.js$/, `${file} imports ${s}`);
    }
    assert.doesNotMatch(text, /\brequire\(|\bprocess\.|\bBuffer\b|node:/, file);
  }
});
