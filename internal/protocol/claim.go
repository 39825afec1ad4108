package protocol

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

// Spec is a pending spec as a node read it.
type Spec struct {
	ID   string
	Key  string // pending/<id>.json
	ETag string // of the version read
	Body []byte
	// Attempts is the count of runs so far from the spec's metadata. A
	// submitter can set it, so it is clamped: every spec gets at least one run.
	Attempts int
}

// PriorAttempts reads the attempt count of a pending spec's metadata, clamped
// to [0, maxAttempts-1].
func PriorAttempts(meta map[string]string, maxAttempts int) int {
	n, err := strconv.Atoi(meta[metaAttempts])
	if err != nil || n < 0 {
		return 0
	}
	return min(n, maxAttempts-1)
}

// acquire creates the spec's lease (create-only) in state and returns the
// claim holding it, its keeper running. ErrHeld: another node holds it.
func (p *Protocol) acquire(ctx context.Context, id string, l leaseBody) (*Claim, error) {
	key := p.cfg.Layout.Key(queue.Leases, id)
	l.Node, l.Token, l.Epoch, l.TTLMillis = p.cfg.Node, newToken(), 1, p.cfg.TTL.Milliseconds()
	l.Origin = l.Token
	if l.Intent == "" {
		l.Intent = intentRun
	}
	body, nonce := encodeLease(&l, p.clock.Now())
	sent := p.clock.Now()
	etag, err := p.store.Put(ctx, key, body, queue.PutOptions{IfAbsent: true})
	if errors.Is(err, queue.ErrUnknown) {
		// A 412 on a retry may be our own create; read the lease back.
		etag, err = p.readBack(ctx, key, l.Token, nonce)
		if errors.Is(err, queue.ErrNotFound) {
			// Not there now. If our create still lands, nobody renews it: it
			// goes stale and recovery clears it, pending/ untouched.
			return nil, fmt.Errorf("create lease %s: did not land: %w", key, err)
		}
	}
	if errors.Is(err, queue.ErrPrecondition) && !errors.Is(err, queue.ErrUnknown) {
		return nil, fmt.Errorf("create lease %s: %w", key, ErrHeld)
	}
	if err != nil {
		return nil, fmt.Errorf("create lease %s: %w", key, err)
	}
	return p.newClaim(id, l, etag, sent), nil
}

// Claim makes spec this node's to run: lease, confirm, claimed/, consume
// pending/. quit, when closed, makes the claim give up rather than wait for
// the store (a draining node). On success the lease is in state running and
// the caller must end the claim with Finish, Release or Drop.
func (p *Protocol) Claim(ctx context.Context, quit <-chan struct{}, spec Spec) (*Claim, error) {
	c, err := p.acquire(ctx, spec.ID, leaseBody{State: stateClaiming, Attempts: spec.Attempts + 1, PendingETag: spec.ETag})
	if err != nil {
		if errors.Is(err, ErrHeld) {
			p.cfg.Metrics.ClaimConflict()
		}
		return nil, err
	}
	c.Body, c.Attempt = spec.Body, spec.Attempts+1

	// Another node may have claimed, run and finished this version between
	// our read and our lease. Only a lease holder deletes pending/, and we hold
	// the lease now: pending/ still holding what we read proves it was not
	// consumed, and nobody but us can consume it from here on.
	var head queue.Object
	err = c.act(ctx, quit, "confirm pending", func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, spec.Key)
		return err
	})
	if err == nil && head.ETag != spec.ETag {
		err = fmt.Errorf("%s: ETag %s, read %s: %w", spec.Key, head.ETag, spec.ETag, ErrGone)
	}
	if errors.Is(err, queue.ErrNotFound) {
		err = fmt.Errorf("%s: %w", spec.Key, ErrGone)
	}
	if err != nil {
		p.giveBack(ctx, quit, c, false, err)
		return nil, err
	}

	// claimed/ holds the spec while it runs (0.5.1's layout). Under our lease
	// the write is ours alone, so repeating it is harmless. It waits for the
	// confirm, though it could go beside it: a claimed/ written before we
	// learn pending/ is gone (another node finished the spec) is one recovery
	// would return to pending/ — a second run — if our cleanup of it never
	// landed (a death, or an outage past the ttl).
	meta := map[string]string{metaNode: p.cfg.Node, metaToken: c.origin,
		metaAttempts: strconv.Itoa(c.Attempt), metaPendingETag: spec.ETag}
	claimedKey := p.cfg.Layout.Key(queue.Claimed, spec.ID)
	err = c.act(ctx, quit, "write claimed", func(ctx context.Context) (err error) {
		c.claimedETag, err = p.store.Put(ctx, claimedKey, spec.Body, queue.PutOptions{Metadata: meta})
		return err
	})
	if err != nil {
		p.giveBack(ctx, quit, c, false, err)
		return nil, err
	}

	// Consume pending/: only the version we read, so a replacement submitted
	// meanwhile is never deleted unseen. "Gone" is our own delete: nobody
	// else may delete it while we hold the lease.
	err = c.act(ctx, quit, "delete pending", func(ctx context.Context) error {
		return p.store.Delete(ctx, spec.Key, spec.ETag)
	})
	switch {
	case errors.Is(err, queue.ErrPrecondition):
		// Replaced after our confirm: the new version stays pending and runs
		// on its own; the version we claimed runs now.
		c.log.Info("pending spec replaced during the claim; the new version stays pending", "event", "claim.spec_replaced")
	case err != nil:
		// Unknown whether pending/ is gone: put it back if it is.
		p.giveBack(ctx, quit, c, true, err)
		return nil, err
	}
	// Start the cell with most of a validity window ahead: one started just
	// before its lease lapses would be stopped at once and run again.
	err = c.act(ctx, quit, "renew before the run", func(ctx context.Context) error {
		if c.remaining() > validFor(p.cfg.TTL)/2 {
			return nil
		}
		return c.renew(ctx)
	})
	if err != nil {
		p.giveBack(ctx, quit, c, true, err)
		return nil, err
	}
	c.setState(stateRunning)
	c.log.Info("claimed", "event", "spec.claimed", "attempt", c.Attempt)
	return c, nil
}

