import { test, describe } from 'node:test';
import assert from 'node:assert/strict';

import { createParser } from '../src/parser.js';
import { seededRandom } from './helpers.js';

const enc = new TextEncoder();

/** Parses `chunks` (strings are UTF-8 encoded, byte arrays fed as they are) and records everything. */
function parse(chunks, options = {}) {
  const events = [];
  const comments = [];
  const retries = [];
  const parser = createParser({
    ...options,
    onEvent: (e) => events.push(e),
    onComment: (c) => comments.push(c),
    onRetry: (ms) => retries.push(ms),
  });
  for (const chunk of chunks) parser.feed(typeof chunk === 'string' ? enc.encode(chunk) : chunk);
  parser.end();
  return { events, comments, retries, lastEventId: parser.lastEventId };
}

const ev = (type, data, lastEventId = '', hasId = false) => ({ type, data, lastEventId, hasId });

describe('event stream interpretation', () => {
  test('dispatches on a blank line, with "message" as the default type', () => {
    const { events } = parse(['data: hello\n\nevent: booking_update\ndata: {"a":1}\n\n']);
    assert.deepEqual(events, [ev('message', 'hello'), ev('booking_update', '{"a":1}')]);
  });

  test('joins multi-line data with \\n and removes only the final newline', () => {
    const { events } = parse(['data: {\ndata:   "a": 1\ndata: }\n\ndata\ndata\n\ndata:\n\n']);
    assert.deepEqual(events.map((e) => e.data), ['{\n  "a": 1\n}', '\n', '']);
  });

  test('strips exactly one space after the colon', () => {
    const { events } = parse(['data:x\n\ndata: x\n\ndata:  x\n\ndata:\tx\n\n']);
    assert.deepEqual(events.map((e) => e.data), ['x', 'x', ' x', '\tx']);
  });

  test('a line without a colon is a field name with an empty value', () => {
    // "event" alone resets the type to "" (message); "data" alone appends an empty line.
    const { events } = parse(['event: custom\nevent\ndata\n\n']);
    assert.deepEqual(events, [ev('message', '')]);
  });

  test('does not dispatch when the data buffer is empty, and the type does not leak', () => {
    const { events } = parse(['event: lonely\n\ndata: after\n\nevent: x\nid: 7\n\n']);
    assert.deepEqual(events, [ev('message', 'after')]);
  });

  test('an id-only block still moves the last event id', () => {
    const { events, lastEventId } = parse(['id: 7\n\n']);
    assert.deepEqual(events, []);
    assert.equal(lastEventId, '7');
  });

  test('the last event id persists across events; hasId tells which block carried one', () => {
    const { events } = parse([
      'id: e-1\ndata: a\n\n',
      'data: b\n\n',
      'id: e-2\nevent: t\ndata: c\n\n',
      'id\ndata: d\n\n',
      'data: e\n\n',
    ]);
    assert.deepEqual(events, [
      ev('message', 'a', 'e-1', true),
      ev('message', 'b', 'e-1', false),
      ev('t', 'c', 'e-2', true),
      ev('message', 'd', '', true), // "id" with no value resets it to ""
      ev('message', 'e', '', false),
    ]);
  });

  test('an id containing NUL is ignored', () => {
    const { events, lastEventId } = parse(['id: good\ndata: a\n\nid: b\0d\ndata: b\n\n']);
    assert.deepEqual(events, [ev('message', 'a', 'good', true), ev('message', 'b', 'good', false)]);
    assert.equal(lastEventId, 'good');
  });

  test('NUL is allowed in data and in event names', () => {
    const { events } = parse(['event: a\0b\ndata: x\0y\n\n']);
    assert.deepEqual(events, [ev('a\0b', 'x\0y')]);
  });

  test('the initial last event id (resume) is reported until the stream sets another', () => {
    const { events } = parse(['event: connected\ndata: {}\n\nid: 5\ndata: x\n\n'], { lastEventId: '4' });
    assert.deepEqual(events, [ev('connected', '{}', '4', false), ev('message', 'x', '5', true)]);
  });

  test('retry accepts ASCII digits only', () => {
    const { retries, events } = parse([
      'retry: 3000\nretry:250\nretry: 10a\nretry: -1\nretry: 1.5\nretry: \nretry\nretry:  7\nretry: ٣\nretry: 0042\n\n',
    ]);
    assert.deepEqual(retries, [3000, 250, 42]);
    assert.deepEqual(events, []);
  });

  test('comments are reported and never dispatch', () => {
    const { comments, events } = parse([': heartbeat\n\n:no-space\n:\n:  two\ndata: x\n\n']);
    assert.deepEqual(comments, ['heartbeat', 'no-space', '', ' two']);
    assert.deepEqual(events, [ev('message', 'x')]);
  });

  test('unknown fields are ignored', () => {
    const { events } = parse(['foo: bar\nData: no\nEVENT: no\ndata: yes\n\n']);
    assert.deepEqual(events, [ev('message', 'yes')]);
  });

  test('field values keep their colons', () => {
    const { events } = parse(['event: a:b\ndata: http://x:1/y\n\n']);
    assert.deepEqual(events, [ev('a:b', 'http://x:1/y')]);
  });

  test('CR, LF and CRLF all end lines', () => {
    const { events } = parse(['data: a\r\rdata: b\n\ndata: c\r\n\r\ndata: d\r\ndata: e\rdata: f\n\r\n']);
    assert.deepEqual(events.map((e) => e.data), ['a', 'b', 'c', 'd\ne\nf']);
  });

  test('a CR ending one chunk and an LF starting the next are one line break', () => {
    const { events } = parse(['data: a\r', '\ndata: b\r', '\n\r', '\n']);
    assert.deepEqual(events, [ev('message', 'a\nb')]);
  });

  test('a CR at the end of a chunk followed by another line is still a line break', () => {
    const { events } = parse(['data: a\r', 'data: b\r', '\r']);
    assert.deepEqual(events, [ev('message', 'a\nb')]);
  });

  test('a pending CR survives a chunk that decodes to nothing', () => {
    // "€" is E2 82 AC: its first byte alone decodes to "", the LF must still be swallowed.
    const euro = enc.encode('€');
    const { events } = parse([
      'data: a\r',
      new Uint8Array(0),
      '\ndata: ',
      euro.slice(0, 1),
      euro.slice(1),
      '\r',
      '\n\r\n',
    ]);
    assert.deepEqual(events, [ev('message', 'a\n€')]);
  });

  test('a leading BOM is stripped once, even split across chunks', () => {
    const bytes = enc.encode('\uFEFFdata: a\n\n\uFEFFdata: b\n\ndata: c\n\n');
    assert.deepEqual(bytes.slice(0, 3), new Uint8Array([0xef, 0xbb, 0xbf]));
    const whole = parse([bytes]);
    // The second BOM is part of a field name ("\uFEFFdata"), which is unknown: ignored.
    assert.deepEqual(whole.events.map((e) => e.data), ['a', 'c']);
    const split = parse([bytes.slice(0, 1), bytes.slice(1, 2), bytes.slice(2, 3), bytes.slice(3)]);
    assert.deepEqual(split.events, whole.events);
  });

  test('a BOM that is not first is not stripped', () => {
    const { events } = parse(['data: \uFEFFx\n\n']);
    assert.deepEqual(events, [ev('message', '\uFEFFx')]);
  });

  test('multi-byte characters split across chunks decode correctly', () => {
    const bytes = enc.encode('data: héllo €uro 🚀 done\n\n');
    const chunks = [...bytes].map((b) => new Uint8Array([b]));
    assert.deepEqual(parse(chunks).events, [ev('message', 'héllo €uro 🚀 done')]);
  });

  test('invalid UTF-8 becomes U+FFFD', () => {
    const bytes = new Uint8Array([...enc.encode('data: a'), 0xff, 0xc3, ...enc.encode('b\n\n')]);
    assert.deepEqual(parse([bytes]).events, [ev('message', 'a\uFFFD\uFFFDb')]);
  });

  test('an unfinished event at the end of the body is discarded', () => {
    const { events, lastEventId } = parse(['data: a\n\nid: 9\ndata: b\n', 'data: c']);
    assert.deepEqual(events, [ev('message', 'a')]);
    assert.equal(lastEventId, '', 'the id of an undispatched block never becomes the last event id');
  });

  test('the parser can be reused after end(), keeping the last event id', () => {
    const seen = [];
    const parser = createParser({ onEvent: (e) => seen.push(e) });
    parser.feed('id: 1\ndata: a\n\ndata: partial');
    parser.end();
    parser.feed('\uFEFFdata: b\n\n');
    assert.deepEqual(seen, [ev('message', 'a', '1', true), ev('message', 'b', '1', false)]);
  });

  test('string input is accepted as well as bytes', () => {
    const seen = [];
    const parser = createParser({ onEvent: (e) => seen.push(e) });
    parser.feed('data: a\r');
    parser.feed('\ndata: b\n');
    parser.feed('\n');
    assert.deepEqual(seen, [ev('message', 'a\nb')]);
  });

  test('reconnectionTime reports the last valid retry', () => {
    const parser = createParser();
    assert.equal(parser.reconnectionTime, null);
    parser.feed('retry: 1500\nretry: x\n\n');
    assert.equal(parser.reconnectionTime, 1500);
  });

  test('handles a long line arriving in many pieces', () => {
    const payload = 'x'.repeat(100_000);
    const text = `data: ${payload}\n\n`;
    const chunks = [];
    for (let i = 0; i < text.length; i += 997) chunks.push(text.slice(i, i + 997));
    assert.deepEqual(parse(chunks).events, [ev('message', payload)]);
  });
});

