// A static check of the regular expressions a config may hold (routes[].match.pathRegex, header
// regexes). JavaScript's RegExp backtracks, and a request path is the client's to choose: a
// pattern that backtracks exponentially would let one request hold the event loop for seconds.
// The check is conservative and syntactic, run once when the config is validated:
//
// - at most MAX_REGEX_LENGTH characters;
// - no backreferences (`\1`, `\k<name>`) and no lookarounds (`(?=`, `(?!`, `(?<=`, `(?<!`);
// - no group repeated by `*`, `+` or `{n,m}` that itself holds a quantifier (`(a+)+`, `(a*)*`,
//   `(?:x\d+){2,}`) or an alternation (`(a|aa)+`, and also the harmless `(a|b)+`: write `[ab]+`).
//   These are the shapes of exponential backtracking (nested quantifiers, overlapping
//   alternatives under a quantifier). A group made optional by `?` may hold either
//   (`^/api(/v[0-9]+)?/`): it is tried at most once.
//
// Not caught: polynomial backtracking from quantifiers in sequence over the same characters
// (`.*.*.*x`: cubic in the path's length). Paths are short (limits.maxHeaderBytes), but keep
// such patterns out: use `[^/]*` for "one segment" and anchor with `^`.

export const MAX_REGEX_LENGTH = 200

/** Why `source` is refused, or null when it passes (and compiles). */
export function regexProblem(source: string): string | null {
  if (source.length > MAX_REGEX_LENGTH) return `longer than ${MAX_REGEX_LENGTH} characters`
  try {
    new RegExp(source)
  } catch (err) {
    return `not a valid regular expression: ${(err as Error).message}`
  }
  // One entry per open group: whether a quantifier or an alternation appeared inside it.
  const groups: Array<{ quantified: boolean; alternation: boolean }> = []
  /** What the last atom was: a closed group holding a quantifier or alternation, or other. */
  let lastGroup: { quantified: boolean; alternation: boolean } | null = null
  /** A quantifier after the last atom; `optional` (`?`) repeats nothing, so it may follow any group. */
  const markQuantifier = (optional: boolean) => {
    if (!optional && lastGroup && (lastGroup.quantified || lastGroup.alternation)) {
      return lastGroup.quantified ? 'a quantified group holds a quantifier (nested quantifiers backtrack exponentially)' : 'a quantified group holds an alternation (overlapping alternatives backtrack exponentially; use a character class)'
    }
    for (const g of groups) g.quantified = true
    lastGroup = null
    return null
  }
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!
    if (c === '\\') {
      const n = source[i + 1]
      if (n !== undefined && /[1-9]/.test(n)) return 'backreferences are not allowed'
      if (n === 'k' && source[i + 2] === '<') return 'backreferences are not allowed'
      i++
      lastGroup = null
      continue
    }
    if (c === '[') {
      // a character class: quantifier characters inside it are literal
      for (i++; i < source.length && source[i] !== ']'; i++) if (source[i] === '\\') i++
      lastGroup = null
      continue
    }
    if (c === '(') {
      if (source.startsWith('(?=', i) || source.startsWith('(?!', i) || source.startsWith('(?<=', i) || source.startsWith('(?<!', i)) {
        return 'lookarounds are not allowed'
      }
      groups.push({ quantified: false, alternation: false })
      lastGroup = null
      continue
    }
    if (c === ')') {
      lastGroup = groups.pop() ?? null
      continue
    }
    if (c === '|') {
      for (const g of groups) g.alternation = true
      lastGroup = null
      continue
    }
    if (c === '*' || c === '+' || c === '{') {
      if (c === '{' && !/^\{\d+(,\d*)?\}/.test(source.slice(i))) {
        lastGroup = null
        continue // a literal brace
      }
      const problem = markQuantifier(false)
      if (problem) return problem
      if (c === '{') i = source.indexOf('}', i)
      if (source[i + 1] === '?') i++ // lazy
      continue
    }
    if (c === '?') {
      // after `(` it is a group modifier, handled above by skipping nothing: `(?:` reaches here
      if (source[i - 1] === '(') continue
      const problem = markQuantifier(true)
      if (problem) return problem
      continue
    }
    lastGroup = null
  }
  return null
}
