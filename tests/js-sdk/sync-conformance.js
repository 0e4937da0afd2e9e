'use strict'

// Drives the real @testground/sdk 0.1.2 sync client against a sync service chosen by
// SYNC_SERVICE_HOST / SYNC_SERVICE_PORT, and checks every reply the SDK exposes. Run by
// ../js_sdk.rs against `tg-nix sync-service`; by hand:
//
//   tg-nix sync-service --listen 127.0.0.1:5050 &
//   cd "$(mktemp -d)" && SYNC_SERVICE_HOST=127.0.0.1 SYNC_SERVICE_PORT=5050 TEST_PLAN=p TEST_CASE=c \
//     TEST_RUN=r1 TEST_INSTANCE_COUNT=2 TEST_GROUP_ID=g TEST_GROUP_INSTANCE_COUNT=2 \
//     TEST_SUBNET=127.1.0.0/16 TEST_OUTPUTS_PATH="$PWD" node /path/to/sync-conformance.js
//
// Run it from a scratch directory: the SDK's logger writes a file named `stdout` into the cwd.
// Each check prints "ok - ..."; the first failure prints "FAIL - ..." and exits 1. The process
// must end on its own after closing its clients: the SDK sends a Close frame, and if the server
// does not complete the closing handshake the socket stays open (ws gives up only after 30 s).

const { runtime, sync } = require('@testground/sdk')
// The SDK does not export a raw client, and its keyed client can only subscribe under
// `topics:`. The run_events key is reached with the SDK's own socket and pubsub modules.
const { createSocket } = require('@testground/sdk/src/sync/socket')
const { createPubSub } = require('@testground/sdk/src/sync/pubsub')

const STEP_MS = 5000
const QUIET_MS = 300
const CLOSE_MS = 5000

class CheckFailed extends Error {}

let checks = 0
function ok (what) {
  checks++
  console.log(`ok - ${what}`)
}

function fail (what) {
  throw new CheckFailed(what)
}

/** JSON text with object keys sorted: the service may reorder keys (the Go one sorted them). */
function canon (value) {
  return JSON.stringify(value, (key, v) => v && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map(k => [k, v[k]]))
    : v)
}

/** Deep equality up to object key order. */
function same (actual, expected, what) {
  const a = canon(actual)
  const e = canon(expected)
  if (a !== e) fail(`${what}: expected ${e}, got ${a}`)
  ok(`${what}: ${a.length > 120 ? a.slice(0, 117) + '...' : a}`)
}

