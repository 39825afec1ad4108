// fleetd cancel and the cancel mark: docs/PROTOCOL.md, "Intents" (a cancel
// mark is honoured by whoever ends the claim).

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cellos/fleetd/internal/store"
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

// Cancel stops a spec on behalf of by: every copy of it, wherever it is.
// It first takes the spec's lease itself (the cancel intent): while it holds
// it nothing can claim, promote or retry the spec, so every copy waiting
// under pending/.delayed/ and the one in pending/ are filed cancelled under
// failed/ (cancelPending) without one slipping from one place to another
// between two looks. If a run holds the lease, Cancel marks it instead (a
// compare-and-swap) and rings its holder's session (see ring): the holder
// reads the mark within a renewal period, stops the cell, and files it and
// every waiting copy cancelled under its lease; a holder that dies meanwhile
// leaves the mark to its recoverer, which does the same. A lease held for
// anything else (a release, a retry, a promotion, a filing) ends shortly:
// Cancel waits for it.
func (p *Protocol) Cancel(ctx context.Context, id, by string) (CancelResult, error) {
	quit := make(chan struct{})
	close(quit) // a tool does not wait out an outage
	// The spec may be between two states for a while (a self-renewing
	// lease says "claiming" until its keeper's first renewal, a third of a
	// ttl after it was created): look for about a ttl.
	giveUp := p.clock.Now().Add(p.cfg.TTL)
	for try := 0; try == 0 || p.clock.Now().Before(giveUp); try++ {
		if try > 0 {
			// The lease is held for a move that ends shortly: look again.
			if err := p.sleep(ctx, min(time.Duration(100<<min(try, 4))*time.Millisecond, time.Second)); err != nil {
				return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
			}
		}
		c, err := p.acquire(ctx, id, leaseBody{State: stateCancelling, Intent: intentCancel, Cancel: by})
		switch {
		case err == nil:
			n, err := p.cancelPending(ctx, quit, c, by)
			switch {
			case err != nil:
				return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
			case n == 0:
				return CancelResult{}, fmt.Errorf("cancel %s: %w", id, ErrNotCancellable)
			}
			return CancelResult{Filed: true}, nil
		case !errors.Is(err, ErrHeld):
			return CancelResult{}, fmt.Errorf("cancel %s: %w", id, err)
		}
		node, err := p.markCancel(ctx, id, by)
		switch {
		case errors.Is(err, errNotRunning), errors.Is(err, store.ErrNotFound):
			continue // ends shortly, or has ended: take the lease
		}
		return CancelResult{Node: node}, err
	}
	return CancelResult{}, fmt.Errorf("cancel %s: the spec kept moving; try again", id)
}

// endRun ends a run's claim once its result is written. A cancel mark found
// on the lease then (one that came too late to stop the cell) still takes
// the spec's delayed copies, which nobody could promote meanwhile.
func (c *Claim) endRun(ctx context.Context, quit <-chan struct{}) {
	if c.endLease(ctx, quit, true) {
		return
	}
	if _, err := c.p.cancelDelayed(ctx, quit, c, c.CancelledBy()); err != nil {
		c.p.leave(c, err) // the mark stays for recovery
		return
	}
	c.end(ctx, quit)
}

// finishCancel ends a cancel whose holder (the tool) stopped, as it would
// have: the cancel was asked for, and filing the copies again is harmless.
func (p *Protocol) finishCancel(ctx context.Context, quit <-chan struct{}, c *Claim) {
	_, _ = p.cancelPending(ctx, quit, c, c.CancelledBy()) // an error leaves it to the next scan
}

// cancelDelayed files each copy of c's spec waiting under pending/.delayed/
// (a retry's backoff, submit --in or --at) cancelled, under c, which nobody
// else can promote while c holds the lease: the record first, then the
// delayed version read. It returns how many it filed.
func (p *Protocol) cancelDelayed(ctx context.Context, quit <-chan struct{}, c *Claim, by string) (int, error) {
	var keys []string
	err := c.act(ctx, quit, "list delayed", func(ctx context.Context) error {
		keys = keys[:0]
		return p.store.List(ctx, p.cfg.Layout.DelayedDir(), func(page store.Page) error {
			for _, o := range page.Objects {
				if id, _, err := p.cfg.Layout.ParseDelayed(o.Key); err == nil && id == c.id {
					keys = append(keys, o.Key)
				}
			}
			return nil
		})
	})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, key := range keys {
		var o store.Object
		err := c.act(ctx, quit, "read delayed", func(ctx context.Context) (err error) {
			o, err = p.store.Get(ctx, key, recoverLimit)
			return err
		})
		switch {
		case errors.Is(err, store.ErrNotFound):
			continue
		case err != nil:
			return n, err
		}
		rec := Record{Outcome: Cancelled, Reason: "cancelled by " + by, Finished: time.Now(), node: p.cfg.Node, token: c.origin,
			retry: ParseRetry(o.Metadata)}
		err = c.act(ctx, quit, "write cancelled", func(ctx context.Context) error {
			_, err := p.store.Put(ctx, p.cfg.Layout.Key(store.Failed, c.id), o.Body, store.PutOptions{Metadata: rec.metadata()})
			return err
		})
		if err != nil {
			return n, err
		}
		p.deleteDelayed(ctx, quit, c, key, store.Version{ETag: o.ETag, Modified: o.LastModified, ID: o.VersionID})
		p.cfg.Metrics.Finished(string(Cancelled))
		c.log.Info("delayed spec cancelled", "event", "spec.cancelled", "key", key, "by", by)
		n++
	}
	return n, nil
}

