package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

// Reject files a spec that can never run under failed/ with the reason,
// without running it. It acts on the version read (spec.ETag) only, under the
// spec's lease like every other move: a resubmission landing meanwhile is
// neither deleted nor filed with the old version's reason. spec.Body may be
// nil for a spec too large to read; it is then copied server-side.
func (p *Protocol) Reject(ctx context.Context, quit <-chan struct{}, spec Spec, reason string) error {
	err := p.file(ctx, quit, spec, Rejected, reason)
	if err == nil {
		p.log.Warn("spec rejected", "event", "spec.rejected", "spec_id", spec.ID, "reason", reason)
	}
	return err
}

// file moves the pending version spec.ETag to failed/ without running it,
// under the spec's lease, with outcome and reason.
func (p *Protocol) file(ctx context.Context, quit <-chan struct{}, spec Spec, outcome Outcome, reason string) error {
	c, err := p.acquire(ctx, spec.ID, leaseBody{State: stateRejecting, Intent: intentFile, PendingETag: spec.ETag})
	if err != nil {
		return err
	}
	return p.fileUnder(ctx, quit, c, spec, outcome, reason)
}

// fileUnder is file under a lease c already holds with the file intent for
// spec.ETag.
func (p *Protocol) fileUnder(ctx context.Context, quit <-chan struct{}, c *Claim, spec Spec, outcome Outcome, reason string) error {
	c.Body = spec.Body
	rec := Record{Outcome: outcome, Reason: reason, Finished: time.Now(), node: p.cfg.Node, token: c.origin}
	failedKey := p.cfg.Layout.Key(queue.Failed, spec.ID)
	err := c.act(ctx, quit, "write "+string(outcome), func(ctx context.Context) error {
		if spec.Body != nil {
			// The body we judged, not whatever pending/ holds now.
			head, err := p.store.Head(ctx, spec.Key)
			if err == nil && head.ETag != spec.ETag {
				return fmt.Errorf("%s: %w", spec.Key, ErrGone)
			}
			if err != nil {
				return err
			}
			_, err = p.store.Put(ctx, failedKey, spec.Body, queue.PutOptions{Metadata: rec.metadata()})
			return err
		}
		return p.store.Copy(ctx, spec.Key, failedKey, queue.CopyOptions{SourceIfMatch: spec.ETag, Metadata: rec.metadata()})
	})
	if err != nil {
		if errors.Is(err, ErrGone) || errors.Is(err, queue.ErrNotFound) || errors.Is(err, queue.ErrPrecondition) {
			c.end(ctx, quit) // changed since we judged it: judge again next poll
			return fmt.Errorf("%s %s: %w", outcome, spec.ID, ErrGone)
		}
		return c.stop(err)
	}
	if err := p.consumeFiled(ctx, quit, c, spec.ETag); err != nil {
		return c.stop(err)
	}
	c.end(ctx, quit)
	p.cfg.Metrics.Finished(string(outcome))
	return nil
}

// consumeFiled deletes the pending/ version a filing judged, once failed/
// holds it. 412: replaced since; the new version stays pending and is
// judged on its own.
func (p *Protocol) consumeFiled(ctx context.Context, quit <-chan struct{}, c *Claim, pendingETag string) error {
	err := c.act(ctx, quit, "delete pending", func(ctx context.Context) error {
		return p.store.Delete(ctx, p.cfg.Layout.Key(queue.Pending, c.id), pendingETag)
	})
	if errors.Is(err, queue.ErrPrecondition) || errors.Is(err, queue.ErrNotFound) {
		return nil
	}
	return err
}

// finishFile completes a filing (reject, cancel) whose holder stopped. If
// failed/ holds the record the intent wrote (its origin's token), the filing
// was decided and written: the pending/ version it judged goes, as the holder
// would have done — a cancel the tool was interrupted in is then in effect,
// and a node with a larger size limit does not run a spec another rejected.
// If not, nothing was filed: only the lease goes, and pending/ is judged again.
func (p *Protocol) finishFile(ctx context.Context, quit <-chan struct{}, c *Claim, pendingETag string) {
	var res queue.Object
	err := c.act(ctx, quit, "check failed", func(ctx context.Context) (err error) {
		res, err = p.store.Head(ctx, p.cfg.Layout.Key(queue.Failed, c.id))
		return err
	})
	switch {
	case err == nil && res.Metadata[metaToken] == c.origin:
		if err := p.consumeFiled(ctx, quit, c, pendingETag); err != nil {
			p.leave(c, err)
			return
		}
		c.log.Info("recovery: finished an interrupted filing", "event", "recovery.file_finished", "outcome", res.Metadata[metaOutcome])
	case err == nil, errors.Is(err, queue.ErrNotFound):
		c.log.Info("recovery: an interrupted filing wrote nothing; pending/ stays", "event", "recovery.file_undone")
	default:
		p.leave(c, err)
		return
	}
	c.end(ctx, quit)
}

