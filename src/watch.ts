// Watching files that Kubernetes mounts (ConfigMaps, Secrets). The kubelet updates a mount by
// writing a new timestamped directory and swapping the `..data` symlink, so a watch on the file
// path itself never fires. The directory is watched instead, and a burst of events (a swap
// touches several entries; an editor writes, renames and chmods) becomes one call after a quiet
// period. The caller then reads the files again and decides whether anything changed. Events for
// other entries of the directory (a log file written beside the config, say) are ignored.
import { watch, type FSWatcher } from 'node:fs'
import { basename, dirname } from 'node:path'
import { systemClock, type Clock } from './clock.js'
import type { Logger } from './log.js'

export function watchFiles(
  files: readonly string[],
  onChange: () => void,
  opts: { logger: Logger; debounceMs: number; clock?: Clock },
): () => void {
  const clock = opts.clock ?? systemClock
  let cancel = () => {}
  const watchers: FSWatcher[] = []
  const relevant = relevantTo(files)
  for (const dir of new Set(files.map((f) => dirname(f)))) {
    const watcher = watch(dir, (_event, name) => {
      if (!relevant(name)) return
      cancel()
      cancel = clock.timeout(opts.debounceMs, onChange)
    })
    watcher.on('error', (err) => opts.logger.error({ err, dir }, 'directory watch failed; reload with SIGHUP'))
    watchers.push(watcher)
  }
  return () => {
    cancel()
    for (const w of watchers) w.close()
  }
}

/** Which directory entries matter: the files themselves (an edit, or an editor's rename onto
 *  one), the kubelet's `..data` swap, or an event that names nothing. */
export function relevantTo(files: readonly string[]): (name: string | null) => boolean {
  const names = new Set(files.map((f) => basename(f)))
  return (name) => name === null || names.has(name) || name.startsWith('..')
}
