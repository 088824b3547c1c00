// A scriptable real Satellite client: npm electric-sql@0.1.3's SatelliteClient (the only
// published client speaking the typescript-client 0.3.0 wire protocol), driven by JSON
// commands on stdin, reporting JSON events on stdout. Used by tests/interop/*.py.
//
// Commands (one JSON object per line):
//   {"cmd":"connect","address":"127.0.0.1","port":5133,"appId":"device-1","token":"user-1"}
//       ("tls": true connects with wss://; the CA comes from NODE_EXTRA_CA_CERTS)
//   {"cmd":"auth"}                      -> {"event":"ok","cmd":"auth","serverId":...}
//   {"cmd":"start","lsn_hex":"30"}      -> start inbound replication from that lsn ("0" = 30)
//   {"cmd":"stop"}
//   {"cmd":"tx","lsn":"1","relation":{...},"changes":[{"type":"INSERT","record":{...}}]}
//   {"cmd":"close"}
// Events: ok / fail (per command), tx (received transaction), ack (server acked lsn),
// error (client 'error' event), closed (socket closed by the server).
//
// The package's `exports` map hides these files, so they are imported by path.
import { createInterface } from 'node:readline'
import { SatelliteClient } from '../../node_modules/electric-sql/dist/satellite/client.js'
import { WebSocketNode } from '../../node_modules/electric-sql/dist/sockets/node/websocket.js'

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const hex = (u8) => Buffer.from(u8 ?? []).toString('hex')
let client = null

// The client builds ws://address:port/ws itself; an app serving it over TLS hands it a socket
// that opens wss:// instead (the socket is the client's pluggable part).
class SecureWebSocketNode extends WebSocketNode {
  open(opts) {
    return super.open({ ...opts, url: opts.url.replace(/^ws:/, 'wss:') })
  }
}

function describeChange(c) {
  return {
    type: c.type,
    schema: c.relation.schema,
    table: c.relation.table,
    record: c.record ?? null,
    oldRecord: c.oldRecord ?? null,
  }
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'connect': {
      const socket = msg.tls ? new SecureWebSocketNode() : new WebSocketNode()
      client = new SatelliteClient(socket, {
        appId: msg.appId, token: msg.token, address: msg.address, port: msg.port,
        timeout: msg.timeout ?? 5000, pushPeriod: msg.pushPeriod ?? 50,
      })
      client.on('error', (e) => out({ event: 'error', message: String(e?.message ?? e) }))
      client.subscribeToTransactions(async (tx) => {
        out({ event: 'tx', lsn_hex: hex(tx.lsn), commit_timestamp: String(tx.commit_timestamp),
              changes: tx.changes.map(describeChange) })
      })
      client.subscribeToAck((lsn, remote) => {
        if (remote && lsn && lsn.length > 0) out({ event: 'ack', lsn: Buffer.from(lsn).toString() })
      })
      await client.connect()
      socket.socket.on('close', (code) => out({ event: 'closed', code }))
      return {}
    }
    case 'auth': {
      const res = await client.authenticate()
      if (res.error) throw res.error
      return { serverId: res.serverId }
    }
    case 'start':
      await client.startReplication(new Uint8Array(Buffer.from(msg.lsn_hex, 'hex')))
      return {}
    case 'stop':
      await client.stopReplication()
      return {}
    case 'tx': {
      const relation = msg.relation
      client.enqueueTransaction({
        commit_timestamp: msg.commit_timestamp ?? Date.now(),
        lsn: new TextEncoder().encode(msg.lsn),
        changes: msg.changes.map((c) => ({ type: c.type, relation, record: c.record,
                                            oldRecord: c.oldRecord })),
      })
      return {}
    }
    case 'close':
      await client.close()
      return {}
    default:
      throw new Error(`unknown command ${msg.cmd}`)
  }
}

// Commands run one at a time, in order.
let chain = Promise.resolve()
const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (!line.trim()) return
  const msg = JSON.parse(line)
  chain = chain.then(async () => {
    try {
      out({ event: 'ok', cmd: msg.cmd, ...(await handle(msg)) })
    } catch (e) {
      out({ event: 'fail', cmd: msg.cmd, message: String(e?.message ?? e) })
    }
  })
})
rl.on('close', () => chain.then(() => process.exit(0)))
process.on('uncaughtException', (e) => out({ event: 'crash', message: String(e?.message ?? e) }))