describe('chunking does not change the result', () => {
  // A stream exercising everything: BOM, every line ending, a CRLF at many positions, multi-byte
  // characters, comments, retry, ids (with NUL), multi-line data, empty blocks, a trailing
  // unfinished event.
  const STREAM =
    '\uFEFF: hello\r\n' +
    'retry: 3000\r\n' +
    'event: connected\r\n' +
    'data: {"connectionId":"c-1","resumed":false}\r\n' +
    '\r\n' +
    'id: e-1\n' +
    'event: booking_update\n' +
    'data: {"channel":"booking:42","data":"café ☕"}\n' +
    '\n' +
    ': heartbeat\r' +
    '\r' +
    'data: {\r' +
    'data:  "emoji": "🚀🎉"\r' +
    'data: }\r' +
    '\r' +
    'id: bad\0id\r\n' +
    'event: notification\r\n' +
    'data\r\n' +
    'data:x\r\n' +
    '\r\n' +
    'retry: 12x\n' +
    'event: lonely\n' +
    '\n' +
    'id: e-2\r\n' +
    'data: last\r\n' +
    '\r\n' +
    'retry: 500\n' +
    'data: never dispatched';
  const BYTES = enc.encode(STREAM);

  const EXPECTED = {
    events: [
      ev('connected', '{"connectionId":"c-1","resumed":false}'),
      ev('booking_update', '{"channel":"booking:42","data":"café ☕"}', 'e-1', true),
      ev('message', '{\n "emoji": "🚀🎉"\n}', 'e-1', false),
      ev('notification', '\nx', 'e-1', false),
      ev('message', 'last', 'e-2', true),
    ],
    comments: ['hello', 'heartbeat'],
    retries: [3000, 500],
    lastEventId: 'e-2',
  };

  test('the whole stream at once gives the expected result', () => {
    assert.deepEqual(parse([BYTES]), EXPECTED);
  });

  test('split at every byte boundary', () => {
    for (let i = 0; i <= BYTES.length; i++) {
      const got = parse([BYTES.slice(0, i), BYTES.slice(i)]);
      assert.deepEqual(got, EXPECTED, `split at byte ${i}`);
    }
  });

  test('split at every pair of byte boundaries around each CR', () => {
    // Three-way splits isolating every CR (and the byte after it) in its own chunk.
    for (let i = 0; i < BYTES.length; i++) {
      if (BYTES[i] !== 13) continue;
      for (const [a, b] of [[i, i + 1], [i, i + 2], [i + 1, i + 2]]) {
        const got = parse([BYTES.slice(0, a), BYTES.slice(a, b), BYTES.slice(b)]);
        assert.deepEqual(got, EXPECTED, `split at ${a} and ${b}`);
      }
    }
  });

  test('one byte at a time', () => {
    const chunks = [...BYTES].map((b) => new Uint8Array([b]));
    assert.deepEqual(parse(chunks), EXPECTED);
  });

  test('one code point at a time, as bytes and as strings', () => {
    assert.deepEqual(parse([...STREAM].map((c) => enc.encode(c))), EXPECTED);
    const events = [];
    const parser = createParser({ onEvent: (e) => events.push(e) });
    for (const c of STREAM) parser.feed(c);
    parser.end();
    assert.deepEqual(events, EXPECTED.events);
  });

  test('random chunkings (seeded)', () => {
    const random = seededRandom(42);
    for (let round = 0; round < 300; round++) {
      const chunks = [];
      let i = 0;
      while (i < BYTES.length) {
        const n = 1 + Math.floor(random() * 12);
        chunks.push(BYTES.slice(i, i + n));
        i += n;
      }
      assert.deepEqual(parse(chunks), EXPECTED, `round ${round}`);
    }
  });
});

describe('bounds', () => {
  test('a line longer than maxEventLength throws instead of growing without end', () => {
    const parser = createParser({ maxEventLength: 100, onEvent: () => {} });
    parser.feed(enc.encode('data: ' + 'x'.repeat(50)));
    assert.throws(() => parser.feed(enc.encode('x'.repeat(60))), RangeError);
    const whole = createParser({ maxEventLength: 100, onEvent: () => {} });
    assert.throws(() => whole.feed(enc.encode('data: ' + 'x'.repeat(200) + '\n')), RangeError);
  });

  test("an event's data longer than maxEventLength throws, however short its lines", () => {
    const parser = createParser({ maxEventLength: 100, onEvent: () => {} });
    assert.throws(() => parser.feed(enc.encode('data: 0123456789\n'.repeat(20))), RangeError);
  });

  test('events up to the bound are dispatched', () => {
    const { events } = parse(['data: ' + 'x'.repeat(93) + '\n\n'], { maxEventLength: 100 });
    assert.equal(events.length, 1);
  });
});
