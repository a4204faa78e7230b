// What a frame of the stream means to the application: the gateway's JSON envelope read into
// the event handlers receive.

/** `text` as JSON, or `text` itself when it is not JSON. */
export function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** An application event: the gateway's envelope plus `type` and `id`. */
export function toEvent(ev) {
  const id = ev.hasId ? ev.lastEventId : null;
  let envelope;
  try {
    envelope = JSON.parse(ev.data);
  } catch {
    envelope = undefined;
  }
  if (envelope !== null && typeof envelope === 'object' && !Array.isArray(envelope) && 'target' in envelope) {
    const event = {
      type: ev.type,
      id,
      lastEventId: ev.lastEventId,
      channel: envelope.channel ?? null,
      target: envelope.target,
      data: envelope.data,
    };
    if (envelope.from !== undefined) event.from = envelope.from;
    return event;
  }
  // Not an envelope (another server, or a hand-written frame): pass the data through.
  return {
    type: ev.type,
    id,
    lastEventId: ev.lastEventId,
    channel: null,
    target: null,
    data: envelope === undefined ? ev.data : envelope,
  };
}
