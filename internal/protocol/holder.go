// The holder of a lease and its window of validity: docs/PROTOCOL.md, "The
// rules" (the lease lives as long as the ownership; a holder fences itself)
// and "Run" (renewal).

package protocol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cellos/fleetd/internal/store"
)

// Claim is this node's ownership of one spec: a lease it holds, alive from
// its creation until it is deleted or given up. An agent's lease names its
// session and is alive while the session is (see Session); a lease of a
// queue tool, which has no session, is kept alive by a keeper goroutine of
// its own. Every write the holder makes goes through act, which makes it only
// while the claim is valid by the holder's own clock, so it lands before any
// other node could judge it stale.
type Claim struct {
	p     *Protocol
	id    string
	key   string // leases/<id>.json
	log   *slog.Logger
	token string
	// origin is the intent's token (see leaseBody.Origin): records written
	// under this claim carry it.
	origin string

	// Body and Attempt describe the spec, for the pipeline.
	Body    []byte
	Attempt int

	claimedETag string // of claimed/, once written

	retry RetryState // the spec's retries so far (retry.go); guarded by mu

	mu         sync.Mutex
	lease      leaseBody
	etag       string    // of our last lease write that landed
	validUntil time.Time // on our clock; zero: not valid
	lost       bool      // taken over: final
	changed    chan struct{}
	cancelled  chan struct{} // closed when the lease carries a cancel mark
	cancelOnce sync.Once
	expiry     interface{ Stop() bool }

	// sess is the session the lease names, whose renewals make the claim
	// valid; nil: the lease renews itself. owner is set instead on the
	// session's own object, which is kept like a lease.
	sess  *Session
	owner *Session

	// writeMu orders the keeper's renewals and the final delete, so the
	// delete is never raced by a renewal that would change the ETag.
	writeMu writeLock
	ended   bool // the lease was deleted; guarded by writeMu
	// unknown lists the lease writes since the last one known to have landed
	// whose outcome we could not learn; guarded by writeMu.
	unknown    []leaseWrite
	stopKeeper context.CancelFunc
	keeperDone chan struct{}
}

// newClaim returns the claim of a lease this node wrote, sent at sent. A
// lease naming a session is vouched for by p's session; any other is kept by
// a keeper of its own.
func (p *Protocol) newClaim(id string, l leaseBody, etag string, sent time.Time) *Claim {
	c := p.newHolder(p.cfg.Layout.Key(store.Leases, id), id, l, etag)
	if l.Session != "" {
		c.sess = p.session
		c.sess.vouch(c, l.Session)
		return c
	}
	c.renewed(etag, sent)
	c.startKeeper()
	return c
}

func (p *Protocol) newHolder(key, id string, l leaseBody, etag string) *Claim {
	c := &Claim{
		p: p, id: id, key: key, token: l.Token, origin: l.origin(),
		log:       p.log.With("spec_id", id),
		lease:     l,
		etag:      etag,
		changed:   make(chan struct{}),
		cancelled: make(chan struct{}),
	}
	if l.Cancel != "" {
		c.markCancelled(l.Cancel)
	}
	return c
}

func (c *Claim) startKeeper() {
	ctx, cancel := context.WithCancel(context.Background())
	c.stopKeeper = cancel
	c.keeperDone = make(chan struct{})
	go func() {
		defer close(c.keeperDone)
		c.keep(ctx)
	}()
}

// ID returns the spec id.
func (c *Claim) ID() string { return c.id }

// Log returns the claim's logger, with its spec id.
func (c *Claim) Log() *slog.Logger { return c.log }

// Hold says whether the holder may act now (valid: renewed in time) and
// whether the lease was taken over (lost: final), with a channel closed at
// the next change of either. A cell must make no progress while the claim is
// not valid, and must never go on once it is lost.
func (c *Claim) Hold() (valid, lost bool, changed <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.lost && c.p.clock.Now().Before(c.validUntil), c.lost, c.changed
}

// Cancelled is closed once someone asked, through the lease, for the spec to
// be cancelled; CancelledBy says who.
func (c *Claim) Cancelled() <-chan struct{} { return c.cancelled }

// CancelledBy names who cancelled the spec ("" if nobody did).
func (c *Claim) CancelledBy() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.Cancel
}

func (c *Claim) markCancelled(by string) {
	c.mu.Lock()
	c.lease.Cancel = by // kept in every later write, for a recoverer to honour
	c.mu.Unlock()
	c.cancelOnce.Do(func() { close(c.cancelled) })
}

