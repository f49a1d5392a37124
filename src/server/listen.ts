import type { AddressInfo, Server } from 'node:net'
import type { Logger } from '../log.js'

/**
 * Binds `server`, rejecting on the bind error (EADDRINUSE, EACCES), tagged with `name`, instead
 * of emitting it. Once
 * bound, a server error (an accept failing: libuv absorbs EMFILE by accepting and closing, but
 * emits what that trick cannot) is logged, never left to crash the process as an unhandled
 * 'error' event.
 */
export function listenOn(server: Server, host: string, port: number, logger: Logger, name: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const failed = (err: Error) => reject(Object.assign(err, { server: name }))
    server.once('error', failed)
    server.listen(port, host, () => {
      server.off('error', failed)
      server.on('error', (err: NodeJS.ErrnoException) => logger.warn({ err: { code: err.code, message: err.message } }, `${name} error`))
      resolve(server.address() as AddressInfo)
    })
  })
}
