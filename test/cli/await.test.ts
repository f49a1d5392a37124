// `sidecar-proxy await` against a real proxy on loopback: runs the command once the proxy is up
// (even though the app it starts is not yet), passes its exit code on, times out cleanly, and with
// --shutdown stops the proxy.
import { existsSync } from 'node:fs'
import t from 'tap'
import type { Io } from '../../src/cli/io.js'
import { main } from '../../src/main.js'
import { startProxy } from '../fixtures/proxy.js'
import { fakeUpstream, freePort } from '../fixtures/upstream.js'

function io() {
  const lines: string[] = []
  const sink: Io = { out: (l) => lines.push(l), err: (l) => lines.push(l) }
  return { sink, text: () => lines.join('\n') }
}

/** A command that leaves a file behind (so a test can tell it ran) and exits with `code`. */
function marker(file: string, code: number): string[] {
  return [process.execPath, '-e', `require('fs').writeFileSync(${JSON.stringify(file)}, 'ran'); process.exit(${code})`]
}

t.test('the app down is no reason to wait: the command is what brings it up', async (t) => {
  const port = await freePort()
  const proxy = await startProxy(`http://127.0.0.1:${port}`)
  t.teardown(() => proxy.close())
  t.equal((await fetch(`${proxy.adminUrl}/ready`)).status, 503, 'the proxy is not ready: its app is down')
  const dir = t.testdir()
  t.equal(await main(['await', '--admin', proxy.adminUrl, '--timeout', '5', '--', ...marker(`${dir}/ran`, 0)], io().sink), 0)
  t.ok(existsSync(`${dir}/ran`), 'the command ran: waiting for /ready would wait forever')
})

t.test('no proxy: times out cleanly, saying why, without running the command', async (t) => {
  const port = await freePort()
  const dir = t.testdir()
  const r = io()
  const started = Date.now()
  t.equal(await main(['await', '--admin', `http://127.0.0.1:${port}`, '--timeout', '0.6', '--', ...marker(`${dir}/ran`, 0)], r.sink), 1)
  t.ok(Date.now() - started < 3000, 'gave up at about the timeout')
  t.match(r.text(), /was not started after 0\.6 s \(last: ECONNREFUSED.*\); .* was not started/)
  t.notOk(existsSync(`${dir}/ran`), 'the command did not run')
})

t.test('ready: runs the command and exits with its code; --shutdown then stops the proxy', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const stops: Array<[string, boolean]> = []
  const proxy = await startProxy(up.url, {}, { requestStop: (reason, immediate) => stops.push([reason, immediate]) })
  t.teardown(() => proxy.close())
  const dir = t.testdir()
  t.equal(await main(['await', '--admin', proxy.adminUrl, '--', ...marker(`${dir}/ran`, 7)], io().sink), 7)
  t.ok(existsSync(`${dir}/ran`), 'the command ran')
  t.same(stops, [], 'without --shutdown the proxy is left alone')
  t.equal(await main(['await', '--admin', `${proxy.adminUrl}/`, '--shutdown', '--', ...marker(`${dir}/ran2`, 0)], io().sink), 0)
  t.same(stops, [['POST /quitquitquit', true]])
})

t.test('a command that cannot run exits 127; a command killed by a signal 128 + n', async (t) => {
  const up = await fakeUpstream().listen()
  t.teardown(() => up.close())
  const proxy = await startProxy(up.url)
  t.teardown(() => proxy.close())
  const r = io()
  t.equal(await main(['await', '--admin', proxy.adminUrl, '--', 'no-such-command-here'], r.sink), 127)
  t.match(r.text(), /cannot run no-such-command-here/)
  t.equal(await main(['await', '--admin', proxy.adminUrl, '--', 'sh', '-c', 'kill -TERM $$'], io().sink), 128 + 15)
})

t.test('await: bad usage exits 2', async (t) => {
  for (const [argv, why] of [
    [['await'], /needs -- CMD/],
    [['await', '--'], /needs -- CMD/],
    [['await', '--timeout', '0', '--', 'x'], /--timeout must be/],
    [['await', '--admin', 'localhost:9901', '--', 'x'], /--admin must be http:\/\/HOST:PORT/],
    [['await', '--wait', '--', 'x'], /Unknown option '--wait'/],
  ] as const) {
    const r = io()
    t.equal(await main([...argv], r.sink), 2, argv.join(' '))
    t.match(r.text(), why)
  }
})