// CancelResult is what Cancel did.
type CancelResult struct {
	// Filed: the spec was pending and is now in failed/ as cancelled.
	Filed bool
	// Node holds the running spec and was asked to stop it.
	Node string
}

// ErrNotCancellable: the spec is neither pending nor in flight.
var ErrNotCancellable = errors.New("neither pending nor in flight")

// Cancel stops a spec on behalf of by. A pending spec is filed under
// failed/ with outcome cancelled, under its lease like a rejection. A running
// one is marked in its lease (a compare-and-swap, so it lands between two of
// the holder's renewals): the holder reads the mark on its next renewal, stops
// the cell and files it cancelled; a holder that dies meanwhile leaves the mark
// to its recoverer, which files it so too.
func (p *Protocol) Cancel(ctx context.Context, id, by string) (CancelResult, error) {
	reason := "cancelled by " + by
	pendingKey := p.cfg.Layout.Key(queue.Pending, id)
	for try := 0; try < 20; try++ {
		if try > 0 {
			// The spec is between two states (being claimed, released,
			// requeued or filed by its holder): look again shortly.
			if err := p.sleep(ctx, min(time.Duration(100<<min(try, 4))*time.Millisecond, time.Second)); err != nil {
				return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
			}
		}
		o, err := p.store.Get(ctx, pendingKey, recoverLimit)
		switch {
		case err == nil:
			quit := make(chan struct{})
			close(quit) // a tool does not wait out an outage
			err = p.file(ctx, quit, Spec{ID: id, Key: pendingKey, ETag: o.ETag, Body: o.Body}, Cancelled, reason)
			if err == nil {
				return CancelResult{Filed: true}, nil
			}
			if !errors.Is(err, ErrHeld) && !errors.Is(err, ErrGone) {
				return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
			}
			// Claimed meanwhile: cancel it where it runs.
		case !errors.Is(err, queue.ErrNotFound):
			return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
		}
		node, err := p.markCancel(ctx, id, by)
		switch {
		case errors.Is(err, errNotRunning):
			continue
		case !errors.Is(err, queue.ErrNotFound):
			return CancelResult{Node: node}, err
		}
		// Neither pending nor leased now; it may have moved between the two
		// reads: look once more before saying so.
		if _, err := p.store.Head(ctx, pendingKey); errors.Is(err, queue.ErrNotFound) {
			return CancelResult{}, fmt.Errorf("cancel %s: %w", id, ErrNotCancellable)
		}
	}
	return CancelResult{}, fmt.Errorf("cancel %s: the spec kept moving; try again", id)
}

// errNotRunning: the lease is held for something other than a run that its
// holder will end by reading the mark (a filing, a requeue, a prune, or a
// release already under way); the spec will be pending or settled shortly.
var errNotRunning = errors.New("lease not held for a run")

// markCancel writes the cancel mark into a live lease, keeping its holder's
// token: to the holder it is a write of unknown age over its own, which it
// adopts (see writeLease). ErrNotFound: there is no lease.
func (p *Protocol) markCancel(ctx context.Context, id, by string) (string, error) {
	key := p.cfg.Layout.Key(queue.Leases, id)
	for range 5 {
		o, err := p.store.Get(ctx, key, maxLeaseBytes)
		if err != nil {
			return "", err
		}
		var l leaseBody
		if err := json.Unmarshal(o.Body, &l); err != nil {
			return "", fmt.Errorf("cancel %s: unreadable lease: %w", id, err)
		}
		if l.Cancel != "" {
			return l.Node, nil // asked already
		}
		if l.intent() != intentRun || l.State == stateReleasing || l.State == stateFinishing {
			// A mark here might be read by nobody: the holder has chosen
			// its last writes already.
			return "", errNotRunning
		}
		l.Cancel = by
		body, nonce := encodeLease(&l, p.clock.Now())
		_, err = p.store.Put(ctx, key, body, queue.PutOptions{IfMatch: o.ETag})
		if errors.Is(err, queue.ErrUnknown) {
			_, err = p.readBack(ctx, key, l.Token, nonce)
		}
		switch {
		case err == nil:
			p.log.Info("cancel requested", "event", "spec.cancel_requested", "spec_id", id, "holder", l.Node, "by", by)
			return l.Node, nil
		case errors.Is(err, queue.ErrPrecondition), errors.Is(err, queue.ErrUnknown):
			continue // renewed meanwhile: mark the new version
		case errors.Is(err, queue.ErrNotFound):
			return "", err
		default:
			return "", fmt.Errorf("cancel %s: %w", id, err)
		}
	}
	return "", fmt.Errorf("cancel %s: the lease kept changing; try again", id)
}

