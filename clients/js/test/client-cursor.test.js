// The cursor and the frames that reach the application: a `reset` always reaches it (and moves
// the cursor to its id), whatever ids it saw before; an id the client cannot send back (empty,
// or not a header value) is never taken as the cursor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectedFrame, eventFrame, nextState } from './helpers.js';
import { connect, nextReconnect, pushAndFlush, setup } from './client-helpers.js';

test('a `missed` reset naming the newest event the client has reaches the app', async () => {
  const env = setup();
  const { client } = env;
  const { body } = await connect(env);
  const resets = [];
  client.on('reset', (e) => resets.push(e.data.reason));
  // The gateway delivered ep-12 live, then recovered ep-11 (lost in transit): it answers with
  // `reset` `missed` naming the stream's cursor, ep-12 (outbox.rs reset_missed / dispatcher.rs).
  await pushAndFlush(
    client,
    body,
    eventFrame({ id: 'ep-12', type: 'a', data: 12 }) + 'id: ep-12\nevent: reset\ndata: {"reason":"missed"}\n\n',
  );
  client.close();
  assert.deepEqual(resets, ['missed'], 'the app must be told to refetch (ep-11 was never delivered)');
});

test('`epoch_changed` naming an id the client saw (a history that started over) reaches the app, and new events reusing seen ids are delivered', async () => {
  const env = setup();
  const { clock, fetch, client } = env;
  const { body } = await connect(env);
  const resets = [];
  const got = [];
  client.on('reset', (e) => resets.push(e.data.reason));
  client.on('*', (e) => got.push(e.data));
  await pushAndFlush(client, body, eventFrame({ id: 'ep-9', type: 'a', data: 'old9' }) + eventFrame({ id: 'ep-10', type: 'a', data: 'old10' }));
  body.end();
  const { call } = await nextReconnect(clock, fetch);
  assert.equal(call.headers.get('last-event-id'), 'ep-10');
  // The stream lost its last write (ep-10): ep-10 is past the head ep-9. The gateway answers
  // reset epoch_changed with the head's id, then new events reuse ep-10.
  const b2 = call.open();
  b2.push(connectedFrame({ resumed: false }));
  await nextState(client, 'open');
  await pushAndFlush(client, b2, 'id: ep-9\nevent: reset\ndata: {"reason":"epoch_changed"}\n\n' + eventFrame({ id: 'ep-10', type: 'a', data: 'new10' }));
  client.close();
  assert.deepEqual(resets, ['epoch_changed']);
  assert.ok(got.includes('new10'), `the new ep-10 must be delivered, got ${JSON.stringify(got)}`);
});

test('an empty `id:` neither clears the cursor nor swallows the next such event', async () => {
  const env = setup();
  const { clock, fetch, client } = env;
  const { body } = await connect(env);
  const got = [];
  client.on('*', (e) => got.push(e.data));
  await pushAndFlush(
    client,
    body,
    eventFrame({ id: 'ep-5', type: 'a', data: 5 }) +
      'id:\nevent: a\ndata: {"channel":null,"target":"user","data":"x"}\n\n' +
      'id:\nevent: a\ndata: {"channel":null,"target":"user","data":"y"}\n\n',
  );
  body.end();
  const { call } = await nextReconnect(clock, fetch);
  client.close();
  assert.equal(call.headers.get('last-event-id'), 'ep-5', 'cursor kept');
  assert.deepEqual(got, [5, 'x', 'y', null], 'both id-less-by-empty-id events delivered');
});

test('an id that cannot be sent back as a header (not Latin-1) does not stall the client', async () => {
  const env = setup();
  const { clock, fetch, client } = env;
  const { body } = await connect(env);
  const got = [];
  client.on('*', (e) => got.push(e.data));
  // Browsers' fetch() rejects a header value outside ISO-8859-1 with a TypeError, as Node's does:
  // taken as the cursor, this id made every reconnect fail before its request was sent.
  await pushAndFlush(client, body, eventFrame({ id: 'ep-5', type: 'a', data: 5 }) + eventFrame({ id: 'ep-日', type: 'a', data: 6 }));
  body.end();
  const { call } = await nextReconnect(clock, fetch);
  client.close();
  assert.deepEqual(got, [5, 6, null], 'both events, then the marker');
  assert.equal(call.headers.get('last-event-id'), 'ep-5', 'the reconnect is sent, resuming from the last id it can carry');
});

test('a foreign cursor with a space inside it is kept and sent back', async () => {
  const env = setup({ lastEventId: 'order 42' });
  const { call } = await connect(env);
  env.client.close();
  assert.equal(call.headers.get('last-event-id'), 'order 42');
});