/** Resolves with `promise`, or fails the check if it takes longer than `ms`. */
function within (promise, what, ms = STEP_MS) {
  let timer
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** True if `promise` is still pending after `ms`. */
async function stillPending (promise, ms = QUIET_MS) {
  const marker = Symbol('pending')
  const winner = await Promise.race([promise.then(() => null), new Promise(resolve => setTimeout(() => resolve(marker), ms))])
  return winner === marker
}

/** The next `n` values of a subscription. */
async function take (sub, n, what) {
  const out = []
  for (let i = 0; i < n; i++) {
    const next = await within(sub.wait.next(), `${what} (message ${i + 1} of ${n})`)
    if (next.done) fail(`${what}: subscription ended after ${i} messages`)
    out.push(next.value)
  }
  return out
}

function tcpSockets () {
  return process.getActiveResourcesInfo().filter(r => r === 'TCPSocketWrap' || r === 'TCPWrap').length
}

async function main () {
  for (const v of ['SYNC_SERVICE_HOST', 'SYNC_SERVICE_PORT', 'TEST_RUN', 'TEST_SUBNET']) {
    if (!process.env[v]) fail(`environment: ${v} must be set`)
  }

  // The runenv as a plan gets it: parsed from TEST_* by the SDK.
  const runenv = runtime.currentRunEnv()
  same([runenv.testRun, runenv.testInstanceCount, runenv.testSubnet.toString()],
    [process.env.TEST_RUN, Number(process.env.TEST_INSTANCE_COUNT), process.env.TEST_SUBNET],
    'runenv parsed from the environment (run, instances, subnet)')
  const group = runenv.testGroupId
  const ns = `run:${runenv.testRun}:plan:${runenv.testPlan}:case:${runenv.testCase}`

  // Two bound clients, as two instances of a run would have.
  const a = await within(sync.newBoundClient(runenv), 'client A connects')
  const b = await within(sync.newBoundClient(runenv), 'client B connects')
  ok('two bound clients connected')

  // signalEntry: the new count, from 1, across clients.
  same(await within(a.signalEntry('entered'), 'signalEntry A'), 1, 'signalEntry returns 1 for the first entry')
  same(await within(b.signalEntry('entered'), 'signalEntry B'), 2, 'signalEntry returns 2 for the second entry (other client)')
  same(await within(a.signalEntry('other-state'), 'signalEntry other'), 1, 'states count separately')

  // barrier: immediate when reached; 0 is resolved by the SDK itself.
  let bar = await within(a.barrier('entered', 2), 'barrier request')
  await within(bar.wait, 'barrier on a reached target (2 of 2)')
  ok('barrier on a reached target resolves')
  bar = await within(a.barrier('entered', 1), 'barrier request')
  await within(bar.wait, 'barrier below the count (1 of 2)')
  ok('barrier below the current count resolves')
  bar = await a.barrier('never-signalled', 0)
  await within(bar.wait, 'barrier with target 0')
  ok('barrier with target 0 resolves (locally, in the SDK)')

  // barrier: waits until later signals reach the target, released by the other client.
  const gate = await within(a.barrier('gate', 2), 'barrier request')
  if (!(await stillPending(gate.wait))) fail('barrier(gate, 2) resolved before any signal')
  same(await within(b.signalEntry('gate'), 'signalEntry gate'), 1, 'first signal on gate')
  if (!(await stillPending(gate.wait))) fail('barrier(gate, 2) resolved at count 1')
  ok('barrier(gate, 2) still pending at count 1')
  same(await within(b.signalEntry('gate'), 'signalEntry gate'), 2, 'second signal on gate')
  await within(gate.wait, 'barrier(gate, 2) released by the second signal')
  ok('barrier(gate, 2) released by the second signal')
  // Two waiters on one state, one on each client.
  const w1 = await a.barrier('pair', 1)
  const w2 = await b.barrier('pair', 1)
  await a.signalEntry('pair')
  await within(Promise.all([w1.wait, w2.wait]), 'two waiters released by one signal')
  ok('one signal releases waiters on both clients')

  // publish: the new log length, from 1.
  const payloads = [
    { n: 1, kind: 'object' },
    'a string',
    42,
    [1, 'two', { three: 3 }],
    { n: 5, text: 'üñí €  <a href="x">&amp;</a> "quotes" \\ \n', nested: { ok: true, none: null, f: 1.5 } }
  ]
  for (let i = 0; i < payloads.length; i++) {
    same(await within(a.publish('log', payloads[i]), `publish #${i + 1}`), i + 1, `publish #${i + 1} returns seq ${i + 1}`)
  }
  same(await within(b.publish('log', { n: 6, from: 'B' }), 'publish #6'), 6, 'publish from the other client continues the sequence')

  // subscribe: replay from the first message, in order, then live messages.
  const sub = await within(b.subscribe('log'), 'subscribe request')
  same(await take(sub, 6, 'replay'), [...payloads, { n: 6, from: 'B' }], 'subscribe replays the log in publish order, payloads intact')
  const live = take(sub, 1, 'live message')
  if (!(await stillPending(live))) fail('subscription delivered a message nobody published')
  same(await within(a.publish('log', { n: 7, live: true }), 'publish #7'), 7, 'live publish returns seq 7')
  same(await live, [{ n: 7, live: true }], 'subscriber receives the live message')
  // A second subscriber on the same connection as the publisher gets the full log too.
  const subA = await a.subscribe('log')
  same((await take(subA, 7, 'replay to A')).map(p => p && p.n), [1, undefined, undefined, undefined, 5, 6, 7],
    'a second subscriber replays all 7 messages')
  // JS cancel only drops the local listener; the connection must keep working.
  sub.cancel()
  subA.cancel()
  same(await within(a.publish('log', { n: 8 }), 'publish after cancel'), 8, 'publish after a cancelled subscription')

  // Sugar from the SDK.
  const ps = await within(a.publishSubscribe('sugar', { hello: 'world' }), 'publishSubscribe')
  same(ps.seq, 1, 'publishSubscribe returns seq 1')
  same(await take(ps.sub, 1, 'publishSubscribe replay'), [{ hello: 'world' }], 'publishSubscribe sees its own message')
  ps.sub.cancel()
  const both = await within(Promise.all([a.signalAndWait('both', 2), b.signalAndWait('both', 2)]), 'signalAndWait on both clients')
  same(both.slice().sort(), [1, 2], 'signalAndWait(both, 2) on both clients returns seqs 1 and 2 and releases both')
  await b.signalEntry('published')
  same(await within(a.publishAndWait('sugar', { second: true }, 'published', 1), 'publishAndWait'), 2,
    'publishAndWait returns seq 2 and passes its barrier')

  // Events: with A bound as the signal emitter, record* publish to run_events. A third client
  // made from the SDK's socket and pubsub modules reads them back.
  runenv.setSignalEmitter(a)
  await within(runenv.recordStart(), 'recordStart')
  await within(runenv.recordMessage('hello from the js sdk'), 'recordMessage')
  await within(runenv.recordSuccess(), 'recordSuccess')
  const rawSocket = await within(createSocket(runenv.logger), 'raw client connects')
  const raw = createPubSub(runenv.logger, rawSocket)
  const events = await raw.subscribe(`${ns}:run_events`)
  const [start, message, success] = await take(events, 3, 'run_events')
  same(Object.keys(start), ['start_event'], 'first event is a start_event')
  const env = start.start_event.runenv
  same([env.plan, env.case, env.run, env.group, env.instances, env.network],
    [runenv.testPlan, runenv.testCase, runenv.testRun, group, runenv.testInstanceCount, runenv.testSubnet.toString()],
    'start_event.runenv carries the run parameters')
  same(message, { message_event: { message: 'hello from the js sdk' } }, 'second event is the message_event')
  same(success, { success_event: { group } }, 'third event is success_event {group}')
  // The same three through the raw pubsub's publish: seq continues on run_events.
  same(await within(raw.publish(`${ns}:run_events`, { failure_event: { group, error: 'not really' } }), 'raw publish'), 4,
    'a fourth event gets seq 4 on run_events')
  same(await take(events, 1, 'run_events live'), [{ failure_event: { group, error: 'not really' } }], 'live event reaches the subscriber')
  events.cancel()

  // Close every client; each sends a Close frame and must see its TCP connection end promptly.
  const before = tcpSockets()
  if (before < 3) fail(`expected 3 open sync connections before closing, saw ${before}`)
  a.close()
  b.close()
  rawSocket.close()
  const closedBy = Date.now() + CLOSE_MS
  while (tcpSockets() > 0) {
    if (Date.now() > closedBy) {
      fail(`${tcpSockets()} sync connection(s) still open ${CLOSE_MS} ms after close(): the server did not complete the close handshake`)
    }
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  ok('all three clients closed; the server completed each close handshake')
}

main().then(() => {
  console.log(`PASS - ${checks} checks`)
  // Leave exiting to Node: anything still holding the event loop is a hang. This timer does not
  // hold it (unref) and only fires if something else does.
  setTimeout(() => {
    console.error(`FAIL - still running 10 s after the last check; open: ${process.getActiveResourcesInfo().join(', ')}`)
    process.exit(3)
  }, 10000).unref()
}, (err) => {
  if (err instanceof CheckFailed) {
    console.error(`FAIL - ${err.message}`)
  } else {
    console.error('FAIL - unexpected error:', err)
  }
  process.exit(1)
})
