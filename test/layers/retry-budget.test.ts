import t from 'tap'
import { RetryBudget } from '../../src/layers/retry-budget.js'
import { fakeClock } from '../fixtures/clock.js'

t.test('each request deposits ratio of a retry; a retry needs a whole one', async (t) => {
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 0, windowMs: 10_000 }, fakeClock())
  let granted = 0
  for (let i = 0; i < 100; i++) {
    budget.deposit()
    if (budget.tryWithdraw()) granted++
  }
  t.equal(granted, 20, '20% of 100 requests')
})

t.test('the floor allows minPerSecond x window retries with no traffic at all', async (t) => {
  const budget = new RetryBudget({ ratio: 0.2, minPerSecond: 2, windowMs: 5_000 }, fakeClock())
  let granted = 0
  while (budget.tryWithdraw()) granted++
  t.equal(granted, 10)
})

t.test('deposits and withdrawals leave the window as time passes', async (t) => {
  const clock = fakeClock()
  const budget = new RetryBudget({ ratio: 1, minPerSecond: 0, windowMs: 10_000 }, clock)
  for (let i = 0; i < 5; i++) budget.deposit()
  t.equal(budget.balance(), 5)
  clock.advance(5_000)
  t.ok(budget.tryWithdraw())
  t.equal(budget.balance(), 4)
  clock.advance(5_000) // the deposits' bucket has left the window; the withdrawal's has not
  t.equal(budget.tryWithdraw(), false)
  t.equal(budget.balance(), -1)
  clock.advance(5_000)
  t.equal(budget.balance(), 0, 'everything has left the window')
  clock.advance(60_000)
  budget.deposit()
  t.equal(budget.balance(), 1, 'a long idle gap clears every bucket')
})
