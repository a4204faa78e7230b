// `npm pack` builds the package, and an install of the tarball into a scratch folder publishes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { mintToken } from '../src/index.js';
import { PUBLISH_KEY, SECRET, openStream, startHerald } from './support.js';

test('the packed tarball installs and publishes', async () => {
  const herald = await startHerald();
  const scratch = mkdtempSync(join(tmpdir(), 'herald-server-pack-'));
  try {
    const root = resolve(import.meta.dirname, '..');
    execFileSync('npm', ['pack', '--silent', '--pack-destination', scratch], { cwd: root });
    const tarball = readdirSync(scratch).find((f) => f.endsWith('.tgz'));
    assert.match(tarball, /^herald-server-0\.1\.0\.tgz$/);
    const listed = execFileSync('tar', ['-tzf', join(scratch, tarball)], { encoding: 'utf8' }).split('\n');
    assert.ok(listed.includes('package/index.d.ts') && listed.includes('package/src/index.js'), listed.join(' '));
    assert.ok(!listed.some((f) => f.startsWith('package/test/')), 'no tests in the package');
    const app = join(scratch, 'app');
    execFileSync('mkdir', ['-p', app]);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    execFileSync('npm', ['install', '--silent', '--no-audit', '--no-fund', '--prefer-offline', join(scratch, tarball)], { cwd: app });
    const s = await openStream(herald.url, await mintToken({ secret: SECRET, user: 'pk' }));
    assert.equal((await s.next()).event, 'connected');
    const script = `import { createPublisher } from 'herald-server';
      const ids = await createPublisher({ url: ${JSON.stringify(herald.url)}, key: ${JSON.stringify(PUBLISH_KEY)} })
        .publishToUser('pk', { type: 'installed', data: 1 });
      console.log(ids[0]);`;
    const id = execFileSync('node', ['--input-type=module', '-e', script], { cwd: app, encoding: 'utf8' }).trim();
    const event = await s.next();
    assert.deepEqual([event.event, event.id], ['installed', id]);
    s.close();
  } finally {
    herald.stop();
    rmSync(scratch, { recursive: true, force: true });
  }
});
