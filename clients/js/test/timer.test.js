import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Debounce, Timer } from '../src/timer.js';
import { FakeClock } from './helpers.js';

test('a Timer holds one pending run: set() replaces it, clear() drops it', () => {
  const clock = new FakeClock();
  const timer = new Timer(clock);
  const ran = [];
  timer.set(100, () => ran.push('first'));
  timer.set(100, () => ran.push('second'));
  assert.equal(timer.pending, true);
  assert.equal(clock.pending().length, 1);
  clock.advance(100);
  assert.deepEqual(ran, ['second']);
  assert.equal(timer.pending, false);
  timer.set(100, () => ran.push('third'));
  timer.clear();
  clock.advance(1000);
  assert.deepEqual(ran, ['second']);
});

test('a Debounce runs after a quiet moment, and at most maxMs after the first call of a burst', () => {
  const clock = new FakeClock();
  const debounce = new Debounce(clock, 50, 120);
  const ran = [];
  debounce.call(() => ran.push(1));
  clock.advance(40);
  debounce.call(() => ran.push(2));
  clock.advance(40);
  debounce.call(() => ran.push(3)); // 80 after the first: 40 left before the cap
  clock.advance(39);
  assert.deepEqual(ran, []);
  clock.advance(1);
  assert.deepEqual(ran, [3]);
  assert.equal(debounce.pending, false);
  debounce.call(() => ran.push(4)); // a new burst
  clock.advance(49);
  assert.equal(debounce.pending, true);
  debounce.clear();
  clock.advance(1000);
  assert.deepEqual(ran, [3]);
});