// giveBack undoes a claim that did not reach the run, then ends it. Only a
// claim that may have consumed pending/ writes it back: one that found
// pending/ gone must not, or it would resurrect a spec another node finished.
func (p *Protocol) giveBack(ctx context.Context, quit <-chan struct{}, c *Claim, consumed bool, cause error) {
	if errors.Is(cause, ErrLost) || errors.Is(cause, ErrLeftToRecovery) {
		c.drop()
		return
	}
	c.log.Debug("claim abandoned before the run", "event", "claim.abandoned", "err", cause)
	if consumed {
		if _, err := c.release(ctx, quit, c.Attempt-1); err != nil {
			c.log.Warn("claim not undone; recovery will", "event", "claim.undo_failed", "err", err)
		}
		return
	}
	c.clearClaimed(ctx, quit)
	c.end(ctx, quit)
}

// Finish records the result of the run and ends the claim: the result under
// completed/ or failed/, then claimed/ and the lease deleted. The result is
// retried for as long as the lease is held; it is never written without it.
func (c *Claim) Finish(ctx context.Context, quit <-chan struct{}, rec Record) error {
	cleanup, err := c.WriteResult(ctx, rec)
	if err != nil {
		return err
	}
	cleanup(ctx, quit)
	return nil
}

// WriteResult is Finish in two halves: it writes the result and returns the
// clean-up (claimed/, then the lease), which the caller runs when it likes —
// the spec is settled once the result is durable, so a worker need not wait
// for the two deletes. The lease stays held, and kept alive, until the
// clean-up ends it.
func (c *Claim) WriteResult(ctx context.Context, rec Record) (cleanup func(ctx context.Context, quit <-chan struct{}), err error) {
	c.setState(stateFinishing)
	rec.node, rec.token, rec.attempts = c.p.cfg.Node, c.origin, c.Attempt
	state := queue.Failed
	if rec.Outcome == Completed {
		state = queue.Completed
	}
	// Not quit: a draining node gives up waiting for the store only at ctx's
	// end (the drain's abort bound). Giving up on a finished cell because its
	// lease lapsed on a slow renewal would leave it to recovery, which runs it
	// again (issue 8, case 8). Cleanup after the result may give up: recovery
	// finds the result by its token.
	err = c.act(ctx, nil, "write result", func(ctx context.Context) error {
		_, err := c.p.store.Put(ctx, c.p.cfg.Layout.Key(state, c.id), c.Body, queue.PutOptions{Metadata: rec.metadata()})
		return err
	})
	if err != nil {
		return nil, c.stop(err)
	}
	return func(ctx context.Context, quit <-chan struct{}) {
		// One after the other, not side by side: claimed/'s ETag is the
		// spec's MD5, the same for a resubmission of these bytes, so only our
		// lease makes the delete ours. Sent beside the lease's delete, a late
		// or retried one could remove the claimed/ of a new claim made in
		// between.
		c.clearClaimed(ctx, quit)
		c.end(ctx, quit)
		c.p.cfg.Metrics.Finished(string(rec.Outcome))
		attrs := []any{"event", "spec.finalised", "state", string(state), "outcome", string(rec.Outcome), "attempt", c.Attempt}
		if rec.Reason != "" {
			attrs = append(attrs, "reason", rec.Reason)
		}
		c.log.Info("spec finalised", attrs...)
	}, nil
}