// Requeue moves a spec from failed/ back to pending/ with a fresh attempt
// count. It holds the spec's lease meanwhile, so no run of the requeued spec
// can write a new failure that the delete of failed/ would then remove.
// ErrHeld: the id is in flight.
func (p *Protocol) Requeue(ctx context.Context, id string) error {
	failedKey := p.cfg.Layout.Key(queue.Failed, id)
	o, err := p.store.Get(ctx, failedKey, recoverLimit)
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	c, err := p.acquire(ctx, id, leaseBody{State: stateRequeueing, Intent: intentRequeue, FailedETag: o.ETag})
	if err != nil {
		return fmt.Errorf("requeue %s: %w", id, err)
	}
	c.Body = o.Body
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	if err := p.requeue(ctx, quit, c, o.Body, 0); err != nil {
		return fmt.Errorf("requeue %s: %w", id, c.stop(err))
	}
	p.finishRequeue(ctx, quit, c, o.ETag)
	return nil
}

// finishRequeue completes a requeue once pending/ holds the spec: failed/ goes.
func (p *Protocol) finishRequeue(ctx context.Context, quit <-chan struct{}, c *Claim, failedETag string) {
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) error {
		_, err := p.store.Head(ctx, p.cfg.Layout.Key(queue.Pending, c.id))
		return err
	})
	if err == nil {
		// Under our lease nobody writes failed/ for this id: its ETag is the
		// version we moved.
		err = c.act(ctx, quit, "delete failed", func(ctx context.Context) error {
			return p.store.Delete(ctx, p.cfg.Layout.Key(queue.Failed, c.id), failedETag)
		})
	}
	if err != nil && !errors.Is(err, queue.ErrNotFound) && !errors.Is(err, queue.ErrPrecondition) {
		p.leave(c, err)
		return
	}
	c.end(ctx, quit)
}

// Prune deletes the result at key (under completed/ or failed/) if, under
// the spec's lease, it is still the version listed (etag) and still older
// than olderThan on the server's clock. A result's ETag is the spec's MD5,
// the same for every run of those bytes: the lease keeps any run from
// writing a new result meanwhile, and the age read under it tells a fresh
// result of a rerun from the one judged. ErrGone: it changed or went, and
// stays; ErrHeld: the id is in flight.
func (p *Protocol) Prune(ctx context.Context, key, etag string, olderThan time.Duration) error {
	id, st, ok := p.resultID(key)
	if !ok {
		return fmt.Errorf("prune %s: not a result key", key)
	}
	c, err := p.acquire(ctx, id, leaseBody{State: statePruning, Intent: intentPrune, ResultKey: key, ResultETag: etag})
	if err != nil {
		return fmt.Errorf("prune %s: %w", key, err)
	}
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	var head queue.Object
	err = c.act(ctx, quit, "check "+string(st), func(ctx context.Context) (err error) {
		head, err = p.store.Head(ctx, key)
		return err
	})
	if err == nil && (head.ETag != etag || head.ServerTime.Sub(head.LastModified) <= olderThan) {
		err = fmt.Errorf("%s: rewritten since it was listed: %w", key, ErrGone)
	}
	if err == nil {
		err = c.act(ctx, quit, "delete "+string(st), func(ctx context.Context) error {
			return p.store.Delete(ctx, key, etag)
		})
	}
	switch {
	case err == nil:
		c.end(ctx, quit)
		return nil
	case errors.Is(err, ErrGone), errors.Is(err, queue.ErrNotFound), errors.Is(err, queue.ErrPrecondition):
		c.end(ctx, quit)
		return fmt.Errorf("prune %s: %w", key, ErrGone)
	}
	return fmt.Errorf("prune %s: %w", key, c.stop(err))
}

// resultID returns the id and state of a result key.
func (p *Protocol) resultID(key string) (string, queue.State, bool) {
	for _, st := range []queue.State{queue.Completed, queue.Failed} {
		if id, ok := p.cfg.Layout.ID(st, key); ok {
			return id, st, true
		}
	}
	return "", "", false
}
