// Incremental parser for the `text/event-stream` format, following the WHATWG HTML
// "event stream interpretation" rules (§9.2.6): UTF-8 decoding across chunk boundaries, one leading
// BOM ignored, CR / LF / CRLF line endings (a CR ending one chunk and an LF starting the next are a
// single line break), comments, and the `event`, `data`, `id` and `retry` fields.
//
// No dependencies and no bare imports: this file loads as-is in a browser or in Node.

const LF = 10;
const CR = 13;
const COLON = 58;
const SPACE = 32;
const DIGITS = /^[0-9]+$/;

/** Longest line, and longest event's data, in characters, unless the caller says otherwise. */
export const MAX_EVENT_LENGTH = 16 * 1024 * 1024;

/**
 * Creates a parser. Feed it the bytes (Uint8Array / ArrayBuffer) or text of one response body, in
 * whatever pieces they arrive; call `end()` when the body ends.
 *
 * @param {object} [options]
 * @param {(event: {type: string, data: string, lastEventId: string, hasId: boolean}) => void} [options.onEvent]
 *   called for each dispatched event. `type` is "message" when the stream named none;
 *   `lastEventId` is the stream's last event ID at dispatch (it persists across events);
 *   `hasId` tells whether this event's own block carried a (valid) `id:` field.
 * @param {(text: string) => void} [options.onComment] called for each comment line with the text
 *   after the ':' (one leading space removed), e.g. "heartbeat".
 * @param {(ms: number) => void} [options.onRetry] called for each valid `retry:` field.
 * @param {string} [options.lastEventId] the initial last event ID (a reconnecting client passes
 *   the id it resumes from, so events without `id:` keep reporting it).
 * @param {number} [options.maxEventLength] the longest line, and the longest data of one event,
 *   in characters (default `MAX_EVENT_LENGTH`). A body that goes past it makes `feed` throw a
 *   `RangeError`: a server that never ends a line or an event would otherwise grow them without
 *   bound. The parser is not to be fed again after that. Its `eventId` is the id of the event it
 *   cut off when that event's `id:` came before the long line, `null` otherwise.
 */
export function createParser(options = {}) {
  const { onEvent, onComment, onRetry } = options;
  const initialId = options.lastEventId == null ? '' : String(options.lastEventId);
  const maxLength = options.maxEventLength > 0 ? options.maxEventLength : MAX_EVENT_LENGTH;
  // The error names the id of the event it cut off, when that event's own `id:` came first (as
  // the gateway writes it): a client resumes after it rather than have it sent again.
  const tooLong = (what) =>
    Object.assign(new RangeError(`event stream ${what} longer than ${maxLength} characters`), {
      eventId: blockHasId ? idBuffer : null,
    });

  let decoder;
  let bomChecked;
  let pendingCR;
  let line;
  let data;
  let eventType;
  let idBuffer;
  let lastEventId;
  let blockHasId;
  let reconnectionTime;

  // The per-body state: a new body starts with a fresh decoder and an empty event, and keeps
  // the last event id (`resumeId`) as the id buffer.
  function startBody(resumeId) {
    decoder = new TextDecoder('utf-8', { ignoreBOM: true });
    bomChecked = false;
    pendingCR = false;
    line = '';
    data = '';
    eventType = '';
    idBuffer = resumeId;
    blockHasId = false;
  }

  function reset() {
    startBody(initialId);
    lastEventId = initialId;
    reconnectionTime = null;
  }
  reset();

  function dispatch() {
    // Step 1: the stream's last event ID takes the buffer's value, whether or not an event follows.
    lastEventId = idBuffer;
    const hasId = blockHasId;
    blockHasId = false;
    if (data === '') {
      eventType = '';
      return;
    }
    const value = data.charCodeAt(data.length - 1) === LF ? data.slice(0, -1) : data;
    const type = eventType === '' ? 'message' : eventType;
    data = '';
    eventType = '';
    if (onEvent) onEvent({ type, data: value, lastEventId, hasId });
  }

  function processLine(text) {
    if (text === '') {
      dispatch();
      return;
    }
    if (text.charCodeAt(0) === COLON) {
      if (onComment) onComment(text.charCodeAt(1) === SPACE ? text.slice(2) : text.slice(1));
      return;
    }
    const colon = text.indexOf(':');
    let field;
    let value;
    if (colon === -1) {
      field = text;
      value = '';
    } else {
      field = text.slice(0, colon);
      value = text.charCodeAt(colon + 1) === SPACE ? text.slice(colon + 2) : text.slice(colon + 1);
    }
    switch (field) {
      case 'event':
        eventType = value;
        break;
      case 'data':
        data += value + '\n';
        if (data.length > maxLength) throw tooLong('event data');
        break;
      case 'id':
        if (value.indexOf('\0') === -1) {
          idBuffer = value;
          blockHasId = true;
        }
        break;
      case 'retry':
        if (DIGITS.test(value)) {
          reconnectionTime = parseInt(value, 10);
          if (onRetry) onRetry(reconnectionTime);
        }
        break;
      default:
        // Unknown fields are ignored.
        break;
    }
  }

  function processText(text) {
    if (text === '') return;
    if (!bomChecked) {
      bomChecked = true;
      if (text.charCodeAt(0) === 0xfeff) {
        text = text.slice(1);
        if (text === '') return;
      }
    }
    let i = 0;
    if (pendingCR) {
      pendingCR = false;
      if (text.charCodeAt(0) === LF) i = 1;
    }
    const len = text.length;
    while (i < len) {
      let j = i;
      while (j < len) {
        const c = text.charCodeAt(j);
        if (c === LF || c === CR) break;
        j++;
      }
      if (j === len) {
        line += text.slice(i);
        if (line.length > maxLength) throw tooLong('line');
        return;
      }
      const complete = line === '' ? text.slice(i, j) : line + text.slice(i, j);
      if (complete.length > maxLength) throw tooLong('line');
      line = '';
      if (text.charCodeAt(j) === CR) {
        if (j + 1 === len) pendingCR = true;
        else if (text.charCodeAt(j + 1) === LF) j++;
      }
      i = j + 1;
      processLine(complete);
    }
  }

  return {
    /** Parses the next piece of the body: bytes (Uint8Array, ArrayBuffer) or already decoded text. */
    feed(chunk) {
      if (typeof chunk === 'string') processText(chunk);
      else processText(decoder.decode(chunk, { stream: true }));
    },
    /**
     * The body ended: an event whose blank line has not arrived is discarded, as is an
     * unterminated last line (spec: "If the file ends in the middle of an event ... the incomplete
     * event is not dispatched"). The parser can then be reused for a new body.
     */
    end() {
      decoder.decode();
      startBody(lastEventId);
    },
    /** The stream's last event ID: set at each dispatch (blank line) from the `id:` buffer. */
    get lastEventId() {
      return lastEventId;
    },
    /** The last valid `retry:` value of this body, or null. */
    get reconnectionTime() {
      return reconnectionTime;
    },
  };
}
