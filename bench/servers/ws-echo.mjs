// A WebSocket echo server (the `ws` package): the upstream of the WebSocket bench row.
import { WebSocketServer } from 'ws'

const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]) }, () => console.log('listening'))
wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })))
