// Starts kinesalite over TLS on 127.0.0.1 only, with our own certificate.
//   NODE_PATH=<cache>/kinesalite/node_modules node kinesalite.js PORT CERT KEY CA
// Why not kinesalite's CLI: it listens on every interface, its bundled server certificate
// expired in 2018 and names neither localhost nor 127.0.0.1, and its --key/--cert flags are
// handed to https.createServer as PEM text, not as file names.
'use strict'
const fs = require('fs')
const kinesalite = require('kinesalite')

const [port, cert, key, ca] = process.argv.slice(2)
const server = kinesalite({
  ssl: true,
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  ca: fs.readFileSync(ca),
  // Streams are ACTIVE at once: the benchmark creates one per side.
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
  shardLimit: 100,
})

// Node's HTTP server pauses a keep-alive connection's parser when a new request arrives while
// the previous response still sits in the socket's write buffer (over 16 KiB: a PutRecords
// answer for 500 records is ~50 KiB). Over TLS, data already decrypted still reaches the
// paused parser, which fails with HPE_PAUSED and resets the connection: both clients saw
// "connection reset by peer" on a share of their calls (Fluent Bit on about a third) until
// the write buffer was made large enough never to trigger the pause.
server.on('secureConnection', (socket) => {
  socket._writableState.highWaterMark = 64 << 20
})
// Node closes idle keep-alive connections after 5 s by default; real Kinesis keeps them longer.
server.keepAliveTimeout = 120000
server.headersTimeout = 121000

// Whatever still goes wrong with a request is logged (the run script counts these lines), and
// does not end the server: kinesalite throws from a request's 'error' handler.
server.on('clientError', (err, socket) => {
  console.error('kinesalite: request failed: client error ' + err.code)
  socket.destroy()
})
process.on('uncaughtException', (err) => {
  console.error('kinesalite: request failed: ' + (err && err.message))
})

server.listen(Number(port), '127.0.0.1', () => {
  console.log('kinesalite listening on https://127.0.0.1:' + server.address().port)
})
process.on('SIGTERM', () => process.exit(0))