// Lost reports whether the lease was taken over.
func (c *Claim) Lost() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// remaining is how long the lease stays valid from now.
func (c *Claim) remaining() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.validUntil.Sub(c.p.clock.Now())
}

// intentIs reports whether the lease is held for intent.
func (c *Claim) intentIs(intent string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease.intent() == intent
}

func (c *Claim) setState(s string) {
	c.mu.Lock()
	c.lease.State = s
	c.mu.Unlock()
}

// renewed records a lease write that landed, sent at sent. A write of a
// lease that names a session proves nothing of the holder's liveness: only
// the session's renewals make such a claim valid.
func (c *Claim) renewed(etag string, sent time.Time) {
	c.mu.Lock()
	c.etag = etag
	c.mu.Unlock()
	if c.sess != nil {
		return
	}
	c.extend(sent.Add(validFor(c.lease.ttl())))
	if c.owner != nil {
		c.owner.renewed(c, sent)
	}
}

// extend makes the claim valid until until, if that is later.
func (c *Claim) extend(until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until.After(c.validUntil) {
		c.validUntil = until
	}
	if c.expiry != nil {
		c.expiry.Stop()
	}
	c.expiry = c.p.clock.AfterFunc(c.validUntil.Sub(c.p.clock.Now()), c.checkExpiry)
	c.signal()
}

// checkExpiry wakes the waiters on the claim's state once its validity lapses.
func (c *Claim) checkExpiry() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.p.clock.Now().Before(c.validUntil) {
		c.signal()
	}
}

func (c *Claim) markLost() {
	c.mu.Lock()
	was := c.lost
	c.lost = true
	c.signal()
	c.mu.Unlock()
	if c.owner != nil && !was {
		c.owner.lost(c)
	}
}

// signal wakes everyone waiting for a change; c.mu is held.
func (c *Claim) signal() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// keep renews the lease every ttl/3 and, after a failed renewal, retries
// sooner. It never gives up on its own: a renewal is a compare-and-swap, so
// one that lands after a lapse proves nobody took the lease over.
func (c *Claim) keep(ctx context.Context) {
	// Under c.mu: ttl() copies the whole lease, whose State the holder
	// changes meanwhile (a data race the race detector reports).
	c.mu.Lock()
	ttl := c.lease.ttl()
	c.mu.Unlock()
	wait := ttl / 3
	for {
		if c.p.sleep(ctx, wait) != nil {
			return
		}
		err := c.renew(ctx)
		if err != nil && !errors.Is(err, errAdopted) && c.owner != nil {
			// (A ring, or a late write of ours, is the store answering.)
			c.owner.faltered()
		}
		switch {
		case err == nil:
			c.p.cfg.Metrics.LeaseRenewed()
			wait = ttl / 3
		case errors.Is(err, ErrLost) && c.owner != nil:
			c.markLost() // the session tells what it means
			return
		case errors.Is(err, ErrLost):
			c.log.Warn("lease taken over by another node; this node leaves the spec alone", "event", "lease.lost")
			c.markLost()
			return
		case ctx.Err() != nil, errors.Is(err, errEnded):
			return
		default:
			c.log.Warn("lease renewal failed; retrying", "event", "lease.renew_retry", "err", err)
			wait = min(ttl/10, time.Second)
		}
	}
}

var errEnded = errors.New("lease ended")

// errAdopted: the object holds another write with our token (fleetd cancel's
// ring or mark, or a late write of ours), read back: we go on from it.
var errAdopted = errors.New("went on from another write with our token")

// renew rewrites the lease with a fresh nonce, If-Match our last write.
func (c *Claim) renew(ctx context.Context) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.ended {
		return errEnded
	}
	c.mu.Lock()
	if c.lost {
		c.mu.Unlock()
		return ErrLost
	}
	l := c.lease
	etag := c.etag
	c.mu.Unlock()
	return c.writeLease(ctx, l, etag)
}