// Release returns the spec to pending/ and ends the claim. countRun says
// whether the run that started counts against the spec's attempts (not for a
// cell stopped by a drain or by this node's own fencing). A spec someone
// cancelled is filed cancelled instead, whatever stopped its cell.
func (c *Claim) Release(ctx context.Context, quit <-chan struct{}, countRun bool) error {
	attempts := c.Attempt - 1
	if countRun {
		attempts = c.Attempt
	}
	cancelled, err := c.release(ctx, quit, attempts)
	if err != nil {
		return c.stop(err)
	}
	if !cancelled {
		c.p.cfg.Metrics.Finished(string(Released))
		c.log.Info("spec returned to pending/", "event", "spec.released", "attempts", attempts)
	}
	return nil
}

// release returns the spec to pending/ with attempts and ends the claim, or,
// when the lease carries a cancel mark, files it cancelled (cancelled true).
func (c *Claim) release(ctx context.Context, quit <-chan struct{}, attempts int) (cancelled bool, err error) {
	// The lease says "releasing" before pending/ is written: a cancel mark
	// that landed first makes this compare-and-swap read it (and honour it
	// below); a cancel that comes later sees the state and waits for the
	// spec to be pending again. Either way the cancel is not dropped.
	c.setState(stateReleasing)
	if err := c.act(ctx, quit, "mark releasing", c.renew); err != nil {
		return false, err
	}
	if by := c.CancelledBy(); by != "" {
		cleanup, err := c.WriteResult(ctx, Record{Outcome: Cancelled, Reason: "cancelled by " + by, Finished: time.Now()})
		if err != nil {
			return false, err
		}
		cleanup(ctx, quit)
		return true, nil
	}
	if err := c.p.requeue(ctx, quit, c, c.Body, attempts); err != nil {
		return false, err
	}
	c.clearClaimed(ctx, quit)
	c.end(ctx, quit)
	return false, nil
}

// Drop lets go of the claim without a write: the lease stays for recovery.
func (c *Claim) Drop() { c.drop() }

// stop ends a claim that cannot go on: lost, or left to recovery.
func (c *Claim) stop(err error) error {
	c.drop()
	if errors.Is(err, ErrLost) {
		c.p.cfg.Metrics.Finished(string(Lost))
	}
	return err
}

// requeue writes body to pending/ create-only. A pending/ object already
// there (the version we never consumed, or a resubmission) stands for it.
func (p *Protocol) requeue(ctx context.Context, quit <-chan struct{}, c *Claim, body []byte, attempts int) error {
	meta := map[string]string{metaAttempts: strconv.Itoa(attempts)}
	err := c.act(ctx, quit, "write pending", func(ctx context.Context) error {
		_, err := p.store.Put(ctx, p.cfg.Layout.Key(queue.Pending, c.id), body, queue.PutOptions{IfAbsent: true, Metadata: meta})
		if errors.Is(err, queue.ErrUnknown) && errors.Is(err, queue.ErrPrecondition) {
			return nil // our own create, or another version: either stands
		}
		return err
	})
	if errors.Is(err, queue.ErrPrecondition) {
		c.log.Info("pending/ already holds this id; keeping it", "event", "spec.release_kept")
		return nil
	}
	return err
}

// clearClaimed deletes claimed/ if this claim wrote or adopted it.
func (c *Claim) clearClaimed(ctx context.Context, quit <-chan struct{}) {
	if c.claimedETag == "" {
		return
	}
	// Under our lease nobody else writes claimed/, so its ETag (the spec's MD5,
	// the same for every claim of these bytes) is still ours.
	err := c.act(ctx, quit, "delete claimed", func(ctx context.Context) error {
		return c.p.store.Delete(ctx, c.p.cfg.Layout.Key(queue.Claimed, c.id), c.claimedETag)
	})
	if err != nil {
		c.log.Warn("claimed/ not deleted", "event", "claim.delete_failed", "err", err)
	}
}
