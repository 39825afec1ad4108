// fleetd cancel and the cancel mark: docs/PROTOCOL.md, "Intents" (a cancel
// mark is honoured by whoever ends the claim).

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cellos/fleetd/internal/queue"
)

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
	// A claim's lease says "claiming" until its keeper's first renewal, a
	// third of a ttl after it was created: look for about a ttl.
	giveUp := p.clock.Now().Add(p.cfg.TTL)
	for try := 0; try == 0 || p.clock.Now().Before(giveUp); try++ {
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
			err = p.file(ctx, quit, Spec{ID: id, Key: pendingKey, ETag: o.ETag, Modified: o.LastModified, VersionID: o.VersionID, Body: o.Body}, Cancelled, reason)
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
		switch {
		case l.intent() != intentRun, l.State == stateReleasing, l.State == stateFinishing:
			// A mark here might be read by nobody: the holder has chosen
			// its last writes already.
			return "", errNotRunning
		case l.State == stateClaiming:
			// The holder may start its cell before it reads the lease
			// again, and the cell may end before a renewal would tell it:
			// wait until the lease says it runs.
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
