package pipeline

import (
	"math/rand/v2"
	"time"

	"github.com/cellos/fleetd/internal/protocol"
)

// MaxRetryBackoff caps a retry's backoff: it doubles with each retry up to
// an hour.
const MaxRetryBackoff = time.Hour

// retryLater returns a failed run's spec to run again after a backoff, when
// it has retries left (the spec's own limit, or cfg.Retries): true when the
// claim is ended that way. Cancellations, and results of runs that did not
// fail, are written as they are.
func (p *Pipeline) retryLater(c Claim, rec protocol.Record) bool {
	if rec.Outcome != protocol.Failed {
		return false
	}
	state := c.Retries()
	if state.Left(p.cfg.Retries) == 0 {
		return false
	}
	wait := p.backoff(state.Done)
	notBefore := time.Now().Add(wait)
	c.Log().Info("cell failed; retrying after a backoff", "event", "cell.retry", "reason", rec.Reason,
		"retry", state.Done+1, "backoff_ms", wait.Milliseconds())
	p.logEnd(c, c.Retry(p.drain.Abort(), p.drain.Intake().Done(), rec.Reason, notBefore))
	return true
}

// backoff is the wait before retry number done+1: full jitter (uniform in
// [0, b]) over b = CELLOS_FLEET_RETRY_BACKOFF_MS doubled done times, capped
// at MaxRetryBackoff.
func (p *Pipeline) backoff(done int) time.Duration {
	b := p.cfg.RetryBackoff
	for range done {
		if b >= MaxRetryBackoff/2 {
			b = MaxRetryBackoff
			break
		}
		b *= 2
	}
	b = min(b, MaxRetryBackoff)
	if b <= 0 {
		return 0
	}
	jitter := p.cfg.Jitter
	if jitter == nil {
		jitter = func(n int64) int64 { return rand.Int64N(n) }
	}
	return time.Duration(jitter(int64(b) + 1))
}
