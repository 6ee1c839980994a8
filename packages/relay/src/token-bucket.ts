// SPDX-License-Identifier: AGPL-3.0-or-later
/**
 * A token bucket, the relay's one rate limiter: `rate` tokens a second, at most `burst` held.
 * Time is monotonic milliseconds (`performance.now()` unless told otherwise), so clock jumps
 * neither fill nor drain it.
 * @module
 */

/** A token bucket that starts full. */
export class TokenBucket {
  private tokens: number;
  private refilled: number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = burst;
    this.refilled = now();
  }

  private refill(): void {
    const t = this.now();
    if (t > this.refilled) {
      this.tokens = Math.min(this.burst, this.tokens + ((t - this.refilled) * this.rate) / 1000);
      this.refilled = t;
    }
  }

  /** Takes a token if there is one. */
  take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** Whether a token is there (none is taken). */
  has(): boolean {
    if (this.tokens >= 1) return true;
    this.refill();
    return this.tokens >= 1;
  }

  /** Takes `n` tokens whether or not they are there: the bucket goes into debt, down to `-maxDebt`. */
  charge(n: number, maxDebt: number): void {
    this.refill();
    this.tokens = Math.max(-maxDebt, this.tokens - n);
  }

  /** Gives `n` tokens back (a reservation that was not used), up to the burst. */
  give(n: number): void {
    this.refill();
    this.tokens = Math.min(this.burst, this.tokens + n);
  }

  /** Whether the bucket is full again. */
  full(): boolean {
    this.refill();
    return this.tokens >= this.burst;
  }
}
