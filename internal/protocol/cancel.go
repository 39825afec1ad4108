// fleetd cancel and the cancel mark: docs/PROTOCOL.md, "Intents" (a cancel
// mark is honoured by whoever ends the claim).

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
// one is marked in its lease (a compare-and-swap) and its holder's session is
// rung (see ring): the holder reads the mark within a renewal period, stops
// the cell and files it cancelled; a holder that dies meanwhile leaves the mark
// to its recoverer, which files it so too.
func (p *Protocol) Cancel(ctx context.Context, id, by string) (CancelResult, error) {
	reason := "cancelled by " + by
	pendingKey := p.cfg.Layout.Key(queue.Pending, id)
	// The spec may be between two states for a while (a self-renewing
	// lease says "claiming" until its keeper's first renewal, a third of a
	// ttl after it was created): look for about a ttl.
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

// heard rings the session of the holder of lease l, if it has one, and
// reports whether the holder heard the cancel mark.
func (p *Protocol) heard(ctx context.Context, id string, l leaseBody) error {
	if l.Session == "" || p.ring(ctx, l.Session, id, l.ttl()) {
		return nil
	}
	return fmt.Errorf("cancel %s: node %s was asked to stop it and has not answered yet; it will once it reaches the store: %w",
		id, l.Node, ErrCancelUnheard)
}

// ErrCancelUnheard: the holder of a running spec was asked to stop it, and
// has not yet said it heard (it may be cut off from the store).
var ErrCancelUnheard = errors.New("cancel not yet heard by its holder")

// ring tells the holder's session (token tok, renewed every ttl/3) that the
// lease of id carries a cancel mark, and waits until the holder has heard.
// The ring is a write of the session object (compare-and-swap, keeping the
// holder's token) adding id to its ring: the holder's next renewal runs into
// it, reads the lease, stops the cell, and takes id out of the ring — so the
// cancel reaches it within a renewal period with no request per running
// cell. A session that is gone needs no ring: its holder moves the lease or
// loses it, and either way the mark is read. ring reports whether the holder
// heard within two renewal periods.
func (p *Protocol) ring(ctx context.Context, tok, id string, ttl time.Duration) bool {
	key := p.cfg.Layout.Key(queue.Sessions, tok)
	rang := false
	giveUp := p.clock.Now().Add(2 * ttl / 3)
	for try := 0; p.clock.Now().Before(giveUp); try++ {
		if try > 0 && p.sleep(ctx, min(time.Duration(100<<min(try, 4))*time.Millisecond, ttl/6)) != nil {
			return false
		}
		o, err := p.store.Get(ctx, key, MaxLeaseBytes)
		switch {
		case errors.Is(err, queue.ErrNotFound):
			return true
		case err != nil:
			continue
		}
		var l leaseBody
		if json.Unmarshal(o.Body, &l) != nil {
			return false
		}
		if slices.Contains(l.Ring, id) {
			rang = true
			continue // not heard yet
		}
		if rang {
			return true // in the ring once, and out of it now
		}
		l.Ring = append(l.Ring, id)
		body, _ := encodeLease(&l, p.clock.Now())
		_, err = p.store.Put(ctx, key, body, queue.PutOptions{IfMatch: o.ETag})
		rang = err == nil // renewed meanwhile, or unknown: ring the version we read next
	}
	return false
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
		o, err := p.store.Get(ctx, key, MaxLeaseBytes)
		if err != nil {
			return "", err
		}
		var l leaseBody
		if err := json.Unmarshal(o.Body, &l); err != nil {
			return "", fmt.Errorf("cancel %s: unreadable lease: %w", id, err)
		}
		if l.Cancel != "" {
			// Asked already; a holder with a session may not have heard.
			return l.Node, p.heard(ctx, id, l)
		}
		switch {
		case l.intent() != intentRun, l.State == stateReleasing, l.State == stateFinishing:
			// A mark here might be read by nobody: the holder has chosen
			// its last writes already.
			return "", errNotRunning
		case l.State == stateClaiming && l.Session == "":
			// The holder may start its cell before it reads the lease
			// again, and the cell may end before a renewal would tell it:
			// wait until the lease says it runs. (A holder with a session
			// is rung, below, and reads its lease at once.)
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
			return l.Node, p.heard(ctx, id, l)
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