// writeLease writes l over the lease whose ETag is etag and records it.
func (c *Claim) writeLease(ctx context.Context, l leaseBody, etag string) error {
	body, nonce := encodeLease(&l, c.p.clock.Now())
	sent := c.p.clock.Now()
	wctx, cancel := context.WithTimeout(ctx, c.tryFor())
	tag, err := c.p.store.Put(wctx, c.key, body, store.PutOptions{IfMatch: etag})
	cancel()
	if err == nil {
		c.unknown = nil
		c.renewed(tag, sent)
		return nil
	}
	if errors.Is(err, store.ErrUnknown) {
		c.unknown = append(c.unknown, leaseWrite{nonce: nonce, sent: sent})
	} else if !errors.Is(err, store.ErrPrecondition) && !errors.Is(err, store.ErrNotFound) {
		return err // not sent, or refused: try again
	}
	// The write may have landed with its answer lost, and a 412 may come from
	// a late write of ours that changed the ETag: only the lease itself tells
	// a takeover from our own writes. The read gets its own time: the one
	// whose answer was lost may have used up ctx.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.tryFor())
	defer cancel()
	tag, landed, held, err := c.resolve(rctx)
	switch {
	case errors.Is(err, store.ErrPrecondition), errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrLost, err)
	case err != nil:
		return err // cannot tell yet: try again soon, the lease is not given up
	}
	c.unknown = nil
	c.renewed(tag, landed)
	switch {
	case landed.IsZero() && tag == etag:
		// Our write did not land; the lease is as we left it.
		return fmt.Errorf("lease %s: our write did not land: %w", c.key, store.ErrUnknown)
	case landed.IsZero():
		// The lease holds a write of ours we cannot date (fleetd cancel's
		// mark or ring keeps our token): go on from its ETag without
		// extending the validity, and renew again soon.
		return fmt.Errorf("lease %s: went on from a write of ours of unknown age: %w: %w", c.key, errAdopted, store.ErrUnknown)
	case held != nonce:
		// It holds an earlier write of ours (a renewal whose answer was
		// lost), not l: a state this write carried (releasing, finishing) is
		// not there yet. Write it again, from that ETag.
		return fmt.Errorf("lease %s: holds an earlier write of ours, not this one: %w: %w", c.key, errAdopted, store.ErrUnknown)
	}
	return nil
}

// tryFor is how long one request of a renewal may take: half the validity
// left, so one that hangs is given up with time left for another before the
// lease lapses (the store's retries and SlowDown pause alone can outlast the
// validity); once it has lapsed, a third of the ttl.
func (c *Claim) tryFor() time.Duration {
	if r := c.remaining(); r > 0 {
		return r / 2
	}
	return c.p.cfg.TTL / 3
}

// leaseWrite is a lease write of ours whose outcome we have not learnt.
type leaseWrite struct {
	nonce string
	sent  time.Time
}

// resolve reads the lease back. If it holds our token, it returns its ETag,
// the nonce of the write it holds and, if that is one of ours whose outcome
// we had not learnt (c.unknown), when it was sent (zero otherwise). ErrPrecondition:
// it holds another node's write; ErrNotFound: there is none; any other error:
// we cannot tell yet. Called under writeMu.
func (c *Claim) resolve(ctx context.Context) (etag string, sent time.Time, nonce string, err error) {
	l, etag, err := c.p.readLease(ctx, c.key, c.token)
	if err != nil {
		return "", time.Time{}, "", err
	}
	if l.Cancel != "" {
		c.markCancelled(l.Cancel) // fleetd cancel wrote over our last renewal
	}
	if len(l.Ring) > 0 && c.owner != nil {
		c.owner.rung(c, l.Ring) // fleetd cancel marked leases this session vouches for
	}
	for _, w := range c.unknown {
		if w.nonce == l.Nonce {
			return etag, w.sent, l.Nonce, nil
		}
	}
	return etag, time.Time{}, l.Nonce, nil
}

// act runs op while the lease is valid: it waits for a valid lease, gives op
// a context that ends when the validity does, and repeats op until it gives a
// definite answer. op must be safe to repeat. It returns ErrLost once the
// lease is taken over, and ErrLeftToRecovery when ctx ends or, with quit
// closed, when the lease is not valid.
func (c *Claim) act(ctx context.Context, quit <-chan struct{}, what string, op func(ctx context.Context) error) error {
	held := false
	for try := 0; ; try++ {
		if valid, _, _ := c.Hold(); !valid && !held && (what == stepWriteOutput || what == stepWriteResult) {
			// The cell is done; its result waits in memory for the store.
			held = true
			c.p.cfg.Metrics.ResultHeld()
			c.log.Warn("result held: the store cannot be reached; written once the session is renewed", "event", "result.held")
		}
		until, err := c.waitValid(ctx, quit)
		if err != nil {
			return err
		}
		octx, cancel := context.WithDeadline(ctx, until)
		err = op(octx)
		cancel()
		if definite(err) {
			return err
		}
		c.log.Warn("protocol step failed; retrying while the lease is held", "event", "protocol.step_retry", "step", what, "err", err)
		if c.p.sleep(ctx, min(time.Duration(100<<min(try, 6))*time.Millisecond, 5*time.Second)) != nil {
			return ErrLeftToRecovery
		}
	}
}

