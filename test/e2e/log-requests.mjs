// Preloaded into the example app by the pod simulation (`node --import`): one JSON line on stdout
// per request the app receives, with its headers, so that the test sees what reached the app
// through the sidecars (the client certificate's subject, x-forwarded-for). Health checks left out.
import { subscribe } from 'node:diagnostics_channel'

subscribe('http.server.request.start', ({ request }) => {
  if (request.url === '/healthz') return
  console.log(JSON.stringify({ msg: 'app received', path: request.url, headers: request.headers }))
})
