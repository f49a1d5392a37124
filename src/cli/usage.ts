import { StartupError } from '../errors.js'

export const USAGE = `Usage:
  sidecar-proxy [--config FILE] [flags]     run the proxy
  sidecar-proxy validate --config FILE      check a config file, print every problem, exit 2 if any
  sidecar-proxy certs --out DIR [--hosts a,b,c] [--days N]
                                            write a development CA and a server certificate
  sidecar-proxy await [--admin URL] [--timeout S] [--shutdown] -- CMD [ARGS...]
                                            wait until the proxy is up (default admin
                                            http://127.0.0.1:9901, 120 s), then run CMD and exit
                                            with its code; --shutdown stops the proxy afterwards

Flags (each overrides one key of the config file):
  --config FILE       YAML or JSON config (default: $SIDECAR_CONFIG, else built-in defaults)
  --listen HOST:PORT  listener.address        (default 0.0.0.0:8443)
  --upstream URL      backends[0].url         (default http://127.0.0.1:8080)
  --admin HOST:PORT   admin.address           (default 127.0.0.1:9901)
  --plaintext         listener.tls: false     serve plain HTTP (default: TLS; without a
                                              certificate, an ephemeral self-signed one)
  --tls-cert FILE     listener.tls.certFile
  --tls-key FILE      listener.tls.keyFile
  -h, --help          this text

Exit codes: 0 clean stop, 1 runtime failure, 2 bad usage or invalid config.`

/** Bad usage: said with the usage text, exit code 2. */
export class UsageError extends StartupError {
  constructor(message: string) {
    super('usage', message)
  }
}
