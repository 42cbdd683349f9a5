// A real JS Hypercore 11 / Corestore 7 peer for the interoperability tests and benchmarks,
// over TCP on 127.0.0.1. Every mode takes a directory and one JSON argument, prints one JSON
// line when it is ready or done, and sends errors to stderr with exit code 1.
//
//   node peer.js write DIR '{"count":N,"size":S,"cores":C,"encryptionKey":HEX}'
//       A Corestore in DIR with C cores (default 1) named "core 0".., each with N blocks of S
//       bytes (block i starts with "block i "), encrypted when a key is given. Listens, or
//       with "connect":PORT dials, and replicates the whole store on every connection.
//       Prints {"keys":[hex..],"key":first,"port","length"}. Then each stdin line is a
//       command, answered with one JSON line:
//         append N [CORE]     appends N more blocks          -> {"length","fork"}
//         truncate L [CORE]   truncates to L (a new fork)    -> {"length","fork"}
//         ext TEXT            with "extension":NAME, sends TEXT on the first core's
//                             channels (hypercore's default buffer encoding)
//       With "extension":NAME, each message of that extension prints
//       {"extension","message"}.
//       It stops when stdin closes.
//
//   node peer.js read DIR '{"keys":[hex..],"port":P,"count":N,"sparse":[i..],
//                          "encryptionKey":HEX,"listen":true}'
//       Follows the keys (one Corestore, one stream) from 127.0.0.1:P, or with "listen"
//       prints {"port"} first and takes one connection. Without "sparse" it waits until every
//       core holds N blocks and checks each one's prefix; with "sparse" it gets only those
//       blocks of the first core. Prints {"length","bytes","ms","downloadMs","fork"} (the
//       first core's length and fork, bytes over every core, the time from the connection to
//       the end of the checks and to the end of the download), then waits for stdin to close if it is
//       "follow": true, printing {"length"} for each new length of the first core.
//   node peer.js append DIR '{"count":N,"batch":B,"size":S}'
//       Appends N blocks of S bytes (default 1024) to a new core of a Corestore in DIR, B at a
//       time (default 1: each append awaited before the next). Prints {"length","ms"}: the
//       time of the appends alone.
'use strict'

const net = require('net')
const Corestore = require('corestore')

function block (i, size) {
  const head = Buffer.from(`block ${i} `)
  const out = Buffer.alloc(Math.max(size, head.length), 'x')
  head.copy(out)
  return out
}

function say (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function encryption (opts) {
  return opts.encryptionKey ? { key: Buffer.from(opts.encryptionKey, 'hex') } : null
}

function onLines (fn) {
  let lines = ''
  let chain = Promise.resolve()
  process.stdin.on('data', (chunk) => {
    lines += chunk
    let nl
    while ((nl = lines.indexOf('\n')) !== -1) {
      const line = lines.slice(0, nl).trim()
      lines = lines.slice(nl + 1)
      chain = chain.then(() => fn(line.split(' '))).catch((err) => {
        console.error(err && err.stack ? err.stack : String(err))
        process.exit(1)
      })
    }
  })
}

function replicateOn (store, socket, initiator) {
  const stream = store.replicate(initiator)
  socket.pipe(stream).pipe(socket)
  const drop = () => { socket.destroy(); stream.destroy() }
  socket.on('error', drop)
  stream.on('error', drop)
  socket.on('close', drop)
}

async function write (dir, opts) {
  const store = new Corestore(dir)
  const size = opts.size || 1024
  const cores = []
  for (let c = 0; c < (opts.cores || 1); c++) {
    const core = store.get({ name: `core ${c}`, encryption: encryption(opts) })
    await core.ready()
    const batch = []
    for (let i = core.length; i < opts.count; i++) {
      batch.push(block(i, size))
      if (batch.length === 1000) await core.append(batch.splice(0))
    }
    if (batch.length) await core.append(batch)
    cores.push(core)
  }
  const ext = opts.extension
    ? cores[0].registerExtension(opts.extension, {
      onmessage: (m) => say({ extension: opts.extension, message: m.toString() })
    })
    : null
  let port = opts.connect
  let server = null
  if (opts.connect) {
    replicateOn(store, net.connect(opts.connect, '127.0.0.1'), true)
  } else {
    server = net.createServer((socket) => replicateOn(store, socket, false))
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    port = server.address().port
  }
  const keys = cores.map((c) => c.key.toString('hex'))
  say({ keys, key: keys[0], port, length: cores[0].length })
  onLines(async ([cmd, n, c]) => {
    const core = cores[Number(c || 0)]
    if (cmd === 'append') {
      const more = []
      for (let i = 0; i < Number(n); i++) more.push(block(core.length + i, size))
      await core.append(more)
    } else if (cmd === 'truncate') {
      await core.truncate(Number(n))
    } else if (cmd === 'ext' && ext) {
      ext.broadcast(Buffer.from(n))
      return
    } else {
      return
    }
    say({ length: core.length, fork: core.fork })
  })
  process.stdin.on('end', async () => {
    if (server) server.close()
    await store.close()
    process.exit(0)
  })
}

async function read (dir, opts) {
  const store = new Corestore(dir)
  const cores = []
  for (const key of opts.keys) {
    const core = store.get({ key: Buffer.from(key, 'hex'), encryption: encryption(opts) })
    await core.ready()
    cores.push(core)
  }
  const start = process.hrtime.bigint()
  if (opts.listen) {
    const server = net.createServer((socket) => { replicateOn(store, socket, false); server.close() })
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
    say({ port: server.address().port })
  } else {
    replicateOn(store, net.connect(opts.port, '127.0.0.1'), true)
  }
  let bytes = 0
  const check = async (core, i) => {
    const value = await core.get(i)
    const head = Buffer.from(`block ${i} `)
    if (!value.subarray(0, head.length).equals(head)) {
      throw new Error(`block ${i} is not the one written`)
    }
    bytes += value.length
  }
  let downloadMs = 0
  if (opts.sparse) {
    for (const i of opts.sparse) await check(cores[0], i)
  } else {
    await Promise.all(cores.map((core) => core.download({ start: 0, end: opts.count }).done()))
    downloadMs = Number(process.hrtime.bigint() - start) / 1e6
    for (const core of cores) {
      for (let i = 0; i < opts.count; i++) await check(core, i)
    }
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  say({ length: cores[0].length, bytes, ms, downloadMs, fork: cores[0].fork })
  if (opts.follow) {
    cores[0].on('append', () => say({ length: cores[0].length }))
    cores[0].on('truncate', () => say({ length: cores[0].length, fork: cores[0].fork }))
    const ended = new Promise((resolve) => process.stdin.on('end', resolve))
    process.stdin.resume()
    await ended
  }
  await store.close()
  process.exit(0)
}

async function append (dir, opts) {
  const store = new Corestore(dir)
  const core = store.get({ name: 'bench' })
  await core.ready()
  const size = opts.size || 1024
  const batch = opts.batch || 1
  const blocks = []
  for (let i = 0; i < opts.count; i++) blocks.push(block(i, size))
  const start = process.hrtime.bigint()
  for (let i = 0; i < opts.count; i += batch) {
    await core.append(batch === 1 ? blocks[i] : blocks.slice(i, i + batch))
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  say({ length: core.length, ms })
  await store.close()
  process.exit(0)
}

const [mode, dir, json] = process.argv.slice(2)
const opts = JSON.parse(json || '{}')
const modes = { write, read, append }
const run = modes[mode]
  ? modes[mode](dir, opts)
  : Promise.reject(new Error(`unknown mode ${mode}: write, read or append`))
run.catch((err) => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