// heard rings the session of the holder of lease l, if it has one, and
// reports whether the holder heard the cancel mark.
func (p *Protocol) heard(ctx context.Context, id string, l leaseBody) error {
	if l.Session == "" || p.ring(ctx, l.Session, ringEntry(id, l.Token), l.ttl()) {
		return nil
	}
	return fmt.Errorf("cancel %s: node %s was asked to stop it and has not answered yet; it will once it reaches the store: %w",
		id, l.Node, ErrCancelUnheard)
}

// ErrCancelUnheard: the holder of a running spec was asked to stop it, and
// has not yet said it heard (it may be cut off from the store).
var ErrCancelUnheard = errors.New("cancel not yet heard by its holder")

// ring tells the holder's session (token tok, renewed every ttl/3) that the
// lease of a claim (entry: its id and token, see ringEntry) carries a cancel
// mark, and waits until the holder has heard.
// The ring is a write of the session object (compare-and-swap, keeping the
// holder's token) adding entry to its ring: the holder's next renewal runs into
// it, reads the lease, stops the cell, and takes entry out of the ring — so the
// cancel reaches it within a renewal period with no request per running
// cell. A session that is gone needs no ring: its holder moves the lease or
// loses it, and either way the mark is read. ring reports whether the holder
// heard within two renewal periods.
func (p *Protocol) ring(ctx context.Context, tok, entry string, ttl time.Duration) bool {
	key := p.cfg.Layout.Key(store.Sessions, tok)
	rang := false
	giveUp := p.clock.Now().Add(2 * ttl / 3)
	for try := 0; p.clock.Now().Before(giveUp); try++ {
		if try > 0 && p.sleep(ctx, min(time.Duration(100<<min(try, 4))*time.Millisecond, ttl/6)) != nil {
			return false
		}
		o, err := p.store.Get(ctx, key, MaxLeaseBytes)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return true
		case err != nil:
			continue
		}
		var l leaseBody
		if json.Unmarshal(o.Body, &l) != nil {
			return false
		}
		if slices.Contains(l.Ring, entry) {
			rang = true
			continue // not heard yet
		}
		if rang {
			return true // in the ring once, and out of it now
		}
		l.Ring = append(l.Ring, entry)
		body, _ := encodeLease(&l, p.clock.Now())
		_, err = p.store.Put(ctx, key, body, store.PutOptions{IfMatch: o.ETag})
		rang = err == nil // renewed meanwhile, or unknown: ring the version we read next
	}
	return false
}

// ringEntry names, in a session's ring, the claim of id with lease token
// token: an entry left by the cancel of an earlier claim of the same id is
// not this one's, so its answer does not say this claim's holder heard.
func ringEntry(id, token string) string { return id + "@" + token }

// parseRingEntry undoes ringEntry (a token has no "@"; an id may).
func parseRingEntry(e string) (id, token string) {
	i := strings.LastIndex(e, "@")
	if i < 0 {
		return e, ""
	}
	return e[:i], e[i+1:]
}

// errNotRunning: the lease is held for something other than a run that its
// holder will end by reading the mark (a filing, a requeue, a prune, or a
// release already under way); the spec will be pending or settled shortly.
var errNotRunning = errors.New("lease not held for a run")

// markCancel writes the cancel mark into a live lease, keeping its holder's
// token: to the holder it is a write of unknown age over its own, which it
// adopts (see writeLease). ErrNotFound: there is no lease.
func (p *Protocol) markCancel(ctx context.Context, id, by string) (string, error) {
	key := p.cfg.Layout.Key(store.Leases, id)
	for range 5 {
		o, err := p.store.Get(ctx, key, MaxLeaseBytes)
		if err != nil {
			return "", err
		}
		var l leaseBody
		if err := json.Unmarshal(o.Body, &l); err != nil {
			return "", fmt.Errorf("cancel %s: unreadable lease: %w", id, err)
		}
		if l.intent() != intentRun {
			// Not a run (another cancel, a filing, a promotion…): it ends
			// shortly, and then the lease is ours to take.
			return "", errNotRunning
		}
		if l.Cancel != "" {
			// Asked already; a holder with a session may not have heard.
			return l.Node, p.heard(ctx, id, l)
		}
		switch {
		case l.State == stateReleasing, l.State == stateFinishing, l.RetryKey != "":
			// (RetryKey: a successor finishing a retry reads no mark.)
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
		_, err = p.store.Put(ctx, key, body, store.PutOptions{IfMatch: o.ETag})
		if errors.Is(err, store.ErrUnknown) {
			_, err = p.readBack(ctx, key, l.Token, nonce)
		}
		switch {
		case err == nil:
			p.log.Info("cancel requested", "event", "spec.cancel_requested", "spec_id", id, "holder", l.Node, "by", by)
			return l.Node, p.heard(ctx, id, l)
		case errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrUnknown):
			continue // renewed meanwhile: mark the new version
		case errors.Is(err, store.ErrNotFound):
			return "", err
		default:
			return "", fmt.Errorf("cancel %s: %w", id, err)
		}
	}
	return "", fmt.Errorf("cancel %s: the lease kept changing; try again", id)
}
