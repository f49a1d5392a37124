// Where a command's words go: stdout and stderr, or a test's buffers.
export interface Io {
  out: (line: string) => void
  err: (line: string) => void
}

export const stdio: Io = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
}
