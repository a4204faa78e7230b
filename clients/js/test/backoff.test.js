import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { Backoff, backoffCeiling, fullJitter, DEFAULT_BASE_MS, DEFAULT_CAP_MS } from '../src/backoff.js';
import { FakeClock, seededRandom } from './helpers.js';

describe('backoffCeiling', () => {
  test('doubles per attempt from the base until the cap', () => {
    const got = [0, 1, 2, 3, 4, 5, 6].map((n) => backoffCeiling(n, 1000, 30000));
    assert.deepEqual(got, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  test('a server base larger than the cap is honoured', () => {
    assert.equal(backoffCeiling(0, 60000, 30000), 60000);
    assert.equal(backoffCeiling(3, 60000, 30000), 60000);
  });

  test('huge attempt counts stay finite', () => {
    assert.equal(backoffCeiling(10_000, 1000, 30000), 30000);
    assert.equal(backoffCeiling(Infinity, 1000, 30000), 30000);
  });

  test('defaults', () => {
    assert.equal(DEFAULT_BASE_MS, 1000);
    assert.equal(DEFAULT_CAP_MS, 30000);
    assert.equal(backoffCeiling(0), 1000);
  });
});

describe('fullJitter', () => {
  test('spans the whole window [0, ceiling]', () => {
    assert.equal(fullJitter(0, { base: 1000, random: () => 0 }), 0);
    assert.equal(fullJitter(0, { base: 1000, random: () => 0.5 }), 500);
    assert.equal(fullJitter(0, { base: 1000, random: () => 0.9999999 }), 1000);
    assert.equal(fullJitter(3, { base: 1000, random: () => 0.25 }), 2000);
    assert.equal(fullJitter(9, { base: 1000, cap: 30000, random: () => 0.5 }), 15000);
  });

  test('uses the server retry as the base', () => {
    assert.equal(fullJitter(0, { base: 3000, random: () => 0.5 }), 1500);
    assert.equal(fullJitter(2, { base: 3000, random: () => 0.5 }), 6000);
  });

  test('out-of-range random values are clamped', () => {
    assert.equal(fullJitter(0, { base: 1000, random: () => 1.5 }), 1000);
    assert.equal(fullJitter(0, { base: 1000, random: () => -1 }), 0);
    assert.equal(fullJitter(0, { base: 1000, random: () => NaN }), 0);
  });

  test('is spread over the window, not clustered at its top (seeded)', () => {
    const random = seededRandom(7);
    const samples = Array.from({ length: 4000 }, () => fullJitter(2, { base: 1000, random }));
    assert.ok(samples.every((d) => Number.isInteger(d) && d >= 0 && d <= 4000));
    const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
    assert.ok(mean > 1800 && mean < 2200, `mean ${mean} should be near 2000`);
    const low = samples.filter((d) => d < 1000).length / samples.length;
    assert.ok(low > 0.2 && low < 0.3, `share below a quarter of the window: ${low}`);
  });
});

describe('Backoff', () => {
  test('counts attempts and resets', () => {
    const b = new Backoff({ base: 1000, cap: 8000, random: () => 1 });
    assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [1000, 2000, 4000, 8000, 8000]);
    assert.equal(b.attempt, 5);
    b.reset();
    assert.equal(b.attempt, 0);
    assert.equal(b.next(), 1000);
  });

  test('next(serverBase) replaces the default base', () => {
    const b = new Backoff({ base: 1000, cap: 30000, random: () => 0.5 });
    assert.equal(b.ceiling(3000), 3000);
    assert.equal(b.next(3000), 1500);
    assert.equal(b.next(3000), 3000);
    assert.equal(b.next(), 2000); // attempt 2 with the default base
  });

  test('wait() resolves on the injected clock, not before', async () => {
    const clock = new FakeClock();
    const b = new Backoff({ clock });
    let done = false;
    const p = b.wait(1500).then(() => {
      done = true;
    });
    const timer = await clock.waitForTimer();
    assert.equal(timer.delay, 1500);
    clock.advance(1499);
    await Promise.resolve();
    assert.equal(done, false);
    clock.advance(1);
    await p;
    assert.equal(done, true);
  });

  test('wait() rejects and clears its timer when aborted', async () => {
    const clock = new FakeClock();
    const b = new Backoff({ clock });
    const ac = new AbortController();
    const p = b.wait(1000, ac.signal);
    assert.equal(clock.pending().length, 1);
    ac.abort();
    await assert.rejects(p, { name: 'AbortError' });
    assert.equal(clock.pending().length, 0);
    await assert.rejects(b.wait(1000, ac.signal), { name: 'AbortError' });
  });
});
