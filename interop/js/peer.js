// A real JS Hypercore 11 peer for the interoperability tests and benchmarks, over TCP.
//
//   node peer.js write DIR COUNT SIZE   appends COUNT blocks of SIZE bytes (block i starts
//                                       with "block i "), listens on 127.0.0.1, prints
//                                       {"key", "port", "length"} as one JSON line, and
//                                       serves every connection until stdin closes. Each
//                                       stdin line "append N" appends N more blocks and
//                                       prints {"length"}.
//   node peer.js read DIR KEY PORT COUNT
//                                       follows KEY from 127.0.0.1:PORT until it holds COUNT
//                                       blocks, checks each one's prefix, and prints
//                                       {"length", "bytes", "ms"} as one JSON line.
//
// Errors go to stderr with exit code 1.
'use strict'

const net = require('net')
const Hypercore = require('hypercore')

function block (i, size) {
  const head = Buffer.from(`block ${i} `)
  const out = Buffer.alloc(Math.max(size, head.length), 'x')
  head.copy(out)
  return out
}

async function write (dir, count, size) {
  const core = new Hypercore(dir)
  await core.ready()
  const batch = []
  for (let i = core.length; i < count; i++) {
    batch.push(block(i, size))
    if (batch.length === 1000) await core.append(batch.splice(0))
  }
  if (batch.length) await core.append(batch)
  const server = net.createServer((socket) => {
    const stream = core.replicate(false)
    socket.pipe(stream).pipe(socket)
    const drop = () => { socket.destroy(); stream.destroy() }
    socket.on('error', drop)
    stream.on('error', drop)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  console.log(JSON.stringify({
    key: core.key.toString('hex'),
    port: server.address().port,
    length: core.length
  }))
  let lines = ''
  process.stdin.on('data', async (chunk) => {
    lines += chunk
    let nl
    while ((nl = lines.indexOf('\n')) !== -1) {
      const [cmd, n] = lines.slice(0, nl).trim().split(' ')
      lines = lines.slice(nl + 1)
      if (cmd !== 'append') continue
      const more = []
      for (let i = 0; i < Number(n); i++) more.push(block(core.length + i, size))
      await core.append(more)
      console.log(JSON.stringify({ length: core.length }))
    }
  })
  process.stdin.on('end', async () => {
    server.close()
    await core.close()
    process.exit(0)
  })
}

async function read (dir, key, port, count) {
  const core = new Hypercore(dir, Buffer.from(key, 'hex'))
  await core.ready()
  const start = process.hrtime.bigint()
  const socket = net.connect(port, '127.0.0.1')
  const stream = core.replicate(true)
  socket.pipe(stream).pipe(socket)
  await core.download({ start: 0, end: count }).done()
  let bytes = 0
  for (let i = 0; i < count; i++) {
    const value = await core.get(i)
    if (!value.subarray(0, `block ${i} `.length).equals(Buffer.from(`block ${i} `))) {
      throw new Error(`block ${i} is not the one written`)
    }
    bytes += value.length
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6
  console.log(JSON.stringify({ length: core.length, bytes, ms }))
  socket.destroy()
  await core.close()
}

const [mode, ...args] = process.argv.slice(2)
const run = mode === 'write'
  ? write(args[0], Number(args[1]), Number(args[2]))
  : mode === 'read'
    ? read(args[0], args[1], Number(args[2]), Number(args[3]))
    : Promise.reject(new Error(`unknown mode ${mode}: write or read`))
run.catch((err) => {
  console.error(err && err.stack ? err.stack : String(err))
  process.exit(1)
})
