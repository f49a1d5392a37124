// A gRPC echo server (@grpc/grpc-js, h2c, raw-byte messages) with the standard health check:
// the upstream of the gRPC bench row.
import * as grpc from '@grpc/grpc-js'

const raw = (path) => ({ path, requestStream: false, responseStream: false, requestSerialize: (b) => b, requestDeserialize: (b) => b, responseSerialize: (b) => b, responseDeserialize: (b) => b })
const server = new grpc.Server()
server.addService({ unary: raw('/bench.Echo/Unary') }, { unary: (call, done) => done(null, call.request) })
server.addService({ check: raw('/grpc.health.v1.Health/Check') }, { check: (_call, done) => done(null, Buffer.from([0x08, 1])) })
server.bindAsync(`127.0.0.1:${process.argv[2]}`, grpc.ServerCredentials.createInsecure(), () => console.log('listening'))