// waitValid returns when the lease is valid, with the end of its validity.
func (c *Claim) waitValid(ctx context.Context, quit <-chan struct{}) (time.Time, error) {
	for {
		c.mu.Lock()
		lost, until, changed := c.lost, c.validUntil, c.changed
		c.mu.Unlock()
		switch {
		case lost:
			return time.Time{}, ErrLost
		case ctx.Err() != nil:
			return time.Time{}, ErrLeftToRecovery
		}
		now := c.p.clock.Now()
		if now.Before(until) {
			return until, nil
		}
		select {
		case <-quit:
			return time.Time{}, ErrLeftToRecovery
		default:
		}
		select {
		case <-changed:
		case <-ctx.Done():
		case <-quit:
		}
	}
}

// end deletes the lease, the last step of every ownership, and stops the
// keeper. A lease that cannot be deleted is left for recovery, which finds the
// work already done.
func (c *Claim) end(ctx context.Context, quit <-chan struct{}) { c.endLease(ctx, quit, false) }

// endLease is end. With unlessMarked, a cancel mark found on the lease (one
// that landed since the holder last looked) stops the delete: endLease then
// returns false, the lease still held, for the caller to honour the mark.
func (c *Claim) endLease(ctx context.Context, quit <-chan struct{}, unlessMarked bool) bool {
	marked := false
	err := c.act(ctx, quit, "delete lease", func(ctx context.Context) error {
		c.writeMu.Lock()
		defer c.writeMu.Unlock()
		c.mu.Lock()
		etag, by := c.etag, c.lease.Cancel
		c.mu.Unlock()
		if unlessMarked && by != "" {
			// A renewal read a mark since the caller looked.
			marked = true
			return nil
		}
		err := c.p.store.Delete(ctx, c.key, etag)
		if errors.Is(err, store.ErrPrecondition) {
			// A cancel mark, or a late write of ours, may have changed the
			// ETag: if the lease is still ours, delete that version.
			if tag, _, _, rerr := c.resolve(ctx); rerr == nil {
				c.mu.Lock()
				c.etag = tag
				c.mu.Unlock()
				if unlessMarked && c.CancelledBy() != "" {
					marked = true
					return nil
				}
				err = c.p.store.Delete(ctx, c.key, tag)
			}
		}
		if err == nil {
			c.ended = true
		}
		return err
	})

	if marked {
		return false
	}
	c.drop()
	if err != nil {
		c.log.Warn("lease not deleted; recovery will clear it", "event", "lease.delete_failed", "err", err)
	}
	return true
}

// drop stops keeping the lease alive without touching it. A lease that names
// our session would stay alive with it: the session gives it to this node's
// own recovery, which settles it as it would a dead node's.
func (c *Claim) drop() {
	if c.stopKeeper != nil {
		c.stopKeeper()
		<-c.keeperDone
	}
	c.mu.Lock()
	if c.expiry != nil {
		c.expiry.Stop()
	}
	lost := c.lost
	c.mu.Unlock()
	if c.sess != nil {
		c.writeMu.Lock()
		ended := c.ended
		c.writeMu.Unlock()
		c.sess.forget(c, !ended && !lost)
	}
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

// deletePending deletes the pending/ version v under the lease, repeating
// until the answer is definite (see act). Only the holder deletes pending/,
// but a submitter may write it at any time, and an identical resubmission has
// v's ETag: so a repeat after an answer that was lost first reads the key,
// and takes gone, or the same bytes written at another time, for its own
// delete having landed (the store does the same between its own attempts).
func (c *Claim) deletePending(ctx context.Context, quit <-chan struct{}, v version) error {
	key := c.p.cfg.Layout.Key(store.Pending, c.id)
	mayHaveLanded := false
	return c.act(ctx, quit, "delete pending", func(ctx context.Context) error {
		if mayHaveLanded && !v.modified.IsZero() {
			o, err := c.p.store.Head(ctx, key)
			switch {
			case errors.Is(err, store.ErrNotFound):
				return nil
			case err != nil:
				return err
			case o.ETag == v.etag && !v.is(o):
				return nil
			}
		}
		err := c.p.store.DeleteWritten(ctx, key, v.named())
		mayHaveLanded = mayHaveLanded || errors.Is(err, store.ErrUnknown)
		return err
	})
}
