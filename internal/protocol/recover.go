// Recovery: docs/PROTOCOL.md, "Recovery" (the scan, the takeover, and what
// a successor does with each intent).

package protocol

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// recoverScan takes over the stale leases (and, withClaims, the lease-less
// claims) it finds and settles each spec: back to pending/, to failed/ after
// the maximum attempts, or only cleaned up when its result is already
// written. Age is judged on the server's clock: LastModified against the Date
// of the response. quit, when closed, stops the scan.
func (p *Protocol) recoverScan(ctx context.Context, quit <-chan struct{}, withClaims bool) error {
	// Claims are listed before leases: a claim whose lease appears in between
	// is live (a holder writes its lease before its claim).
	var orphans []store.Object
	if withClaims {
		err := p.store.List(ctx, p.cfg.Layout.Dir(store.Claimed), func(page store.Page) error {
			for _, o := range page.Objects {
				if page.ServerTime.Sub(o.LastModified) > staleAfter(p.cfg.TTL) {
					orphans = append(orphans, o)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	leased := map[string]bool{}
	leases := 0
	var old []store.Object
	err := p.store.List(ctx, p.cfg.Layout.Dir(store.Leases), func(page store.Page) error {
		for _, o := range page.Objects {
			id, ok := p.cfg.Layout.ID(store.Leases, o.Key)
			if !ok {
				continue
			}
			leased[id] = true
			leases++
			// The lease's own ttl is checked after reading it; ours filters.
			// A lease that names a session is never renewed: it is judged
			// by its session, once it is old enough to be worth a look.
			if page.ServerTime.Sub(o.LastModified) > staleAfter(MinTTL) {
				old = append(old, o)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.cfg.Metrics.FleetLeases(leases)
	j := &judge{p: p}
	if withClaims {
		j.collect(ctx) // sessions of nodes that died holding nothing
	}
	for _, o := range old {
		if stopped(ctx, quit) {
			return nil
		}
		id, _ := p.cfg.Layout.ID(store.Leases, o.Key)
		if seen, ok := p.seen.get(o.Key, o.ETag); ok && seen.session != "" && j.alive(ctx, seen.session, seen.ttl) &&
			!p.ownLeft(id, seen.token, false) {
			continue // read before, unchanged, and its session lives: no request
		}
		p.takeOverLease(ctx, quit, id, j)
	}
	p.seen.keepOnly(old)
	for _, o := range orphans {
		id, ok := p.cfg.Layout.ID(store.Claimed, o.Key)
		if !ok || leased[id] || stopped(ctx, quit) {
			continue
		}
		p.takeOverOrphan(ctx, quit, id)
	}
	return nil
}

func stopped(ctx context.Context, quit <-chan struct{}) bool {
	select {
	case <-quit:
		return true
	default:
		return ctx.Err() != nil
	}
}

// takeOverLease replaces a stale lease with our own (compare-and-swap on its
// ETag, so one recoverer wins and the old holder is fenced off), then settles
// the spec.
func (p *Protocol) takeOverLease(ctx context.Context, quit <-chan struct{}, id string, j *judge) {
	log := p.log.With("spec_id", id)
	key := p.cfg.Layout.Key(store.Leases, id)
	obj, err := p.store.Get(ctx, key, MaxLeaseBytes)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			log.Warn("recovery: read lease failed", "event", "recovery.read_lease_failed", "err", err)
		} else if p.session != nil {
			p.session.notHeld(id, "")
		}
		return
	}
	var old leaseBody
	if err := json.Unmarshal(obj.Body, &old); err != nil {
		log.Warn("recovery: unreadable lease; taking it over", "event", "recovery.unreadable_lease", "err", err)
	}
	if p.session != nil {
		p.session.notHeld(id, old.Token)
	}
	ttl := max(old.ttl(), MinTTL)
	age := obj.ServerTime.Sub(obj.LastModified)
	p.seen.put(key, obj.ETag, old)
	switch {
	case old.Session != "":
		// Alive while its session is: taken over once the session is ended
		// (by us or another), or when it is ours and we let it go.
		if !p.ownLeft(id, old.Token, false) && !j.ended(ctx, old.Session, ttl) {
			return
		}
	case age <= staleAfter(ttl):
		return // renewed since the listing, or a longer ttl than ours
	case !p.patient():
		return // just back from an outage: its holder gets a ttl to renew first
	}
	mine := old.successor(p.cfg.Node, newToken(), p.cfg.TTL)
	wctx := ctx
	if p.session != nil {
		// Our lease names our session: written only while it is valid.
		tok, until, ok := p.session.current()
		if !ok {
			return
		}
		mine.nameSession(tok, p.cfg.TTL)
		var cancel context.CancelFunc
		wctx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	body, nonce := encodeLease(&mine, p.clock.Now())
	sent := p.clock.Now()
	etag, err := p.store.Put(wctx, key, body, store.PutOptions{IfMatch: obj.ETag})
	if errors.Is(err, store.ErrUnknown) {
		etag, err = p.readBack(wctx, key, mine.Token, nonce)
		if err != nil && p.session != nil {
			p.session.leaveToken(id, mine.Token) // see acquire
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrPrecondition) || errors.Is(err, store.ErrNotFound) {
			log.Debug("recovery: lease changed under us; another node has it", "event", "recovery.lease_changed")
		} else {
			log.Warn("recovery: lease takeover failed", "event", "recovery.takeover_failed", "err", err)
		}
		return
	}
	p.ownLeft(id, old.Token, true) // settled from here on, if it was
	p.cfg.Metrics.LeaseTakenOver()
	log.Warn("recovery: took over a stale lease", "event", "lease.takeover", "holder", old.Node, "holder_state", old.State,
		"intent", mine.Intent, "lease_age_ms", age.Milliseconds(), "epoch", mine.Epoch)
	c := p.newClaim(id, mine, etag, sent)
	// Finish the intent as its first holder would have.
	switch mine.Intent {
	case intentRequeue:
		p.finishRequeue(ctx, quit, c, mine.FailedETag)
	case intentFile:
		p.finishFile(ctx, quit, c, mine.pending())
	case intentPromote:
		p.finishPromote(ctx, quit, c, mine.DelayedKey) // delayed.go
	case intentSchedule:
		p.finishSchedule(ctx, quit, c, mine) // schedule.go
	case intentCancel:
		p.finishCancel(ctx, quit, c) // cancel.go
	case intentPrune, intentSubmit:
		// Each has one write: whether or not it landed, only the lease is
		// left (a pending/ the submit wrote stands). The tool said nothing
		// it did not see land.
		c.end(ctx, quit)
	default:
		p.recoverRun(ctx, quit, c, old.Token, mine.pending(), mine.Attempts)
	}
}

// takeOverOrphan handles a claim with no lease: a claimed/ write that landed
// after its claim was given up, or a node of another kind. Creating the lease
// ourselves (create-only) makes it ours.
func (p *Protocol) takeOverOrphan(ctx context.Context, quit <-chan struct{}, id string) {
	log := p.log.With("spec_id", id)
	c, err := p.acquire(ctx, id, leaseBody{State: stateRecovering})
	if err != nil {
		if !errors.Is(err, ErrHeld) {
			log.Warn("recovery: lease for an orphaned claim failed", "event", "recovery.orphan_lease_failed", "err", err)
		}
		return
	}
	// Read the claim under our lease: nobody changes it from here on.
	var o store.Object
	err = c.act(ctx, quit, "read orphaned claim", func(ctx context.Context) (err error) {
		o, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Claimed, id))
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		c.end(ctx, quit) // finished and cleared since the listing
		return
	}
	if err != nil {
		c.drop()
		return
	}
	if o.Metadata[metaToken] != "" {
		// Written by a fleetd claim. Every claim writes claimed/ under its
		// lease and deletes the lease only once the spec is settled (result
		// written, pending/ rewritten, or claimed/ cleared), so a lease-less
		// claimed/ of ours is a late write of a claim that has ended: returning
		// it would run a settled spec again, over any newer submission.
		log.Warn("recovery: claimed/ written late by an ended claim; clearing it", "event", "recovery.late_claim_cleared", "claim_token", o.Metadata[metaToken])
		c.claimedETag = o.ETag
		c.clearClaimed(ctx, quit)
		c.end(ctx, quit)
		return
	}
	p.cfg.Metrics.LeaseTakenOver()
	log.Warn("recovery: claim without a lease; settling it", "event", "recovery.orphan")
	attempts, _ := strconv.Atoi(o.Metadata[metaAttempts])
	p.recoverRun(ctx, quit, c, o.Metadata[metaToken], version{etag: o.Metadata[metaPendingETag]}, attempts)
}

// recoverRun decides, under our lease, what becomes of a spec whose holder
// (token prev) stopped: nothing to return if it never consumed pending/, only
// cleanup if its result is written, otherwise back to pending/ or, with its
// attempts used up, to failed/.
func (p *Protocol) recoverRun(ctx context.Context, quit <-chan struct{}, c *Claim, prev string, judged version, attempts int) {
	id := c.id
	var pending store.Object
	err := c.act(ctx, quit, "check pending", func(ctx context.Context) (err error) {
		pending, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Pending, id))
		return err
	})
	// A pending/ of the same bytes written since (a resubmission) is not
	// the version the claim judged: that one was consumed — unless a
	// holder was releasing the spec, whose own write back it may be: then
	// it stands for the run either way.
	c.mu.Lock()
	released := c.lease.Released
	c.mu.Unlock()
	consumed := errors.Is(err, store.ErrNotFound) ||
		err == nil && judged.etag != "" && !judged.is(pending) && !(released && pending.ETag == judged.etag)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		p.leave(c, err)
		return
	}
	// The run whose result we look for is the claimer's, named in claimed/'s
	// metadata: when the stale holder is itself a recoverer that died before
	// settling, prev is its token, not the run's.
	tokens := map[string]bool{c.origin: true}
	if prev != "" {
		tokens[prev] = true
	}
	var claimedHead store.Object
	err = c.act(ctx, quit, "read claimed", func(ctx context.Context) (err error) {
		claimedHead, err = p.store.Head(ctx, p.cfg.Layout.Key(store.Claimed, id))
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		p.leave(c, err)
		return
	}
	if t := claimedHead.Metadata[metaToken]; err == nil && t != "" {
		tokens[t] = true
	}
	if len(tokens) > 0 {
		for _, s := range []store.Area{store.Completed, store.Failed} {
			var res store.Object
			err := c.act(ctx, quit, "check result", func(ctx context.Context) (err error) {
				res, err = p.store.Head(ctx, p.cfg.Layout.Key(s, id))
				return err
			})
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				p.leave(c, err)
				return
			}
			if err == nil && tokens[res.Metadata[metaToken]] {
				c.log.Info("recovery: result already written; clearing the claim", "event", "recovery.result_found", "state", string(s))
				p.adoptClaimed(ctx, quit, c)
				c.clearClaimed(ctx, quit)
				c.endRun(ctx, quit)
				return
			}
		}
	}
	if !consumed {
		// The holder stopped before consuming pending/: no run started, and
		// pending/ still holds the spec. Only the claim goes.
		c.log.Info("recovery: the claim never started; pending/ still holds the spec", "event", "recovery.never_started")
		p.adoptClaimed(ctx, quit, c)
		p.endUnconsumed(ctx, quit, c)
		return
	}
	var claimed store.Object
	err = c.act(ctx, quit, "read claimed", func(ctx context.Context) (err error) {
		claimed, err = p.store.Get(ctx, p.cfg.Layout.Key(store.Claimed, id), recoverLimit)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		if by := c.CancelledBy(); by != "" {
			// Nothing of this claim ran, and the mark is honoured as its
			// holder would have: every copy waiting is filed cancelled.
			_, _ = p.cancelPending(ctx, quit, c, by) // an error leaves it to the next scan
			return
		}
		c.log.Warn("recovery: no claimed/ spec and no result of the holder; removing the lease", "event", "recovery.lease_removed")
		c.end(ctx, quit)
		return
	}
	if err != nil {
		p.leave(c, err)
		return
	}
	c.claimedETag, c.Body, c.Attempt = claimed.ETag, claimed.Body, attempts
	c.mu.Lock()
	c.retry = ParseRetry(claimed.Metadata)
	c.mu.Unlock()
	if by := c.CancelledBy(); by != "" {
		// Cancelled while its holder ran it: honour the mark the holder left.
		if err := c.Finish(ctx, quit, Record{Outcome: Cancelled, Reason: "cancelled by " + by, Finished: time.Now()}); err != nil {
			p.leave(c, err)
		}
		return
	}
	if key, meta, ok := c.retrying(); ok {
		p.finishRetry(ctx, quit, c, key, meta) // retry.go
		return
	}
	if attempts < p.cfg.MaxAttempts {
		if err := c.Release(ctx, quit, true); err != nil {
			p.leave(c, err)
		}
		return
	}
	rec := Record{Outcome: Abandoned, Reason: fmt.Sprintf("abandoned after %d attempts", attempts), Finished: time.Now()}
	if err := c.Finish(ctx, quit, rec); err != nil {
		p.leave(c, err)
	}
}

// adoptClaimed learns claimed/'s ETag so the cleanup deletes only that.
func (p *Protocol) adoptClaimed(ctx context.Context, quit <-chan struct{}, c *Claim) {
	err := c.act(ctx, quit, "read claimed", func(ctx context.Context) error {
		o, err := p.store.Head(ctx, p.cfg.Layout.Key(store.Claimed, c.id))
		if err == nil {
			c.claimedETag = o.ETag
		}
		return err
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		c.log.Warn("recovery: read claimed/ failed", "event", "recovery.read_claim_failed", "err", err)
	}
}

// leave stops acting on a recovered claim; the lease goes stale and the next
// scan, here or elsewhere, picks it up.
func (p *Protocol) leave(c *Claim, err error) {
	c.drop()
	if !errors.Is(err, ErrLost) && !errors.Is(err, ErrLeftToRecovery) {
		c.log.Warn("recovery: stopped; the next scan retries", "event", "recovery.stopped", "err", err)
	}
}
