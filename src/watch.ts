// Watching files that Kubernetes mounts (ConfigMaps, Secrets). The kubelet updates a mount by
// writing a new timestamped directory and swapping the `..data` symlink, so a watch on the file
// path itself never fires. The directory is watched instead, and a burst of events (a swap
// touches several entries; an editor writes, renames and chmods) becomes one call after a quiet
// period. The caller then reads the files again and decides whether anything changed.
import { watch, type FSWatcher } from 'node:fs'
import { dirname } from 'node:path'
import type { Logger } from './log.js'

export function watchFiles(files: readonly string[], onChange: () => void, opts: { logger: Logger; debounceMs: number }): () => void {
  let timer: NodeJS.Timeout | undefined
  const watchers: FSWatcher[] = []
  for (const dir of new Set(files.map((f) => dirname(f)))) {
    const watcher = watch(dir, () => {
      clearTimeout(timer)
      timer = setTimeout(onChange, opts.debounceMs)
    })
    watcher.on('error', (err) => opts.logger.error({ err, dir }, 'directory watch failed; reload with SIGHUP'))
    watchers.push(watcher)
  }
  return () => {
    clearTimeout(timer)
    for (const w of watchers) w.close()
  }
}
