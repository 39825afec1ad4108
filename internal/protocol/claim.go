// The claim: docs/PROTOCOL.md, "Claim".

package protocol

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Spec is a pending spec as a node read it.
type Spec struct {
	ID   string
	Key  string // pending/<id>.json
	ETag string // of the version read
	// Modified is when the version read was written, on the store's clock.
	Modified time.Time
	// VersionID is the store's id of the version read, on a versioned bucket.
	VersionID string
	Body      []byte
	// Attempts is the count of runs so far from the spec's metadata. A
	// submitter can set it, so it is clamped: every spec gets at least one run.
	Attempts int
	// Retry is the spec's retry state, from its metadata (ParseRetry).
	Retry RetryState
}

func (s Spec) version() version { return version{etag: s.ETag, modified: s.Modified, id: s.VersionID} }

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
	key := p.cfg.Layout.Key(store.Leases, id)
	l.Node, l.Token, l.Epoch, l.TTLMillis = p.cfg.Node, newToken(), 1, p.cfg.TTL.Milliseconds()
	l.Origin = l.Token
	if l.Intent == "" {
		l.Intent = intentRun
	}
	if p.session != nil {
		// The lease is alive while our session is: it is written only
		// while the session is valid, and lands before it could be judged
		// stale.
		tok, until, ok := p.session.current()
		if !ok {
			return nil, fmt.Errorf("create lease %s: %w", key, errNoSession)
		}
		l.nameSession(tok, p.cfg.TTL)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
		// Until the claim is vouched for (newClaim, below), a ring for id
		// waits: fleetd cancel may mark the lease once it has landed.
		defer p.session.creatingLease(id)()
	}
	body, nonce := encodeLease(&l, p.clock.Now())
	sent := p.clock.Now()
	etag, err := p.store.Put(ctx, key, body, store.PutOptions{IfAbsent: true})
	if errors.Is(err, store.ErrUnknown) {
		// A 412 on a retry may be our own create; read the lease back.
		etag, err = p.readBack(ctx, key, l.Token, nonce)
		if err != nil && p.session != nil {
			// If our create lands after all, it names our live session:
			// our own recovery clears it, as it would a dead node's.
			p.session.leaveToken(id, l.Token)
		}
		if errors.Is(err, store.ErrNotFound) {
			// Not there now. If our create still lands, nobody renews it: it
			// goes stale and recovery clears it, pending/ untouched.
			return nil, fmt.Errorf("create lease %s: did not land: %w", key, err)
		}
	}
	if errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrUnknown) {
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
	c, err := p.acquire(ctx, spec.ID, leaseBody{State: stateClaiming, Attempts: spec.Attempts + 1}.withPending(spec.version()))
	if err != nil {
		if errors.Is(err, ErrHeld) {
			p.cfg.Metrics.ClaimConflict()
		}
		return nil, err
	}
	c.Body, c.Attempt = spec.Body, spec.Attempts+1
	c.retry = spec.Retry

	// Another node may have claimed, run and finished this version between
	// our read and our lease. Only a lease holder deletes pending/, and we hold
	// the lease now: pending/ still holding what we read proves it was not
	// consumed, and nobody but us can consume it from here on.
	var head store.Object
	err = c.act(ctx, quit, "confirm pending", func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, spec.Key)
		return err
	})
	if err == nil && !spec.version().is(head) {
		err = fmt.Errorf("%s: ETag %s, read %s: %w", spec.Key, head.ETag, spec.ETag, ErrGone)
	}
	if errors.Is(err, store.ErrNotFound) {
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
	meta := spec.Retry.metadata() // for a recoverer that returns the spec
	meta[metaNode], meta[metaToken] = p.cfg.Node, c.origin
	meta[metaAttempts], meta[metaPendingETag] = strconv.Itoa(c.Attempt), spec.ETag
	claimedKey := p.cfg.Layout.Key(store.Claimed, spec.ID)
	err = c.act(ctx, quit, "write claimed", func(ctx context.Context) (err error) {
		c.claimedETag, err = p.store.Put(ctx, claimedKey, spec.Body, store.PutOptions{Metadata: meta})
		return err
	})
	if err != nil {
		p.giveBack(ctx, quit, c, false, err)
		return nil, err
	}

	// Consume pending/: only the version we read, so a replacement submitted
	// meanwhile is never deleted unseen. "Gone" is our own delete: nobody
	// else may delete it while we hold the lease.
	err = c.deletePending(ctx, quit, spec.version())
	switch {
	case errors.Is(err, store.ErrPrecondition):
		// Replaced after our confirm: the new version stays pending and runs
		// on its own; the version we claimed runs now.
		c.log.Info("pending spec replaced during the claim; the new version stays pending", "event", "claim.spec_replaced")
	case err != nil:
		// Unknown whether pending/ is gone: put it back if it is.
		p.giveBack(ctx, quit, c, true, err)
		return nil, err
	}
	// Start the cell with most of a validity window ahead: one started just
	// before its lease lapses would be stopped at once and run again. (A
	// session renews itself, for every claim at once.)
	err = c.act(ctx, quit, "renew before the run", func(ctx context.Context) error {
		if c.sess != nil || c.remaining() > validFor(p.cfg.TTL)/2 {
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
	c.log.Debug("claim left before the run", "event", "claim.left", "err", cause)
	if consumed {
		if _, err := c.release(ctx, quit, c.Attempt-1); err != nil {
			c.log.Warn("claim not undone; recovery will", "event", "claim.undo_failed", "err", err)
		}
		return
	}
	p.endUnconsumed(ctx, quit, c)
}

// endUnconsumed ends a claim that never consumed pending/: claimed/ and the
// lease go, and pending/ stays to run — unless the lease carries a cancel
// mark, seen before or on the lease's delete: then the pending version is
// filed cancelled, as fleetd cancel would have filed it, and the mark is
// never deleted unhonoured.
func (p *Protocol) endUnconsumed(ctx context.Context, quit <-chan struct{}, c *Claim) {
	c.clearClaimed(ctx, quit)
	if c.CancelledBy() == "" && c.endLease(ctx, quit, true) {
		return
	}
	_, _ = p.cancelPending(ctx, quit, c, c.CancelledBy()) // an error leaves it to recovery
}

// cancelPending files every copy of c's spec that is not running cancelled,
// under c: each delayed copy (cancelDelayed), then the version pending/ holds
// now — the lease first turns to the file intent for that version, so a
// successor finishes the filing rather than leaving pending/ to run — and c
// ends. It returns how many copies it filed, and the error that stopped it
// (the claim then left to recovery); nothing to file is no error.
func (p *Protocol) cancelPending(ctx context.Context, quit <-chan struct{}, c *Claim, by string) (int, error) {
	n, err := p.cancelDelayed(ctx, quit, c, by)
	if err != nil {
		p.leave(c, err)
		return n, err
	}
	key := p.cfg.Layout.Key(store.Pending, c.id)
	var head store.Object
	err = c.act(ctx, quit, "read pending", func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, key)
		return err
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		c.end(ctx, quit) // nothing pending: settled elsewhere
		return n, nil
	case err != nil:
		p.leave(c, err)
		return n, err
	}
	spec := Spec{ID: c.id, Key: key, ETag: head.ETag, Modified: head.LastModified, VersionID: head.VersionID}
	c.mu.Lock()
	c.lease = c.lease.withPending(spec.version())
	c.lease.Intent, c.lease.State = intentFile, stateRejecting
	c.mu.Unlock()
	if err := c.act(ctx, quit, "turn to filing", c.renew); err != nil {
		p.leave(c, err)
		return n, err
	}
	err = p.fileUnder(ctx, quit, c, spec, Cancelled, "cancelled by "+by)
	switch {
	case err == nil:
		n++
	case !errors.Is(err, ErrGone):
		p.leave(c, err)
		return n, err
	}
	return n, nil
}
